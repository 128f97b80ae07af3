"""One synchronous front to many MCP servers.

The MCP SDK is asynchronous; toolscript is not. A `Gateway` runs the SDK's clients on one
event loop in a background thread (an anyio blocking portal) and offers plain, thread-safe
methods: `start`, `stop`, `servers`, `tools` and `call`. Every piece of connection state
is touched only on the loop thread, so the public methods need no locks: they hand their
work to the loop and wait for the answer.

Each connection lives in its own task (`_Server._run`), so the transport's and the session's
async context managers are entered and exited in the same task, as anyio requires.

Failure model: a server that cannot connect is `failed` (or `auth_required`) with a one-line
reason and never delays the others. A connection that ends later (the stdio process exits,
the HTTP connection drops, the HTTP session expires) is re-established by the next call,
with a bounded number of attempts and backoff; a call in flight when its connection ends
fails at once instead of waiting for its timeout.
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

if __package__:
    from .errors import AuthError, AuthRequiredError, CallTimeoutError, ConnectError, ToolscriptError, UsageError
    from .gateway_auth import CALL_FAILURES, StoredTokenAuth
    from .logs import SERVER
    from .redact import register_secret
    from .storage import Store
else:
    from errors import AuthError, AuthRequiredError, CallTimeoutError, ConnectError, ToolscriptError, UsageError
    from gateway_auth import CALL_FAILURES, StoredTokenAuth
    from logs import SERVER
    from redact import register_secret
    from storage import Store

if TYPE_CHECKING:
    from anyio.abc import TaskGroup, TaskStatus
    from anyio.from_thread import BlockingPortal

    from config import Config, ServerConfig

__all__ = [
    "AUTH_REQUIRED",
    "CONNECTED",
    "FAILED",
    "AuthFactory",
    "Gateway",
    "ProgressCallback",
    "http_client",
    "result_to_dict",
    "split_tool_name",
    "tool_allowed",
]

log = logging.getLogger("toolscript.gateway")
# Log notifications of the servers (notifications/message), at their own level.
server_log = logging.getLogger("toolscript.server")

CONNECTED, FAILED, AUTH_REQUIRED = "connected", "failed", "auth_required"
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
_MAX_STDERR_LINE = 300
STDERR_TAIL_LINES = 10  # of a stdio server that failed to start, shown in its error
STDERR_DRAIN_TIMEOUT = 1.0  # seconds to wait for the rest of a dead stdio server's stderr
# MCP logging levels (RFC 5424 names) as Python's.
_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "notice": logging.INFO, "warning": logging.WARNING,
               "error": logging.ERROR, "critical": logging.CRITICAL, "alert": logging.CRITICAL,
               "emergency": logging.CRITICAL}
_SECRET_NAME_PARTS = ("auth", "key", "token", "secret", "password", "cookie", "credential")

AuthFactory = Callable[["ServerConfig"], "httpx2.Auth | None"]
"""Given an http/sse server, return the `httpx2.Auth` for its requests (or None)."""

ProgressCallback = Callable[[float, "float | None", "str | None"], None]
"""Called with (progress, total, message) for each progress notification of a call, on the gateway's thread."""


def stored_oauth(store: Store) -> AuthFactory:
    """The default `AuthFactory`: OAuth from `store` for every http/sse server without its own Authorization header.

    A server without stored tokens is sent requests without a token; its 401 then says
    which command to run.
    """

    def factory(server: ServerConfig) -> httpx2.Auth | None:
        if any(name.lower() == "authorization" for name in server.headers):
            return None
        return StoredTokenAuth(store, server)

    return factory


def split_tool_name(name: str) -> tuple[str, str]:
    """Split `server__tool` into the server name and the server's own tool name."""
    server, sep, tool = name.partition(SEPARATOR)
    if not sep or not server or not tool:
        raise UsageError(
            f"'{name}' is not a SERVER__TOOL name (such as files__read_file). Run: toolscript tools"
        )
    return server, tool


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


