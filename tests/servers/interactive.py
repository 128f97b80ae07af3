"""A test server that asks the user for input and returns media: `python interactive.py [stdio|http]`.

Over stdio it serves on stdin/stdout; with `http` it prints `URL=...` and serves streamable
HTTP on a loopback port until killed. In the test process, `serving()` runs it in a thread.
`add_tools(server)` adds its tools to any `MCPServer` (the OAuth-protected demo server too).

The tools report what the client answered, as structured content and as text, and their
result is an error unless the answer was `accept`:
- `book_table`: form elicitation with string, integer, number, boolean, single and multiple
  choice fields, every one with a default;
- `open_page`: URL-mode elicitation;
- `visit_first`: fails with the URL-elicitation-required error (-32042) on every odd call,
  answers on every even one;
- `pick_pizza`: asks through the SDK's `Resolve(Elicit)`, which over the legacy protocol is an
  `elicitation/create` request and over 2026-07-28 an input-required result;
- the prompt `booking` and the resource `booking://table` (of the template `booking://{place}`)
  ask as `book_table` does, and give the answer as their text;
- `media`: text, image, audio, an embedded blob resource and a resource link;
- `long_job`: declared as requiring task-augmented execution;
- `sample`, `roots`: ask the client for sampling or roots and report the refusal;
- `client_capabilities`: the capabilities the client declared.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import mcp_types as types
from mcp.server.elicitation import ElicitationResult
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve
from mcp.shared.exceptions import UrlElicitationRequiredError
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_server import Running, serve_app, serving_app

__all__ = [
    "AUDIO",
    "BLOB",
    "BOOKING_DEFAULTS",
    "BOOKING_SCHEMA",
    "BOOKING_URI",
    "LINK_URL",
    "PAGE_URL",
    "PNG",
    "add_tools",
    "build",
    "serving",
]

PNG = b"\x89PNG\r\n\x1a\n interactive image"
AUDIO = b"RIFF\x24\x00\x00\x00WAVEfmt fake audio"
BLOB = b"%PDF-1.4 fake document \x00\x01\x02"

BOOKING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {
            "type": "string",
            "title": "Name",
            "description": "who the table is for",
            "default": "Ada",
            "minLength": 1,
        },
        "guests": {"type": "integer", "minimum": 1, "maximum": 12, "default": 2},
        "budget": {"type": "number", "minimum": 0, "default": 42.5},
        "vegetarian": {"type": "boolean", "default": False},
        "seating": {"type": "string", "enum": ["indoor", "outdoor", "bar"], "default": "outdoor"},
        "time": {
            "type": "string",
            "oneOf": [{"const": "18:00", "title": "Early"}, {"const": "20:00", "title": "Late"}],
            "default": "20:00",
        },
        "extras": {
            "type": "array",
            "items": {"type": "string", "enum": ["cake", "candles", "flowers"]},
            "default": ["candles"],
        },
    },
    "required": ["name", "guests"],
}
BOOKING_DEFAULTS = {name: prop["default"] for name, prop in BOOKING_SCHEMA["properties"].items()}
PAGE_URL = "https://example.com/sign?form=1"
LINK_URL = "https://example.com/link"
BOOKING_URI = "booking://table"


class Pizza(BaseModel):
    size: Literal["small", "large"] = "large"
    slices: int = 8


def ask_for_pizza() -> Elicit[Pizza]:
    return Elicit("Which pizza?", Pizza)


def add_tools(server: MCPServer) -> None:
    """Add the interactive tools to `server`."""

    @server.tool(description="Book a table: asks for the details in a form.")
    async def book_table(ctx: Context) -> types.CallToolResult:
        answer = await ctx.session.elicit_form(
            "Book a table for tonight?", BOOKING_SCHEMA, related_request_id=ctx.request_id
        )
        return _report({"action": answer.action, "content": answer.content})

    @server.tool(description="Sign a form on a web page (URL-mode elicitation).")
    async def open_page(ctx: Context) -> types.CallToolResult:
        answer = await ctx.session.elicit_url(
            "Sign the form on our site.", PAGE_URL, "sign-1", related_request_id=ctx.request_id
        )
        return _report({"action": answer.action})

    visits = [0]

    @server.tool(description="Needs a visit to a web page first (URL elicitation required error).")
    def visit_first() -> str:
        visits[0] += 1
        if visits[0] % 2:
            raise UrlElicitationRequiredError(
                [
                    types.ElicitRequestURLParams(
                        message="Link your account first.", url=LINK_URL, elicitation_id=f"link-{visits[0]}"
                    )
                ]
            )
        return "welcome back"

    @server.tool(description="Order a pizza (asks through Resolve).")
    async def pick_pizza(choice: Annotated[ElicitationResult[Pizza], Resolve(ask_for_pizza)]) -> types.CallToolResult:
        data = choice.data.model_dump() if choice.action == "accept" else None  # type: ignore[union-attr]
        return _report({"action": choice.action, "content": data})

    @server.tool(description="Text, an image, audio, an embedded blob and a resource link.")
    def media() -> types.CallToolResult:
        return types.CallToolResult(
            content=[
                types.TextContent(type="text", text="here you are"),
                types.ImageContent(type="image", data=base64.b64encode(PNG).decode(), mime_type="image/png"),
                types.AudioContent(type="audio", data=base64.b64encode(AUDIO).decode(), mime_type="audio/wav"),
                types.EmbeddedResource(
                    type="resource",
                    resource=types.BlobResourceContents(
                        uri="file:///report.pdf", blob=base64.b64encode(BLOB).decode(), mime_type="application/pdf"
                    ),
                ),
                types.ResourceLink(type="resource_link", uri="file:///big.bin", name="big.bin"),
            ]
        )

    @server.tool(description="A long job that must run as an MCP task.")
    def long_job() -> str:
        return "ran without a task"

    @server.tool(description="Ask the client to sample an LLM.")
    async def sample(ctx: Context) -> str:
        try:
            await ctx.session.create_message(
                [types.SamplingMessage(role="user", content=types.TextContent(type="text", text="hi"))],
                max_tokens=5,
                related_request_id=ctx.request_id,
            )
        except Exception as exc:
            return f"refused: {exc}"
        return "sampled"

    @server.tool(description="Ask the client for its roots.")
    async def roots(ctx: Context) -> str:
        try:
            await ctx.session.send_request(types.ListRootsRequest(), types.ListRootsResult)
        except Exception as exc:
            return f"refused: {exc}"
        return "listed"

    @server.tool(description="The capabilities the client declared.")
    def client_capabilities(ctx: Context) -> dict[str, Any]:
        capabilities = ctx.session.client_capabilities
        return capabilities.model_dump(mode="json", by_alias=True, exclude_none=True) if capabilities else {}

    @server.prompt(description="Book a table: asks for the details in a form, then says what it got.")
    async def booking(ctx: Context) -> str:
        answer = await ctx.session.elicit_form(
            "Book a table for tonight?", BOOKING_SCHEMA, related_request_id=ctx.request_id
        )
        return json.dumps({"action": answer.action, "content": answer.content}, sort_keys=True)

    # A template: the SDK gives a static resource no context to ask through.
    @server.resource("booking://{place}", mime_type="application/json", description="Asks for the details in a form.")
    async def booking_resource(place: str, ctx: Context) -> str:
        return await booking(ctx)

    listed = server.list_tools

    async def list_tools() -> list[types.Tool]:
        tools = await listed()
        return [
            tool.model_copy(update={"execution": types.ToolExecution(task_support="required")})
            if tool.name == "long_job"
            else tool
            for tool in tools
        ]

    server.list_tools = list_tools  # type: ignore[method-assign]


def _report(answer: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(answer, sort_keys=True))],
        structured_content=answer,
        is_error=answer["action"] != "accept",
    )


def build(name: str = "interactive") -> MCPServer:
    server = MCPServer(name, log_level="WARNING")
    add_tools(server)
    return server


@contextlib.contextmanager
def serving(name: str = "interactive") -> Iterator[Running]:
    """Serve over streamable HTTP in a background thread; stop on exit."""
    with serving_app(build(name).streamable_http_app()) as running:
        yield running


def main() -> None:
    transport = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if transport == "stdio":
        build().run("stdio")
        return
    serve_app(build().streamable_http_app())


if __name__ == "__main__":
    main()
