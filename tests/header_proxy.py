"""A loopback HTTP proxy that adds `Authorization: Bearer TOKEN` to every request it forwards.

For clients that cannot send headers (the conformance suite's CLI) talking to servers that
need a token (toolscript's `/mcp`):

    with HeaderProxy("http://127.0.0.1:8123/mcp/demo", token) as proxy:
        proxy.url   # http://127.0.0.1:<port>/mcp/demo: same path, any method, token added

Streamable HTTP passes through as it is: POST with JSON or SSE answers, GET SSE streams and
DELETE. Bodies are streamed chunk by chunk as they arrive, never buffered, so server-to-client
requests (elicitation, sampling) sent mid-call reach the client. When the client hangs up,
the upstream request is closed too.

Host and Origin naming the proxy itself are rewritten to name the target, so that the
target's DNS-rebinding check sees what a direct client would send; any other Host or Origin
(e.g. `evil.example.com`) is passed through unchanged, for the target to refuse.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import uvicorn

__all__ = ["HeaderProxy"]

# Hop-by-hop headers (RFC 9110 7.6.1) and those the forwarding client sets itself.
_REQUEST_HEADERS_DROPPED = {
    b"connection",
    b"keep-alive",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
    b"host",
    b"authorization",
}
_RESPONSE_HEADERS_DROPPED = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


class HeaderProxy:
    """Serve on a loopback port in a background thread, forwarding to `target_url`'s origin."""

    def __init__(self, target_url: str, token: str) -> None:
        target = urlsplit(target_url)
        self._target_origin = f"{target.scheme}://{target.netloc}"
        self._target_host = target.netloc
        self._path = target.path
        self._authorization = f"Bearer {token}"
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._own_hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        self._client: httpx2.AsyncClient | None = None
        self._server = uvicorn.Server(
            uvicorn.Config(self._forward, log_level="warning", lifespan="off", interface="asgi3")
        )
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="header-proxy", daemon=True)

    @property
    def url(self) -> str:
        """The target URL's path on the proxy."""
        return f"http://127.0.0.1:{self.port}{self._path}"

    def __enter__(self) -> HeaderProxy:
        """Start serving; raise RuntimeError if the server has not started within 30 s."""
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            self._thread.join(0.02)  # returns at once if the server thread has ended
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"the header proxy for {self._target_origin} did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Drop open streams at once: an SSE GET stream would otherwise hold the shutdown up.
        self._server.should_exit = self._server.force_exit = True
        self._thread.join(10)
        self._sock.close()

    def _forwarded_headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
        forwarded = [("authorization", self._authorization)]
        for raw_name, raw_value in headers:
            name, value = raw_name.lower(), raw_value.decode("latin-1")
            if name == b"host":
                forwarded.append(("host", self._target_host if value in self._own_hosts else value))
            elif name == b"origin":
                own = value.removeprefix("http://") in self._own_hosts
                forwarded.append(("origin", f"http://{self._target_host}" if own else value))
            elif name not in _REQUEST_HEADERS_DROPPED:
                forwarded.append((name.decode("latin-1"), value))
        return forwarded

    async def _serve(self) -> None:
        # No read timeout: an SSE stream may stay quiet for as long as the server likes.
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(10.0, read=None)) as self._client:
            await self._server.serve(sockets=[self._sock])

    async def _forward(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI app: forward one HTTP request, stream the answer back."""
        assert self._client is not None and scope["type"] == "http"
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = scope.get("query_string", b"").decode("latin-1")
        url = self._target_origin + scope["raw_path"].decode("latin-1").split("?")[0] + (f"?{query}" if query else "")
        request = self._client.build_request(scope["method"], url, content=bytes(body))
        # Only the client's headers (plus the token), not the forwarding client's defaults.
        for name in [name for name in request.headers if name not in ("content-length",)]:
            del request.headers[name]
        for name, value in self._forwarded_headers(scope["headers"]):
            request.headers[name] = value
        try:
            response = await self._client.send(request, stream=True)
        except httpx2.TransportError:
            await send({"type": "http.response.start", "status": 502, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (name.encode("latin-1"), value.encode("latin-1"))
                        for name, value in response.headers.multi_items()
                        if name.lower() not in _RESPONSE_HEADERS_DROPPED
                    ],
                }
            )
            async with anyio.create_task_group() as tg:

                async def stop_when_client_leaves() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(stop_when_client_leaves)
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                tg.cancel_scope.cancel()
        finally:
            await response.aclose()
