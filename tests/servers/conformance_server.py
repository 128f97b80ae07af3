"""An MCP server offering what the official conformance suite's server scenarios ask for.

    python conformance_server.py [--host 127.0.0.1] [--port N]   streamable HTTP on /mcp
    python conformance_server.py --stdio                          the same over stdin/stdout

Over HTTP it prints `URL=http://HOST:PORT/mcp` once the socket listens (`--port 0`, the
default, picks a free port), then serves until killed. If the environment variable
CONFORMANCE_SERVER_TOKEN is set, every HTTP request needs `Authorization: Bearer <it>`
(401 otherwise): a server to put behind tests/header_proxy.py.

Names, texts and schemas follow `conformance server` 0.1.16 (tests/conformance/package.json):
each scenario checks exact tool, prompt and resource names and some exact values. The
50 ms pauses in the logging and progress tools are behaviour the scenarios ask for.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hmac
import io
import json
import os
import re
import select
import socket
import subprocess
import sys
import warnings
import wave
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

__all__ = ["TOKEN_VARIABLE", "build", "main", "running"]

# Logging, sampling and subscriptions are deprecated for 2026-07-28 but are what the suite tests.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

TOKEN_VARIABLE = "CONFORMANCE_SERVER_TOKEN"
# A 1x1 red PNG.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
STEP_SECONDS = 0.05
LOG_LEVELS: list[types.LoggingLevel] = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
COMPLETIONS = ["test", "testValue1", "testValue2", "other"]
RESOURCE_NOT_FOUND = -32002  # the spec's code; mcp_types has no constant for it


def _wav() -> str:
    """A tenth of a second of silence, 8 kHz mono 16-bit, base64."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0\0" * 800)
    return base64.b64encode(buffer.getvalue()).decode()


WAV = _wav()


def _text(text: str) -> types.TextContent:
    return types.TextContent(type="text", text=text)


def _object_schema(properties: dict[str, Any] | None = None, required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties or {}}
    if required:
        schema["required"] = required
    return schema


# == tools =============================================================================

ToolHandler = Callable[[ServerRequestContext, dict[str, Any]], Awaitable[types.CallToolResult]]
TOOLS: dict[str, tuple[types.Tool, ToolHandler]] = {}


def tool(description: str, input_schema: dict[str, Any] | None = None) -> Callable[[ToolHandler], ToolHandler]:
    """Register the decorated handler as a tool named after the function."""

    def register(handler: ToolHandler) -> ToolHandler:
        name = handler.__name__
        TOOLS[name] = (
            types.Tool(name=name, description=description, input_schema=input_schema or _object_schema()),
            handler,
        )
        return handler

    return register


def _result(*content: types.ContentBlock, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=list(content), is_error=is_error)


@tool("Return one text item.")
async def test_simple_text(ctx: ServerRequestContext, args: dict[str, Any]) -> types.CallToolResult:
    return _result(_text("This is a simple text response for testing."))


@tool("Return one PNG image.")
async def test_image_content(ctx: ServerRequestContext, args: dict[str, Any]) -> types.CallToolResult:
    return _result(types.ImageContent(type="image", data=PNG, mime_type="image/png"))


@tool("Return one WAV audio clip.")
async def test_audio_content(ctx: ServerRequestContext, args: dict[str, Any]) -> types.CallToolResult:
    return _result(types.AudioContent(type="audio", data=WAV, mime_type="audio/wav"))


@tool("Return one embedded text resource.")
async def test_embedded_resource(ctx: ServerRequestContext, args: dict[str, Any]) -> types.CallToolResult:
    return _result(
        types.EmbeddedResource(
            type="resource",
            resource=types.TextResourceContents(
                uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
            ),
        )
    )


