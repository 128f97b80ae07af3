"""A test server with resources, resource templates, prompts and completions.

`build()` returns an SDK `MCPServer` whose listings come in pages of two; `add_catalog()`
puts the same resources and prompts on any `MCPServer` (the OAuth-protected demo server
in the tests); `build_bare()` is a low-level server with one tool and no resources,
prompts or completions capability at all; `build_bare(partial=True)` declares resources
and prompts but has no resources/templates/list method and fails every prompts/list.

As a subprocess: `python catalog.py stdio [--bare | --partial]` serves on stdin/stdout, and
`python catalog.py http [--bare]` prints `URL=...` and serves streamable HTTP until killed.
In the test process: `with serving("http") as srv: srv.url ...` (a thread, as `http_server.serving`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import AssistantMessage, Image, MCPServer, UserMessage
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.shared.exceptions import MCPError

sys.path.insert(0, str(Path(__file__).resolve().parent))

__all__ = ["LOGO", "README", "STYLES", "TOPICS", "add_catalog", "build", "build_bare", "serving"]

README = "The catalog server.\nIt has resources and prompts.\n"
LOGO = b"\x89PNG\r\n\x1a\n\x00\x01\x02\xff binary logo bytes"
TOPICS = ["apples", "apricots", "bananas", "cherries"]
STYLES = ["plain", "formal", "friendly"]
# Sizes the paged listing reports (MCPServer's own listing has no size field).
SIZES = {"catalog://readme": len(README.encode()), "catalog://logo.png": len(LOGO)}


def add_catalog(server: MCPServer) -> None:
    """Register the catalog's resources, templates, prompts and completion handler on `server`."""

    @server.resource("catalog://readme", name="readme", description="What this server is.", mime_type="text/plain")
    def readme() -> str:
        return README

    @server.resource("catalog://logo.png", name="logo", description="A small binary image.", mime_type="image/png")
    def logo() -> bytes:
        return LOGO

    @server.resource("catalog://settings.json", name="settings", mime_type="application/json")
    def settings() -> str:
        return '{"theme": "dark"}'

    @server.resource("catalog://broken", name="broken", description="Always fails to read.")
    def broken() -> str:
        raise ResourceError("the disk is on fire")

    @server.resource(
        "catalog://notes/{topic}", name="note", description="Notes about a topic.", mime_type="text/markdown"
    )
    def note(topic: str) -> str:
        return f"# {topic}\nNotes about {topic}.\n"

    @server.resource("catalog://blobs/{name}", name="blob", mime_type="application/octet-stream")
    def blob(name: str) -> bytes:
        return name.encode() + b"\x00\xff"

    @server.prompt(description="Greet someone.")
    def greet(name: str, style: str = "plain") -> str:
        return f"Say hello to {name} in a {style} style."

    @server.prompt(description="Review a topic with its notes and a picture.")
    def review(topic: str) -> list[Any]:
        return [
            UserMessage(f"Please review {topic}."),
            UserMessage(
                types.EmbeddedResource(
                    type="resource",
                    resource=types.TextResourceContents(
                        uri=f"catalog://notes/{topic}", text=f"Notes about {topic}.", mime_type="text/markdown"
                    ),
                )
            ),
            UserMessage(Image(data=LOGO, format="png")),
            AssistantMessage("I will review it."),
        ]

    @server.prompt(description="A prompt without arguments.")
    def hello() -> str:
        return "Hello!"

    @server.completion()
    async def complete(ref: Any, argument: types.CompletionArgument, context: Any) -> types.Completion | None:
        if isinstance(ref, types.ResourceTemplateReference) and argument.name == "topic":
            choices = TOPICS
        elif isinstance(ref, types.PromptReference) and ref.name == "greet" and argument.name == "style":
            choices = STYLES
            if context is not None and (context.arguments or {}).get("name") == "Captain":
                choices = ["pirate", *STYLES]
        else:
            return None
        values = [choice for choice in choices if choice.startswith(argument.value)]
        return types.Completion(values=values, total=len(values), has_more=False)


class _PagedCatalog(MCPServer):
    """Serves resources/list, resources/templates/list and prompts/list in pages of `page_size`."""

    page_size = 2

    def _page(self, items: list[Any], params: types.PaginatedRequestParams | None) -> tuple[list[Any], str | None]:
        start = int(params.cursor) if params and params.cursor else 0
        end = start + self.page_size
        return items[start:end], str(end) if end < len(items) else None

    async def _handle_list_resources(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        resources = [r.model_copy(update={"size": SIZES.get(str(r.uri))}) for r in await self.list_resources()]
        page, cursor = self._page(resources, params)
        return types.ListResourcesResult(resources=page, next_cursor=cursor)

    async def _handle_list_resource_templates(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        page, cursor = self._page(await self.list_resource_templates(), params)
        return types.ListResourceTemplatesResult(resource_templates=page, next_cursor=cursor)

    async def _handle_list_prompts(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        page, cursor = self._page(await self.list_prompts(), params)
        return types.ListPromptsResult(prompts=page, next_cursor=cursor)


def build(name: str = "catalog") -> MCPServer:
    """Return the catalog server, its listings paginated."""
    server = _PagedCatalog(name, log_level="WARNING")
    add_catalog(server)
    return server


def build_bare(name: str = "bare", *, partial: bool = False) -> Server[Any]:
    """Return a server with one tool `ping` that declares no resources, prompts or completions.

    With `partial`, it declares resources (one, and no templates method) and prompts (whose
    listing always fails).
    """

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(name="ping", description="Answer pong.", input_schema={"type": "object", "properties": {}})
            ]
        )

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text="pong")])

    async def list_resources(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[types.Resource(name="only", uri="partial://only")])

    async def list_prompts(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        raise MCPError(code=types.INTERNAL_ERROR, message="the prompt shelf collapsed")

    if partial:
        return Server(
            name,
            on_list_tools=list_tools,
            on_call_tool=call_tool,
            on_list_resources=list_resources,
            on_list_prompts=list_prompts,
        )
    return Server(name, on_list_tools=list_tools, on_call_tool=call_tool)


def _http_app(bare: bool) -> Any:
    return build_bare().streamable_http_app() if bare else build().streamable_http_app()


@contextlib.contextmanager
def serving(transport: str = "http", *, bare: bool = False) -> Iterator[Any]:
    """Serve the catalog (or the bare server) over streamable HTTP in a background thread."""
    if transport != "http":
        raise ValueError("the catalog is served over streamable HTTP only (and stdio as a subprocess)")

    from http_server import serving_app

    with serving_app(_http_app(bare)) as running:
        yield running


async def _run_bare_stdio(partial: bool) -> None:
    from mcp.server.stdio import stdio_server

    server = build_bare(partial=partial)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["stdio", "http"])
    parser.add_argument("--bare", action="store_true", help="no resources, prompts or completions")
    parser.add_argument("--partial", action="store_true", help="resources without templates, failing prompts (stdio)")
    args = parser.parse_args()
    if args.transport == "stdio":
        if args.bare or args.partial:
            asyncio.run(_run_bare_stdio(args.partial))
        else:
            build().run("stdio")
        return
    from http_server import serve_app

    serve_app(_http_app(args.bare))


if __name__ == "__main__":
    main()
