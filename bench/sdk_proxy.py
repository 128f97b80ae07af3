"""The least a proxy built on the MCP SDK does: a reference for `serve`, not a front of toolscript's.

python sdk_proxy.py COMMAND [ARG ...]

Serves MCP on stdin/stdout with the SDK's low-level `Server`, and passes `tools/list` and
`tools/call` on, as the SDK's `ClientSession.call_tool` does, to the stdio server COMMAND:
no config, no routing, no timeouts, no progress, no questions passed back, nothing
guarded. Whatever `serve` costs beyond it is toolscript's own; what it costs beyond the
SDK used directly is the floor of any proxy built on the SDK. The SDK's OpenTelemetry
middleware is left out, as `serve` leaves it out.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.server import Server
from mcp.server.stdio import stdio_server


async def main(command: list[str]) -> None:
    upstream = StdioServerParameters(command=command[0], args=command[1:])
    async with stdio_client(upstream) as (read, write), ClientSession(read, write) as session:
        await session.initialize()

        async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
            return await session.list_tools()

        async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
            return await session.call_tool(params.name, params.arguments)

        server = Server("sdk-proxy", on_list_tools=list_tools, on_call_tool=call_tool)  # type: ignore[var-annotated]
        server.middleware = []
        async with stdio_server() as (client_read, client_write):
            await server.run(client_read, client_write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
