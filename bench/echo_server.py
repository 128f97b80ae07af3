"""A trivial MCP server with one `echo` tool, for the benchmarks.

python echo_server.py stdio    speak MCP on stdin/stdout
python echo_server.py http     serve streamable HTTP on a free loopback port; prints URL=...
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("echo", log_level="WARNING")


@server.tool(description="Echo the text back.")
def echo(text: str) -> str:
    return text


def main() -> None:
    if sys.argv[1:] == ["http"]:
        import asyncio
        import socket

        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        print(f"URL=http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
        config = uvicorn.Config(server.streamable_http_app(), log_level="warning", lifespan="on")
        asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
