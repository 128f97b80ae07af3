"""Who answers what a server asks (elicitation, sampling) while requests to it are in flight.

It stands apart from the connection (`upstream`) and the requests sent on it (`gateway`)
because it is one decision with its own rule, fed from both sides: each request in flight
registers its `Asker` (`Askers.asking`), and the session's callbacks (`Askers.elicit`,
`Askers.sample`) ask `Askers.answerer` whom the server's question goes to:

- a question tied to a request (streamable HTTP delivers it in that request's context) goes
  to that request's asker;
- a question tied to none (stdio and SSE never say; over streamable HTTP, a server that asks
  without a related request id, as TypeScript-SDK servers often do, sends it on the
  standalone GET stream) goes to the only request in flight, or, with several in flight
  whose askers are all the same caller (one MCP client of a front), to that caller;
- otherwise it is declined, and the log says why: never is one caller asked on another's behalf.
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

__all__ = ["Asker", "Askers", "outside_requests"]

log = logging.getLogger("toolscript.gateway")


class Asker(Protocol):
    """Who answers what a server asks (elicitation, sampling) while a request to it is in flight.

    A tool call's is its input handler (`Gateway.call`); a front's is the client whose
    request it passed on (`Gateway.forward`). Only the asker of the request the server is
    serving is asked, never another caller's. `caller` is who is asked: the same object
    for every request of one caller (a front's client connection); a tool call is its own.
    """

    @property
    def caller(self) -> object: ...

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


def outside_requests() -> None:
    """In a connection's own task: what its transport delivers belongs to no request unless it says so.

    Tasks copy the context they are started from; without this, a connection opened on behalf
    of a request would hand every later message of its transport to that request's asker.
    """
    _ASKER.set(None)


class Askers:
    """The askers of the requests in flight to one server, and the rule that picks who answers its question."""

    def __init__(self, server: str) -> None:
        self.server = server
        self._in_flight: dict[Asker, None] = {}  # in the order the requests began

    @contextlib.contextmanager
    def asking(self, asker: Asker | None) -> Iterator[None]:
        """While a request is in flight: what the server asks on its behalf may go to `asker` (None: nobody)."""
        if asker is not None:
            _ASKER.set(asker)  # the request task's context, which the streamable HTTP transport hands to the callbacks
            self._in_flight[asker] = None
        try:
            yield
        finally:
            self._in_flight.pop(asker, None)  # type: ignore[arg-type]

    def answerer(self, kind: str) -> Asker | None:
        """Who answers a server's request for `kind` (see the module's rule); None, after saying why, if nobody."""
        tied = _ASKER.get()
        if tied is not None:
            if tied in self._in_flight:
                return tied
            why = "after the request it belongs to had ended"
        elif not self._in_flight:
            why = "while no request was in flight"
        elif len({asker.caller for asker in self._in_flight}) == 1:
            return next(reversed(self._in_flight))  # one caller: its latest request is the likeliest cause
        else:
            why = (
                f"outside its requests while {len(self._in_flight)} requests of different callers were in flight, "
                "so it is not known whom to ask"
            )
        log.warning("Server '%s' asked for %s %s; declined.", self.server, kind, why)
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