@tool("Return text, an image and an embedded JSON resource.")
async def test_multiple_content_types(ctx: ServerRequestContext, args: dict[str, Any]) -> types.CallToolResult:
    return _result(
        _text("Multiple content types test:"),
        types.ImageContent(type="image", data=PNG, mime_type="image/png"),
        types.EmbeddedResource(
            type="resource",
            resource=types.TextResourceContents(
                uri="test://mixed-content-resource", mime_type="application/json", text='{"test":"data","value":123}'
            ),
        ),
    )


@tool("Send three info log messages, 50 ms apart, then answer.")
async def test_tool_with_logging(ctx: ServerRequestContext, args: dict[str, Any]) -> types.CallToolResult:
    messages = ["Tool execution started", "Tool processing data", "Tool execution completed"]
    for n, message in enumerate(messages):
        if n:
            await anyio.sleep(STEP_SECONDS)
        await _log(ctx, "info", message)
    return _result(_text("Tool with logging executed successfully"))


@tool("Always fail: an isError result.")
async def test_error_handling(ctx: ServerRequestContext, args: dict[str, Any]) -> types.CallToolResult:
    return _result(_text("This tool intentionally returns an error for testing"), is_error=True)


@tool("Report progress 0, 50 and 100 of 100, 50 ms apart, then answer.")
async def test_tool_with_progress(ctx: ServerRequestContext, args: dict[str, Any]) -> types.CallToolResult:
    for n, progress in enumerate((0, 50, 100)):
        if n:
            await anyio.sleep(STEP_SECONDS)
        await ctx.session.report_progress(progress, 100, f"Completed step {progress} of 100")
    token = (ctx.meta or {}).get("progress_token")
    return _result(_text(f"Progress reported for token {token!r}"))


@tool(
    "Ask the client's LLM to answer the prompt (sampling) and return its answer.",
    _object_schema({"prompt": {"type": "string", "description": "The prompt to send to the LLM"}}, ["prompt"]),
)
async def test_sampling(ctx: ServerRequestContext, args: dict[str, Any]) -> types.CallToolResult:
    caps = ctx.session.client_capabilities
    if caps is None or caps.sampling is None:
        return _result(_text("The client does not support sampling."), is_error=True)
    answer = await ctx.session.create_message(
        [types.SamplingMessage(role="user", content=_text(str(args.get("prompt", ""))))],
        max_tokens=100,
        related_request_id=ctx.request_id,
    )
    text = answer.content.text if isinstance(answer.content, types.TextContent) else f"({answer.content.type})"
    return _result(_text(f"LLM response: {text}"))


async def _elicit(ctx: ServerRequestContext, message: str, schema: dict[str, Any]) -> types.ElicitResult | None:
    """Ask the client through elicitation/create; None if it did not declare elicitation."""
    caps = ctx.session.client_capabilities
    if caps is None or caps.elicitation is None:
        return None
    return await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)


def _elicited(prefix: str, answer: types.ElicitResult | None) -> types.CallToolResult:
    if answer is None:
        return _result(_text("The client does not support elicitation."), is_error=True)
    return _result(_text(f"{prefix}: action={answer.action}, content={json.dumps(answer.content or {})}"))


@tool(
    "Ask the user for a username and an email address (elicitation).",
    _object_schema({"message": {"type": "string", "description": "The message to show the user"}}, ["message"]),
)
async def test_elicitation(ctx: ServerRequestContext, args: dict[str, Any]) -> types.CallToolResult:
    schema = _object_schema(
        {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"},
        },
        ["username", "email"],
    )
    return _elicited("User response", await _elicit(ctx, str(args.get("message", "")), schema))


@tool("Elicit fields of every primitive type, each with a default (SEP-1034).")
async def test_elicitation_sep1034_defaults(ctx: ServerRequestContext, args: dict[str, Any]) -> types.CallToolResult:
    schema = _object_schema(
        {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {
                "type": "string",
                "description": "User status",
                "enum": ["active", "inactive", "pending"],
                "default": "active",
            },
            "verified": {"type": "boolean", "description": "Verification status", "default": True},
        }
    )
    answer = await _elicit(ctx, "Please provide user information", schema)
    return _elicited("Elicitation completed", answer)


