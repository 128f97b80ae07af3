"""One synchronous front to many MCP servers.

The MCP SDK is asynchronous; toolscript is not. A `Gateway` runs the SDK's clients on one
event loop in a background thread (an anyio blocking portal) and offers plain, thread-safe
methods: `start`, `stop`, `servers`, `tools` and `call`, and for resources, prompts and
completions `resources`, `read_resource`, `prompts`, `get_prompt` and `complete`; every kind
of request goes through one path (`_Server.request`). Every piece of connection state
is touched only on the loop thread, so the public methods need no locks: they hand their
work to the loop and wait for the answer. A front that serves MCP itself (front.py,
`toolscript serve`) runs the gateway in its own loop instead (`run_in_current_loop`),
passes requests on as they are (`forward`) and hears from the sessions through
`SessionHooks`.

Each connection lives in its own task (`_Server._run`), so the transport's and the session's
async context managers are entered and exited in the same task, as anyio requires. A
`_Server` gets everything it needs from the `Gateway` as constructor arguments: the task
group its connection tasks run in, its auth factory, the record store and its timeouts.

Failure model: a server that cannot connect is `failed` (or `auth_required`) with a one-line
reason and never delays the others. Until its first attempt ends a server is `connecting`;
`start(wait=False)` returns at once, and a call to a server still connecting waits for it
within the call's timeout, which is one deadline for connecting, reconnecting and the call.
A connection that ends later (the stdio process exits, the HTTP connection drops, the HTTP
session expires) is re-established by the next call, with a bounded number of attempts and
backoff; a call in flight when its connection ends fails at once instead of waiting for its
timeout.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import math
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import CancelledError as _FutureCancelled
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
import anyio.lowlevel
import httpx2
import mcp_types as types
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError, UrlElicitationRequiredError

if __package__:
    from .elicitation import ACCEPT, CANCEL, DECLINE, DECLINED_KEY, InputHandler, InputRequest
    from .errors import (
        AuthError,
        AuthRequiredError,
        CallTimeoutError,
        ConnectError,
        StorageError,
        ToolscriptError,
        UsageError,
        did_you_mean,
    )
    from .gateway_auth import CALL_FAILURES, StoredTokenAuth
    from .logs import SERVER
    from .redact import redact, register_secret
    from .search import IndexCache, ToolIndex
    from .storage import OAuthStatus, Store, note_auth_not_needed
else:
    from elicitation import ACCEPT, CANCEL, DECLINE, DECLINED_KEY, InputHandler, InputRequest
    from errors import (
        AuthError,
        AuthRequiredError,
        CallTimeoutError,
        ConnectError,
        StorageError,
        ToolscriptError,
        UsageError,
        did_you_mean,
    )
    from gateway_auth import CALL_FAILURES, StoredTokenAuth
    from logs import SERVER
    from redact import redact, register_secret
    from search import IndexCache, ToolIndex
    from storage import OAuthStatus, Store, note_auth_not_needed

if TYPE_CHECKING:
    from anyio.abc import TaskGroup, TaskStatus
    from anyio.from_thread import BlockingPortal

    from config import Config, ServerConfig

__all__ = [
    "AUTH_REQUIRED",
    "CONNECTED",
    "CONNECTING",
    "FAILED",
    "Asker",
    "AuthFactory",
    "Gateway",
    "ProgressCallback",
    "RequestClock",
    "SessionHooks",
    "http_client",
    "result_to_dict",
    "split_prompt_name",
    "split_tool_name",
    "tool_allowed",
]

log = logging.getLogger("toolscript.gateway")
# Log notifications of the servers (notifications/message), at their own level.
server_log = logging.getLogger("toolscript.server")

CONNECTED, FAILED, AUTH_REQUIRED, CONNECTING = "connected", "failed", "auth_required", "connecting"
SEPARATOR = "__"
DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_CALL_TIMEOUT = 300.0
# An idle HTTP stream (SSE GET, a long tool call's response) may stay silent this long.
STREAM_READ_TIMEOUT = 300.0
RECONNECT_ATTEMPTS = 3
RECONNECT_BACKOFF = 0.25  # seconds before the second attempt; doubles after each failure
# After a failed reconnect round, calls fail fast with its reason for this long, so a dead
# server does not make every call wait out more connection attempts.
RETRY_COOLDOWN = 2.0
STOP_TIMEOUT = 10.0
_MAX_PAGES = 1000
# Error answers that mean the request itself was wrong: no such resource or prompt, bad arguments.
# -32002 is "resource not found" of the 2025 specifications (retired since, but servers send it).
_REFUSALS = (types.INVALID_PARAMS, types.METHOD_NOT_FOUND, -32002)
_T = TypeVar("_T")
# A server answering a call with input-required results gets this many rounds of answers.
INPUT_ROUNDS = 10
_INPUT_POLL_DELAYS = (0.05, 0.1, 0.2, 0.25)  # before resending a call whose result asked for nothing
_MAX_STDERR_LINE = 300
STDERR_TAIL_LINES = 10  # of a stdio server that failed to start, shown in its error
STDERR_DRAIN_TIMEOUT = 1.0  # seconds to wait for the rest of a dead stdio server's stderr
# MCP logging levels (RFC 5424 names) as Python's.
_LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "emergency": logging.CRITICAL,
}
_SECRET_NAME_PARTS = ("auth", "key", "token", "secret", "password", "cookie", "credential")

_Found = TypeVar("_Found", bound=BaseException)

AuthFactory = Callable[["ServerConfig"], "httpx2.Auth | None"]
"""Given an http/sse server, return the `httpx2.Auth` for its requests (or None)."""

ProgressCallback = Callable[[float, "float | None", "str | None"], None]
"""Called with (progress, total, message) for each progress notification of a call, on the gateway's thread."""


@dataclass
class SessionHooks:
    """What a front serving MCP to other clients (front.py) hears from the servers' sessions.

    Each runs on the gateway's loop thread. `status_changed(server)` after a server connected
    or its connection attempt or connection ended; `notification(server, message)` for each
    notification it sends (after the gateway's own handling, so a tool list is fresh). Both
    must not block. With `offers_sampling`, the sessions declare sampling: a front passes
    a server's sampling requests on to its clients (see `Asker`).
    """

    status_changed: Callable[[str], None] | None = None
    notification: Callable[[str, Any], None] | None = None
    offers_sampling: bool = False


