"""Serve the test toolbox over streamable HTTP (`/mcp`) or SSE (`/sse`) on a loopback port.

In the test process: `with serving("http") as srv: srv.url ...` runs uvicorn in a thread.
As a subprocess: `python http_server.py [http|sse]` prints `URL=...` and serves until killed.

The listening socket is bound and put into listen mode before uvicorn starts, so clients
can connect at once (the kernel queues them): nothing has to wait for "started".
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from toolbox import build

__all__ = ["Running", "bind_loopback", "serve_app", "serving", "serving_app"]


@dataclass
class Running:
    url: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        """Stop at once, dropping open connections (a long-lived SSE stream would hold it up)."""
        self.server.should_exit = self.server.force_exit = True
        self.thread.join(10)


def bind_loopback(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def make_app(transport: str, name: str = "toolbox"):
    mcp = build(name)
    return mcp.sse_app() if transport == "sse" else mcp.streamable_http_app()


@contextlib.contextmanager
def serving_app(app: Any, path: str = "/mcp", *, port: int = 0) -> Iterator[Running]:
    """Serve the ASGI `app` (an MCP server's) on a loopback port in a background thread; stop it on exit."""
    sock = bind_loopback(port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    running = Running(url=f"http://127.0.0.1:{port}{path}", port=port, server=server, thread=thread)
    try:
        yield running
    finally:
        running.stop()
        sock.close()


def serve_app(app: Any, path: str = "/mcp") -> None:
    """Serve the ASGI `app` on a loopback port until killed, after printing `URL=...` (for a subprocess)."""
    sock = bind_loopback()
    print(f"URL=http://127.0.0.1:{sock.getsockname()[1]}{path}", flush=True)
    asyncio.run(uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on")).serve(sockets=[sock]))


@contextlib.contextmanager
def serving(transport: str = "http", *, port: int = 0, name: str = "toolbox") -> Iterator[Running]:
    """Serve the toolbox in a background thread; stop it on exit."""
    with serving_app(make_app(transport, name), _path(transport), port=port) as running:
        yield running


def _path(transport: str) -> str:
    return "/sse" if transport == "sse" else "/mcp"


def main() -> None:
    transport = sys.argv[1] if len(sys.argv) > 1 else "http"
    serve_app(make_app(transport), _path(transport))


if __name__ == "__main__":
    main()
