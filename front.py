"""toolscript as an MCP server: the configured servers, served to other MCP clients.

It stands alone because it is toolscript's only server side of MCP. Everything else is a
client of MCP servers; here the SDK's low-level `Server` takes requests from a client
(Claude Code, Codex, Cursor...) and passes them on through a `Gateway`'s sessions, so
that all of them share one credential store and refresh each token once. `toolscript
serve` runs it over stdio (`serve_stdio`); the gateway's streamable HTTP `/mcp` reuses
`Front` and its views.

A `Front` belongs to one gateway and runs on that gateway's event loop. `Front.view(names)`
builds an SDK `Server` over some of its servers (by default every server of the gateway,
as its config changes): with one server, names pass through unchanged (a transparent
proxy); with several, tools and prompts are `SERVER__NAME` and a resource read goes to the
server whose listing or template produced the URI (`toolscript:SERVER:URI` where two do).
Requests are forwarded raw, so what a server sends (annotations, output schemas,
structured content, `_meta`) reaches the client as the SDK lets it through, without the
SDK client's result checks in between.
Server-to-client notifications (log messages, list changes, resource updates) arrive
through the gateway's `SessionHooks` and go to the clients of the views that include the
server; a server's requests (elicitation, sampling) go to the client whose request it is
serving, and to no other (`_ForwardedRequest`, the request's `gateway.Asker`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import signal
import stat
import threading
import warnings
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
import mcp_types as types
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from pydantic import TypeAdapter, ValidationError

if __package__:
    from .config_watch import file_stamp
    from .errors import ToolscriptError, did_you_mean
    from .gateway import (
        AUTH_REQUIRED,
        CONNECTED,
        CONNECTING,
        SEPARATOR,
        Gateway,
        RequestClock,
        SessionHooks,
        tool_allowed,
    )
    from .gateway_http import MAX_UNSENT_BYTES, MCP_PATH
else:
    from config_watch import file_stamp
    from errors import ToolscriptError, did_you_mean
    from gateway import (
        AUTH_REQUIRED,
        CONNECTED,
        CONNECTING,
        SEPARATOR,
        Gateway,
        RequestClock,
        SessionHooks,
        tool_allowed,
    )
    from gateway_http import MAX_UNSENT_BYTES, MCP_PATH

if TYPE_CHECKING:
    from mcp.client.session import ClientRequestContext, ClientSession
    from mcp.server.session import ServerSession

    from config import Config

__all__ = ["DEFAULT_LIST_WAIT", "Front", "HttpFront", "serve_stdio"]

log = logging.getLogger("toolscript.front")

# Listings made this soon after start wait for servers still connecting, so that a client
# that ignores list_changed still sees them; later servers appear through list_changed.
DEFAULT_LIST_WAIT = 5.0
# How often a server that needs authorization is checked for a new `toolscript auth`.
AUTH_POLL_INTERVAL = 2.0
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
_RAW: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])  # a result as sent; the server re-checks it
_STATE_KEY = "toolscript.downstream"
# In a view of several servers, a resource URI that two servers claim is shown as
# toolscript:SERVER:URI (a valid URI still), and a read of that goes to SERVER with URI.
RESOURCE_PREFIX = "toolscript:"


class Front:
    """The servers of one `Gateway`, served as MCP to clients; used only on the gateway's loop.

    `hooks` are the `SessionHooks` the gateway was built with; the front fills them in, so
    build it before the gateway starts. Run it with `async with front.running():`.
    """

    def __init__(
        self,
        gateway: Gateway,
        hooks: SessionHooks,
        *,
        list_wait: float = DEFAULT_LIST_WAIT,
        servers_changed: Callable[[], None] | None = None,
    ) -> None:
        self.gateway = gateway
        self.list_wait = list_wait
        self._servers_changed = servers_changed  # told (on the loop) once the gateway's servers changed
        hooks.status_changed = self._on_status_changed
        hooks.notification = self._on_notification
        hooks.servers_changed = self._on_servers_changed
        hooks.offers_sampling = True  # passed on to the client whose request a server is serving
        self._views: list[_View] = []
        self._events_in, self._events = anyio.create_memory_object_stream[tuple[str, str, Any]](math.inf)
        self._status_changed = anyio.Event()
        self._statuses: dict[str, str] = {}
        self._list_deadline = math.inf
        self._tasks: anyio.abc.TaskGroup | None = None
        # What each server's last resource and template listing held: a read goes to the server
        # whose listing or template produced the URI, never to one that merely mentioned it.
        self._listed: dict[str, set[str]] = {}
        self._templates: dict[str, list[str]] = {}
        self._subscriptions: dict[tuple[str, str], int] = {}  # (server, uri) -> subscribed clients
        self._log_level: str | None = None  # the level last asked for, applied to servers as they connect

    def view(self, names: Iterable[str] | None = None, *, version: str = "") -> _View:
        """Return an SDK `Server` serving `names` (default: every server of the gateway, as its config changes):
        with one server, its names as they are, else `SERVER__NAME`."""
        view = _View(self, None if names is None else list(names), version=version)
        self._views.append(view)
        return view

    def drop_view(self, view: _View) -> None:
        """Forget `view` (its server left the config)."""
        self._views.remove(view)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Front]:
        """Deliver server-to-client traffic and watch for new authorizations until exit."""
        self._list_deadline = anyio.current_time() + self.list_wait
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            tasks.start_soon(self._deliver_events)
            tasks.start_soon(self._watch_authorizations)
            try:
                yield self
            finally:
                self._tasks = None
                tasks.cancel_scope.cancel()

    # -- requests from clients, passed on -------------------------------------------------

    async def forward(
        self, ctx: ServerRequestContext[Any, Any], server: str, what: str, request: Any, *, tool_call: bool = False
    ) -> dict[str, Any]:
        """Send `request` to `server` for the client request `ctx`; return the result as the server sent it.

        Progress comes back under the client's token, and starts the server's timeout again
        (asked for even when the client did not ask, for that); the timeout stops while the
        client is asked for input or sampling on the request's behalf. The server's error
        answers are raised as they are; the gateway's errors (`ToolscriptError`) are raised for
        the caller to shape.
        """
        token = (ctx.meta or {}).get("progress_token")
        clock = self.gateway.clock_for(server)

        async def progress(value: float, total: float | None, message: str | None) -> None:
            clock.restart()
            if token is not None:
                await ctx.session.report_progress(value, total, message)

        async def send(session: ClientSession) -> dict[str, Any]:
            try:
                result = await session.send_request(request, _RAW, progress_callback=progress)
            except ValidationError:
                raise MCPError(types.INTERNAL_ERROR, f"Server '{server}' sent an invalid result for {what}.") from None
            if token is not None:
                await anyio.lowlevel.checkpoint()  # let progress that came before the result go out first
            return result

        asker = _ForwardedRequest(ctx, clock)
        return await self.gateway.forward(server, what, send, clock=clock, tool_call=tool_call, asker=asker)

    async def settle(self, names: list[str]) -> None:
        """Wait (within `list_wait` of the start) until none of `names` is still connecting."""
        while any(self.gateway.status(name) == CONNECTING for name in names):
            remaining = self._list_deadline - anyio.current_time()
            if remaining <= 0:
                return
            with anyio.move_on_after(remaining):
                await self._status_changed.wait()

    async def list_all(self, server: str, method: type[Any], key: str) -> list[dict[str, Any]]:
        """Every entry of a paginated listing (`key` of each page) of a connected server; [] if it failed."""
        if self.gateway.status(server) != CONNECTED:
            return []
        entries: list[dict[str, Any]] = []
        cursor: str | None = None
        try:
            for _ in range(1000):
                request = method(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
                page = await self.gateway.forward(
                    server, f"the {key} list", lambda session, r=request: session.send_request(r, _RAW)
                )
                entries.extend(page.get(key) or [])
                cursor = page.get("nextCursor")
                if not cursor:
                    break
        except MCPError as exc:
            if exc.code != types.METHOD_NOT_FOUND:
                log.warning("Server '%s' answered the %s list with an error: %s", server, key, exc.message)
        except (ToolscriptError, ValidationError) as exc:
            log.warning("Server '%s': cannot list its %s: %s", server, key, exc)
        return entries

    async def offers(self, server: str, capability: str) -> bool:
        """Whether connected `server` declared `capability` (resources, prompts, completions, logging)."""
        if self.gateway.status(server) != CONNECTED:
            return False
        try:
            session = await self.gateway.session_for(server)
        except ToolscriptError:
            return False
        return getattr(session.server_capabilities, capability, None) is not None

    def record_listing(self, server: str, key: str, entries: Iterable[dict[str, Any]]) -> None:
        """Remember what `server` listed as its resources (`key` "resources") or templates ("resourceTemplates")."""
        if key == "resources":
            self._listed[server] = {entry["uri"] for entry in entries if isinstance(entry.get("uri"), str)}
        elif key == "resourceTemplates":
            self._templates[server] = [e["uriTemplate"] for e in entries if isinstance(e.get("uriTemplate"), str)]

    def resource_owners(self, uri: str, names: list[str]) -> list[str]:
        """The servers among `names` that listed `uri`, or have a template that matches it."""
        return [
            server
            for server in names
            if uri in self._listed.get(server, ())
            or any(_template_matches(template, uri) for template in self._templates.get(server, ()))
        ]

    def template_owners(self, template: str, names: list[str]) -> list[str]:
        """The servers among `names` that listed the URI template `template`."""
        return [server for server in names if template in self._templates.get(server, ())]

    async def subscribe(self, server: str, uri: str) -> None:
        """Subscribe to `uri` at `server` for one more client (the server hears of the first one only)."""
        key = (server, uri)
        if not self._subscriptions.get(key):
            request = types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri))
            await self.gateway.forward(
                server, f"the subscription to '{uri}'", lambda session: session.send_request(request, _RAW)
            )
        self._subscriptions[key] = self._subscriptions.get(key, 0) + 1

    async def unsubscribe(self, server: str, uri: str) -> None:
        """Drop one client's subscription to `uri`; the last one unsubscribes at `server`."""
        key = (server, uri)
        count = self._subscriptions.get(key, 0)
        if count > 1:
            self._subscriptions[key] = count - 1
            return
        self._subscriptions.pop(key, None)
        if count == 1:
            request = types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=uri))
            await self.gateway.forward(
                server, f"the unsubscription from '{uri}'", lambda session: session.send_request(request, _RAW)
            )

    def unsubscribe_soon(self, server: str, uri: str) -> None:
        """`unsubscribe` in the background (a client went away)."""
        if self._tasks is not None:
            self._tasks.start_soon(_logged, self.unsubscribe(server, uri), f"unsubscribe from '{uri}'")

    async def set_log_level(self, level: str, names: list[str]) -> None:
        """Ask every connected server of `names` that offers logging for `level`; remember it for later ones."""
        self._log_level = level
        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(self._apply_log_level, name)

    # -- server-to-client traffic ---------------------------------------------------------

    def _on_status_changed(self, server: str) -> None:
        self._status_changed.set()
        self._status_changed = anyio.Event()
        self._events_in.send_nowait(("status", server, None))

    def _on_notification(self, server: str, message: Any) -> None:
        self._events_in.send_nowait(("notification", server, message))

    def _on_servers_changed(self, gone: list[str], new: list[str]) -> None:
        self._events_in.send_nowait(("servers", "", gone))

    async def _deliver_events(self) -> None:
        """Handle the gateway's events one at a time, in the order they came."""
        async for kind, server, message in self._events:
            try:
                if kind == "status":
                    self._status_event(server)
                elif kind == "servers":
                    await self._servers_event(message)
                else:
                    await self._notify(server, message)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):  # a client went away meanwhile
                log.debug("Server '%s': a client left before %s reached it", server, type(message).__name__)
            except Exception:  # one bad event must not stop the others
                log.exception("Server '%s': could not pass on %s", server, type(message).__name__)

    async def _servers_event(self, gone: list[str]) -> None:
        """The config changed: forget what `gone` servers (removed or changed) listed, tell the clients."""
        removed = [name for name in gone if name not in self.gateway.server_names]
        for name in gone:
            self._statuses.pop(name, None)  # a changed server's connection is announced as a new one's
            self._listed.pop(name, None)
            self._templates.pop(name, None)
        for key in [key for key in self._subscriptions if key[0] in removed]:
            del self._subscriptions[key]
        if self._servers_changed is not None:
            self._servers_changed()
        for view in list(self._views) if gone else []:
            # A view of one removed server is ending (HttpFront); a changed one's clients are told.
            if not view.follows_config and not any(name in view.names and name not in removed for name in gone):
                continue
            for downstream in list(view.downstreams):
                for key in [key for key in downstream.subscriptions if key[0] in removed]:
                    del downstream.subscriptions[key]
                await _logged(_announce_lists(downstream), "announce the changed lists")

    def _status_event(self, server: str) -> None:
        if server not in self.gateway.server_names:
            return  # a server the config no longer has, closing
        status, before = self.gateway.status(server), self._statuses.get(server)
        self._statuses[server] = status
        if status == before:
            return
        if status == CONNECTED:
            for downstream in self._downstreams(server):
                downstream.told.discard(server)  # should it need authorization again, say so again
        if status == CONNECTED and self._tasks is not None:
            self._tasks.start_soon(_logged, self._on_connected(server), "pass on a connection")
        elif status == AUTH_REQUIRED and self._tasks is not None:
            self._tasks.start_soon(
                _logged,
                self._report_authorization(server, self._downstreams(server)),
                "report a server needing authorization",
            )

    async def _on_connected(self, server: str) -> None:
        """A server (re)connected: restore its log level and subscriptions, and say its lists changed."""
        await self._apply_log_level(server)
        for (owner, uri), count in list(self._subscriptions.items()):
            if owner == server and count:
                request = types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri))
                await _logged(
                    self.gateway.forward(
                        server, f"the subscription to '{uri}'", lambda session, r=request: session.send_request(r, _RAW)
                    ),
                    f"subscribe again to '{uri}'",
                )
        for downstream in self._downstreams(server):
            await downstream.session.send_tool_list_changed()
            if await self.offers(server, "resources"):
                await downstream.session.send_resource_list_changed()
            if await self.offers(server, "prompts"):
                await downstream.session.send_prompt_list_changed()

    async def _apply_log_level(self, server: str) -> None:
        level = self._log_level
        if level is None or not await self.offers(server, "logging"):
            return
        request = types.SetLevelRequest(params=types.SetLevelRequestParams(level=level))  # type: ignore[arg-type]
        await _logged(
            self.gateway.forward(server, "the log level", lambda session: session.send_request(request, _RAW)),
            f"set the log level of '{server}'",
        )

    async def _notify(self, server: str, message: Any) -> None:
        """Pass a server's notification on to the clients of the views that include it."""
        if isinstance(message, types.ToolListChangedNotification):
            for downstream in self._downstreams(server):
                await downstream.session.send_tool_list_changed()
        elif isinstance(message, types.ResourceListChangedNotification):
            for downstream in self._downstreams(server):
                await downstream.session.send_resource_list_changed()
        elif isinstance(message, types.PromptListChangedNotification):
            for downstream in self._downstreams(server):
                await downstream.session.send_prompt_list_changed()
        elif isinstance(message, types.ResourceUpdatedNotification):
            for downstream in self._downstreams(server):
                subscribed_as = downstream.subscriptions.get((server, message.params.uri))
                if subscribed_as is not None:
                    await downstream.session.send_resource_updated(subscribed_as)
        elif isinstance(message, types.LoggingMessageNotification):
            params = message.params
            await self._broadcast_log(server, params.level, params.data, params.logger)
        elif isinstance(message, types.ElicitCompleteNotification):
            for downstream in self._downstreams(server):
                if _declares(downstream.session, lambda c: c.elicitation is not None):
                    await downstream.session.send_elicit_complete(message.params.elicitation_id)

    async def greet(self, downstream: _Downstream, request_id: Any) -> None:
        """Tell a client, along with its request, which of its servers need authorization (once each).

        With a request, not right after `initialized`: over streamable HTTP a message sent
        outside a request goes on the client's GET stream, which it may not have opened yet.
        """
        for server in downstream.view.names:
            if server not in downstream.told and self.gateway.status(server) == AUTH_REQUIRED:
                await self._report_authorization(server, [downstream], request_id)

    async def _report_authorization(self, server: str, downstreams: list[_Downstream], request_id: Any = None) -> None:
        """A log warning with the one-line "Run: toolscript auth NAME" message, where clients show logs."""
        message = self.gateway.error(server).message
        for downstream in downstreams:
            if server in downstream.told:
                continue
            downstream.told.add(server)
            if downstream.wants_log("warning"):
                await downstream.session.send_log_message(
                    "warning",  # type: ignore[arg-type]
                    message,
                    logger="toolscript",
                    related_request_id=request_id,
                )

    async def _broadcast_log(self, server: str, level: str, data: Any, logger: str | None) -> None:
        for downstream in self._downstreams(server):
            if downstream.wants_log(level):
                await downstream.session.send_log_message(
                    level, data, logger=downstream.view.logger_name(server, logger)
                )  # type: ignore[arg-type]

    def _downstreams(self, server: str) -> list[_Downstream]:
        return [downstream for view in self._views if server in view.names for downstream in view.downstreams]

    async def _watch_authorizations(self) -> None:
        """Reconnect a server that needs authorization once its record changes (a `toolscript auth`).

        A record's state (its file's identity, time and size) counts as used once the server
        connected with it or was reconnected because of it; a change seen while the server
        is connecting waits for the outcome.
        """
        used: dict[str, Any] = {}
        while True:
            for name in self.gateway.server_names:
                status, stamp = self.gateway.status(name), file_stamp(self.gateway.store.path(name))
                used.setdefault(name, stamp)
                if status == CONNECTED:
                    used[name] = stamp
                elif status == AUTH_REQUIRED and stamp != used[name] and self._tasks is not None:
                    used[name] = stamp
                    log.info("Server '%s': its authorization changed; reconnecting", name)
                    self._tasks.start_soon(_logged, self.gateway.session_for(name), f"reconnect '{name}'")
            await anyio.sleep(AUTH_POLL_INTERVAL)


