"""The exception tree shared by every toolscript module, and what an error message is made of.

It stands alone because the CLI, `auth`, `gateway`, `storage` and `config` all raise
from it, and none of them may import another one upward just to reach an exception.

Messages are one sentence naming the object, then the next step as `Run: COMMAND` (built
here only, from `next_command`); they never contain a token, code, state, verifier or
client secret. An authorization server's error answer is read here too
(`OAuthErrorResponse`), because its `error` code is what `AuthError.error` carries.
"""

from __future__ import annotations

import http
import json
from collections.abc import Iterable
from dataclasses import dataclass

if __package__:
    from .redact import redact
else:
    from redact import redact

__all__ = [
    "AuthConnectError",
    "AuthError",
    "AuthRequiredError",
    "CallTimeoutError",
    "ConfigError",
    "ConnectError",
    "OAuthErrorResponse",
    "StorageError",
    "ToolscriptError",
    "UsageError",
    "auth_command",
    "did_you_mean",
    "run_hint",
]


def auth_command(server: str, *options: str) -> str:
    """Return the `toolscript auth SERVER [OPTIONS]` command line that fixes a problem of `server`."""
    return " ".join(["toolscript auth", server, *options])


def run_hint(command: str) -> str:
    """Return the hint that ends a message or a listing: `Run: COMMAND`."""
    return f"Run: {command}"


class ToolscriptError(Exception):
    """Root of every error toolscript raises on purpose.

    `exit_code` is what the CLI exits with when this error reaches it. `next_command`,
    when set, is the command that fixes the problem; `message` then ends with its
    `Run:` hint, so callers that need the command read the attribute, never the text.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, server: str | None = None, next_command: str | None = None) -> None:
        if next_command is not None:
            message = f"{message.rstrip('.')}. {run_hint(next_command)}"
        message = redact(message)  # it may quote what a server sent, which may echo a credential
        super().__init__(message)
        self.message = message
        self.server = server
        self.next_command = next_command

    def __str__(self) -> str:
        return self.message


class UsageError(ToolscriptError):
    """A command line that cannot be carried out (unknown server or tool, bad JSON)."""

    exit_code = 2


class ConfigError(ToolscriptError):
    """The configuration file is missing, malformed or invalid."""

    exit_code = 2

    def __init__(
        self, message: str, *, path: str | None = None, server: str | None = None, variable: str | None = None
    ) -> None:
        super().__init__(message, server=server)
        self.path = path
        self.variable = variable  # an environment variable that is not set


class StorageError(ToolscriptError):
    """A stored OAuth record cannot be read, written or trusted."""

    exit_code = 2

    def __init__(
        self, message: str, *, path: str | None = None, server: str | None = None, next_command: str | None = None
    ) -> None:
        super().__init__(message, server=server, next_command=next_command)
        self.path = path


class AuthError(ToolscriptError):
    """An OAuth step failed.

    `error` carries the OAuth error code (`invalid_grant`, `access_denied`, ...) when the
    authorization server sent one, so callers branch on it instead of parsing text.
    """

    exit_code = 1

    def __init__(
        self, message: str, *, server: str | None = None, error: str | None = None, next_command: str | None = None
    ) -> None:
        super().__init__(message, server=server, next_command=next_command)
        self.error = error


class AuthRequiredError(AuthError):
    """A server needs (new) authorization by the user: `toolscript auth SERVER`.

    With a `server`, `next_command` is that command unless another one is given.
    """

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        server: str | None = None,
        error: str | None = None,
        scope: str | None = None,
        next_command: str | None = None,
    ) -> None:
        if next_command is None and server is not None:
            next_command = auth_command(server)
        super().__init__(message, server=server, error=error, next_command=next_command)
        self.scope = scope


class ConnectError(ToolscriptError):
    """A server could not be reached, or failed while serving a request."""

    exit_code = 4


class CallTimeoutError(ConnectError):
    """A server did not answer a tool call (or a connection attempt) in time."""


class AuthConnectError(AuthError, ConnectError):
    """An OAuth step could not reach its server (exit code 4, like any unreachable server)."""

    exit_code = 4


@dataclass(frozen=True)
class OAuthErrorResponse:
    """An authorization server's answer other than success (RFC 6749 §5.2, RFC 7591 §3.2.2).

    `error` and `description` are the body's `error` and `error_description` when it is a
    JSON object holding them as strings (whatever its content type says, as servers often
    label it wrongly), else None.
    """

    status: int
    error: str | None = None
    description: str | None = None

    @classmethod
    def parse(cls, status: int, body: bytes) -> OAuthErrorResponse:
        """Read the answer with HTTP status `status` and body `body`."""
        try:
            data = json.loads(body) if body else None
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            data = None
        if not isinstance(data, dict):
            return cls(status)
        error, description = data.get("error"), data.get("error_description")
        return cls(
            status,
            error if isinstance(error, str) else None,
            description if isinstance(description, str) and description else None,
        )

    def __str__(self) -> str:
        """`400 invalid_grant: code expired`, or `503 Service Unavailable` without an error code; redacted."""
        if self.error is None:
            try:
                return f"{self.status} {http.HTTPStatus(self.status).phrase}"
            except ValueError:
                return str(self.status)
        return redact(f"{self.status} {self.error}" + (f": {self.description}" if self.description else ""))


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
        return a[start:] == b[start + 1 :]
    # same length: equal, one character changed, or two neighbours swapped
    swapped = a[start : start + 2] == b[start : start + 2][::-1] and a[start + 2 :] == b[start + 2 :]
    return a[start + 1 :] == b[start + 1 :] or swapped