@tool("Elicit the five kinds of enum field (SEP-1330).")
async def test_elicitation_sep1330_enums(ctx: ServerRequestContext, args: dict[str, Any]) -> types.CallToolResult:
    options = ["option1", "option2", "option3"]
    titled = [
        {"const": "value1", "title": "First Option"},
        {"const": "value2", "title": "Second Option"},
        {"const": "value3", "title": "Third Option"},
    ]
    schema = _object_schema(
        {
            "untitledSingle": {"type": "string", "description": "Untitled single-select", "enum": options},
            "titledSingle": {"type": "string", "description": "Titled single-select", "oneOf": titled},
            "legacyEnum": {
                "type": "string",
                "description": "Legacy titled enum",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"],
            },
            "untitledMulti": {
                "type": "array",
                "description": "Untitled multi-select",
                "items": {"type": "string", "enum": options},
            },
            "titledMulti": {"type": "array", "description": "Titled multi-select", "items": {"anyOf": titled}},
        }
    )
    answer = await _elicit(ctx, "Please select values using different enum schema types", schema)
    return _elicited("Elicitation completed", answer)


@tool(
    "Tool with JSON Schema 2020-12 features; echoes its arguments.",
    {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}
        },
        "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
        "additionalProperties": False,
    },
)
async def json_schema_2020_12_tool(ctx: ServerRequestContext, args: dict[str, Any]) -> types.CallToolResult:
    return _result(_text(json.dumps(args, sort_keys=True)))


@tool("Close the SSE stream of this call before answering, so the client resumes with Last-Event-ID (SEP-1699).")
async def test_reconnection(ctx: ServerRequestContext, args: dict[str, Any]) -> types.CallToolResult:
    # The SDK offers the callback only over HTTP, with an event store, to clients of 2025-11-25 or later.
    if ctx.close_sse_stream is not None:
        await ctx.close_sse_stream()
    return _result(_text("Reconnection test completed"))


# == logging: a level per connection (the HTTP session id; stdio has one connection) ====

_levels: dict[str | None, types.LoggingLevel] = {}


def _connection_key(ctx: ServerRequestContext) -> str | None:
    request = ctx.request
    return request.headers.get("mcp-session-id") if request is not None else None


async def _log(ctx: ServerRequestContext, level: types.LoggingLevel, message: str) -> None:
    threshold = _levels.get(_connection_key(ctx), "debug")
    if LOG_LEVELS.index(level) >= LOG_LEVELS.index(threshold):
        await ctx.session.send_log_message(level, message, logger="conformance", related_request_id=ctx.request_id)


async def set_logging_level(ctx: ServerRequestContext, params: types.SetLevelRequestParams) -> types.EmptyResult:
    _levels[_connection_key(ctx)] = params.level
    return types.EmptyResult()


# == resources =========================================================================

RESOURCES: dict[str, tuple[types.Resource, types.TextResourceContents | types.BlobResourceContents]] = {
    resource.uri: (resource, contents)
    for resource, contents in [
        (
            types.Resource(
                uri="test://static-text",
                name="static-text",
                description="A static text resource",
                mime_type="text/plain",
            ),
            types.TextResourceContents(
                uri="test://static-text",
                mime_type="text/plain",
                text="This is the content of the static text resource.",
            ),
        ),
        (
            types.Resource(
                uri="test://static-binary",
                name="static-binary",
                description="A static PNG image",
                mime_type="image/png",
            ),
            types.BlobResourceContents(uri="test://static-binary", mime_type="image/png", blob=PNG),
        ),
        (
            types.Resource(
                uri="test://watched-resource",
                name="watched-resource",
                description="A resource clients can subscribe to",
                mime_type="text/plain",
            ),
            types.TextResourceContents(
                uri="test://watched-resource", mime_type="text/plain", text="Watched resource content"
            ),
        ),
    ]
}
TEMPLATE = types.ResourceTemplate(
    uri_template="test://template/{id}/data",
    name="template-data",
    description="JSON data for any id",
    mime_type="application/json",
)
TEMPLATE_PATTERN = re.compile(r"test://template/([^/]+)/data")
subscriptions: set[str] = set()


