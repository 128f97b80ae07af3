"""The exception tree shared by every toolscript module.

It stands alone because the CLI, `auth`, `gateway`, `storage` and `config` all raise
from it, and none of them may import another one upward just to reach an exception.

Messages are one sentence naming the object and the next step; they never contain a
token, code, state, verifier or client secret.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "AuthConnectError",
    "AuthError",
    "AuthRequiredError",
    "CallTimeoutError",
    "ConfigError",
    "ConnectError",
    "StorageError",
    "ToolscriptError",
    "UsageError",
    "did_you_mean",
]


class ToolscriptError(Exception):
    """Root of every error toolscript raises on purpose.

    `exit_code` is what the CLI exits with when this error reaches it.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, server: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.server = server

    def __str__(self) -> str:
        return self.message


class UsageError(ToolscriptError):
    """A command line that cannot be carried out (unknown server or tool, bad JSON)."""

    exit_code = 2


class ConfigError(ToolscriptError):
    """The configuration file is missing, malformed or invalid."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, server: str | None = None) -> None:
        super().__init__(message, server=server)
        self.path = path


class StorageError(ToolscriptError):
    """A stored OAuth record cannot be read, written or trusted."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, server: str | None = None) -> None:
        super().__init__(message, server=server)
        self.path = path


class AuthError(ToolscriptError):
    """An OAuth step failed.

    `error` carries the OAuth error code (`invalid_grant`, `access_denied`, ...) when the
    authorization server sent one, so callers branch on it instead of parsing text.
    """

    exit_code = 1

    def __init__(self, message: str, *, server: str | None = None, error: str | None = None) -> None:
        super().__init__(message, server=server)
        self.error = error


class AuthRequiredError(AuthError):
    """A server needs (new) authorization by the user: `toolscript auth SERVER`."""

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        server: str | None = None,
        error: str | None = None,
        scope: str | None = None,
    ) -> None:
        super().__init__(message, server=server, error=error)
        self.scope = scope


class ConnectError(ToolscriptError):
    """A server could not be reached, or failed while serving a request."""

    exit_code = 4


class CallTimeoutError(ConnectError):
    """A server did not answer a tool call (or a connection attempt) in time."""


class AuthConnectError(AuthError, ConnectError):
    """An OAuth step could not reach its server (exit code 4, like any unreachable server)."""

    exit_code = 4


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return " (did you mean 'X'?)" for the first candidate one edit away from `name`, else "".

    One edit is one character changed, added or removed, two neighbours swapped, or a
    difference in case only: the typos a person makes in a server, tool or key name.
    Names shorter than three characters get no suggestion: one edit from them is a guess.
    """
    if len(name) < 3:
        return ""
    for candidate in candidates:
        if candidate != name and _one_edit_apart(name.lower(), candidate.lower()):
            return f" (did you mean '{candidate}'?)"
    return ""


def _one_edit_apart(a: str, b: str) -> bool:
    if len(a) > len(b):
        a, b = b, a
    if len(b) - len(a) > 1:
        return False
    start = 0
    while start < len(a) and a[start] == b[start]:
        start += 1
    if len(a) < len(b):  # one character added
        return a[start:] == b[start + 1:]
    # same length: equal, one character changed, or two neighbours swapped
    swapped = a[start:start + 2] == b[start:start + 2][::-1] and a[start + 2:] == b[start + 2:]
    return a[start + 1:] == b[start + 1:] or swapped