def http_client(server: ServerConfig, auth: httpx2.Auth | None = None, *,
                on_response: Callable[[httpx2.Response], Awaitable[None]] | None = None) -> httpx2.AsyncClient:
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
    the OAuth records under `$TOOLSCRIPT_HOME`). `announce` logs a server needing
    authorization as a warning (a one-shot command reports it as its error instead). A server's `timeout` from the config
    overrides `connect_timeout` and `call_timeout` for that server.
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
        self._auth = auth or stored_oauth(self.store)
        self._portal_cm: contextlib.AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._supervisor: Any = None
        self._servers: dict[str, _Server] = {}
        self._tg: TaskGroup | None = None
        self._stopping: anyio.Event | None = None

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Gateway:
        """Connect every server concurrently; return once each is connected or has failed."""
        if self._portal is not None:
            raise RuntimeError("the gateway is already started")
        self._portal_cm = anyio.from_thread.start_blocking_portal(name="toolscript-gateway")
        self._portal = self._portal_cm.__enter__()
        try:
            self._supervisor, _ = self._portal.start_task(self._supervise)
            self._portal.call(self._connect_all)
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
        return self._sync(self._server_rows)

    def tools(self, server: str | None = None) -> list[dict[str, Any]]:
        """Return the visible tools of every connected server, or of `server` only."""
        if server is not None:
            self._config_of(server)
        return self._sync(self._tool_rows, server)

    def call(self, name: str, arguments: dict[str, Any] | None = None, *, timeout: float | None = None,
             on_progress: ProgressCallback | None = None) -> dict[str, Any]:
        """Call the tool `server__tool` and return its result (see `result_to_dict`).

        Raises `UsageError` for an unknown or hidden tool, `AuthRequiredError`, `CallTimeoutError`
        when no answer (nor progress) came in `timeout` seconds, and `ConnectError` when the
        server failed. An `isError` result is returned, not raised. Every call asks the server
        for progress; each progress notification restarts the timeout and goes to `on_progress`.
        """
        server, tool = split_tool_name(name)
        config = self._config_of(server)
        if not tool_allowed(config, tool):
            raise UsageError(
                f"Tool '{name}' is hidden by the include_tools/exclude_tools of server '{server}'.", server=server
            )
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise UsageError(f"Arguments for '{name}' must be a JSON object, not {type(arguments).__name__}.", server=server)
        return result_to_dict(self._sync(self._call, server, tool, arguments, timeout, on_progress))

    # -- on the loop thread --------------------------------------------------------------

    async def _supervise(self, *, task_status: TaskStatus[None]) -> None:
        """Own the task group every connection runs in; on stop, close them, within a deadline."""
        self._stopping = anyio.Event()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._servers = {name: _Server(config, self) for name, config in self._configs.items()}
            task_status.started()
            await self._stopping.wait()
            tg.cancel_scope.deadline = anyio.current_time() + STOP_TIMEOUT
            for server in self._servers.values():
                server.close()

    async def _connect_all(self) -> None:
        async with anyio.create_task_group() as tg:
            for server in self._servers.values():
                tg.start_soon(server.connect)

    async def _server_rows(self) -> list[dict[str, Any]]:
        return [server.row() for server in self._servers.values()]

    async def _tool_rows(self, name: str | None) -> list[dict[str, Any]]:
        rows = []
        for server in [self._servers[name]] if name else self._servers.values():
            await server.settled()
            rows.extend(_tool_row(server.name, tool) for tool in server.tools.values())
        return rows

    async def _call(self, name: str, tool: str, arguments: dict[str, Any], timeout: float | None,
                    on_progress: ProgressCallback | None) -> types.CallToolResult:
        server = self._servers[name]
        SERVER.set(name)  # this task's own context: what the SDK logs for the call names the server
        try:
            result = await server.call_tool(tool, arguments, timeout or server.call_timeout, on_progress=on_progress)
        except AuthError as exc:
            server.call_auth_failure = exc
            raise
        server.call_auth_failure = None
        return result

    # -- helpers -------------------------------------------------------------------------

    def _sync(self, func: Callable[..., Any], *args: Any) -> Any:
        portal = self._portal
        if portal is None:
            raise ConnectError("The gateway is not running.")
        try:
            return portal.call(func, *args)
        except (_FutureCancelled, RuntimeError):
            if self._portal is portal:  # still running: a genuine error
                raise
            raise ConnectError("The gateway stopped before the request finished.") from None

    def _config_of(self, server: str) -> ServerConfig:
        config = self.config.server(server)  # ConfigError naming the configured servers
        if server not in self._configs:
            raise UsageError(f"Server '{server}' is not connected by this gateway.", server=server)
        return config

    def _auth_for(self, server: ServerConfig) -> httpx2.Auth | None:
        return self._auth(server) if server.is_remote else None