async def list_resources(ctx: ServerRequestContext, params: Any) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=[resource for resource, _ in RESOURCES.values()])


async def list_resource_templates(ctx: ServerRequestContext, params: Any) -> types.ListResourceTemplatesResult:
    return types.ListResourceTemplatesResult(resource_templates=[TEMPLATE])


async def read_resource(ctx: ServerRequestContext, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    uri = str(params.uri)
    if uri in RESOURCES:
        return types.ReadResourceResult(contents=[RESOURCES[uri][1]])
    if match := TEMPLATE_PATTERN.fullmatch(uri):
        data = {"id": match[1], "templateTest": True, "data": f"Data for ID: {match[1]}"}
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(
                    uri=uri, mime_type="application/json", text=json.dumps(data, separators=(",", ":"))
                )
            ]
        )
    raise MCPError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}", {"uri": uri})


async def subscribe(ctx: ServerRequestContext, params: types.SubscribeRequestParams) -> types.EmptyResult:
    subscriptions.add(str(params.uri))
    return types.EmptyResult()


async def unsubscribe(ctx: ServerRequestContext, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    subscriptions.discard(str(params.uri))
    return types.EmptyResult()


# == prompts ===========================================================================

PromptHandler = Callable[[dict[str, str]], list[types.PromptMessage]]


def _user(content: types.ContentBlock) -> types.PromptMessage:
    return types.PromptMessage(role="user", content=content)


def _argument(name: str, description: str) -> types.PromptArgument:
    return types.PromptArgument(name=name, description=description, required=True)


PROMPTS: dict[str, tuple[types.Prompt, PromptHandler]] = {
    prompt.name: (prompt, handler)
    for prompt, handler in [
        (
            types.Prompt(name="test_simple_prompt", description="A simple prompt without arguments"),
            lambda args: [_user(_text("This is a simple prompt for testing."))],
        ),
        (
            types.Prompt(
                name="test_prompt_with_arguments",
                description="A prompt with two required arguments",
                arguments=[_argument("arg1", "First test argument"), _argument("arg2", "Second test argument")],
            ),
            lambda args: [_user(_text(f"Prompt with arguments: arg1='{args['arg1']}', arg2='{args['arg2']}'"))],
        ),
        (
            types.Prompt(
                name="test_prompt_with_embedded_resource",
                description="A prompt embedding a resource",
                arguments=[_argument("resourceUri", "URI of the resource to embed")],
            ),
            lambda args: [
                _user(
                    types.EmbeddedResource(
                        type="resource",
                        resource=types.TextResourceContents(
                            uri=args["resourceUri"],
                            mime_type="text/plain",
                            text="Embedded resource content for testing.",
                        ),
                    )
                ),
                _user(_text("Please process the embedded resource above.")),
            ],
        ),
        (
            types.Prompt(name="test_prompt_with_image", description="A prompt with an image"),
            lambda args: [
                _user(types.ImageContent(type="image", data=PNG, mime_type="image/png")),
                _user(_text("Please analyze the image above.")),
            ],
        ),
    ]
}


async def list_prompts(ctx: ServerRequestContext, params: Any) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=[prompt for prompt, _ in PROMPTS.values()])


async def get_prompt(ctx: ServerRequestContext, params: types.GetPromptRequestParams) -> types.GetPromptResult:
    if params.name not in PROMPTS:
        raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {params.name}")
    prompt, handler = PROMPTS[params.name]
    args = dict(params.arguments or {})
    missing = [arg.name for arg in prompt.arguments or [] if arg.required and arg.name not in args]
    if missing:
        raise MCPError(types.INVALID_PARAMS, f"Missing required arguments: {', '.join(missing)}")
    return types.GetPromptResult(description=prompt.description, messages=handler(args))


