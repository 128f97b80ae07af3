"""An MCP server over stdio that lists the recorded tools of real servers, for bench_search.py.

python recorded_server.py [COPIES]

It lists every tool of tests/fixtures/tools/*.json (402), COPIES times over (default 1) under
other names, as their servers listed them (name, title, description, input schema); a call
answers that the tool is only a recording.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tools"


def recorded_tools(copies: int) -> list[types.Tool]:
    rows = [row for path in sorted(FIXTURES.glob("*.json")) for row in json.loads(path.read_text(encoding="utf-8"))]
    tools = []
    for copy in range(copies):
        for row in rows:
            suffix = f"_{copy}" if copy else ""
            tools.append(
                types.Tool(
                    name=f"{row['server']}_{row['tool']}{suffix}",
                    title=row.get("title"),
                    description=row.get("description"),
                    input_schema=row.get("inputSchema") or {"type": "object"},
                )
            )
    return tools


async def serve(copies: int) -> None:
    tools = recorded_tools(copies)

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        text = f"{params.name} is only a recording."
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)

    server = Server("recorded", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(serve, int(sys.argv[1]) if len(sys.argv) > 1 else 1)
