"""Notice at once that a streamable HTTP server went away under a request.

It stands alone because the SDK's streamable HTTP transport does not tell: when a response
stream breaks it waits a second and tries again (twice, or as often as the server's
`retry` says), or fails only that request while the transport stays open, so a call to a
server that died would wait seconds for an answer that cannot come. `DropWatch` wraps the
HTTP client's transport; when the answer to a POST (a request in flight) breaks off, `run` asks whether anything
still accepts connections at the server's address, and if not, raises `ServerGoneError`
(the connection is then over, and every request on it fails with that reason). A server
that still listens (a proxy dropped one stream) is left to the SDK to resume.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx2

__all__ = ["PROBE_TIMEOUT", "DropWatch", "ServerGoneError"]

PROBE_TIMEOUT = 1.0  # seconds for the server's address to accept a TCP connection after a stream broke


class ServerGoneError(Exception):
    """A response stream of a streamable HTTP server broke off and its address accepts no connections."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.message = f"the connection to {url} broke off and nothing accepts connections there any more"
        super().__init__(self.message)


class DropWatch:
    """Watch the responses of one HTTP client (`transport`) for a body that breaks off; `run` acts on it."""

    def __init__(self, url: str) -> None:
        self._url = httpx2.URL(url)
        self._dropped = anyio.Event()

    def transport(self, inner: httpx2.AsyncBaseTransport) -> httpx2.AsyncBaseTransport:
        """`inner`, with every response body watched."""
        return _WatchedTransport(inner, self)

    def note_drop(self) -> None:
        self._dropped.set()

    async def run(self) -> None:
        """Wait for a broken response; raise `ServerGoneError` if the server's address no longer accepts connections."""
        while True:
            await self._dropped.wait()
            self._dropped = anyio.Event()
            if not await self._accepts_connections():
                raise ServerGoneError(str(self._url.copy_with(query=None)))

    async def _accepts_connections(self) -> bool:
        host = self._url.host
        port = self._url.port or (443 if self._url.scheme == "https" else 80)
        with anyio.move_on_after(PROBE_TIMEOUT):
            try:
                stream = await anyio.connect_tcp(host, port)
            except OSError:
                return False
            await stream.aclose()
            return True
        return False


class _WatchedTransport(httpx2.AsyncBaseTransport):
    def __init__(self, inner: httpx2.AsyncBaseTransport, watch: DropWatch) -> None:
        self._inner = inner
        self._watch = watch

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        # Only a POST's answer is a request in flight; the SDK reopens a broken GET stream when it can.
        if request.method != "POST":
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