async def complete(ctx: ServerRequestContext, params: types.CompleteRequestParams) -> types.CompleteResult:
    """Complete any prompt or template argument from a fixed word list, by prefix."""
    values = [word for word in COMPLETIONS if word.startswith(params.argument.value)]
    return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))


# == server ============================================================================


async def list_tools(ctx: ServerRequestContext, params: Any) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[spec for spec, _ in TOOLS.values()])


async def call_tool(ctx: ServerRequestContext, params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name not in TOOLS:
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
    return await TOOLS[params.name][1](ctx, dict(params.arguments or {}))


def build() -> Server:
    """Return the conformance server (handlers only; no transport)."""
    return Server(
        "toolscript-conformance-server",
        version="1.0.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
        on_set_logging_level=set_logging_level,
    )


class MemoryEventStore(EventStore):
    """Every SSE event of the process, kept so a client can resume a stream with Last-Event-ID."""

    def __init__(self) -> None:
        self._events: list[tuple[str, types.JSONRPCMessage | None]] = []  # event id = index + 1

    async def store_event(self, stream_id: str, message: types.JSONRPCMessage | None) -> str:
        self._events.append((stream_id, message))
        return str(len(self._events))

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        if not last_event_id.isdigit() or not 0 < int(last_event_id) <= len(self._events):
            return None
        stream_id = self._events[int(last_event_id) - 1][0]
        for n, (stream, message) in enumerate(self._events[int(last_event_id) :], start=int(last_event_id) + 1):
            if stream == stream_id and message is not None:
                await send_callback(EventMessage(message, str(n)))
        return stream_id


def require_bearer(app: Any, token: str) -> Any:
    """Wrap an ASGI app: HTTP requests without `Authorization: Bearer TOKEN` get 401."""
    expected = f"Bearer {token}".encode()

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not hmac.compare_digest(
            dict(scope["headers"]).get(b"authorization", b""), expected
        ):
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"www-authenticate", b"Bearer"), (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        await app(scope, receive, send)

    return guarded


def serve_http(host: str, port: int) -> None:
    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    bound = sock.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    # DNS-rebinding protection for this very port (the SDK's default would allow any port), as
    # toolscript's /mcp has it: a front must present the Host and Origin a direct client would.
    hosts = sorted({f"{name}:{bound}" for name in ("127.0.0.1", "localhost", "[::1]", url_host)})
    security = TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=[f"http://{name}" for name in hosts])
    app: Any = build().streamable_http_app(
        event_store=MemoryEventStore(), retry_interval=100, transport_security=security
    )
    token = os.environ.get(TOKEN_VARIABLE)
    if token:
        app = require_bearer(app, token)
    print(f"URL=http://{url_host}:{bound}/mcp", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    anyio.run(lambda: server.serve(sockets=[sock]))


async def serve_stdio() -> None:
    from mcp.server.stdio import stdio_server

    server = build()
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


@contextlib.contextmanager
def running(token: str | None = None, timeout: float = 60.0) -> Iterator[str]:
    """Run the server over HTTP in a subprocess; yield its URL once its port accepts connections.

    With `token`, it requires `Authorization: Bearer <token>`. Stopped (and reaped) on exit.
    """
    env = (
        {**os.environ, TOKEN_VARIABLE: token} if token else {k: v for k, v in os.environ.items() if k != TOKEN_VARIABLE}
    )
    proc = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("URL="):
            raise RuntimeError(
                f"conformance server did not start within {timeout} s (printed {line!r}, exit code {proc.poll()})"
            )
        url = line.strip().removeprefix("URL=")
        # The socket listens before the URL is printed; this only proves it.
        with socket.create_connection((urlsplit(url).hostname, urlsplit(url).port), timeout=timeout):
            pass
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--stdio", action="store_true", help="serve on stdin/stdout instead of HTTP")
    args = parser.parse_args(argv)
    if args.stdio:
        anyio.run(serve_stdio)
    else:
        serve_http(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
