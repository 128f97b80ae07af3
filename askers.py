"""Who answers what a server asks (elicitation, sampling) while requests to it are in flight.

It stands apart from the connection (`upstream`) and the requests sent on it (`gateway`)
because it is one decision with its own rule, fed from both sides: each request in flight
registers its `Asker` (`Askers.asking`), and the session's callbacks (`Askers.elicit`,
`Askers.sample`) ask `Askers.answerer` whom the server's question goes to. Only the asker
of the request the server is serving is asked, never another caller's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

import mcp_types as types

if __package__:
    from .elicitation import DECLINE
else:
    from elicitation import DECLINE

if TYPE_CHECKING:
    from mcp.client.session import ClientRequestContext

__all__ = ["Asker", "Askers"]

log = logging.getLogger("toolscript.gateway")


class Asker(Protocol):
    """Who answers what a server asks (elicitation, sampling) while a request to it is in flight.

    A tool call's is its input handler (`Gateway.call`); a front's is the client whose
    request it passed on (`Gateway.forward`). Only the asker of the request the server is
    serving is asked, never another caller's.
    """

    async def elicit(
        self, server: str, context: ClientRequestContext | None, params: types.ElicitRequestParams
    ) -> types.ElicitResult: ...

    async def sample(
        self, server: str, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> Any: ...


# The asker of the request whose task is running: set by `Askers.asking`. The SDK's streamable
# HTTP transport hands a server's request made on a request's response stream to the session
# in a copy of that request's context, so the session's callbacks find its asker here.
_ASKER: ContextVar[Asker | None] = ContextVar("toolscript_asker", default=None)


class Askers:
    """The askers of the requests in flight to one server, and the rule that picks who answers its question."""

    def __init__(self, server: str, transport: str) -> None:
        self.server = server
        self.transport = transport  # the server's type: stdio, sse or http
        self._in_flight: set[Asker] = set()

    @contextlib.contextmanager
    def asking(self, asker: Asker | None) -> Iterator[None]:
        """While a request is in flight: what the server asks on its behalf may go to `asker` (None: nobody)."""
        if asker is not None:
            _ASKER.set(asker)  # the request task's context, which the streamable HTTP transport hands to the callbacks
            self._in_flight.add(asker)
        try:
            yield
        finally:
            self._in_flight.discard(asker)  # type: ignore[arg-type]

    def answerer(self, kind: str) -> Asker | None:
        """The asker of the request a server's request (`kind`) is about; None, after saying why, if unknown."""
        asker = _ASKER.get()
        if asker in self._in_flight:  # delivered in the context of the request that caused it (streamable HTTP)
            return asker
        if self.transport != "http" and len(self._in_flight) == 1:  # stdio and SSE do not say which request asked
            return next(iter(self._in_flight))
        log.warning(
            "Server '%s' asked for %s while %s; declined.",
            self.server,
            kind,
            "no request was in flight"
            if not self._in_flight
            else "outside the requests in flight"
            if self.transport == "http"
            else "several requests were in flight and its transport does not say which one asked",
        )
        return None

    async def elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        """The session's elicitation callback: answered by the asker of the request that caused it."""
        asker = self.answerer("input")
        if asker is None:
            return types.ElicitResult(action=DECLINE)
        return await asker.elicit(self.server, context, params)

    async def sample(self, context: Any, params: types.CreateMessageRequestParams) -> Any:
        """The session's sampling callback (declared only with a front): answered by the request's asker."""
        asker = self.answerer("sampling")
        if asker is None:
            return types.ErrorData(code=types.INVALID_REQUEST, message="Sampling not supported")
        return await asker.sample(self.server, context, params)