@dataclass(eq=False)
class _Link:
    """One connection attempt: its session once connected, and why it ended."""

    ready: anyio.Event = field(default_factory=anyio.Event)
    hang_up: anyio.Event = field(default_factory=anyio.Event)  # set to end the connection
    ended: anyio.Event = field(default_factory=anyio.Event)
    session: ClientSession | None = None
    reason: str | None = None  # why it failed or ended, when not a clean close
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
    """One configured server and its current connection; used only on the loop thread."""

    def __init__(self, config: ServerConfig, gateway: Gateway) -> None:
        self.config = config
        self.name = config.name
        self.connect_timeout = config.timeout or gateway.connect_timeout
        self.call_timeout = config.timeout or gateway.call_timeout
        self.status = FAILED
        self.error: ToolscriptError = ConnectError(f"Server '{self.name}' is not connected yet.", server=self.name)
        self.tools: dict[str, types.Tool] = {}
        self._gateway = gateway
        self._link: _Link | None = None
        self._closing = False
        self._lock = anyio.Lock()
        self._retry_at = 0.0
        self._refreshing: anyio.Event | None = None
        self.auth: httpx2.Auth | None = None
        self.call_auth_failure: AuthError | None = None  # of the last call, which failed with it

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"name": self.name, "type": self.config.type, "status": self.status}
        if self.status != CONNECTED:
            row["error"] = self.error.message
        row["tools"] = len(self.tools)
        oauth = self.oauth_status()
        if oauth is not None:
            row["oauth_status"], reason = oauth
            if reason:
                row["oauth_error"] = reason
        return row

    def oauth_status(self) -> tuple[str, str | None] | None:
        """`(status, reason)` for a server that uses OAuth (a stored record or an oauth table), else None."""
        status = self._gateway.store.oauth_status_of(self.config)
        if status is not None and self.status == AUTH_REQUIRED and status[0] == "authenticated":
            return "authentication_failed", self.error.message
        if status is not None and self.call_auth_failure is not None and status[0] == "authenticated":
            return "authentication_failed", self.call_auth_failure.message
        return status

    def auth_failure(self) -> AuthError | ConnectError | None:
        """The authentication error the current connection's OAuth provider last raised, if any."""
        return self.auth.failure if isinstance(self.auth, StoredTokenAuth) else None

    def _on_auth_failure(self, link: _Link, error: AuthError | ConnectError) -> None:
        # Over SSE a failed POST is only logged by the SDK and its call would wait for its
        # timeout; over streamable HTTP a refused token ends the transport anyway. End the
        # connection so calls in flight fail now, except for a step-up over streamable HTTP,
        # which fails only its own request.
        if self.config.type == "sse" or getattr(error, "error", None) != "insufficient_scope":
            link.hang_up.set()

    async def connect(self) -> _Link:
        """Start a connection task and wait until it is connected or has failed."""
        if self._closing:
            raise ConnectError(f"Server '{self.name}' is closed: the gateway is stopping.", server=self.name)
        link = _Link()
        self._link = link
        assert self._gateway._tg is not None
        self._gateway._tg.start_soon(self._run, link, name=f"toolscript-{self.name}")
        await link.ready.wait()
        if link.session is None:
            self._retry_at = anyio.current_time() + RETRY_COOLDOWN
        return link

    async def link_for_call(self) -> _Link:
        """Return the live connection, reconnecting (bounded attempts, backoff) if it ended."""
        link = self._link
        if link is not None and link.session is not None:
            return link
        async with self._lock:
            link = self._link
            if link is not None and link.session is not None:
                return link
            if anyio.current_time() < self._retry_at and self.status != AUTH_REQUIRED:
                raise self.error
            for attempt in range(RECONNECT_ATTEMPTS):
                if attempt:
                    await anyio.sleep(RECONNECT_BACKOFF * 2 ** (attempt - 1))
                log.debug("Server '%s': connecting (attempt %d)", self.name, attempt + 1)
                link = await self.connect()
                if link.session is not None:
                    return link
                if self.status == AUTH_REQUIRED:
                    break
            raise self.error

    async def call_tool(self, tool: str, arguments: dict[str, Any], timeout: float, *,
                        on_progress: ProgressCallback | None = None,
                        resend_if_expired: bool = True) -> types.CallToolResult:
        link = await self.link_for_call()
        if tool not in self.tools:
            await self.refresh_tools()  # it may have added the tool without notifying us
            if tool not in self.tools:
                raise UsageError(
                    f"Unknown tool '{tool}' on server '{self.name}'. Run: toolscript tools --server {self.name}",
                    server=self.name,
                )
        assert link.session is not None
        failures: list[AuthError | ConnectError] = []
        CALL_FAILURES.set(failures)  # this task's own context: only this call's requests add to it
        deadline = anyio.CancelScope(deadline=anyio.current_time() + timeout)

        async def progress(value: float, total: float | None, message: str | None) -> None:
            # The MCP specification lets progress reset a request's timeout: a long task that
            # keeps reporting is not given up on.
            deadline.deadline = anyio.current_time() + timeout
            log.debug("Server '%s': progress of '%s': %g/%s %s", self.name, tool, value,
                      "?" if total is None else f"{total:g}", message or "")
            if on_progress is not None:
                on_progress(value, total, message)

        try:
            with deadline:
                return await link.session.call_tool(  # type: ignore[return-value]
                    tool, arguments, progress_callback=progress)
            raise TimeoutError  # only the deadline ends the block without a result
        except TimeoutError:
            if failures:
                raise failures[-1] from None
            raise CallTimeoutError(
                f"Tool '{self.name}{SEPARATOR}{tool}' did not answer within {timeout:g} s.", server=self.name
            ) from None
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                raise await self.lost_during(link, tool) from None
            if failures:
                raise failures[-1] from None  # e.g. a step-up (403 insufficient_scope) for this call
            if resend_if_expired and _session_expired(exc):
                # The server forgot the session, so it never ran this call: reconnect, send it again.
                log.info("Server '%s': session expired; reconnecting", self.name)
                await self.drop(link)
                return await self.call_tool(tool, arguments, timeout, on_progress=on_progress, resend_if_expired=False)
            raise ConnectError(
                f"Server '{self.name}' answered the call to '{tool}' with an error: {exc.message}", server=self.name
            ) from None
        except RuntimeError as exc:  # the SDK rejects a result that breaks the tool's outputSchema
            raise ConnectError(
                f"Server '{self.name}' sent an unusable result for '{tool}': {_first_line(exc)}", server=self.name
            ) from None

    async def lost_during(self, link: _Link, tool: str) -> ToolscriptError:
        """Return the error for a call whose connection ended under it."""
        with anyio.move_on_after(STOP_TIMEOUT):
            await link.ended.wait()  # the connection task records why
        if link is self._link and self.status == AUTH_REQUIRED:
            return self.error
        failure = self.auth_failure()
        if failure is not None:
            return failure
        what = f"failed ({link.reason})" if link.reason else "closed the connection"
        return ConnectError(
            f"Server '{self.name}' {what} during the call to '{tool}'; it is reconnected on the next call.",
            server=self.name,
        )

    async def drop(self, link: _Link) -> None:
        """End `link` and wait until it is closed."""
        link.hang_up.set()
        with anyio.move_on_after(STOP_TIMEOUT):
            await link.ended.wait()

    def close(self) -> None:
        self._closing = True
        if self._link is not None:
            self._link.hang_up.set()

    async def refresh_tools(self) -> None:
        link = self._link
        if link is None or link.session is None:
            return
        done = self._refreshing = anyio.Event()
        try:
            with anyio.fail_after(self.call_timeout):
                await self._load_tools(link.session)
        except Exception as exc:
            log.warning("Server '%s': could not refresh its tool list: %s", self.name, _first_line(exc))
        finally:
            done.set()
            if self._refreshing is done:
                self._refreshing = None

    async def settled(self) -> None:
        """Wait (bounded) for a tool list refresh in progress."""
        refreshing = self._refreshing
        if refreshing is not None:
            with anyio.move_on_after(self.call_timeout):
                await refreshing.wait()

    async def _run(self, link: _Link) -> None:
        """Connect, then hold the connection open until it is closed or lost."""
        SERVER.set(self.name)  # what the SDK logs for this connection names the server
        error: BaseException | None = None
        auth = self.auth = self._gateway._auth_for(self.config)
        if isinstance(auth, StoredTokenAuth):
            auth.on_failure = lambda failure: self._on_auth_failure(link, failure)
        try:
            with anyio.CancelScope() as scope:
                scope.deadline = anyio.current_time() + self.connect_timeout
                async with _open_transport(self.config, auth, link.clues) as (read, write):
                    async with ClientSession(
                        _EndSignal(read, link.hang_up), write, message_handler=self._on_message,
                        logging_callback=self._on_log,
                    ) as session:
                        await session.initialize()
                        await self._load_tools(session)
                        scope.deadline = math.inf
                        link.session = session
                        self.status = CONNECTED
                        link.ready.set()
                        log.debug("Server '%s': connected, %d tools", self.name, len(self.tools))
                        await link.hang_up.wait()
        except Exception as exc:  # an ExceptionGroup from a transport's task group, or a plain error
            error = exc
            if self.config.type == "stdio" and not link.ready.is_set():
                # The process is gone; its last stderr lines may still be in the pipe. They say why.
                with anyio.move_on_after(STDERR_DRAIN_TIMEOUT, shield=True):
                    await anyio.to_thread.run_sync(link.clues.stderr_closed.wait, STDERR_DRAIN_TIMEOUT)
        finally:
            was_connected = link.ready.is_set()
            link.session = None
            self._record_end(link, error, timed_out=scope.cancelled_caught, was_connected=was_connected)
            link.ready.set()
            link.ended.set()

    def _record_end(self, link: _Link, error: BaseException | None, *, timed_out: bool, was_connected: bool) -> None:
        name = self.name
        if link is not self._link:
            return
        auth = _find(error, AuthRequiredError) if error is not None else None
        failure = self.auth_failure()
        if auth is None and isinstance(failure, AuthRequiredError):
            auth = failure  # the transport swallowed it (SSE) or only saw the cancellation
        if auth is not None:
            newly = self.status != AUTH_REQUIRED
            self.status, self.error = AUTH_REQUIRED, _auth_error(auth, name)
            link.reason = auth.message
            if newly:  # once, not on every reconnect attempt
                log.log(logging.WARNING if self._gateway.announce else logging.DEBUG, "%s", self.error.message)
        elif timed_out:
            self.status = FAILED
            self.error = CallTimeoutError(f"Server '{name}' did not connect within {self.connect_timeout:g} s.", server=name)
            link.reason = "timed out"
        elif isinstance(failure, ConnectError) and error is not None:
            link.reason = failure.message  # a token refresh failed: it says so itself
            self.status, self.error = FAILED, failure
        elif error is not None:
            link.reason = _reason(error, self.config, None if was_connected else link.clues)
            verb = "failed" if was_connected else "failed to connect"
            self.status, self.error = FAILED, ConnectError(f"Server '{name}' {verb}: {link.reason}", server=name)
        else:
            self.status = FAILED
            message = "is closed" if self._closing else "closed the connection; it is reconnected on the next call"
            self.error = ConnectError(f"Server '{name}' {message}.", server=name)
        if not was_connected:
            self.tools = {}
        log.debug("%s", self.error.message)

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


