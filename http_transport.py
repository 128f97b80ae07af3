"""What toolscript adds to the SDK's streamable HTTP transport: a dead server noticed at once,
a quiet end of the session, and an SSE endpoint told from a refusal.

It stands alone (the connection's lifecycle in upstream.py only calls it) because the SDK's
transport does not tell that a server died: when a response stream breaks it waits a second
and tries again (twice, or as often as the server's `retry` says), or fails only that
request while the transport stays open, so a call to a server that died would wait seconds
for an answer that cannot come. `DropWatch` wraps the HTTP client's transport; when the
answer to a POST (a request in flight) breaks off, `run` asks whether anything still answers
at the server's URL, and if not, raises `ServerGoneError` (the connection is
then over, and every request on it fails with that reason). A server that still listens (a
proxy dropped one stream) is left to the SDK to resume.

The SDK's own end of the session (a DELETE) would be tried, and warned about, even against
a server that is gone; `end_session` is sent only on a clean close, and quietly. And an
`http` server that refuses to connect may be an SSE endpoint configured without
`type = "sse"`: `serves_sse` asks it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import httpx2

__all__ = ["PROBE_TIMEOUT", "DropWatch", "ServerGoneError", "end_session", "may_be_sse", "serves_sse"]

log = logging.getLogger("toolscript.gateway")

PROBE_TIMEOUT = 1.0  # seconds for anything at the server's URL to answer after a stream broke
SESSION_END_TIMEOUT = 5.0  # for a server to answer the DELETE that ends its session
SSE_PROBE_TIMEOUT = 2.0  # for a server that refused to connect to say whether it is an SSE endpoint


async def end_session(client: httpx2.AsyncClient, url: str, session_id: str | None) -> None:
    """Tell a server that its session is over (DELETE), as the specification asks; failures are only logged (DEBUG)."""
    if session_id is None:
        return
    with anyio.move_on_after(SESSION_END_TIMEOUT):
        try:
            response = await client.delete(url, headers={"mcp-session-id": session_id})
            log.debug("Session end at %s: HTTP %d", url, response.status_code)
        except httpx2.HTTPError as exc:
            log.debug("Session end at %s failed: %s", url, str(exc).strip() or type(exc).__name__)


def may_be_sse(status: int) -> bool:
    """Whether an HTTP error answering a streamable HTTP request may mean the server speaks SSE instead.

    An SSE server's endpoint takes only GET (405, or 404 where no route matches a POST); one
    that takes its messages at the same path wants a session id there (400).
    """
    return status in (400, 404, 405)


async def serves_sse(url: str, headers: dict[str, str]) -> bool:
    """Whether a GET of `url` (with the server's static `headers`) answers with an event stream: an SSE endpoint.

    Not with the connection's client: its OAuth would try to refresh a token again.
    """
    with anyio.move_on_after(SSE_PROBE_TIMEOUT):
        try:
            async with (
                httpx2.AsyncClient(headers=headers, timeout=SSE_PROBE_TIMEOUT) as client,
                client.stream("GET", url, headers={"accept": "text/event-stream"}) as response,
            ):
                content_type = response.headers.get("content-type", "")
                return response.status_code == 200 and content_type.startswith("text/event-stream")
        except httpx2.HTTPError:
            return False
    return False


class ServerGoneError(Exception):
    """A response stream of a streamable HTTP server broke off and nothing answers at its URL any more."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.message = f"the connection to {url} broke off and nothing answers there any more"
        super().__init__(self.message)


class DropWatch:
    """Watch the responses of one HTTP client (`transport`) for a body that breaks off; `run` acts on it."""

    def __init__(self, url: str) -> None:
        self.url = httpx2.URL(url).copy_with(query=None)
        self._dropped = anyio.Event()

    def transport(self, inner: httpx2.AsyncBaseTransport) -> httpx2.AsyncBaseTransport:
        """`inner`, with every response body watched."""
        return _WatchedTransport(inner, self)

    def note_drop(self) -> None:
        self._dropped.set()

    async def run(self) -> None:
        """Wait for a broken response; raise `ServerGoneError` if nothing answers at the server's URL any more."""
        while True:
            await self._dropped.wait()
            self._dropped = anyio.Event()
            if not await self._answers():
                raise ServerGoneError(str(self.url))

    async def _answers(self) -> bool:
        """Whether anything at the server's URL still answers HTTP (with any status).

        Not just a TCP connection: a dying server's socket may accept one from its backlog
        an instant before the process is gone.
        """
        with anyio.move_on_after(PROBE_TIMEOUT):
            try:
                async with (
                    httpx2.AsyncClient(timeout=PROBE_TIMEOUT) as client,
                    client.stream("GET", self.url, headers={"accept": "text/event-stream"}),
                ):
                    return True
            except httpx2.HTTPError:
                return False
        return False


class _WatchedTransport(httpx2.AsyncBaseTransport):
    def __init__(self, inner: httpx2.AsyncBaseTransport, watch: DropWatch) -> None:
        self._inner = inner
        self._watch = watch

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        # Only a POST to the server (not, say, to its token endpoint) is a request in flight; the SDK
        # reopens a broken GET stream when it can.
        if request.method != "POST" or request.url.copy_with(query=None) != self._watch.url:
            return await self._inner.handle_async_request(request)
        try:
            response = await self._inner.handle_async_request(request)
        except (httpx2.RemoteProtocolError, httpx2.ReadError):  # the peer closed before its answer's headers
            self._watch.note_drop()
            raise
        if isinstance(response.stream, httpx2.AsyncByteStream):
            response.stream = _WatchedStream(response.stream, self._watch)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _WatchedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, watch: DropWatch) -> None:
        self._inner = inner
        self._watch = watch

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except (httpx2.RemoteProtocolError, httpx2.ReadError):  # the peer closed in the middle of a body
            self._watch.note_drop()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()
