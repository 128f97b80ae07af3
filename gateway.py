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

Each server is a `_Server`: the requests sent to it, here, on top of its connection's
lifecycle (`upstream.Upstream`); who answers what a server asks while requests are in flight
is decided by its `askers.Askers`. Each connection lives in its own task (`Upstream._run`),
so the transport's and the session's async context managers are entered and exited in the
same task, as anyio requires. A `_Server` gets everything it needs from the `Gateway` as
constructor arguments: the task group its connection tasks run in, its auth factory, the
record store and its timeouts.

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
import json
import logging
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import CancelledError as _FutureCancelled
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel
import httpx2
import mcp_types as types
import pydantic
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.shared.exceptions import MCPError, UrlElicitationRequiredError

if __package__:
    from .askers import Asker
    from .config_watch import CHECK_INTERVAL, ConfigWatch
    from .elicitation import ACCEPT, CANCEL, DECLINE, DECLINED_KEY, InputHandler, InputRequest
    from .errors import (
        AuthError,
        CallTimeoutError,
        ConfigError,
        ConnectError,
        ToolscriptError,
        UsageError,
        did_you_mean,
    )
    from .gateway_auth import CALL_FAILURES, StoredTokenAuth
    from .logs import SERVER
    from .redact import register_secret
    from .search import IndexCache, ToolIndex
    from .storage import Store
    from .upstream import (
        AUTH_REQUIRED,
        CONNECTED,
        CONNECTING,
        DEFAULT_CONNECT_TIMEOUT,
        FAILED,
        MAX_PAGES,
        STOP_TIMEOUT,
        AuthFactory,
        Connection,
        SessionHooks,
        Upstream,
        connect_timeout_error,
        first_line,
        http_client,
        tool_allowed,
    )
else:
    from askers import Asker
    from config_watch import CHECK_INTERVAL, ConfigWatch
    from elicitation import ACCEPT, CANCEL, DECLINE, DECLINED_KEY, InputHandler, InputRequest
    from errors import AuthError, CallTimeoutError, ConfigError, ConnectError, ToolscriptError, UsageError, did_you_mean
    from gateway_auth import CALL_FAILURES, StoredTokenAuth
    from logs import SERVER
    from redact import register_secret
    from search import IndexCache, ToolIndex
    from storage import Store
    from upstream import (
        AUTH_REQUIRED,
        CONNECTED,
        CONNECTING,
        DEFAULT_CONNECT_TIMEOUT,
        FAILED,
        MAX_PAGES,
        STOP_TIMEOUT,
        AuthFactory,
        Connection,
        SessionHooks,
        Upstream,
        connect_timeout_error,
        first_line,
        http_client,
        tool_allowed,
    )

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

SEPARATOR = "__"
DEFAULT_CALL_TIMEOUT = 300.0
# Error answers that mean the request itself was wrong: no such resource or prompt, bad arguments.
# -32002 is "resource not found" of the 2025 specifications (retired since, but servers send it).
_REFUSALS = (types.INVALID_PARAMS, types.METHOD_NOT_FOUND, -32002)
_T = TypeVar("_T")
# A server answering a call with input-required results gets this many rounds of answers.
INPUT_ROUNDS = 10
_INPUT_POLL_DELAYS = (0.05, 0.1, 0.2, 0.25)  # before resending a call whose result asked for nothing
_SECRET_NAME_PARTS = ("auth", "key", "token", "secret", "password", "cookie", "credential")

ProgressCallback = Callable[[float, "float | None", "str | None"], None]
"""Called with (progress, total, message) for each progress notification of a call, on the gateway's thread."""


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


