"""Run tokens: credentials the gateway mints for one `toolscript exec` run, narrower than its own token.

It stands alone because two sides must agree on one rule: the gateway's API checks a run
token on every request (`gateway_http`), and `exec` mints one and hands it to a script it
does not trust (`script_runner`). A run token reaches only the tools its run was allowed
(`--tools PATTERN...`, shell-style patterns over `SERVER__TOOL`), lists only those, and
dies when the run ends: revoked at exit, and expired at its deadline in case the process
that minted it was killed before it could revoke it.
"""

from __future__ import annotations

import fnmatch
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["PREFIX", "Grant", "Grants", "grant_id_of"]

_TOKEN_BYTES = 32
PREFIX = "run."  # a run token is `run.ID.SECRET`; the gateway's own token never holds a dot


def grant_id_of(token: str) -> str | None:
    """The grant id a run token names, or None when `token` is not a run token."""
    if not token.startswith(PREFIX):
        return None
    grant_id, dot, _ = token[len(PREFIX) :].partition(".")
    return grant_id if dot else None


@dataclass(frozen=True)
class Grant:
    """What one run token may do: list and call the tools matching `tools`, until `expires` (monotonic)."""

    id: str
    tools: tuple[str, ...]
    expires: float
    _token: bytes = field(repr=False)

    @property
    def token(self) -> str:
        """The run token itself (the key of the gateway's proof to its holder)."""
        return self._token.decode()

    def allows(self, tool: str) -> bool:
        """Whether the run may list and call `tool` (SERVER__TOOL)."""
        return any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.tools)


class Grants:
    """The live run tokens of one gateway; safe to use from the API's threads."""

    MAX_LIVE = 64  # a client holding the gateway's token cannot grow this without bound

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._now = clock
        self._lock = threading.Lock()
        self._live: dict[str, Grant] = {}

    def mint(self, tools: list[str], seconds: float) -> tuple[Grant, str]:
        """Make a run token for `tools` (patterns), valid for `seconds`; return its grant and the token."""
        grant_id = secrets.token_hex(8)
        # The id is part of the token, so the gateway finds the grant without comparing every
        # live token, and can prove to the token's holder that it knows it (gateway_http).
        token = f"{PREFIX}{grant_id}.{secrets.token_urlsafe(_TOKEN_BYTES)}"
        grant = Grant(grant_id, tuple(tools), self._now() + seconds, token.encode())
        with self._lock:
            self._drop_expired()
            if len(self._live) >= self.MAX_LIVE:
                raise OverflowError(f"{self.MAX_LIVE} run tokens are live already")
            self._live[grant.id] = grant
        return grant, token

    def revoke(self, grant_id: str) -> bool:
        """End a run token; False if it was not live."""
        with self._lock:
            return self._live.pop(grant_id, None) is not None

    def match(self, credential: str) -> Grant | None:
        """The live grant whose token is `credential`, compared in constant time; None for none."""
        grant = self.live(grant_id_of(credential) or "")
        if grant is None or not hmac.compare_digest(credential.encode("utf-8", "replace"), grant._token):
            return None
        return grant

    def live(self, grant_id: str) -> Grant | None:
        """The grant `grant_id` if it is still live."""
        with self._lock:
            self._drop_expired()
            return self._live.get(grant_id)

    def _drop_expired(self) -> None:
        now = self._now()
        for grant_id in [key for key, grant in self._live.items() if grant.expires <= now]:
            del self._live[grant_id]