class _EndSignal:
    """A transport's read stream that sets `hang_up` when the session stops reading it.

    The session stops reading when the stream ends (a stdio server exited, an SSE stream
    closed), which is how the connection task learns that its peer went away.
    """

    def __init__(self, stream: Any, hang_up: anyio.Event) -> None:
        self._stream = stream
        self._hang_up = hang_up

    def __getattr__(self, name: str) -> Any:  # e.g. `last_context` of the SDK's context streams
        return getattr(self._stream, name)

    async def receive(self) -> Any:
        return await self._stream.receive()

    async def aclose(self) -> None:
        self._hang_up.set()
        await self._stream.aclose()

    def __aiter__(self) -> _EndSignal:
        return self

    async def __anext__(self) -> Any:
        return await self._stream.__anext__()

    async def __aenter__(self) -> _EndSignal:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        self._hang_up.set()
        return await self._stream.__aexit__(*exc_info)


@contextlib.asynccontextmanager
async def _open_transport(server: ServerConfig, auth: httpx2.Auth | None,
                          clues: _Clues) -> AsyncIterator[tuple[Any, Any]]:
    if server.type == "stdio":
        async with _stdio_transport(server, clues) as streams:
            yield streams
    elif server.type == "sse":
        assert server.url is not None

        def factory(**_: Any) -> httpx2.AsyncClient:  # sse_client's own arguments are ignored
            return http_client(server, auth, on_response=clues.note_response)

        async with sse_client(server.url, httpx_client_factory=factory, sse_read_timeout=STREAM_READ_TIMEOUT) as streams:
            yield streams
    else:
        assert server.url is not None
        async with http_client(server, auth, on_response=clues.note_response) as client, \
                streamable_http_client(server.url, http_client=client) as streams:
            yield streams


@contextlib.asynccontextmanager
async def _stdio_transport(server: ServerConfig, clues: _Clues) -> AsyncIterator[tuple[Any, Any]]:
    """Run a stdio server with its stderr going to our log at DEBUG (and its last lines to `clues`)."""
    assert server.command is not None
    params = StdioServerParameters(
        command=server.command, args=list(server.args), env={**os.environ, **server.env}, cwd=server.cwd
    )
    read_fd, write_fd = os.pipe()
    threading.Thread(target=_log_stderr, args=(server.name, read_fd, clues), daemon=True,
                     name=f"stderr-{server.name}").start()
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
                    clues.stderr.append(line.rstrip()[:_MAX_STDERR_LINE])
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
    if tool.output_schema is not None:
        row["outputSchema"] = tool.output_schema
    return row


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


def _auth_error(exc: AuthRequiredError, server: str) -> AuthRequiredError:
    if f"toolscript auth {server}" in exc.message:
        return exc
    return AuthRequiredError(
        f"{exc.message.rstrip('.')}. Run: toolscript auth {server}", server=server, error=exc.error, scope=exc.scope
    )


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _find(exc: BaseException, kind: type[AuthRequiredError]) -> AuthRequiredError | None:
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