def result_to_dict(result: types.CallToolResult) -> dict[str, Any]:
    """Return a tool result as the JSON object the server sent, with `content` and `isError` always present."""
    data = result.model_dump(mode="json", by_alias=True, exclude_unset=True)
    data.setdefault("content", [])
    data["isError"] = bool(result.is_error)
    return data


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

    With `reload` (how the config was read, to read it again) the gateway follows its config:
    it reads it again every `CHECK_INTERVAL` seconds, whenever one of its files changed before
    a request, and before it calls a server unknown; added servers connect, removed ones are
    closed (a stdio server's process ends), changed ones reconnect and the others keep their
    sessions. A config that does not validate is logged and the last good one kept.
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
        reload: Callable[[], Config] | None = None,
    ) -> None:
        self._only = None if only is None else [config.server(name).name for name in only]
        self.config = config
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self._configs = self._chosen(config)
        for server in self._configs.values():
            _register_secrets(server)
        self._watch = ConfigWatch(config, reload) if reload is not None else None
        self.store = store or Store()
        self.announce = announce
        self._auth_factory = auth or stored_oauth(self.store)
        self._hooks = hooks or SessionHooks()
        self._negotiation = negotiation
        self._portal_cm: contextlib.AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._supervisor: Any = None
        self._servers: dict[str, _Server] = {}
        self._hosted: dict[str, _Hosted] = {}  # how each server of `_servers` is closed
        self._hosts: TaskGroup | None = None
        self._reloading: anyio.Lock | None = None
        self._stopping: anyio.Event | None = None
        self._search_indexes = IndexCache()  # used on the event loop only
        self._stop_within: float | None = None  # of `stop`

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

    def stop(self, *, within: float | None = None) -> None:
        """Close every session and end every stdio server process; safe to call twice.

        With `within`, a stdio server still running that many seconds from now is killed
        (its usual grace periods are cut to fit): a command keeps its deadline.
        """
        portal, portal_cm = self._portal, self._portal_cm
        self._portal = self._portal_cm = None
        if portal is None or portal_cm is None:
            return
        try:
            if self._stopping is not None:
                self._stop_within = within
                portal.call(self._stopping.set)
            if self._supervisor is not None:
                self._supervisor.result(STOP_TIMEOUT + 5)
        finally:
            portal_cm.__exit__(None, None, None)

    def servers(self) -> list[dict[str, Any]]:
        """Return each server's `name`, `type`, `status`, `error` (unless connected) and tool count."""
        self._follow_config()
        return self._run_on_loop(self._server_rows)

    def tools(self, server: str | None = None) -> list[dict[str, Any]]:
        """Return the visible tools of every connected server, or of `server` only."""
        if server is not None:
            self._config_of(server)
        else:
            self._follow_config()
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
        own handler, also among concurrent calls to one server (a request that does not say
        which call it belongs to goes to the server's only call in flight; see askers.py).

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
        return call.report(
            result_to_dict(self._run_on_loop(self._call, server, tool, arguments, timeout, call, on_progress))
        )

    def resources(self, server: str | None = None) -> list[dict[str, Any]]:
        """Return the resources and resource templates of every connected server, or of `server` only.

        Each row is the server's own entry (all pages) with `server` added: a resource has
        `uri`, a template `uriTemplate`. A server without the resources capability has none;
        `include_tools`/`exclude_tools` do not apply. With `server`, its failure is raised;
        without, a server whose listing fails is left out (and logged).
        """
        if server is not None:
            self._config_of(server)
        else:
            self._follow_config()
        return self._run_on_loop(self._listing, server, _Server.list_resources)

    def read_resource(
        self, server: str, uri: str, *, timeout: float | None = None, input_handler: InputHandler | None = None
    ) -> dict[str, Any]:
        """Read the resource `uri` of `server`: `{"contents": [{uri, mimeType?, text | blob}]}`, blobs in base64.

        Raises `UsageError` when the server offers no resources or refuses the URI, and the
        errors of `call` otherwise. The server's requests for input go to `input_handler`, as in `call`.
        """
        self._config_of(server)
        if not isinstance(uri, str) or not uri:
            raise UsageError(
                f"Give the URI of a resource of server '{server}'. Run: toolscript resources --server {server}",
                server=server,
            )
        call = _CallInput(f"the read of {uri}", input_handler)
        return call.report(
            _as_json(self._run_on_loop(self._on_server, server, _Server.read_resource, uri, timeout, call))
        )

    def prompts(self, server: str | None = None) -> list[dict[str, Any]]:
        """Return the prompts of every connected server (all pages), or of `server` only, as `SERVER__PROMPT`.

        A server without the prompts capability has none; failures as for `resources`.
        """
        if server is not None:
            self._config_of(server)
        else:
            self._follow_config()
        return self._run_on_loop(self._listing, server, _Server.list_prompts)

    def get_prompt(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        input_handler: InputHandler | None = None,
    ) -> dict[str, Any]:
        """Get the prompt `server__prompt` filled in with `arguments`: `{description?, messages}`.

        Prompt arguments are strings; other JSON values are sent as their JSON text
        (`3` as "3", `true` as "true"). The server's requests for input go to `input_handler`, as in `call`.
        """
        server, prompt = split_prompt_name(name)
        self._config_of(server)
        call = _CallInput(name, input_handler)
        prompt_arguments = _prompt_arguments(name, arguments)
        return call.report(
            _as_json(
                self._run_on_loop(self._on_server, server, _Server.get_prompt, prompt, prompt_arguments, timeout, call)
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
        """The servers this gateway connects, in config order (it changes when a followed config does)."""
        return list(self._configs)

    async def follow_config(self) -> None:
        """Before a request: read the config again if one of its files changed (a followed config only)."""
        if self._watch is not None and self._watch.changed():
            await self.reload_config()

    async def reload_config(self) -> None:
        """Read the config again, if the gateway follows it, and apply what changed (see the class docstring)."""
        if self._watch is None or self._reloading is None:
            return
        async with self._reloading:
            if self._stopping is None or self._stopping.is_set():
                return
            config = await anyio.to_thread.run_sync(self._watch.check)
            if config is not None:
                await self._apply_config(config)

    def status(self, server: str) -> str:
        """`connecting` until its first attempt to connect ends, then `connected`, `failed` or `auth_required`."""
        return self._server(server).status

    def error(self, server: str) -> ToolscriptError:
        """Why `server` is not connected (its last error)."""
        return self._server(server).error

    def cached_tools(self, server: str) -> list[types.Tool]:
        """The visible tools `server` listed when it last connected or notified a change."""
        return list(self._server(server).tools.values())

    async def session_for(self, server: str) -> ClientSession:
        """The live session of `server`, waiting for an attempt in progress and reconnecting one that ended.

        Raises the server's error (`AuthRequiredError`, `ConnectError`) when it cannot connect.
        """
        connection = await self._server(server).live_connection()
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
        state = self._server(server)
        timeout = clock.timeout if clock is not None else timeout or state.call_timeout
        return await state.request(
            what, send, timeout, clock=clock, pass_through=True, tool_call=tool_call, asker=asker
        )

    def clock_for(self, server: str) -> RequestClock:
        """A `RequestClock` with the call timeout of `server`, for `forward`."""
        return RequestClock(self._server(server).call_timeout)

    # -- on the loop thread --------------------------------------------------------------

    async def _supervise(
        self,
        alongside: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None = None,
        *,
        task_status: TaskStatus[None],
    ) -> None:
        """Own the task group every server runs in, and follow the config; on stop, close them all."""
        self._stopping = anyio.Event()
        self._reloading = anyio.Lock()
        async with anyio.create_task_group() as hosts:
            self._hosts = hosts
            for name, config in self._configs.items():
                self._hosted[name] = await hosts.start(self._host, config)
            self._servers = {name: hosted.server for name, hosted in self._hosted.items()}
            async with anyio.create_task_group() as following:
                if self._watch is not None:
                    following.start_soon(self._follow_config_on_loop)
                async with alongside() if alongside is not None else contextlib.nullcontext():
                    task_status.started()
                    await self._stopping.wait()
                following.cancel_scope.cancel()
            async with self._reloading:  # a reload in progress finishes first; none starts after
                for hosted in self._hosted.values():
                    hosted.retire.set()

    async def _host(self, config: ServerConfig, *, task_status: TaskStatus[_Hosted]) -> None:
        """Run one server's connections in a task group of their own until it is retired; then close them
        (within a deadline), so that a server the config no longer has ends as at stop."""
        retire = anyio.Event()
        async with anyio.create_task_group() as connections:
            server = self._new_server(config, connections)
            task_status.started(_Hosted(server, retire))
            await retire.wait()
            # At stop with a deadline (`stop(within=...)`), the servers end within it; else as usual.
            grace = STOP_TIMEOUT if self._stop_within is None else min(STOP_TIMEOUT, self._stop_within)
            connections.cancel_scope.deadline = anyio.current_time() + grace
            server.close(self._stop_within)

    async def _follow_config_on_loop(self) -> None:
        while True:
            await anyio.sleep(CHECK_INTERVAL)
            await self.reload_config()

    def _chosen(self, config: Config) -> dict[str, ServerConfig]:
        """The servers of `config` this gateway connects: all, or those of `only` it still has."""
        names = config.servers if self._only is None else [name for name in self._only if name in config.servers]
        return {name: config.servers[name] for name in names}

    async def _apply_config(self, config: Config) -> None:
        """Serve `config`: connect added servers, close removed ones, reconnect changed ones."""
        before, after = self._configs, self._chosen(config)
        added = [name for name in after if name not in before]
        removed = [name for name in before if name not in after]
        changed = [name for name in after if name in before and after[name] != before[name]]
        retired = [self._hosted.pop(name) for name in [*removed, *changed]]
        assert self._hosts is not None
        for name in [*added, *changed]:
            _register_secrets(after[name])
            self._hosted[name] = await self._hosts.start(self._host, after[name])
        self.config, self._configs = config, after
        self._servers = {name: self._hosted[name].server for name in after}
        for hosted in retired:
            hosted.retire.set()
        if added or removed or changed:
            log.info(
                "The config changed: %s.",
                "; ".join(
                    f"{what} {', '.join(names)}"
                    for what, names in (("added", added), ("removed", removed), ("reconnecting", changed))
                    if names
                ),
            )
            if self._hooks.servers_changed is not None:
                self._hooks.servers_changed([*removed, *changed], [*added, *changed])
        for name in [*added, *changed]:
            self._servers[name].begin_connect()

    async def _connect_all(self, wait: bool) -> None:
        connections = [server.begin_connect() for server in self._servers.values()]
        if wait:
            for connection in connections:
                await connection.connected_or_failed.wait()

    async def _server_rows(self) -> list[dict[str, Any]]:
        return [server.row() for server in self._servers.values()]

    async def _tool_rows(self, name: str | None) -> list[dict[str, Any]]:
        rows = []
        for server in [self._server(name)] if name else list(self._servers.values()):
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
        server = self._server(name)
        SERVER.set(name)  # this task's own context: what the SDK logs for the call names the server
        return await server.call_tool(tool, arguments, timeout or server.call_timeout, call, on_progress=on_progress)

    async def _tool_row_of(self, name: str, tool: str) -> dict[str, Any]:
        server = self._server(name)
        await server.live_connection()
        return _tool_row(server.name, await server.known_tool(tool))

    async def _on_server(self, name: str, method: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        return await method(self._server(name), *args)

    def _server(self, name: str) -> _Server:
        """The server `name` on the loop; one the config lost since the request began is unknown now."""
        try:
            return self._servers[name]
        except KeyError:
            raise self._unknown_server(self.config, name) from None

    async def _listing(
        self, name: str | None, list_one: Callable[[_Server], Awaitable[list[dict[str, Any]]]]
    ) -> list[dict[str, Any]]:
        """The rows `list_one` gives for server `name`, or for every connected server (concurrently)."""
        if name is not None:
            return await list_one(self._server(name))
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

    def _follow_config(self) -> None:
        """`follow_config` from another thread (checked here first: most requests find no change)."""
        if self._watch is not None and self._watch.changed():
            self._run_on_loop(self.reload_config)

    def _config_of(self, server: str) -> ServerConfig:
        """The config of `server`, read again first if the gateway follows its config and it changed."""
        if server not in self._configs and self._watch is not None:
            self._run_on_loop(self.reload_config)  # it may have been added a moment ago
        else:
            self._follow_config()
        config = self.config
        if server in config.unusable:
            raise config.unusable[server]
        if server not in config.servers:
            raise self._unknown_server(config, server)
        if server not in self._configs:
            raise UsageError(f"Server '{server}' is not connected by this gateway.", server=server)
        return config.servers[server]

    def _unknown_server(self, config: Config, server: str) -> ConfigError:
        """The error for `server` missing from `config`; a gateway that follows its config says which one it serves."""
        if self._watch is None:
            return config.unknown_server(server, f"in {config.path}" if config.path else "")
        # Absolute: the client asking may run elsewhere than the gateway.
        files = ", ".join(str(path.absolute()) for path in config.files) or "no file"
        problem = self._watch.problem
        if problem is None and not config.files:
            return config.unknown_server(server, "in the config this gateway serves, which comes from no file")
        if problem is None:
            return config.unknown_server(server, f"in {files}, the config this gateway serves")
        why = problem.message.rstrip(".")
        return config.unknown_server(
            server, f"in the config this gateway serves, {files} as last read before it stopped validating ({why})"
        )

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


@dataclass(eq=False)
class _Hosted:
    """A server as the gateway runs it: setting `retire` closes its connections for good."""

    server: _Server
    retire: anyio.Event


@dataclass(eq=False)
class _CallInput:
    """One call's way of answering a server's requests for input, and what it declined."""

    tool: str  # the request: SERVER__TOOL, SERVER__PROMPT, or "the read of URI"
    handler: InputHandler | None
    declined: list[InputRequest] = field(default_factory=list)
    clock: RequestClock | None = None  # the call's timeout, stopped while the user is asked

    @property
    def caller(self) -> object:
        return self  # each call has its own input handler: two calls are two callers

    def report(self, result: dict[str, Any]) -> dict[str, Any]:
        """`result`, with the requests declined for want of a handler under `declinedInputRequests`."""
        if self.declined:
            result[DECLINED_KEY] = [request.to_dict() for request in self.declined]
        return result

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
            log.warning("Server '%s': asking for its input failed (%s); cancelled.", server, first_line(exc))
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


class _Server(Upstream):
    """One configured server: the requests sent to it (an `Upstream`, which holds its connection).

    Every request kind goes through `request`, with one deadline for connecting,
    reconnecting and the request; a tool call also answers the server's input-required
    results (`call_tool`). Used only on the loop thread.
    """

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
        with self._noting_auth_failure(tool_call), self.askers.asking(asker):
            if deadline is None:
                deadline = anyio.current_time() + timeout
            connection: Connection | None = None
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
                if connection is not None:
                    connection.ending.at_once()  # a server that kept a request past its deadline gets no grace
                if failures:
                    raise failures[-1] from None
                if connection is None:
                    raise connect_timeout_error(self.name, timeout) from None
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
                    f"Server '{self.name}' sent an unusable result for {what}: {first_line(exc)}", server=self.name
                ) from None
            except pydantic.ValidationError as exc:  # the SDK rejects a result that breaks the MCP schema
                raise ConnectError(
                    f"Server '{self.name}' sent an unusable result for {what}: {_schema_problem(exc)}.",
                    server=self.name,
                ) from None

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

    async def read_resource(self, uri: str, timeout: float | None, call: _CallInput) -> types.ReadResourceResult:
        call.clock = RequestClock(timeout or self.call_timeout)
        return await self.request(
            f"the read of '{uri}'",
            lambda session: session.read_resource(uri),
            call.clock.timeout,
            needs="resources",
            refused_hint=f"Run: toolscript resources --server {self.name}",
            clock=call.clock,
            asker=call,
        )

    async def get_prompt(
        self, prompt: str, arguments: dict[str, str], timeout: float | None, call: _CallInput
    ) -> types.GetPromptResult:
        call.clock = RequestClock(timeout or self.call_timeout)
        return await self.request(
            f"the request for prompt '{prompt}'",
            lambda session: session.get_prompt(prompt, arguments),
            call.clock.timeout,
            needs="prompts",
            refused_hint=f"Run: toolscript prompts --server {self.name}",
            clock=call.clock,
            asker=call,
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

    def offers(self, connection: Connection, capability: str) -> bool:
        """Whether the server declared `capability` (resources, prompts, completions) on connecting."""
        capabilities = connection.session.server_capabilities if connection.session is not None else None
        return capabilities is not None and getattr(capabilities, capability, None) is not None

    def _require(self, connection: Connection, capability: str) -> None:
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
        for _ in range(MAX_PAGES):
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await self.request(
                what, lambda session, params=params: list_page(session, params), self.call_timeout
            )
            items.extend(getattr(page, attribute))
            cursor = page.next_cursor
            if not cursor:
                break
        return items


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


def _register_secrets(server: ServerConfig) -> None:
    """Mask header (and stdio env) values whose names look secret in every log line."""
    for name, value in {**server.headers, **server.env}.items():
        if any(part in name.lower() for part in _SECRET_NAME_PARTS):
            register_secret(value)
            _scheme, _, credential = value.partition(" ")  # "Bearer abc" -> also "abc"
            register_secret(credential.strip())


def _schema_problem(exc: pydantic.ValidationError) -> str:
    """The first thing wrong in a message that breaks the MCP schema, as `content.0.text: Field required`."""
    problems = exc.errors(include_url=False, include_input=False)
    if not problems:
        return "it does not match the MCP schema"
    first = problems[0]
    return ".".join(str(part) for part in first["loc"]) + f": {first['msg']}"


def _session_expired(exc: MCPError) -> bool:
    # A streamable HTTP server answers 404 for a session it no longer knows; the SDK passes on
    # the server's JSON-RPC error ("Session not found" from the Python and TypeScript SDKs) or,
    # for a bare 404, says "Session terminated". Either way the call was never run.
    message = exc.message.lower()
    return "session" in message and any(word in message for word in ("not found", "terminated", "expired", "unknown"))
