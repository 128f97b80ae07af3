"""One server's connection: connecting, reconnecting, closing, and what its session hears.

It stands apart from `gateway` because a connection's lifecycle (the transport and session
held open in a task of their own, the bounded reconnect with backoff, the status and one-line
error of a server, its tool list) is one concern, and the requests sent on it (`gateway`'s
`_Server`, which extends `Upstream`) another. The session's callbacks for what a server asks
go to the server's `Askers` (askers.py), which decides who answers. Nothing here imports
`gateway`; the gateway re-exports the names its callers use (`SessionHooks`, the statuses).
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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel
import httpx2
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

if __package__:
    from .askers import Askers, outside_requests
    from .errors import (
        AuthError,
        AuthRequiredError,
        CallTimeoutError,
        ConnectError,
        StorageError,
        ToolscriptError,
    )
    from .gateway_auth import StoredTokenAuth
    from .http_transport import DropWatch, ServerGoneError, end_session, may_be_sse, serves_sse
    from .logs import SERVER
    from .redact import redact
    from .stdio_transport import DEFAULT_MAX_MESSAGE, Ending, MessageTooLargeError, bounded_lines, open_stdio
    from .storage import OAuthStatus, Store, note_auth_not_needed
else:
    from askers import Askers, outside_requests
    from errors import (
        AuthError,
        AuthRequiredError,
        CallTimeoutError,
        ConnectError,
        StorageError,
        ToolscriptError,
    )
    from gateway_auth import StoredTokenAuth
    from http_transport import DropWatch, ServerGoneError, end_session, may_be_sse, serves_sse
    from logs import SERVER
    from redact import redact
    from stdio_transport import DEFAULT_MAX_MESSAGE, Ending, MessageTooLargeError, bounded_lines, open_stdio
    from storage import OAuthStatus, Store, note_auth_not_needed

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from config import ServerConfig

__all__ = [
    "AUTH_REQUIRED",
    "CONNECTED",
    "CONNECTING",
    "DEFAULT_CONNECT_TIMEOUT",
    "FAILED",
    "MAX_PAGES",
    "STOP_TIMEOUT",
    "AuthFactory",
    "Connection",
    "SessionHooks",
    "Upstream",
    "connect_timeout_error",
    "first_line",
    "http_client",
    "tool_allowed",
]

log = logging.getLogger("toolscript.gateway")
# Log notifications of the servers (notifications/message), at their own level.
server_log = logging.getLogger("toolscript.server")

CONNECTED, FAILED, AUTH_REQUIRED, CONNECTING = "connected", "failed", "auth_required", "connecting"
DEFAULT_CONNECT_TIMEOUT = 30.0
# An idle HTTP stream (SSE GET, a long tool call's response) may stay silent this long.
STREAM_READ_TIMEOUT = 300.0
RECONNECT_ATTEMPTS = 3
RECONNECT_BACKOFF = 0.25  # seconds before the second attempt; doubles after each failure
# After a failed reconnect round, calls fail fast with its reason for this long, so a dead
# server does not make every call wait out more connection attempts.
RETRY_COOLDOWN = 2.0
STOP_TIMEOUT = 10.0
MAX_PAGES = 1000
_MAX_STDERR_LINE = 300
_MAX_STDERR_LOG_LINE = 8192  # characters of a stdio server's stderr line logged; the rest is skipped
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

_Found = TypeVar("_Found", bound=BaseException)

AuthFactory = Callable[["ServerConfig"], "httpx2.Auth | None"]
"""Given an http/sse server, return the `httpx2.Auth` for its requests (or None)."""


@dataclass
class SessionHooks:
    """What a front serving MCP to other clients (front.py) hears from the servers' sessions.

    Each runs on the gateway's loop thread. `status_changed(server)` after a server connected
    or its connection attempt or connection ended; `notification(server, message)` for each
    notification it sends (after the gateway's own handling, so a tool list is fresh);
    `servers_changed(gone, new)` when the config changed: the sessions of `gone` servers
    (removed or changed) are closing, `new` ones (added or changed) are connecting. None may
    block. With `offers_sampling`, the sessions declare sampling: a front passes a server's
    sampling requests on to its clients (see `Asker`).
    """

    status_changed: Callable[[str], None] | None = None
    notification: Callable[[str, Any], None] | None = None
    servers_changed: Callable[[list[str], list[str]], None] | None = None
    offers_sampling: bool = False


def tool_allowed(server: ServerConfig, tool: str) -> bool:
    """Return whether `include_tools` and then `exclude_tools` of `server` let `tool` through."""
    if server.include_tools and not any(fnmatch.fnmatchcase(tool, p) for p in server.include_tools):
        return False
    return not any(fnmatch.fnmatchcase(tool, p) for p in server.exclude_tools)


def http_client(
    server: ServerConfig,
    auth: httpx2.Auth | None = None,
    *,
    on_response: Callable[[httpx2.Response], Awaitable[None]] | None = None,
    watch: DropWatch | None = None,
) -> httpx2.AsyncClient:
    """Build the HTTP client of an http/sse server: its static headers, its timeout and `auth`.

    This is the one place where an HTTP transport's client is made; OAuth plugs in as `auth`.
    `on_response` sees every response (the SDK turns an HTTP error into a JSON-RPC error
    without its status); `watch` sees every answer to a POST that breaks off.
    """
    timeout = server.timeout or DEFAULT_CONNECT_TIMEOUT
    return httpx2.AsyncClient(
        headers=dict(server.headers),
        timeout=httpx2.Timeout(timeout, read=max(timeout, STREAM_READ_TIMEOUT)),
        auth=auth,
        event_hooks={"response": [on_response]} if on_response is not None else None,
        transport=watch.transport(httpx2.AsyncHTTPTransport()) if watch is not None else None,
    )


@dataclass(eq=False)
class Connection:
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
    ending: Ending = field(default_factory=Ending)  # by when a stdio server's process must be gone once it closes


@dataclass(eq=False)
class _Clues:
    """What a connection's transport saw that explains its failure better than the SDK's error."""

    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))  # a stdio server's last lines
    stderr_closed: threading.Event = field(default_factory=threading.Event)
    http_error: tuple[int, str] | None = None  # status and URL of the last HTTP error answering a POST
    session_id: str | None = None  # a streamable HTTP server's
    serves_sse: bool = False  # an http server refused to connect, and a GET answers with an event stream

    async def note_response(self, response: httpx2.Response) -> None:
        self.session_id = response.headers.get("mcp-session-id", self.session_id)
        # Only POSTs carry MCP messages; a GET stream may be refused (405) without harm.
        if response.status_code >= 400 and response.request.method == "POST":
            self.http_error = response.status_code, str(response.request.url.copy_with(query=None))


class Upstream:
    """One configured server and its current connection; used only on the loop thread.

    Its connection tasks run in `connections`; `auth` (None for stdio servers) makes the
    `httpx2.Auth` of each new connection; `store` holds its OAuth record; `announce` logs
    that it needs authorization as a warning rather than at debug level. What the server
    asks goes to `askers`, where the requests in flight register who may answer.
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
        self._connection: Connection | None = None
        self._closing = False
        self._reconnect_lock = anyio.Lock()
        self._fail_fast_until = 0.0  # after a failed reconnect round, calls fail with its error until then
        self._tool_refresh_done: anyio.Event | None = None  # None unless a tool list refresh is in progress
        self.askers = Askers(self.name)
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

    def _on_auth_failure(self, connection: Connection, error: AuthError | ConnectError) -> None:
        # Over SSE a failed POST is only logged by the SDK and its call would wait for its
        # timeout; over streamable HTTP a refused token ends the transport anyway. End the
        # connection so calls in flight fail now, except for a step-up over streamable HTTP,
        # which fails only its own request.
        if self.config.type == "sse" or getattr(error, "error", None) != "insufficient_scope":
            connection.close_requested.set()

    def begin_connect(self) -> Connection:
        """Start a connection task; its `connected_or_failed` is set once it is connected or has failed."""
        if self._closing:
            raise ConnectError(f"Server '{self.name}' is closed: the gateway is stopping.", server=self.name)
        connection = Connection(first=self._connection is None)
        self._connection = connection
        self._connections.start_soon(self._run, connection, name=f"toolscript-{self.name}")
        return connection

    async def connect(self) -> Connection:
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

    async def live_connection(self) -> Connection:
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

    async def lost_connection_error(self, connection: Connection, what: str) -> ToolscriptError:
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

    async def close_connection(self, connection: Connection) -> None:
        """Close `connection` and wait until its task has finished."""
        connection.close_requested.set()
        with anyio.move_on_after(STOP_TIMEOUT):
            await connection.closed.wait()

    def close(self, within: float | None = None) -> None:
        """Close the current connection for good: the gateway is stopping; a stdio server ends `within` seconds."""
        self._closing = True
        if self._connection is not None:
            if within is not None:
                self._connection.ending.within(within)
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
            log.warning("Server '%s': could not refresh its tool list: %s", self.name, first_line(exc))
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

    async def _run(self, connection: Connection) -> None:
        """Connect, then hold the connection open until it is closed or lost."""
        SERVER.set(self.name)  # what the SDK logs for this connection names the server
        outside_requests()  # even when a request opened it, the connection is not that request's
        error: BaseException | None = None
        auth = self.auth = self._auth_factory(self.config) if self._auth_factory is not None else None
        if isinstance(auth, StoredTokenAuth):
            auth.on_failure = lambda failure: self._on_auth_failure(connection, failure)
        try:
            with anyio.CancelScope() as scope:
                scope.deadline = anyio.current_time() + self.connect_timeout
                async with _open_transport(self.config, auth, connection.clues, connection.ending) as (read, write):
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
        self, connection: Connection, error: BaseException | None, *, timed_out: bool, was_connected: bool
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
            self.error = connect_timeout_error(name, self.connect_timeout)
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
        for _ in range(MAX_PAGES):
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
            log.debug("Server '%s': transport error: %s", self.name, first_line(message))
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
        callbacks: dict[str, Any] = {"elicitation_callback": self.askers.elicit}
        if self._hooks.offers_sampling:
            callbacks["sampling_callback"] = self.askers.sample
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
    server: ServerConfig, auth: httpx2.Auth | None, clues: _Clues, ending: Ending
) -> AsyncIterator[tuple[Any, Any]]:
    if server.type == "stdio":
        async with _stdio_transport(server, clues, ending) as streams:
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
        watch = DropWatch(server.url)  # a server that dies mid-call ends the connection at once
        async with (
            http_client(server, auth, on_response=clues.note_response, watch=watch) as client,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(watch.run)
            try:
                # Not ended by the SDK, which would try (and warn) even when the server is gone.
                async with streamable_http_client(server.url, http_client=client, terminate_on_close=False) as streams:
                    yield streams
                await end_session(client, server.url, clues.session_id)
            except Exception:
                refused = clues.http_error  # by the server itself, not (say) its token endpoint
                if clues.session_id is None and refused is not None and refused[1] == str(watch.url):
                    clues.serves_sse = may_be_sse(refused[0]) and await serves_sse(server.url, dict(server.headers))
                raise
            finally:
                tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def _stdio_transport(server: ServerConfig, clues: _Clues, ending: Ending) -> AsyncIterator[tuple[Any, Any]]:
    """Run a stdio server with its stderr going to our log at DEBUG (and its last lines to `clues`)."""
    assert server.command is not None
    max_message = DEFAULT_MAX_MESSAGE if server.max_message_mb is None else int(server.max_message_mb * 1024 * 1024)
    read_fd, write_fd = os.pipe()
    threading.Thread(
        target=_log_stderr, args=(server.name, read_fd, clues), daemon=True, name=f"stderr-{server.name}"
    ).start()
    try:
        async with open_stdio(
            [server.command, *server.args],
            name=server.name,
            env={**os.environ, **server.env},
            cwd=server.cwd,
            stderr=write_fd,
            max_message=max_message,
            ending=ending,
        ) as streams:
            os.close(write_fd)  # the child has its own copy; the reader sees EOF when the child exits
            write_fd = -1
            yield streams
    finally:
        if write_fd != -1:
            os.close(write_fd)


def _log_stderr(server: str, fd: int, clues: _Clues) -> None:
    try:
        for line in bounded_lines(fd, _MAX_STDERR_LOG_LINE):
            log.debug("%s (stderr): %s", server, line.rstrip())
            if line.strip():
                clues.stderr.append(redact(line.rstrip())[:_MAX_STDERR_LINE])  # masked before it is cut
    finally:
        os.close(fd)
        clues.stderr_closed.set()


async def _negotiate(session: ClientSession, negotiation: str) -> None:
    if negotiation == "auto":
        from mcp.client._probe import negotiate_auto  # the SDK's own "auto" mode of `Client`

        await negotiate_auto(session)
    else:
        await session.initialize()


def connect_timeout_error(server: str, seconds: float) -> CallTimeoutError:
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
    if isinstance(leaf, (MessageTooLargeError, ServerGoneError)):
        return leaf.message
    if isinstance(leaf, OSError) and server.type == "stdio":
        return f"cannot run {server.command!r}: {leaf.strerror or leaf}"
    if isinstance(leaf, httpx2.HTTPStatusError):
        return _http_failure(leaf.response.status_code, str(leaf.request.url.copy_with(query=None)), server, clues)
    if isinstance(leaf, MCPError) and clues is not None and clues.http_error is not None:
        return _http_failure(*clues.http_error, server, clues)  # the SDK's error lost the status ("Not Found")
    if isinstance(leaf, httpx2.TimeoutException):
        return f"no answer from {server.url} in time"
    if isinstance(leaf, (httpx2.TransportError, OSError)):
        return f"cannot reach {server.url}: {first_line(leaf) or type(leaf).__name__}"
    if isinstance(leaf, (MCPError, ToolscriptError)):
        return leaf.message
    text = first_line(leaf)
    return f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__


def _http_failure(status: int, url: str, server: ServerConfig, clues: _Clues | None) -> str:
    if (
        server.type == "http"
        and may_be_sse(status)
        and (httpx2.URL(url).path.rstrip("/").endswith("/sse") or (clues is not None and clues.serves_sse))
    ):
        return f'HTTP {status} from {url}: it looks like an SSE endpoint; set type = "sse" in [servers.{server.name}]'
    hint = ": is this the server's MCP endpoint?" if status in (404, 405) else ""
    return f"HTTP {status} from {url}{hint}"


def _stderr_tail(clues: _Clues | None) -> str:
    if clues is None:
        return " (run with -v to see its stderr)"
    if not clues.stderr:
        return " without writing to stderr"
    return "; its stderr ended with:" + "".join(f"\n    {line}" for line in clues.stderr)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