class Asker(Protocol):
    """Who answers what a server asks (elicitation, sampling) while a request to it is in flight.

    A tool call's is its input handler (`Gateway.call`); a front's is the client whose
    request it passed on (`Gateway.forward`). Only the asker of the request the server is
    serving is asked, never another caller's.
    """

    async def elicit(
        self, server: str, context: ClientRequestContext | None, params: types.ElicitRequestParams
    ) -> types.ElicitResult: ...

    async def sample(
        self, server: str, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> Any: ...


def stored_oauth(store: Store) -> AuthFactory:
    """The default `AuthFactory`: OAuth from `store` for every http/sse server without its own Authorization header.

    A server without stored tokens is sent requests without a token; its 401 then says
    which command to run.
    """

    def factory(server: ServerConfig) -> httpx2.Auth | None:
        if server.has_authorization_header:
            return None
        return StoredTokenAuth(store, server)

    return factory


def split_tool_name(name: str) -> tuple[str, str]:
    """Split `server__tool` into the server name and the server's own tool name."""
    return _split_name(name, "TOOL", "files__read_file", "tools")


def split_prompt_name(name: str) -> tuple[str, str]:
    """Split `server__prompt` into the server name and the server's own prompt name."""
    return _split_name(name, "PROMPT", "code__review", "prompts")


def _split_name(name: str, kind: str, example: str, listing: str) -> tuple[str, str]:
    server, sep, own = name.partition(SEPARATOR)
    if not sep or not server or not own:
        raise UsageError(f"'{name}' is not a SERVER__{kind} name (such as {example}). Run: toolscript {listing}")
    return server, own


def tool_allowed(server: ServerConfig, tool: str) -> bool:
    """Return whether `include_tools` and then `exclude_tools` of `server` let `tool` through."""
    if server.include_tools and not any(fnmatch.fnmatchcase(tool, p) for p in server.include_tools):
        return False
    return not any(fnmatch.fnmatchcase(tool, p) for p in server.exclude_tools)


def result_to_dict(result: types.CallToolResult) -> dict[str, Any]:
    """Return a tool result as the JSON object the server sent, with `content` and `isError` always present."""
    data = result.model_dump(mode="json", by_alias=True, exclude_unset=True)
    data.setdefault("content", [])
    data["isError"] = bool(result.is_error)
    return data


def http_client(
    server: ServerConfig,
    auth: httpx2.Auth | None = None,
    *,
    on_response: Callable[[httpx2.Response], Awaitable[None]] | None = None,
) -> httpx2.AsyncClient:
    """Build the HTTP client of an http/sse server: its static headers, its timeout and `auth`.

    This is the one place where an HTTP transport's client is made; OAuth plugs in as `auth`.
    `on_response` sees every response (the SDK turns an HTTP error into a JSON-RPC error
    without its status).
    """
    timeout = server.timeout or DEFAULT_CONNECT_TIMEOUT
    return httpx2.AsyncClient(
        headers=dict(server.headers),
        timeout=httpx2.Timeout(timeout, read=max(timeout, STREAM_READ_TIMEOUT)),
        auth=auth,
        event_hooks={"response": [on_response]} if on_response is not None else None,
    )


class Gateway:
    """Connections to the configured MCP servers, used from plain threads.

    `only` limits the gateway to some servers (the CLI's `call` connects just one); `auth`
    supplies the `httpx2.Auth` of each http/sse server (default: `stored_oauth` over `store`,
    the OAuth records under `$TOOLSCRIPT_HOME`). `announce` logs each connection (INFO) and a
    server failing to connect or needing authorization (WARNING); a one-shot command reports
    those as its error instead. A server's `timeout` from the config overrides
    `connect_timeout` and `call_timeout` for that server. `negotiation` is how a protocol
    revision is agreed with each server: "legacy" (the initialize handshake, up to
    2025-11-25) or "auto" (2026-07-28 offered first); legacy, because servers built with
    the SDK's `ctx.elicit` can ask the user only over the legacy protocol.
    """

    def __init__(
        self,
        config: Config,
        *,
        only: Iterable[str] | None = None,
        auth: AuthFactory | None = None,
        store: Store | None = None,
        announce: bool = True,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        hooks: SessionHooks | None = None,
        negotiation: str = "legacy",
    ) -> None:
        names = list(config.servers) if only is None else [config.server(name).name for name in only]
        self.config = config
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self._configs = {name: config.servers[name] for name in names}
        for server in self._configs.values():
            _register_secrets(server)
        self.store = store or Store()
        self.announce = announce
        self._auth_factory = auth or stored_oauth(self.store)
        self._hooks = hooks or SessionHooks()
        self._negotiation = negotiation
        self._portal_cm: contextlib.AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._supervisor: Any = None
        self._servers: dict[str, _Server] = {}
        self._stopping: anyio.Event | None = None
        self._search_indexes = IndexCache()  # used on the event loop only

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(
        self,
        *,
        wait: bool = True,
        alongside: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None = None,
    ) -> Gateway:
        """Connect every server concurrently; return once each is connected or has failed.

        With `wait=False`, return at once: servers are `connecting` until their first attempt ends.
        `alongside()` is entered on the loop once the servers exist and exited on `stop`
        before they close: a front serving MCP over HTTP (front.HttpFront.running).
        """
        if self._portal is not None:
            raise RuntimeError("the gateway is already started")
        self._portal_cm = anyio.from_thread.start_blocking_portal(name="toolscript-gateway")
        self._portal = self._portal_cm.__enter__()
        try:
            self._supervisor, _ = self._portal.start_task(self._supervise, alongside)
            self._portal.call(self._connect_all, wait)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close every session and end every stdio server process; safe to call twice."""
        portal, portal_cm = self._portal, self._portal_cm
        self._portal = self._portal_cm = None
        if portal is None or portal_cm is None:
            return
        try:
            if self._stopping is not None:
                portal.call(self._stopping.set)
            if self._supervisor is not None:
                self._supervisor.result(STOP_TIMEOUT + 5)
        finally:
            portal_cm.__exit__(None, None, None)

    def servers(self) -> list[dict[str, Any]]:
        """Return each server's `name`, `type`, `status`, `error` (unless connected) and tool count."""
        return self._run_on_loop(self._server_rows)

    def tools(self, server: str | None = None) -> list[dict[str, Any]]:
        """Return the visible tools of every connected server, or of `server` only."""
        if server is not None:
            self._config_of(server)
        return self._run_on_loop(self._tool_rows, server)

    def search(self, query: str, *, limit: int = 5, server: str | None = None) -> list[dict[str, Any]]:
        """Return the `limit` tools (of every connected server, or of `server`) that fit `query` best.

        Each row is `{name, server, description (one line), score}`, best first. The index is built
        once per tool list, and again when a server's tool list changes. Raises `UsageError` for an
        empty query or a `limit` below 1.
        """
        if not query.strip():
            raise UsageError('Give the search some words: toolscript search "create an issue"')
        if limit < 1:
            raise UsageError(f"The limit of a search must be at least 1, not {limit}.")
        if server is not None:
            self._config_of(server)
        return self._run_on_loop(self._search, query, limit, server)

    def tool(self, name: str) -> dict[str, Any]:
        """Return the tool `server__tool` as `tools` lists it, connecting its server if needed.

        Raises what `call` raises for an unknown, hidden or unreachable tool.
        """
        server, tool = self._visible_tool_name(name)
        return self._run_on_loop(self._tool_row_of, server, tool)

    def call(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        input_handler: InputHandler | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Call the tool `server__tool` and return its result (see `result_to_dict`).

        When the server asks the user for input during the call (elicitation, or an
        input-required result), `input_handler` is asked, in a thread of its own; time spent
        there does not count against `timeout`. Without a handler every such request is
        declined at once and listed in the result's `declinedInputRequests`. Each call has its
        own handler, also among concurrent calls to one server (over stdio and SSE, whose
        messages do not say which call a request belongs to, only while that call is the
        server's only one in flight; otherwise the request is declined).

        Raises `UsageError` for an unknown or hidden tool, `AuthRequiredError`, `CallTimeoutError`
        when no answer (nor progress) came in `timeout` seconds, and `ConnectError` when the
        server failed. An `isError` result is returned, not raised. Every call asks the server
        for progress; each progress notification restarts the timeout and goes to `on_progress`.
        """
        server, tool = self._visible_tool_name(name)
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise UsageError(
                f"Arguments for '{name}' must be a JSON object, not {type(arguments).__name__}.", server=server
            )
        call = _CallInput(f"{server}{SEPARATOR}{tool}", input_handler)
        result = result_to_dict(self._run_on_loop(self._call, server, tool, arguments, timeout, call, on_progress))
        if call.declined:
            result[DECLINED_KEY] = [request.to_dict() for request in call.declined]
        return result

    def resources(self, server: str | None = None) -> list[dict[str, Any]]:
        """Return the resources and resource templates of every connected server, or of `server` only.

        Each row is the server's own entry (all pages) with `server` added: a resource has
        `uri`, a template `uriTemplate`. A server without the resources capability has none;
        `include_tools`/`exclude_tools` do not apply. With `server`, its failure is raised;
        without, a server whose listing fails is left out (and logged).
        """
        if server is not None:
            self._config_of(server)
        return self._run_on_loop(self._listing, server, _Server.list_resources)

    def read_resource(self, server: str, uri: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Read the resource `uri` of `server`: `{"contents": [{uri, mimeType?, text | blob}]}`, blobs in base64.

        Raises `UsageError` when the server offers no resources or refuses the URI, and the
        errors of `call` otherwise.
        """
        self._config_of(server)
        if not isinstance(uri, str) or not uri:
            raise UsageError(
                f"Give the URI of a resource of server '{server}'. Run: toolscript resources --server {server}",
                server=server,
            )
        return _as_json(self._run_on_loop(self._on_server, server, _Server.read_resource, uri, timeout))

    def prompts(self, server: str | None = None) -> list[dict[str, Any]]:
        """Return the prompts of every connected server (all pages), or of `server` only, as `SERVER__PROMPT`.

        A server without the prompts capability has none; failures as for `resources`.
        """
        if server is not None:
            self._config_of(server)
        return self._run_on_loop(self._listing, server, _Server.list_prompts)

    def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Get the prompt `server__prompt` filled in with `arguments`: `{description?, messages}`.

        Prompt arguments are strings; other JSON values are sent as their JSON text
        (`3` as "3", `true` as "true").
        """
        server, prompt = split_prompt_name(name)
        self._config_of(server)
        return _as_json(
            self._run_on_loop(
                self._on_server, server, _Server.get_prompt, prompt, _prompt_arguments(name, arguments), timeout
            )
        )

    def complete(
        self,
        server: str,
        argument: str,
        value: str = "",
        *,
        prompt: str | None = None,
        uri_template: str | None = None,
        context: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Ask `server` to complete `value` of `argument` of its `prompt` or of a resource `uri_template`.

        `prompt` is the server's own prompt name (a `prompts` row's `prompt`); `context` holds
        arguments already chosen. Returns `{values, total?, hasMore?}`.
        """
        self._config_of(server)
        if (prompt is None) == (uri_template is None):
            raise UsageError(
                "Complete an argument of either a prompt or a resource template: give exactly one.", server=server
            )
        texts = [argument, value, prompt or "", uri_template or ""]
        if context is not None:
            texts += list(context.values()) if isinstance(context, dict) else [context]
        if not all(isinstance(text, str) for text in texts):
            raise UsageError("Completion arguments, values and context values must be strings.", server=server)
        ref: types.PromptReference | types.ResourceTemplateReference = (
            types.PromptReference(type="ref/prompt", name=prompt)
            if prompt is not None
            else types.ResourceTemplateReference(type="ref/resource", uri=uri_template or "")
        )
        completion = self._run_on_loop(
            self._on_server, server, _Server.complete, ref, argument, value, context, timeout
        )
        return _as_json(completion)

    # -- for fronts that serve MCP on the loop thread (front.py) ---------------------------

    @contextlib.asynccontextmanager
    async def run_in_current_loop(self) -> AsyncIterator[Gateway]:
        """Run the gateway in the calling event loop, not a thread of its own; close every server on exit.

        Servers connect in the background (`session_for` waits for one still connecting). The
        thread-facing methods (`servers`, `tools`, `call`) are not available in this mode.
        """
        async with anyio.create_task_group() as tg:
            await tg.start(self._supervise)
            assert self._stopping is not None
            try:
                await self._connect_all(wait=False)
                yield self
            finally:
                self._stopping.set()

    @property
    def server_names(self) -> list[str]:
        """The servers this gateway connects, in config order."""
        return list(self._configs)

    def status(self, server: str) -> str:
        """`connecting` until its first attempt to connect ends, then `connected`, `failed` or `auth_required`."""
        return self._servers[server].status

    def error(self, server: str) -> ToolscriptError:
        """Why `server` is not connected (its last error)."""
        return self._servers[server].error

    def cached_tools(self, server: str) -> list[types.Tool]:
        """The visible tools `server` listed when it last connected or notified a change."""
        return list(self._servers[server].tools.values())

    async def session_for(self, server: str) -> ClientSession:
        """The live session of `server`, waiting for an attempt in progress and reconnecting one that ended.

        Raises the server's error (`AuthRequiredError`, `ConnectError`) when it cannot connect.
        """
        connection = await self._servers[server].live_connection()
        assert connection.session is not None
        return connection.session

    async def forward(
        self,
        server: str,
        what: str,
        send: Callable[[ClientSession], Awaitable[_T]],
        timeout: float | None = None,
        *,
        clock: RequestClock | None = None,
        tool_call: bool = False,
        asker: Asker | None = None,
    ) -> _T:
        """Send one request to `server` as it is (`send(session)`) and return its answer.

        The server's own error answers are raised as they came (`MCPError`); failures of the
        connection (it ended, it needs authorization, it timed out) raise the gateway's errors,
        as for `call`. `what` names the request in messages; `timeout` defaults to the server's,
        and is `clock`'s timeout when one is given (see `RequestClock`; `clock_for(server)`).
        """
        state = self._servers[server]
        timeout = clock.timeout if clock is not None else timeout or state.call_timeout
        return await state.request(
            what, send, timeout, clock=clock, pass_through=True, tool_call=tool_call, asker=asker
        )

    def clock_for(self, server: str) -> RequestClock:
        """A `RequestClock` with the call timeout of `server`, for `forward`."""
        return RequestClock(self._servers[server].call_timeout)

    # -- on the loop thread --------------------------------------------------------------

    async def _supervise(
        self,
        alongside: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None = None,
        *,
        task_status: TaskStatus[None],
    ) -> None:
        """Own the task group every connection runs in; on stop, close them, within a deadline."""
        self._stopping = anyio.Event()
        async with anyio.create_task_group() as connections:
            self._servers = {name: self._new_server(config, connections) for name, config in self._configs.items()}
            async with alongside() if alongside is not None else contextlib.nullcontext():
                task_status.started()
                await self._stopping.wait()
            connections.cancel_scope.deadline = anyio.current_time() + STOP_TIMEOUT
            for server in self._servers.values():
                server.close()

    async def _connect_all(self, wait: bool) -> None:
        connections = [server.begin_connect() for server in self._servers.values()]
        if wait:
            for connection in connections:
                await connection.connected_or_failed.wait()

    async def _server_rows(self) -> list[dict[str, Any]]:
        return [server.row() for server in self._servers.values()]

    async def _tool_rows(self, name: str | None) -> list[dict[str, Any]]:
        rows = []
        for server in [self._servers[name]] if name else self._servers.values():
            await server.connecting_done()  # so that a listing right after start is complete
            await server.wait_for_tool_refresh()
            rows.extend(_tool_row(server.name, tool) for tool in server.tools.values())
        return rows

    async def _search(self, query: str, limit: int, name: str | None) -> list[dict[str, Any]]:
        servers = [self._servers[name]] if name else list(self._servers.values())
        # Each server's tool dict is replaced, never changed in place, when its list changes: the rows
        # are those of `versions` if no dict was replaced while the listing waited for servers. If some
        # still were after three tries, `versions` are older than the rows: the next search builds again.
        for _ in range(3):
            versions = [server.tools for server in servers]
            rows = await self._tool_rows(name)
            if all(server.tools is version for server, version in zip(servers, versions, strict=True)):
                break
        # Building an index (a few hundred ms for a few hundred tools) and ranking happen in a worker
        # thread, so that the calls in flight on this loop are not held up meanwhile.
        index = self._search_indexes.get(name, versions)
        if index is None:
            index = await anyio.to_thread.run_sync(ToolIndex, rows)
            self._search_indexes.put(name, versions, index)
        return await anyio.to_thread.run_sync(index.search, query, limit)

    async def _call(
        self,
        name: str,
        tool: str,
        arguments: dict[str, Any],
        timeout: float | None,
        call: _CallInput,
        on_progress: ProgressCallback | None,
    ) -> types.CallToolResult:
        server = self._servers[name]
        SERVER.set(name)  # this task's own context: what the SDK logs for the call names the server
        return await server.call_tool(tool, arguments, timeout or server.call_timeout, call, on_progress=on_progress)

    async def _tool_row_of(self, name: str, tool: str) -> dict[str, Any]:
        server = self._servers[name]
        await server.live_connection()
        return _tool_row(server.name, await server.known_tool(tool))

    async def _on_server(self, name: str, method: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        return await method(self._servers[name], *args)

    async def _listing(
        self, name: str | None, list_one: Callable[[_Server], Awaitable[list[dict[str, Any]]]]
    ) -> list[dict[str, Any]]:
        """The rows `list_one` gives for server `name`, or for every connected server (concurrently)."""
        if name is not None:
            return await list_one(self._servers[name])
        for server in self._servers.values():
            await server.connecting_done()  # so that a listing right after start is complete
        servers = [server for server in self._servers.values() if server.status == CONNECTED]
        found: dict[str, list[dict[str, Any]]] = {}

        async def one(server: _Server) -> None:
            try:
                found[server.name] = await list_one(server)
            except ToolscriptError as exc:  # one broken server does not hide the others' entries
                log.warning("%s", exc.message)

        async with anyio.create_task_group() as tg:
            for server in servers:
                tg.start_soon(one, server)
        return [row for server in servers for row in found.get(server.name, [])]

    # -- helpers -------------------------------------------------------------------------

    def _run_on_loop(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run `func(*args)` on the loop thread and return its result."""
        portal = self._portal
        if portal is None:
            raise ConnectError("The gateway is not running.")
        try:
            return portal.call(func, *args)
        except (_FutureCancelled, RuntimeError):
            if self._portal is portal:  # still running: a genuine error
                raise
            raise ConnectError("The gateway stopped before the request finished.") from None

    def start_soon_on_loop(self, func: Callable[..., Awaitable[Any]], *args: Any) -> Future[Any]:
        """Start `func(*args)` on the gateway's loop from another thread; its future ends with it."""
        portal = self._portal
        if portal is None:
            raise ConnectError("The gateway is not running.")
        return portal.start_task_soon(func, *args)

    def _visible_tool_name(self, name: str) -> tuple[str, str]:
        """Split `server__tool`; raise unless the server is ours and its filters let the tool through."""
        server, tool = split_tool_name(name)
        config = self._config_of(server)
        if not tool_allowed(config, tool):
            raise UsageError(
                f"Tool '{name}' is hidden by the include_tools/exclude_tools of server '{server}'.", server=server
            )
        return server, tool

    def _config_of(self, server: str) -> ServerConfig:
        config = self.config.server(server)  # ConfigError naming the configured servers
        if server not in self._configs:
            raise UsageError(f"Server '{server}' is not connected by this gateway.", server=server)
        return config

    def _new_server(self, config: ServerConfig, connections: TaskGroup) -> _Server:
        return _Server(
            config,
            connections=connections,
            auth=self._auth_factory if config.is_remote else None,
            store=self.store,
            connect_timeout=config.timeout or self.connect_timeout,
            call_timeout=config.timeout or self.call_timeout,
            announce=self.announce,
            hooks=self._hooks,
            negotiation=self._negotiation,
        )


# The call whose task is running: set by `_Server.call_tool`. The SDK's streamable HTTP
# transport hands a server's request made on a call's response stream to the session in a
# copy of that call's context, so the session's elicitation callback finds its call here.
_ASKER: ContextVar[Asker | None] = ContextVar("toolscript_asker", default=None)


@dataclass(eq=False)
class _CallInput:
    """One call's way of answering a server's requests for input, and what it declined."""

    tool: str  # SERVER__TOOL
    handler: InputHandler | None
    declined: list[InputRequest] = field(default_factory=list)
    clock: RequestClock | None = None  # the call's timeout, stopped while the user is asked

    async def elicit(
        self, server: str, context: ClientRequestContext | None, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        """Ask the call's input handler (in a thread of its own); without one, decline and note it."""
        request = _input_request(server, self.tool, params)
        if self.handler is None:
            self.declined.append(request)
            return types.ElicitResult(action=DECLINE)
        try:
            with self.clock.paused() if self.clock is not None else contextlib.nullcontext():
                answer = await _in_own_thread(self.handler, request)
        except Exception as exc:
            log.warning("Server '%s': asking for its input failed (%s); cancelled.", server, _first_line(exc))
            return types.ElicitResult(action=CANCEL)
        if answer.action == ACCEPT and request.mode == "form":
            return types.ElicitResult(action=ACCEPT, content=answer.content or {})
        return types.ElicitResult(action=answer.action)

    async def sample(self, server: str, context: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
        return types.ErrorData(code=types.INVALID_REQUEST, message="Sampling not supported")


class RequestClock:
    """The timeout of one request in flight (`Gateway.forward`, a tool call), as a front controls it.

    The MCP specification lets a long task that keeps reporting progress go on: `restart()`
    on each progress starts the timeout again. While a person is asked for input on the
    request's behalf (`paused()`), it stops: their time is not the server's.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.scope: anyio.CancelScope | None = None  # set by the request once it runs
        self._asking = 0
        self._remaining = 0.0  # of the timeout, when the asking began

    def restart(self) -> None:
        if self.scope is not None and not self._asking:
            self.scope.deadline = anyio.current_time() + self.timeout

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        scope = self.scope
        if scope is not None and self._asking == 0:
            self._remaining = scope.deadline - anyio.current_time()
            scope.deadline = math.inf
        self._asking += 1
        try:
            yield
        finally:
            self._asking -= 1
            if scope is not None and self._asking == 0:
                scope.deadline = anyio.current_time() + self._remaining


@dataclass(eq=False)
class _Connection:
    """One attempt to connect to a server, and the connection it made, if any.

    `session` is set while it is connected; `end_reason` says why it failed or ended,
    unless it was closed cleanly.
    """

    connected_or_failed: anyio.Event = field(default_factory=anyio.Event)
    close_requested: anyio.Event = field(default_factory=anyio.Event)
    closed: anyio.Event = field(default_factory=anyio.Event)  # its task has finished
    session: ClientSession | None = None
    end_reason: str | None = None
    attempt: anyio.CancelScope | None = None  # the connection's scope, cancelled to abandon an attempt
    first: bool = False  # the server's first attempt, whose failure an announcing gateway logs
    clues: _Clues = field(default_factory=lambda: _Clues())


@dataclass(eq=False)
class _Clues:
    """What a connection's transport saw that explains its failure better than the SDK's error."""

    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))  # a stdio server's last lines
    stderr_closed: threading.Event = field(default_factory=threading.Event)
    http_error: tuple[int, str] | None = None  # status and URL of the last HTTP error answering a POST

    async def note_response(self, response: httpx2.Response) -> None:
        # Only POSTs carry MCP messages; a GET stream may be refused (405) without harm.
        if response.status_code >= 400 and response.request.method == "POST":
            self.http_error = response.status_code, str(response.request.url.copy_with(query=None))


class _Server:
    """One configured server and its current connection; used only on the loop thread.

    Its connection tasks run in `connections`; `auth` (None for stdio servers) makes the
    `httpx2.Auth` of each new connection; `store` holds its OAuth record; `announce` logs
    that it needs authorization as a warning rather than at debug level.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        connections: TaskGroup,
        auth: AuthFactory | None,
        store: Store,
        connect_timeout: float,
        call_timeout: float,
        announce: bool,
        hooks: SessionHooks | None = None,
        negotiation: str = "legacy",
    ) -> None:
        self.config = config
        self._negotiation = negotiation
        self.name = config.name
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.status = CONNECTING
        self.error: ToolscriptError = ConnectError(f"Server '{self.name}' is not connected yet.", server=self.name)
        self.tools: dict[str, types.Tool] = {}
        self._connections = connections
        self._auth_factory = auth
        self._store = store
        self._announce = announce
        self._hooks = hooks or SessionHooks()
        self._connection: _Connection | None = None
        self._closing = False
        self._reconnect_lock = anyio.Lock()
        self._fail_fast_until = 0.0  # after a failed reconnect round, calls fail with its error until then
        self._tool_refresh_done: anyio.Event | None = None  # None unless a tool list refresh is in progress
        self._askers: set[Asker] = set()  # of the requests in flight
        self.auth: httpx2.Auth | None = None  # the current connection's
        self.call_auth_failure: AuthError | None = None  # of the last call, which failed with it

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"name": self.name, "type": self.config.type, "status": self.status}
        if self.status not in (CONNECTED, CONNECTING):
            row["error"] = redact(self.error.message)  # may quote a server, which may echo a credential
        row["tools"] = len(self.tools)
        oauth = self.oauth_status()
        if oauth is not None:
            row.update(oauth.row())
        return row

    def oauth_status(self) -> OAuthStatus | None:
        """The OAuth status of a server that uses OAuth (a stored record or an oauth table), else None."""
        status = self._store.oauth_status_of(self.config)
        if status is not None and self.status == AUTH_REQUIRED and status.status == "authenticated":
            return OAuthStatus("authentication_failed", self.error.message)
        if status is not None and self.call_auth_failure is not None and status.status == "authenticated":
            return OAuthStatus("authentication_failed", self.call_auth_failure.message)
        return status

    def auth_failure(self) -> AuthError | ConnectError | None:
        """The authentication error the current connection's OAuth provider last raised, if any."""
        return self.auth.failure if isinstance(self.auth, StoredTokenAuth) else None

    def _on_auth_failure(self, connection: _Connection, error: AuthError | ConnectError) -> None:
        # Over SSE a failed POST is only logged by the SDK and its call would wait for its
        # timeout; over streamable HTTP a refused token ends the transport anyway. End the
        # connection so calls in flight fail now, except for a step-up over streamable HTTP,
        # which fails only its own request.
        if self.config.type == "sse" or getattr(error, "error", None) != "insufficient_scope":
            connection.close_requested.set()

    def begin_connect(self) -> _Connection:
        """Start a connection task; its `connected_or_failed` is set once it is connected or has failed."""
        if self._closing:
            raise ConnectError(f"Server '{self.name}' is closed: the gateway is stopping.", server=self.name)
        connection = _Connection(first=self._connection is None)
        self._connection = connection
        self._connections.start_soon(self._run, connection, name=f"toolscript-{self.name}")
        return connection

    async def connect(self) -> _Connection:
        """Start a connection task and wait until it is connected or has failed."""
        connection = self.begin_connect()
        await connection.connected_or_failed.wait()
        return connection

    async def connecting_done(self) -> None:
        """Wait (bounded by the connect timeout) for a connection attempt in progress to end."""
        connection = self._connection
        if connection is not None and not connection.connected_or_failed.is_set():
            with anyio.move_on_after(self.connect_timeout + STOP_TIMEOUT):
                await connection.connected_or_failed.wait()

    async def live_connection(self) -> _Connection:
        """Return the live connection, reconnecting (bounded attempts, backoff) if it ended.

        An attempt already in progress (the first, or another request's) is waited for, and its
        outcome is this request's. The caller bounds the whole wait with the request's deadline.
        """
        connection = self._connection
        if connection is not None and connection.session is not None:
            return connection
        if connection is not None and not connection.connected_or_failed.is_set():
            await connection.connected_or_failed.wait()
            if connection.session is None:
                raise self.error
            return connection
        async with self._reconnect_lock:
            connection = self._connection
            if connection is not None and connection.session is not None:
                return connection
            if anyio.current_time() < self._fail_fast_until and self.status != AUTH_REQUIRED:
                raise self.error
            for attempt in range(RECONNECT_ATTEMPTS):
                if attempt:
                    await anyio.sleep(RECONNECT_BACKOFF * 2 ** (attempt - 1))
                log.debug("Server '%s': connecting (attempt %d)", self.name, attempt + 1)
                connection = await self.connect()
                if connection.session is not None:
                    return connection
                if self.status == AUTH_REQUIRED:
                    break
            raise self.error

    async def known_tool(self, tool: str) -> types.Tool:
        """The listing of `tool`; raise `UsageError` if the server does not have it."""
        if tool not in self.tools:
            await self.refresh_tools()  # it may have added the tool without notifying us
            if tool not in self.tools:
                near = did_you_mean(f"{self.name}{SEPARATOR}{tool}", [f"{self.name}{SEPARATOR}{t}" for t in self.tools])
                raise UsageError(
                    f"Unknown tool '{tool}' on server '{self.name}'{near}. Run: toolscript tools --server {self.name}",
                    server=self.name,
                )
        return self.tools[tool]

    async def call_tool(
        self,
        tool: str,
        arguments: dict[str, Any],
        timeout: float,
        call: _CallInput,
        *,
        on_progress: ProgressCallback | None = None,
        urls_opened: bool = False,
    ) -> types.CallToolResult:
        """Call `tool`; `timeout` bounds everything: waiting for a connection, reconnecting, the call.

        Progress from the server starts the timeout again: the MCP specification lets a long
        task that keeps reporting go on.
        """

        call.clock = RequestClock(timeout)

        async def progress(value: float, total: float | None, message: str | None) -> None:
            call.clock.restart()  # type: ignore[union-attr]
            log.debug(
                "Server '%s': progress of '%s': %g/%s %s",
                self.name,
                tool,
                value,
                "?" if total is None else f"{total:g}",
                message or "",
            )
            if on_progress is not None:
                on_progress(value, total, message)

        async def send(session: ClientSession) -> types.CallToolResult:
            unsupported = _unsupported_reason(await self.known_tool(tool))
            if unsupported:
                raise UsageError(f"Tool '{call.tool}' cannot be called: it {unsupported}.", server=self.name)
            return await self._send_call(session, tool, arguments, call, progress)

        try:
            return await self.request(
                f"the call to '{tool}'",
                send,
                timeout,
                subject=f"Tool '{self.name}{SEPARATOR}{tool}'",
                call=call,
                clock=call.clock,
                asker=call,
                tool_call=True,
            )
        except _UrlsRequired as needed:
            # URL-mode elicitation as an error: open the URLs first, then call again (once).
            if needed.urls and not urls_opened and await self._opened(call, needed.urls):
                return await self.call_tool(tool, arguments, timeout, call, on_progress=on_progress, urls_opened=True)
            where = ", ".join(params.url for params in needed.urls) or "a URL it did not send"
            raise ToolscriptError(
                f"Server '{self.name}' needs you to open {where} before '{tool}' can run; "
                "call it from a terminal, or open that first and call again.",
                server=self.name,
            ) from None

    async def request(
        self,
        what: str,
        send: Callable[[ClientSession], Awaitable[_T]],
        timeout: float,
        *,
        needs: str | None = None,
        subject: str | None = None,
        refused_hint: str | None = None,
        call: _CallInput | None = None,
        clock: RequestClock | None = None,
        deadline: float | None = None,
        resend_if_expired: bool = True,
        pass_through: bool = False,
        tool_call: bool = False,
        asker: Asker | None = None,
    ) -> _T:
        """Send one request (`send`) on the live connection and translate its failures.

        Every request kind (tool calls, resources, prompts, completions) goes through here, so
        each meets reconnection, OAuth failures, timeouts and expired sessions the same way.
        `timeout` bounds everything: waiting for a connection, reconnecting, the request.
        `needs` is the capability the server must have declared. `what` names the request in
        messages ("the call to 'echo'"); `subject` starts the timeout message instead of
        "Server 'NAME'". With `refused_hint`, an error answer that says the request itself was
        wrong (unknown resource, bad arguments) is a `UsageError` ending with that hint; else
        every error answer is a `ConnectError`. A tool call passes its `call` (how the user
        answers the server). With a `clock`, the caller can restart or pause the timeout. With
        `pass_through` (a front passing requests on, front.py), error answers are raised as
        they came (`MCPError`). A `tool_call`'s authorization failure is noted for the
        server's OAuth status (`call_auth_failure`) until a call succeeds. What the server
        asks while the request is in flight goes to its `asker` (else it is declined).
        """
        if asker is not None:
            _ASKER.set(asker)  # this task's context, which the streamable HTTP transport hands to the callbacks
            self._askers.add(asker)
        with self._noting_auth_failure(tool_call), self._asking(asker):
            if deadline is None:
                deadline = anyio.current_time() + timeout
            connection: _Connection | None = None
            failures: list[AuthError | ConnectError] = []
            try:
                # A plain scope rather than `anyio.fail_at`: the same deadline without two generator frames per request.
                with anyio.CancelScope(deadline=deadline) as scope:
                    if clock is not None:
                        clock.scope = scope
                    connection = await self.live_connection()
                    if needs is not None:
                        self._require(connection, needs)
                    assert connection.session is not None
                    # Set only now, in this request's own context: a connection task started for it has
                    # copied the context already, so only this request's messages add to the list.
                    CALL_FAILURES.set(failures)
                    return await send(connection.session)
                raise TimeoutError  # only a scope cancelled by its deadline (never cancelled otherwise) gets here
            except TimeoutError:
                if failures:
                    raise failures[-1] from None
                if connection is None:
                    raise _connect_timeout(self.name, timeout) from None
                late = f"{subject} did not answer" if subject else f"Server '{self.name}' did not answer {what}"
                raise CallTimeoutError(f"{late} within {timeout:g} s.", server=self.name) from None
            except MCPError as exc:
                assert connection is not None
                if exc.code == types.CONNECTION_CLOSED:
                    raise await self.lost_connection_error(connection, what) from None
                if failures:
                    raise failures[-1] from None  # e.g. a step-up (403 insufficient_scope) for this call
                if resend_if_expired and _session_expired(exc):
                    # The server forgot the session, so it never ran this request: reconnect, send it again.
                    log.info("Server '%s': session expired; reconnecting", self.name)
                    await self.close_connection(connection)
                    return await self.request(
                        what,
                        send,
                        timeout,
                        needs=needs,
                        subject=subject,
                        refused_hint=refused_hint,
                        call=call,
                        clock=clock,
                        deadline=deadline,
                        resend_if_expired=False,
                        pass_through=pass_through,
                    )
                if pass_through:
                    raise
                if call is not None and exc.code == types.URL_ELICITATION_REQUIRED:
                    raise _UrlsRequired(_required_urls(exc)) from None
                if refused_hint is not None and exc.code in _REFUSALS:
                    raise UsageError(
                        f"Server '{self.name}' refused {what}: {exc.message.rstrip('.')}. {refused_hint}",
                        server=self.name,
                    ) from None
                raise ConnectError(
                    f"Server '{self.name}' answered {what} with an error: {exc.message}", server=self.name
                ) from None
            except RuntimeError as exc:  # e.g. the SDK rejects a result that breaks the tool's outputSchema
                raise ConnectError(
                    f"Server '{self.name}' sent an unusable result for {what}: {_first_line(exc)}", server=self.name
                ) from None

    @contextlib.contextmanager
    def _asking(self, asker: Asker | None) -> Iterator[None]:
        try:
            yield
        finally:
            self._askers.discard(asker)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def _noting_auth_failure(self, tool_call: bool) -> Iterator[None]:
        """For a tool call: note an authorization failure (the server's OAuth status shows it), or clear it."""
        try:
            yield
        except AuthError as exc:
            if tool_call:
                self.call_auth_failure = exc
            raise
        if tool_call:
            self.call_auth_failure = None

    async def _send_call(
        self, session: ClientSession, tool: str, arguments: dict[str, Any], call: _CallInput, progress: Any
    ) -> types.CallToolResult:
        """Send the call, answering input-required results (protocol 2026-07-28) until the real result comes."""
        result = await session.call_tool(tool, arguments, allow_input_required=True, progress_callback=progress)
        for round_number in range(INPUT_ROUNDS):
            if not isinstance(result, types.InputRequiredResult):
                return result
            responses: dict[str, Any] = {}
            for key, request in (result.input_requests or {}).items():
                responses[key] = await self._answer_input_request(call, request)
            if not responses:  # only state: the server is still working
                await anyio.sleep(_INPUT_POLL_DELAYS[min(round_number, len(_INPUT_POLL_DELAYS) - 1)])
            result = await session.call_tool(
                tool,
                arguments,
                input_responses=responses or None,
                request_state=result.request_state,
                allow_input_required=True,
                progress_callback=progress,
            )
        if isinstance(result, types.InputRequiredResult):
            raise ConnectError(
                f"Server '{self.name}' still asked for input for '{tool}' after {INPUT_ROUNDS} rounds.",
                server=self.name,
            )
        return result

    async def _answer_input_request(self, call: _CallInput, request: types.InputRequest) -> types.InputResponse:
        if isinstance(request, types.ElicitRequest):
            return await call.elicit(self.name, None, request.params)
        # toolscript declares neither capability; a standalone request gets the SDK's refusal.
        what = "sampling (an LLM completion)" if isinstance(request, types.CreateMessageRequest) else "its roots"
        raise ConnectError(
            f"Server '{self.name}' asked for {what} during the call to '{call.tool}'; "
            "toolscript offers neither sampling nor roots.",
            server=self.name,
        )

    async def _opened(self, call: _CallInput, required: list[types.ElicitRequestURLParams]) -> bool:
        """Ask for each URL a server requires; whether the user accepted them all."""
        for params in required:
            if (await call.elicit(self.name, None, params)).action != ACCEPT:
                return False
        return True

    def _asker(self, kind: str) -> Asker | None:
        """The asker of the request a server's request (`kind`) is about; None, after saying why, if unknown."""
        asker = _ASKER.get()
        if asker in self._askers:  # delivered in the context of the request that caused it (streamable HTTP)
            return asker
        if self.config.type != "http" and len(self._askers) == 1:  # stdio and SSE do not say which request asked
            return next(iter(self._askers))
        log.warning(
            "Server '%s' asked for %s while %s; declined.",
            self.name,
            kind,
            "no request was in flight"
            if not self._askers
            else "outside the requests in flight"
            if self.config.type == "http"
            else "several requests were in flight and its transport does not say which one asked",
        )
        return None

    async def _on_elicitation(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        """The session's elicitation callback: answered by the asker of the request that caused it."""
        asker = self._asker("input")
        if asker is None:
            return types.ElicitResult(action=DECLINE)
        return await asker.elicit(self.name, context, params)

    async def _on_sampling(self, context: Any, params: types.CreateMessageRequestParams) -> Any:
        """The session's sampling callback (declared only with a front): answered by the request's asker."""
        asker = self._asker("sampling")
        if asker is None:
            return types.ErrorData(code=types.INVALID_REQUEST, message="Sampling not supported")
        return await asker.sample(self.name, context, params)

    async def list_resources(self) -> list[dict[str, Any]]:
        if not self.offers(await self.live_connection(), "resources"):
            return []
        resources = await self._list_all("the resource list", _resource_page, "resources")
        templates = await self._list_all("the resource template list", _template_page, "resource_templates")
        return [{"server": self.name, **_as_json(item)} for item in [*resources, *templates]]

    async def list_prompts(self) -> list[dict[str, Any]]:
        if not self.offers(await self.live_connection(), "prompts"):
            return []
        prompts = await self._list_all("the prompt list", _prompt_page, "prompts")
        return [_prompt_row(self.name, prompt) for prompt in prompts]

    async def read_resource(self, uri: str, timeout: float | None) -> types.ReadResourceResult:
        return await self.request(
            f"the read of '{uri}'",
            lambda session: session.read_resource(uri),
            timeout or self.call_timeout,
            needs="resources",
            refused_hint=f"Run: toolscript resources --server {self.name}",
        )

    async def get_prompt(self, prompt: str, arguments: dict[str, str], timeout: float | None) -> types.GetPromptResult:
        return await self.request(
            f"the request for prompt '{prompt}'",
            lambda session: session.get_prompt(prompt, arguments),
            timeout or self.call_timeout,
            needs="prompts",
            refused_hint=f"Run: toolscript prompts --server {self.name}",
        )

    async def complete(
        self,
        ref: types.PromptReference | types.ResourceTemplateReference,
        argument: str,
        value: str,
        context: dict[str, str] | None,
        timeout: float | None,
    ) -> types.Completion:
        listing = "prompts" if isinstance(ref, types.PromptReference) else "resources"
        result = await self.request(
            f"the completion of '{argument}'",
            lambda session: session.complete(ref, {"name": argument, "value": value}, context_arguments=context),
            timeout or self.call_timeout,
            needs="completions",
            refused_hint=f"Run: toolscript {listing} --server {self.name}",
        )
        return result.completion

    def offers(self, connection: _Connection, capability: str) -> bool:
        """Whether the server declared `capability` (resources, prompts, completions) on connecting."""
        capabilities = connection.session.server_capabilities if connection.session is not None else None
        return capabilities is not None and getattr(capabilities, capability, None) is not None

    def _require(self, connection: _Connection, capability: str) -> None:
        if not self.offers(connection, capability):
            raise UsageError(
                f"Server '{self.name}' offers no {capability} (it does not declare the {capability} capability).",
                server=self.name,
            )

    async def _list_all(
        self,
        what: str,
        list_page: Callable[[ClientSession, types.PaginatedRequestParams | None], Awaitable[Any]],
        attribute: str,
    ) -> list[Any]:
        """Every item of a paginated listing, page after page."""
        items: list[Any] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await self.request(
                what, lambda session, params=params: list_page(session, params), self.call_timeout
            )
            items.extend(getattr(page, attribute))
            cursor = page.next_cursor
            if not cursor:
                break
        return items

    async def lost_connection_error(self, connection: _Connection, what: str) -> ToolscriptError:
        """Return the error for a request (`what`) whose connection ended under it."""
        with anyio.move_on_after(STOP_TIMEOUT):
            await connection.closed.wait()  # the connection task records why
        if connection is self._connection and self.status == AUTH_REQUIRED:
            return self.error
        failure = self.auth_failure()
        if failure is not None:
            return failure
        failed = f"failed ({connection.end_reason})" if connection.end_reason else "closed the connection"
        return ConnectError(
            f"Server '{self.name}' {failed} during {what}; it is reconnected on the next call.",
            server=self.name,
        )

    async def close_connection(self, connection: _Connection) -> None:
        """Close `connection` and wait until its task has finished."""
        connection.close_requested.set()
        with anyio.move_on_after(STOP_TIMEOUT):
            await connection.closed.wait()

    def close(self) -> None:
        """Close the current connection for good: the gateway is stopping."""
        self._closing = True
        if self._connection is not None:
            self._connection.close_requested.set()
            if not self._connection.connected_or_failed.is_set() and self._connection.attempt is not None:
                self._connection.attempt.cancel()  # still connecting: give up now, not at the connect timeout

    async def refresh_tools(self) -> None:
        connection = self._connection
        if connection is None or connection.session is None:
            return
        done = self._tool_refresh_done = anyio.Event()
        try:
            with anyio.fail_after(self.call_timeout):
                await self._load_tools(connection.session)
        except Exception as exc:
            log.warning("Server '%s': could not refresh its tool list: %s", self.name, _first_line(exc))
        finally:
            done.set()
            if self._tool_refresh_done is done:
                self._tool_refresh_done = None

    async def wait_for_tool_refresh(self) -> None:
        """Wait (bounded) for a tool list refresh in progress, if any."""
        done = self._tool_refresh_done
        if done is not None:
            with anyio.move_on_after(self.call_timeout):
                await done.wait()

    async def _run(self, connection: _Connection) -> None:
        """Connect, then hold the connection open until it is closed or lost."""
        SERVER.set(self.name)  # what the SDK logs for this connection names the server
        error: BaseException | None = None
        auth = self.auth = self._auth_factory(self.config) if self._auth_factory is not None else None
        if isinstance(auth, StoredTokenAuth):
            auth.on_failure = lambda failure: self._on_auth_failure(connection, failure)
        try:
            with anyio.CancelScope() as scope:
                scope.deadline = anyio.current_time() + self.connect_timeout
                async with _open_transport(self.config, auth, connection.clues) as (read, write):
                    # Abandoning the attempt is safe only from here: a cancellation while the stdio
                    # transport spawns its process would lose the process (an asyncio limitation).
                    connection.attempt = scope
                    if self._closing:
                        scope.cancel()
                    async with ClientSession(
                        _ReadStreamWithEndEvent(read, connection.close_requested),
                        write,
                        message_handler=self._on_message,
                        logging_callback=self._on_log,
                        **self._request_callbacks(),
                    ) as session:
                        await _negotiate(session, self._negotiation)
                        await self._load_tools(session)
                        scope.deadline = math.inf
                        connection.session = session
                        self.status = CONNECTED
                        connection.connected_or_failed.set()
                        log.log(
                            logging.INFO if self._announce else logging.DEBUG,
                            "Server '%s': connected, %d tools",
                            self.name,
                            len(self.tools),
                        )
                        self._status_changed()
                        if isinstance(auth, StoredTokenAuth) and auth.context.current_tokens is None:
                            # It answered without a token: the `auth` listing can say "no auth needed".
                            await anyio.to_thread.run_sync(self._note_auth_not_needed)
                        await connection.close_requested.wait()
        except Exception as exc:  # an ExceptionGroup from a transport's task group, or a plain error
            error = exc
            if self.config.type == "stdio" and not connection.connected_or_failed.is_set():
                # The process is gone; its last stderr lines may still be in the pipe. They say why.
                with anyio.move_on_after(STDERR_DRAIN_TIMEOUT, shield=True):
                    await anyio.to_thread.run_sync(connection.clues.stderr_closed.wait, STDERR_DRAIN_TIMEOUT)
        finally:
            was_connected = connection.connected_or_failed.is_set()
            connection.session = None
            timed_out = scope.cancelled_caught and not self._closing
            self._record_end(connection, error, timed_out=timed_out, was_connected=was_connected)
            if not was_connected and connection is self._connection:
                self._fail_fast_until = anyio.current_time() + RETRY_COOLDOWN
            connection.connected_or_failed.set()
            connection.closed.set()
            self._status_changed()

    def _record_end(
        self, connection: _Connection, error: BaseException | None, *, timed_out: bool, was_connected: bool
    ) -> None:
        """Set the status and error of a connection that failed or ended (unless it was replaced already)."""
        name = self.name
        if connection is not self._connection:
            return
        auth = _find(error, AuthRequiredError) if error is not None else None
        failure = self.auth_failure()
        if auth is None and isinstance(failure, AuthRequiredError):
            auth = failure  # the transport swallowed it (SSE) or only saw the cancellation
        if auth is not None:
            newly = self.status != AUTH_REQUIRED
            self.status, self.error = AUTH_REQUIRED, _auth_error(auth, name)
            connection.end_reason = auth.message
            if newly:  # once, not on every reconnect attempt
                log.log(logging.WARNING if self._announce else logging.DEBUG, "%s", self.error.message)
        elif timed_out:
            self.status = FAILED
            self.error = _connect_timeout(name, self.connect_timeout)
            connection.end_reason = "timed out"
        elif isinstance(failure, ConnectError) and error is not None:
            connection.end_reason = failure.message  # a token refresh failed: it says so itself
            self.status, self.error = FAILED, failure
        elif error is not None and (fault := _find(error, StorageError)) is not None:
            connection.end_reason = fault.message  # the record or its lock is unusable; the message names the file
            self.status, self.error = FAILED, fault
        elif error is not None:
            connection.end_reason = _reason(error, self.config, None if was_connected else connection.clues)
            verb = "failed" if was_connected else "failed to connect"
            self.status = FAILED
            self.error = ConnectError(f"Server '{name}' {verb}: {connection.end_reason}", server=name)
        else:
            self.status = FAILED
            message = "is closed" if self._closing else "closed the connection; it is reconnected on the next call"
            self.error = ConnectError(f"Server '{name}' {message}.", server=name)
        if not was_connected:
            self.tools = {}
        announce = connection.first and self.status == FAILED and self._announce and not self._closing
        log.log(logging.WARNING if announce else logging.DEBUG, "%s", self.error.message)

    async def _load_tools(self, session: ClientSession) -> None:
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        self.tools = {tool.name: tool for tool in tools if tool_allowed(self.config, tool.name)}

    async def _on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        """Show a server's log notification at its level, naming the server (and its logger)."""
        data = params.data if isinstance(params.data, str) else json.dumps(params.data)
        source = f"{self.name} ({params.logger})" if params.logger else self.name
        server_log.log(_LOG_LEVELS.get(params.level, logging.INFO), "%s: %s", source, data)

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            log.debug("Server '%s': tool list changed", self.name)
            await self.refresh_tools()
        elif isinstance(message, Exception):
            log.debug("Server '%s': transport error: %s", self.name, _first_line(message))
            return
        if self._hooks.notification is not None:
            self._hooks.notification(self.name, message)

    def _note_auth_not_needed(self) -> None:
        try:
            record = self._store.load(self.name)
            if record is not None and (record.auth_not_needed(self.config.url) or record.tokens is not None):
                return  # noted already, or OAuth tokens are in use
            self._store.update(self.name, lambda old: note_auth_not_needed(old, self.config.url))
        except ToolscriptError as exc:  # a note only: the connection is fine
            log.debug("Server '%s': could not note that it needs no authorization: %s", self.name, exc.message)

    def _status_changed(self) -> None:
        if self._hooks.status_changed is not None:
            self._hooks.status_changed(self.name)

    def _request_callbacks(self) -> dict[str, Any]:
        """The session's callbacks for the server's requests, answered by the asker of the request in flight;
        sampling only where a front offers it."""
        callbacks: dict[str, Any] = {"elicitation_callback": self._on_elicitation}
        if self._hooks.offers_sampling:
            callbacks["sampling_callback"] = self._on_sampling
        return callbacks


class _ReadStreamWithEndEvent:
    """A transport's read stream that sets `ended` when the session stops reading it.

    The session stops reading when the stream ends (a stdio server exited, an SSE stream
    closed), which is how the connection task learns that its peer went away.
    """

    def __init__(self, stream: Any, ended: anyio.Event) -> None:
        self._stream = stream
        self._ended = ended

    def __getattr__(self, name: str) -> Any:  # e.g. `last_context` of the SDK's context streams
        return getattr(self._stream, name)

    async def receive(self) -> Any:
        return await self._stream.receive()

    async def aclose(self) -> None:
        self._ended.set()
        await self._stream.aclose()

    def __aiter__(self) -> _ReadStreamWithEndEvent:
        return self

    async def __anext__(self) -> Any:
        return await self._stream.__anext__()

    async def __aenter__(self) -> _ReadStreamWithEndEvent:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        self._ended.set()
        return await self._stream.__aexit__(*exc_info)


@contextlib.asynccontextmanager
async def _open_transport(
    server: ServerConfig, auth: httpx2.Auth | None, clues: _Clues
) -> AsyncIterator[tuple[Any, Any]]:
    if server.type == "stdio":
        async with _stdio_transport(server, clues) as streams:
            yield streams
    elif server.type == "sse":
        assert server.url is not None

        def factory(**_: Any) -> httpx2.AsyncClient:  # sse_client's own arguments are ignored
            return http_client(server, auth, on_response=clues.note_response)

        async with sse_client(
            server.url, httpx_client_factory=factory, sse_read_timeout=STREAM_READ_TIMEOUT
        ) as streams:
            yield streams
    else:
        assert server.url is not None
        async with (
            http_client(server, auth, on_response=clues.note_response) as client,
            streamable_http_client(server.url, http_client=client) as streams,
        ):
            yield streams


@contextlib.asynccontextmanager
async def _stdio_transport(server: ServerConfig, clues: _Clues) -> AsyncIterator[tuple[Any, Any]]:
    """Run a stdio server with its stderr going to our log at DEBUG (and its last lines to `clues`)."""
    assert server.command is not None
    params = StdioServerParameters(
        command=server.command, args=list(server.args), env={**os.environ, **server.env}, cwd=server.cwd
    )
    read_fd, write_fd = os.pipe()
    threading.Thread(
        target=_log_stderr, args=(server.name, read_fd, clues), daemon=True, name=f"stderr-{server.name}"
    ).start()
    errlog = os.fdopen(write_fd, "w")
    async with contextlib.AsyncExitStack() as stack:
        try:
            streams = await stack.enter_async_context(stdio_client(params, errlog=errlog))
        finally:
            errlog.close()  # the child has its own copy; the reader sees EOF when the child exits
        yield streams


def _log_stderr(server: str, fd: int, clues: _Clues) -> None:
    try:
        with open(fd, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                log.debug("%s (stderr): %s", server, line.rstrip())
                if line.strip():
                    clues.stderr.append(redact(line.rstrip())[:_MAX_STDERR_LINE])  # masked before it is cut
    finally:
        clues.stderr_closed.set()


def _tool_row(server: str, tool: types.Tool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": f"{server}{SEPARATOR}{tool.name}",
        "server": server,
        "tool": tool.name,
        "description": tool.description or "",
        "inputSchema": tool.input_schema,
    }
    title = tool.title or (tool.annotations.title if tool.annotations else None)
    if title:
        row["title"] = title
    if tool.output_schema is not None:
        row["outputSchema"] = tool.output_schema
    if tool.execution is not None:
        row["execution"] = tool.execution.model_dump(mode="json", by_alias=True, exclude_none=True)
    unsupported = _unsupported_reason(tool)
    if unsupported:
        row["unsupported"] = unsupported
    return row


def _prompt_row(server: str, prompt: types.Prompt) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": f"{server}{SEPARATOR}{prompt.name}",
        "server": server,
        "prompt": prompt.name,
        "description": prompt.description or "",
        "arguments": [_as_json(argument) for argument in prompt.arguments or []],
    }
    if prompt.title:
        row["title"] = prompt.title
    return row


def _prompt_arguments(name: str, arguments: Any) -> dict[str, str]:
    """Prompt arguments as the strings MCP sends: a string as is, any other JSON value as its JSON text."""
    if arguments is None:
        return {}
    if not isinstance(arguments, dict):
        raise UsageError(f"Arguments for '{name}' must be a JSON object, not {type(arguments).__name__}.")
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in arguments.items()}


def _as_json(model: Any) -> dict[str, Any]:
    """A result or entry as the JSON object the server sent."""
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)


async def _resource_page(session: ClientSession, params: types.PaginatedRequestParams | None) -> Any:
    return await session.list_resources(params=params)


async def _template_page(session: ClientSession, params: types.PaginatedRequestParams | None) -> Any:
    try:
        return await session.list_resource_templates(params=params)
    except MCPError as exc:
        if exc.code == types.METHOD_NOT_FOUND:  # resources without templates: some servers omit the method
            return types.ListResourceTemplatesResult(resource_templates=[])
        raise


async def _prompt_page(session: ClientSession, params: types.PaginatedRequestParams | None) -> Any:
    return await session.list_prompts(params=params)


class _UrlsRequired(Exception):
    """A call refused with the URL-elicitation-required error (-32042), and the URLs it named."""

    def __init__(self, urls: list[types.ElicitRequestURLParams]) -> None:
        super().__init__("URL elicitation required")
        self.urls = urls


def _unsupported_reason(tool: types.Tool) -> str | None:
    """Why toolscript cannot call `tool` (completing "it ..."), or None when it can."""
    if tool.execution is not None and tool.execution.task_support == "required":
        return "requires task-augmented execution (MCP tasks), which toolscript does not support"
    return None


def _required_urls(exc: MCPError) -> list[types.ElicitRequestURLParams]:
    """The URL-mode elicitations of a -32042 error (none if it does not list them well)."""
    try:
        return UrlElicitationRequiredError.from_error(exc.error).elicitations
    except ValueError:  # also pydantic's ValidationError
        return []


def _input_request(server: str, tool: str, params: types.ElicitRequestParams) -> InputRequest:
    if isinstance(params, types.ElicitRequestURLParams):
        return InputRequest(server, tool, "url", params.message, url=params.url, elicitation_id=params.elicitation_id)
    return InputRequest(server, tool, "form", params.message, requested_schema=params.requested_schema)


async def _in_own_thread(func: Callable[[InputRequest], Any], request: InputRequest) -> Any:
    """Run `func(request)` in a daemon thread and wait for it.

    Not a worker thread of anyio: a handler blocked reading a terminal cannot be stopped, and
    a daemon thread does not keep the process alive after the call was cancelled.
    """
    token = anyio.lowlevel.current_token()
    done = anyio.Event()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = func(request)
        except Exception as exc:
            outcome["error"] = exc
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                anyio.from_thread.run_sync(done.set, token=token)

    threading.Thread(target=work, daemon=True, name="toolscript-input").start()
    await done.wait()
    if "value" not in outcome:
        raise outcome.get("error") or RuntimeError("the input handler's thread ended without an answer")
    return outcome["value"]


async def _negotiate(session: ClientSession, negotiation: str) -> None:
    if negotiation == "auto":
        from mcp.client._probe import negotiate_auto  # the SDK's own "auto" mode of `Client`

        await negotiate_auto(session)
    else:
        await session.initialize()


def _register_secrets(server: ServerConfig) -> None:
    """Mask header (and stdio env) values whose names look secret in every log line."""
    for name, value in {**server.headers, **server.env}.items():
        if any(part in name.lower() for part in _SECRET_NAME_PARTS):
            register_secret(value)
            _scheme, _, credential = value.partition(" ")  # "Bearer abc" -> also "abc"
            register_secret(credential.strip())


def _session_expired(exc: MCPError) -> bool:
    # A streamable HTTP server answers 404 for a session it no longer knows; the SDK passes on
    # the server's JSON-RPC error ("Session not found" from the Python and TypeScript SDKs) or,
    # for a bare 404, says "Session terminated". Either way the call was never run.
    message = exc.message.lower()
    return "session" in message and any(word in message for word in ("not found", "terminated", "expired", "unknown"))


def _connect_timeout(server: str, seconds: float) -> CallTimeoutError:
    return CallTimeoutError(f"Server '{server}' did not connect within {seconds:g} s.", server=server)


def _auth_error(exc: AuthRequiredError, server: str) -> AuthRequiredError:
    """`exc`, or (raised by an auth without a server name) the same error naming the command to run."""
    if exc.next_command is not None:
        return exc
    return AuthRequiredError(exc.message, server=server, error=exc.error, scope=exc.scope)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _find(exc: BaseException, kind: type[_Found]) -> _Found | None:
    return next((leaf for leaf in _leaves(exc) if isinstance(leaf, kind)), None)


def _reason(exc: BaseException, server: ServerConfig, clues: _Clues | None = None) -> str:
    """Describe why a connection failed, in one line; with `clues` of a stdio server, its last stderr lines follow."""
    cancelled = anyio.get_cancelled_exc_class()
    leaf = next((e for e in _leaves(exc) if not isinstance(e, cancelled)), exc)
    if isinstance(leaf, MCPError) and leaf.code == types.CONNECTION_CLOSED and server.type == "stdio":
        return "the server process closed the connection" + _stderr_tail(clues)
    if isinstance(leaf, OSError) and server.type == "stdio":
        return f"cannot run {server.command!r}: {leaf.strerror or leaf}"
    if isinstance(leaf, httpx2.HTTPStatusError):
        return _http_failure(leaf.response.status_code, str(leaf.request.url.copy_with(query=None)))
    if isinstance(leaf, MCPError) and clues is not None and clues.http_error is not None:
        return _http_failure(*clues.http_error)  # the SDK's error lost the status ("Not Found")
    if isinstance(leaf, httpx2.TimeoutException):
        return f"no answer from {server.url} in time"
    if isinstance(leaf, (httpx2.TransportError, OSError)):
        return f"cannot reach {server.url}: {_first_line(leaf) or type(leaf).__name__}"
    if isinstance(leaf, (MCPError, ToolscriptError)):
        return leaf.message
    text = _first_line(leaf)
    return f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__


def _http_failure(status: int, url: str) -> str:
    hint = ": is this the server's MCP endpoint?" if status in (404, 405) else ""
    return f"HTTP {status} from {url}{hint}"


def _stderr_tail(clues: _Clues | None) -> str:
    if clues is None:
        return " (run with -v to see its stderr)"
    if not clues.stderr:
        return " without writing to stderr"
    return "; its stderr ended with:" + "".join(f"\n    {line}" for line in clues.stderr)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