def _client_connection(ctx: ServerRequestContext[Any, Any]) -> Any:
    """The client connection a request came on: the SDK's per-connection object (a ServerSession is made
    per request and has no public handle to it)."""
    return ctx.session._connection


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, one per request
class _ForwardedRequest:
    """A client's request passed on to a server (a `gateway.Asker`): what the server asks while it serves
    the request (elicitation, sampling) goes to that client, if it declared it takes such requests."""

    ctx: ServerRequestContext[Any, Any]
    clock: RequestClock  # the request's timeout, stopped while the client answers

    @property
    def caller(self) -> object:
        return _client_connection(self.ctx)  # the same for every request of one client

    async def elicit(
        self, server: str, context: ClientRequestContext | None, params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        url = isinstance(params, types.ElicitRequestURLParams)  # URL mode only for clients that say they take it
        if not _declares(self.ctx.session, lambda c: c.elicitation is not None and (not url or c.elicitation.url)):
            log.info("Server '%s' asked for input, which the MCP client cannot give; declined.", server)
            return types.ElicitResult(action="decline")
        # The client shows the message as its own server's (toolscript's): it must say which server asks.
        params = params.model_copy(update={"message": f"{_asking(server)}: {params.message}"})
        return await self._ask(context, types.ElicitRequest(params=params), types.ElicitResult)

    async def sample(self, server: str, context: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
        if not _declares(self.ctx.session, lambda c: c.sampling is not None):
            log.info("Server '%s' asked for sampling, which the MCP client does not offer; refused.", server)
            return types.ErrorData(code=types.INVALID_REQUEST, message="The MCP client does not support sampling.")
        result_type = (
            types.CreateMessageResultWithTools if params.tools or params.tool_choice else types.CreateMessageResult
        )
        system = f"{_asking(server)} (through toolscript) for this completion."
        params = params.model_copy(update={"system_prompt": "\n\n".join(filter(None, [system, params.system_prompt]))})
        return await self._ask(context, types.CreateMessageRequest(params=params), result_type)

    async def _ask(self, context: ClientRequestContext | None, request: Any, result_type: Any) -> Any:
        """Send the server's request on to the client, with its request; progress goes back to the server."""
        token = (context.meta or {}).get("progress_token") if context is not None else None

        async def progress(value: float, total: float | None, message: str | None) -> None:
            await context.session.send_progress_notification(token, value, total, message)  # type: ignore[union-attr,arg-type]

        metadata = ServerMessageMetadata(related_request_id=self.ctx.request_id)
        with self.clock.paused():
            try:
                return await self.ctx.session.send_request(
                    request, result_type, progress_callback=progress if token is not None else None, metadata=metadata
                )
            except MCPError as exc:
                return exc.error


@dataclass(eq=False)
class _Downstream:
    """One client connection to a view: its session (for messages outside requests) and what it asked for."""

    session: ServerSession
    view: _View
    log_level: str | None = None
    subscriptions: dict[tuple[str, str], str] = field(default_factory=dict)  # (server, its URI) -> the client's URI
    told: set[str] = field(default_factory=set)  # servers it was told need authorization

    def wants_log(self, level: str) -> bool:
        if self.log_level is None or level not in LOG_LEVELS:
            return True
        return LOG_LEVELS.index(level) >= LOG_LEVELS.index(self.log_level)


class _View(Server):  # type: ignore[type-arg]
    """An SDK `Server` over some of a front's servers, with every handler registered (see `Front.view`)."""

    def __init__(self, front: Front, names: list[str] | None, *, version: str) -> None:
        self.front = front
        self._names = names
        self.downstreams: set[_Downstream] = set()
        super().__init__(
            "toolscript",
            version=version,
            instructions=self._instructions(),
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_resource_templates,
            on_read_resource=self._read_resource,
            on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt,
            on_completion=self._complete,
        )
        # Registered here, not as constructor arguments, which warn that these are deprecated.
        self.add_request_handler("logging/setLevel", types.SetLevelRequestParams, self._set_level)
        self.add_request_handler("resources/subscribe", types.SubscribeRequestParams, self._subscribe)
        self.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, self._unsubscribe)
        if not _tracing():
            # The SDK wraps every request in an OpenTelemetry span, a no-op without a tracer
            # provider that still costs a tenth of the front's time per call.
            self.middleware = [layer for layer in self.middleware if type(layer).__name__ != "OpenTelemetryMiddleware"]

    def create_initialization_options(
        self, notification_options: NotificationOptions | None = None, *args: Any, **kwargs: Any
    ) -> Any:
        """Declare `listChanged` for tools, resources and prompts: servers come and go behind the view."""
        every_change = NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
        return super().create_initialization_options(notification_options or every_change, *args, **kwargs)

    @property
    def names(self) -> list[str]:
        """Its servers: the ones it was made for, or every server of the gateway."""
        return self.front.gateway.server_names if self._names is None else self._names

    @property
    def follows_config(self) -> bool:
        """Whether it serves every server of the gateway, as the gateway's config has them now."""
        return self._names is None

    @property
    def prefixed(self) -> bool:
        return len(self.names) != 1

    def _instructions(self) -> str | None:
        if not self.prefixed:
            return None
        return (
            f"Tools and prompts of the MCP servers {', '.join(self.names)}, named SERVER__NAME "
            f"(for example {self.names[0] if self.names else 'files'}__search), served by toolscript."
        )

    # -- names -----------------------------------------------------------------------------

    def public_name(self, server: str, name: str) -> str:
        return f"{server}{SEPARATOR}{name}" if self.prefixed else name

    def route(self, public: str, kind: str) -> tuple[str, str]:
        """The server and its own name of a tool or prompt named `public` in this view."""
        if not self.prefixed:
            return self.names[0], public
        server, sep, name = public.partition(SEPARATOR)
        if not sep or server not in self.names or not name:
            raise MCPError(types.INVALID_PARAMS, f"Unknown {kind}: {public} (names here are SERVER{SEPARATOR}NAME)")
        return server, name

    def logger_name(self, server: str, logger: str | None) -> str | None:
        if not self.prefixed:
            return logger
        return f"{server}{SEPARATOR}{logger}" if logger else server

    def downstream(self, ctx: ServerRequestContext[Any, Any]) -> _Downstream:
        """The record of the client connection `ctx` came on, made on its first message."""
        connection = _client_connection(ctx)
        found = connection.state.get(_STATE_KEY)
        if found is None:
            found = connection.state[_STATE_KEY] = _Downstream(ctx.session, self)
            self.downstreams.add(found)
            connection.exit_stack.callback(self._forget, found)
        return found  # type: ignore[no-any-return]

    async def client(self, ctx: ServerRequestContext[Any, Any]) -> _Downstream:
        """`downstream(ctx)`, told with this request which of its servers need authorization (`Front.greet`);
        the gateway's config is read again first if it changed."""
        await self.front.gateway.follow_config()
        downstream = self.downstream(ctx)
        await self.front.greet(downstream, ctx.request_id)
        return downstream

    def _forget(self, downstream: _Downstream) -> None:
        self.downstreams.discard(downstream)
        for server, uri in downstream.subscriptions:
            self.front.unsubscribe_soon(server, uri)

    async def _forward(self, ctx: ServerRequestContext[Any, Any], server: str, what: str, request: Any) -> Any:
        """`Front.forward`, with the gateway's errors as JSON-RPC errors (tool calls shape their own)."""
        try:
            return await self.front.forward(ctx, server, what, request)
        except ToolscriptError as exc:
            raise MCPError(types.INTERNAL_ERROR, exc.message) from None

    def client_uri(self, server: str, uri: str, owners: list[str]) -> str:
        """How this view shows `server`'s `uri` (or URI template), which `owners` claim: as it is, unless that
        is ambiguous here; then as `toolscript:SERVER:URI`."""
        if not self.prefixed or (owners == [server] and _named_resource(uri) is None):
            return uri
        return f"{RESOURCE_PREFIX}{server}:{uri}"

    def _named_server(self, named: tuple[str, str], uri: str) -> tuple[str, str]:
        if named[0] not in self.names:
            raise MCPError(types.INVALID_PARAMS, f"Unknown resource: {uri} (no server '{named[0]}' here)")
        return named

    # -- handlers --------------------------------------------------------------------------

    async def _list_tools(self, ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        await self.front.settle(self.names)  # first: a server still connecting may turn out to need authorization
        await self.client(ctx)
        tools = [
            tool.model_copy(update={"name": self.public_name(server, tool.name)}) if self.prefixed else tool
            for server in self.names
            for tool in self.front.gateway.cached_tools(server)
        ]
        return types.ListToolsResult(tools=tools)

    async def _call_tool(self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
        await self.client(ctx)
        server, tool = self.route(params.name, "tool")
        if not tool_allowed(self.front.gateway.config.servers[server], tool):
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name} (hidden by the toolscript config)")
        request = types.CallToolRequest(params=_without_progress_token(params, name=tool))
        try:
            result = await self.front.forward(ctx, server, f"the call to '{tool}'", request, tool_call=True)
        except ToolscriptError as exc:  # the person using the client sees this text, e.g. "Run: toolscript auth X"
            return types.CallToolResult(content=[types.TextContent(type="text", text=exc.message)], is_error=True)
        if self.prefixed:  # what a client reads from a link goes to the server whose result it was
            result = _with_named_resources(result, "content", server)
        return result

    async def _list_resources(self, ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        return {"resources": await self._listing(ctx, types.ListResourcesRequest, "resources", "resources")}

    async def _list_resource_templates(self, ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        return {
            "resourceTemplates": await self._listing(
                ctx, types.ListResourceTemplatesRequest, "resources", "resourceTemplates"
            )
        }

    async def _list_prompts(self, ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        prompts = await self._listing(ctx, types.ListPromptsRequest, "prompts", "prompts")
        return {"prompts": prompts}

    async def _listing(
        self, ctx: ServerRequestContext[Any, Any], method: type[Any], capability: str, key: str
    ) -> list[dict[str, Any]]:
        """One listing of every server of the view (concurrently, all pages), in the view's order."""
        await self.front.settle(self.names)
        await self.client(ctx)
        found: dict[str, list[dict[str, Any]]] = {}

        async def one(server: str) -> None:
            if await self.front.offers(server, capability):
                found[server] = await self.front.list_all(server, method, key)

        async with anyio.create_task_group() as tg:
            for server in self.names:
                tg.start_soon(one, server)
        entries = []
        if capability == "resources":
            for server in self.names:
                self.front.record_listing(server, key, found.get(server, []))
        for server in self.names:
            for entry in found.get(server, []):
                if key == "prompts" and self.prefixed:
                    entry = {**entry, "name": self.public_name(server, entry.get("name", ""))}
                elif key == "resources" and isinstance(entry.get("uri"), str):
                    owners = self.front.resource_owners(entry["uri"], self.names)
                    entry = {**entry, "uri": self.client_uri(server, entry["uri"], owners)}
                elif key == "resourceTemplates" and isinstance(entry.get("uriTemplate"), str):
                    owners = self.front.template_owners(entry["uriTemplate"], self.names)
                    entry = {**entry, "uriTemplate": self.client_uri(server, entry["uriTemplate"], owners)}
                entries.append(entry)
        return entries

    async def _read_resource(self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams) -> Any:
        await self.client(ctx)
        server, uri = await self._resource_server(ctx, params.uri)
        request = types.ReadResourceRequest(params=_without_progress_token(params, uri=uri))
        result = await self._forward(ctx, server, f"the read of '{uri}'", request)
        return result if uri == params.uri else _with_named_resources(result, "contents", server)

    async def _resource_server(self, ctx: ServerRequestContext[Any, Any], uri: str) -> tuple[str, str]:
        """The server to ask for the resource the client calls `uri`, and the server's own URI of it.

        In a view of several servers, that is the server named in a `toolscript:SERVER:URI`, or the
        one server whose listing or template produced `uri`; two that did make it ambiguous.
        """
        if not self.prefixed:
            return self.names[0], uri
        named = _named_resource(uri)
        if named is not None:
            return self._named_server(named, uri)
        owners = self.front.resource_owners(uri, self.names)
        if not owners:  # not listed yet in this run: list, then look again
            await self._listing(ctx, types.ListResourcesRequest, "resources", "resources")
            await self._listing(ctx, types.ListResourceTemplatesRequest, "resources", "resourceTemplates")
            owners = self.front.resource_owners(uri, self.names)
        if not owners:
            raise MCPError(types.INVALID_PARAMS, f"Unknown resource: {uri} (no server here lists it)")
        if len(owners) > 1:
            raise MCPError(types.INVALID_PARAMS, _ambiguous("Resource", uri, owners))
        return owners[0], uri

    async def _subscribe(self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams) -> Any:
        downstream = await self.client(ctx)
        key = await self._resource_server(ctx, params.uri)
        if key not in downstream.subscriptions:
            try:
                await self.front.subscribe(*key)
            except ToolscriptError as exc:
                raise MCPError(types.INTERNAL_ERROR, exc.message) from None
            downstream.subscriptions[key] = params.uri
        return {}

    async def _unsubscribe(self, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams) -> Any:
        downstream = await self.client(ctx)
        key = next((key for key, uri in downstream.subscriptions.items() if uri == params.uri), None)
        if key is not None:
            del downstream.subscriptions[key]
            try:
                await self.front.unsubscribe(*key)
            except ToolscriptError as exc:
                raise MCPError(types.INTERNAL_ERROR, exc.message) from None
        return {}

    async def _get_prompt(self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams) -> Any:
        await self.client(ctx)
        server, prompt = self.route(params.name, "prompt")
        request = types.GetPromptRequest(params=_without_progress_token(params, name=prompt))
        return await self._forward(ctx, server, f"the request for prompt '{prompt}'", request)

    async def _complete(self, ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams) -> Any:
        await self.client(ctx)
        ref = params.ref
        if isinstance(ref, types.PromptReference):
            server, prompt = self.route(ref.name, "prompt")
            ref = ref.model_copy(update={"name": prompt})
        else:
            server, template = await self._template_server(ctx, ref.uri)
            ref = ref.model_copy(update={"uri": template})
        request = types.CompleteRequest(params=_without_progress_token(params, ref=ref))
        return await self._forward(ctx, server, f"the completion of '{params.argument.name}'", request)

    async def _template_server(self, ctx: ServerRequestContext[Any, Any], template: str) -> tuple[str, str]:
        """The server whose URI template the client calls `template`, and the server's own template."""
        if not self.prefixed:
            return self.names[0], template
        named = _named_resource(template)
        if named is not None:
            return self._named_server(named, template)
        owners = self.front.template_owners(template, self.names)
        if not owners:
            await self._listing(ctx, types.ListResourceTemplatesRequest, "resources", "resourceTemplates")
            owners = self.front.template_owners(template, self.names)
        if not owners:
            raise MCPError(types.INVALID_PARAMS, f"Unknown resource template: {template}")
        if len(owners) > 1:
            raise MCPError(types.INVALID_PARAMS, _ambiguous("Resource template", template, owners))
        return owners[0], template

    async def _set_level(self, ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> Any:
        (await self.client(ctx)).log_level = params.level
        await self.front.set_log_level(params.level, self.names)
        return {}


# -- streamable HTTP (the gateway's /mcp) -------------------------------------------------


class HttpFront:
    """`/mcp` (every server, as `serve`) and `/mcp/SERVER` (one server, its names unchanged) over streamable HTTP.

    An ASGI app for the gateway's API (gateway_http), which checks the API token, `Host`
    and `Origin` before it hands a request over, so the SDK's own Host/Origin check is left
    off here (it would not know a gateway bound to every address). Sessions are stateful
    with SSE answers, so servers can send requests (elicitation, sampling) and progress in
    the middle of a call. Build it before the gateway starts (it fills `hooks`) and start the
    gateway with `alongside=http_front.running`.
    """

    def __init__(
        self, gateway: Gateway, hooks: SessionHooks, *, version: str = "", list_wait: float = DEFAULT_LIST_WAIT
    ) -> None:
        warnings.filterwarnings("ignore", category=MCPDeprecationWarning)  # as in serve_stdio
        self.gateway = gateway
        self.version = version
        self.front = Front(gateway, hooks, list_wait=list_wait, servers_changed=self._follow_servers)
        self._serving = False  # between entering and leaving `running`
        self.started = threading.Event()  # the same, for other threads (the API serves on this loop meanwhile)
        self._endpoints: dict[str, _Endpoint] = {}  # "" for /mcp, NAME for /mcp/NAME
        self._tasks: anyio.abc.TaskGroup | None = None
        self._alongside: set[anyio.CancelScope] = set()  # of what `start_soon` runs while the front serves

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HttpFront]:
        """Serve sessions until exit; on exit every session ends (its open streams close)."""
        async with self.front.running(), anyio.create_task_group() as tasks:
            self._tasks = tasks
            for key in ["", *self.gateway.server_names]:
                await self._open(key).ready.wait()
            self._serving = True
            self.started.set()
            try:
                yield self
            finally:
                self.started.clear()
                self._serving = False
                for scope in list(self._alongside):
                    scope.cancel()
                self._tasks = None
                for endpoint in self._endpoints.values():
                    endpoint.stop.set()

    def _open(self, key: str) -> _Endpoint:
        """Start serving `/mcp` (`key` "") or `/mcp/NAME`; it is `ready` once its sessions can start."""
        assert self._tasks is not None
        endpoint = self._endpoints[key] = _Endpoint()
        self._tasks.start_soon(self._serve_endpoint, key, endpoint)
        return endpoint

    async def _serve_endpoint(self, key: str, endpoint: _Endpoint) -> None:
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

        view = self.front.view(None if key == "" else [key], version=self.version)
        manager = StreamableHTTPSessionManager(view)
        try:
            async with manager.run():
                endpoint.manager = manager
                endpoint.ready.set()
                await endpoint.stop.wait()
        finally:
            endpoint.manager = None
            endpoint.ready.set()
            self.front.drop_view(view)

    def _follow_servers(self) -> None:
        """The gateway's servers changed: end `/mcp/NAME` of a server gone, start it for a new one."""
        names = self.gateway.server_names
        for key in [key for key in self._endpoints if key and key not in names]:
            self._endpoints.pop(key).stop.set()  # refused from now on; its sessions end
        for name in names:
            if name not in self._endpoints and self._tasks is not None:
                self._open(name)

    async def _manager(self, name: str) -> Any:
        """The session manager of `/mcp` (`name` "") or `/mcp/NAME`, or None; a server added to the config a
        moment ago is served at once."""
        if name not in self._endpoints and self._serving:
            await self.gateway.reload_config()
        if name and (name in self._endpoints) != (name in self.gateway.server_names):
            self._follow_servers()  # now, not when the front hears of the change
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            return None
        await endpoint.ready.wait()
        return endpoint.manager

    def start_soon(self, func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Start `func(*args)` on the gateway's loop from another thread, to run while this front serves (it is
        cancelled when the front stops); a `concurrent.futures.Future` that ends with it."""
        return self.gateway.start_soon_on_loop(self._while_serving, func, *args)

    async def _while_serving(self, func: Callable[..., Awaitable[Any]], *args: Any) -> None:
        tasks = self._tasks
        if tasks is None:  # stopped already
            return
        ended = anyio.Event()

        async def run() -> None:
            if not self._serving:  # the front stopped before this could start
                ended.set()
                return
            with anyio.CancelScope() as scope:
                self._alongside.add(scope)
                try:
                    await func(*args)
                except Exception:  # its own failure, not the front's
                    log.exception("The gateway's API failed on its loop")
                finally:
                    self._alongside.discard(scope)
                    ended.set()

        tasks.start_soon(run)
        await ended.wait()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI app for `/mcp` and `/mcp/SERVER`."""
        rest = scope["path"][len(MCP_PATH) :]  # decoded already, as ASGI has it
        name = rest[1:] if rest.startswith("/") else rest
        manager = await self._manager(name)
        if not self._serving:
            await _json_answer(send, 503, {"error": "The gateway is stopping."})
        elif manager is None and name in self.gateway.config.unusable:
            await _json_answer(send, 404, {"error": f"{self.gateway.config.unusable[name].message}."})
        elif manager is None:
            hint = did_you_mean(name, self.gateway.server_names)
            problem = f"No server '{name}' here{hint}; /mcp serves every server, /mcp/SERVER one of: " + (
                ", ".join(self.gateway.server_names) or "(none configured)"
            )
            await _json_answer(send, 404, {"error": f"{problem}."})
        else:
            await manager.handle_request(scope, receive, send)


@dataclass(eq=False)
class _Endpoint:
    """`/mcp` or `/mcp/NAME` of an `HttpFront`: its session manager while it runs; `stop` ends its sessions."""

    manager: Any = None
    ready: anyio.Event = field(default_factory=anyio.Event)  # running, or failed to
    stop: anyio.Event = field(default_factory=anyio.Event)


def _tracing() -> bool:
    """Whether a program set up OpenTelemetry (a tracer provider of its own): then the SDK's spans are kept."""
    from opentelemetry import trace

    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


async def _json_answer(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- stdio -------------------------------------------------------------------------------


def serve_stdio(
    config: Config,
    only: list[str] | None = None,
    *,
    version: str = "",
    list_wait: float = DEFAULT_LIST_WAIT,
    reload: Callable[[], Config] | None = None,
) -> int | None:
    """Serve the servers of `config` (or `only` those) over stdin and stdout until EOF or a signal.

    With `reload` (how `config` was read) the servers follow the config (see `Gateway`).
    Returns the number of the signal that ended it (SIGTERM, SIGHUP, SIGINT), or None at EOF.
    Every stdio server started is ended before it returns.
    """
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)  # logging, sampling: still what clients use
    return anyio.run(_serve_stdio, config, only, version, list_wait, reload)


async def _serve_stdio(
    config: Config, only: list[str] | None, version: str, list_wait: float, reload: Callable[[], Config] | None
) -> int | None:
    hooks = SessionHooks()
    gateway = Gateway(config, only=only, hooks=hooks, reload=reload)
    front = Front(gateway, hooks, list_wait=list_wait)
    view = front.view(version=version)
    ended_by: list[int] = []
    serving = anyio.CancelScope()  # cancelled by the first signal, or a client gone; the servers are closed after it
    # Signals are heard until every server has ended: a second one neither cuts that short nor kills us.
    async with anyio.create_task_group() as listening:
        listening.start_soon(_stop_on_signals, serving, ended_by)
        async with gateway.run_in_current_loop(), front.running():
            with serving:
                async with _stdio_streams() as (read, write):
                    listening.start_soon(_stop_when_set, write.gone, serving)
                    await view.run(read, write, view.create_initialization_options())
                log.debug("stdin closed; stopping")
        listening.cancel_scope.cancel()
    return ended_by[0] if ended_by else None


async def _stop_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _stop_on_signals(scope: anyio.CancelScope, ended_by: list[int]) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if ended_by:
                log.debug("%s; stopping already", name)
                continue
            log.debug("%s; stopping", name)
            ended_by.append(signum)
            scope.cancel()


@contextlib.asynccontextmanager
async def _stdio_streams() -> AsyncIterator[tuple[_WireIn, _WireOut]]:
    """MCP message streams over this process's stdin and stdout.

    Like the SDK's `stdio_server`, it takes the two descriptors for itself and points fd 0
    at the null device and fd 1 at stderr meanwhile, so nothing else (a stray print, a
    child process) can write on the wire. Unlike it, it reads and writes pipes from the
    event loop instead of a worker thread, which saves two thread hand-offs per message
    and lets a signal stop it while the client keeps stdin open; and the SDK's tasks read
    and write the descriptors themselves, without a task and a memory stream in between.
    """
    wire_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    wire_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    out_was_blocking = os.get_blocking(wire_out)
    if _pollable(wire_out) and not os.isatty(wire_out):
        os.set_blocking(wire_out, False)
    out = _WireOut(wire_out)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(out.write_backlog)
            try:
                yield _WireIn(wire_in), out
            finally:
                tg.cancel_scope.cancel()
    finally:
        out.close()
        os.set_blocking(wire_out, out_was_blocking)
        os.dup2(wire_in, 0)
        os.dup2(wire_out, 1)
        os.close(wire_in)
        os.close(wire_out)


class _WireIn:
    """The SDK's read stream over `fd`: newline-delimited JSON-RPC messages; a bad line comes as its error."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pollable = _pollable(fd)
        self._pending = b""  # the start of a line not yet ended
        self._lines: deque[bytes] = deque()
        self._ended = False

    async def receive(self) -> SessionMessage | Exception:
        while not self._lines:
            if self._ended:
                raise anyio.EndOfStream
            if self._pollable:
                await anyio.wait_readable(self._fd)
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                self._ended = True
                raise anyio.EndOfStream
            *lines, self._pending = (self._pending + chunk).split(b"\n")
            self._lines.extend(line for line in lines if line.strip())
        try:
            return SessionMessage(types.jsonrpc_message_adapter.validate_json(self._lines.popleft(), by_name=False))
        except ValidationError as exc:
            return exc

    def __aiter__(self) -> _WireIn:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._ended = True
        self._lines.clear()

    async def __aenter__(self) -> _WireIn:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _WireOut:
    """The SDK's write stream over `fd`: each message is written at once, when nothing is waiting before it.

    What the pipe does not take at once goes to the backlog (and so does every message after
    it, until the backlog is written), which `write_backlog` writes in order; so a sender
    cancelled while it waits never leaves half a message on the wire. The sender of an answer
    or a request waits until its message is out; a notification's does not (the front passes
    the servers' notifications on one after another, and one client that does not read must
    not hold them all up). Notifications the client has not read are bounded as `/mcp`'s
    streams are (`MAX_UNSENT_BYTES`): beyond that the client counts as gone, and `gone` is set.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._backlog_in, self._backlog = anyio.create_memory_object_stream[tuple[memoryview, anyio.Event | None]](
            math.inf
        )
        self._waiting = 0  # messages in the backlog, not yet all written
        self._unread_notifications = 0  # bytes of the notifications in the backlog
        self._broken = False  # the client closed its end, or read too little for too long
        self.gone = anyio.Event()

    async def send(self, message: SessionMessage) -> None:
        if self._broken:
            raise anyio.BrokenResourceError
        data = memoryview((message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n").encode())
        if not self._waiting:
            data = self._write(data)
            if not data:
                return
        if isinstance(message.message, types.JSONRPCNotification):
            if self._unread_notifications + len(data) > MAX_UNSENT_BYTES:
                log.warning(
                    "The MCP client has not read %d bytes of notifications serve sent it; stopping.", MAX_UNSENT_BYTES
                )
                self._give_up()
                raise anyio.BrokenResourceError
            self._unread_notifications += len(data)
            self._waiting += 1
            self._backlog_in.send_nowait((data, None))
            return
        written = anyio.Event()
        self._waiting += 1
        self._backlog_in.send_nowait((data, written))
        await written.wait()
        if self._broken:
            raise anyio.BrokenResourceError

    def _give_up(self) -> None:
        self._broken = True
        self.gone.set()

    def _write(self, data: memoryview) -> memoryview:
        """What of `data` the pipe did not take; a client that went away is the SDK's `BrokenResourceError`."""
        if self._broken:
            raise anyio.BrokenResourceError
        try:
            return data[os.write(self._fd, data) :]
        except BlockingIOError:
            return data
        except (BrokenPipeError, ConnectionResetError):
            self._give_up()
            raise anyio.BrokenResourceError from None

    async def write_backlog(self) -> None:
        """Write the backlog, message by message, as the pipe takes it."""
        async for data, written in self._backlog:
            size = len(data)
            with contextlib.suppress(anyio.BrokenResourceError):
                while data := self._write(data):
                    await anyio.wait_writable(self._fd)
            self._waiting -= 1
            if written is None:
                self._unread_notifications -= size
            else:
                written.set()

    def close(self) -> None:
        self._backlog_in.close()
        self._backlog.close()

    async def aclose(self) -> None:
        pass  # the descriptor is `_stdio_streams`' to close

    async def __aenter__(self) -> _WireOut:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass


def _pollable(fd: int) -> bool:
    """Whether the event loop can wait on `fd` (a pipe, socket or terminal; not a regular file)."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


# -- helpers -----------------------------------------------------------------------------


def _without_progress_token(params: Any, **changes: Any) -> Any:
    """`params` for the server: the client's progress token stays here (the session asks for its own)."""
    if params.meta is None and all(getattr(params, key) == value for key, value in changes.items()):
        return params  # nothing to change (the common case): no copy
    meta = {key: value for key, value in (params.meta or {}).items() if key != "progress_token"} or None
    return params.model_copy(update={"meta": meta, **changes})


def _named_resource(uri: str) -> tuple[str, str] | None:
    """The server and its own URI of a `toolscript:SERVER:URI`, or None for any other URI."""
    if not uri.startswith(RESOURCE_PREFIX):
        return None
    server, sep, own = uri[len(RESOURCE_PREFIX) :].partition(":")
    return (server, own) if sep and server and own else None


def _ambiguous(kind: str, uri: str, owners: list[str]) -> str:
    named = " or ".join(f"{RESOURCE_PREFIX}{server}:{uri}" for server in owners)
    return f"{kind} {uri} is offered by several servers here ({', '.join(owners)}); name the one you mean: {named}"


def _with_named_resources(result: dict[str, Any], key: str, server: str) -> dict[str, Any]:
    """`result` with the URI of each resource in `result[key]` (a link, an embedded resource, read contents)
    as `toolscript:SERVER:URI`, so that reading it again goes to `server`."""
    items = result.get(key)
    if not isinstance(items, list):
        return result
    named = []
    for item in items:
        if isinstance(item, dict) and item.get("type") == "resource" and isinstance(item.get("resource"), dict):
            item = {**item, "resource": _with_named_uri(item["resource"], server)}
        elif isinstance(item, dict) and (item.get("type") == "resource_link" or key == "contents"):
            item = _with_named_uri(item, server)
        named.append(item)
    return {**result, key: named}


def _with_named_uri(entry: dict[str, Any], server: str) -> dict[str, Any]:
    uri = entry.get("uri")
    return {**entry, "uri": f"{RESOURCE_PREFIX}{server}:{uri}"} if isinstance(uri, str) else entry


def _asking(server: str) -> str:
    """How a request passed on to the client names the server that asks (clients show it as toolscript's)."""
    return f"Server '{server}' asks"


def _declares(session: ServerSession, accepts: Callable[[types.ClientCapabilities], bool]) -> bool:
    capabilities = session.client_capabilities
    return capabilities is not None and accepts(capabilities)


def _template_matches(template: str, uri: str) -> bool:
    """Whether `uri` is an expansion of the RFC 6570 `template` (expressions match any text; simple ones no '/')."""
    pattern = []
    for literal, expression in re.findall(r"([^{]*)(\{[^}]*\})?", template):
        pattern.append(re.escape(literal))
        if expression:
            pattern.append("[^/?#]*" if expression[1:2].isalnum() or expression[1:2] == "_" else ".*")
    return re.fullmatch("".join(pattern), uri) is not None


async def _announce_lists(downstream: _Downstream) -> None:
    """Tell a client that the tools, resources and prompts it may have listed changed."""
    await downstream.session.send_tool_list_changed()
    await downstream.session.send_resource_list_changed()
    await downstream.session.send_prompt_list_changed()


async def _logged(work: Awaitable[Any], what: str) -> None:
    """Await `work` in the background; a failure is logged, not raised."""
    try:
        await work
    except (ToolscriptError, MCPError) as exc:
        log.warning("Could not %s: %s", what, exc)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        log.debug("Could not %s: the client has gone", what)
    except Exception:
        log.exception("Could not %s", what)
