"""A stdio test server whose tool names and schemas put `toolscript types` to work: `python typed_server.py`.

Its names need cleaning into Python identifiers (dashes, dots, a keyword, a leading digit,
accents, and two names that clean to the same identifier); its schemas use `$defs`, a
recursive `$ref`, enums, defaults and an output schema; one description is hostile
(`HOSTILE`). Each tool answers with what it received, `{"tool": NAME, "arguments": {...}}`,
as JSON text; `tree` answers with structured content (its `root` argument, echoed).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server

HOSTILE = '"""\\\x00\nimport os\nos.system("echo pwned")  # \u0430 \u202e'

NODE = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
    },
    "required": ["name"],
}

TOOLS = [
    types.Tool(
        name="get-item",
        description="Get an item by its id.",
        input_schema={
            "type": "object",
            "properties": {
                "item-id": {"type": "string", "description": "The item's id."},
                "class": {"type": "integer", "default": 3},
                "format": {"type": "string", "enum": ["json", "text"]},
            },
            "required": ["item-id"],
        },
    ),
    types.Tool(
        name="get.item",
        description=HOSTILE,
        input_schema={"type": "object", "properties": {"from": {"type": "string", "description": HOSTILE}}},
    ),
    types.Tool(name="class", input_schema={"type": "object", "properties": {"import": {"type": "boolean"}}}),
    types.Tool(name="2fa", input_schema={"type": "object", "properties": {}}),
    types.Tool(
        name="naïve-café",
        input_schema={"type": "object", "properties": {"n": {"type": ["integer", "null"]}}, "required": ["n"]},
    ),
    types.Tool(
        name="tree",
        description="Echo a tree of nodes as structured content.",
        input_schema={
            "type": "object",
            "properties": {"root": {"$ref": "#/$defs/Node"}},
            "required": ["root"],
            "$defs": {"Node": NODE},
        },
        output_schema={
            "type": "object",
            "properties": {"root": {"$ref": "#/$defs/Node"}},
            "required": ["root"],
            "$defs": {"Node": NODE},
        },
    ),
]


def build() -> Server[Any]:
    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = params.arguments or {}
        text = json.dumps({"tool": params.name, "arguments": arguments}, sort_keys=True)
        structured = {"root": arguments.get("root")} if params.name == "tree" else None
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=structured)

    return Server("typed", on_list_tools=list_tools, on_call_tool=call_tool)


async def _main() -> None:
    from mcp.server.stdio import stdio_server

    server = build()
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    asyncio.run(_main())
