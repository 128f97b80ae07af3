"""The gateway's local HTTP API, and the client that reaches a running gateway through it.

It stands apart from `gateway` because it needs only a gateway's synchronous methods
(`servers`, `tools`, `search`, `call`, `resources`, `read_resource`, `prompts`, `get_prompt`,
`complete`) and the standard library, never the MCP SDK: the CLI's commands go through a
running gateway without importing the SDK.

Endpoints: `GET /health`, `GET /servers`, `GET /tools[?server=NAME]`, `GET /tools/SERVER__TOOL`,
`GET /search?q=QUERY[&limit=N][&server=NAME]` (the tools that fit QUERY best, best first),
`POST /tools/SERVER__TOOL` (a JSON object body; `?timeout=SECONDS` optional),
`GET /resources[?server=NAME]`, `GET /resources/read?server=NAME&uri=URI`,
`GET /prompts[?server=NAME]`, `POST /prompts/SERVER__PROMPT` (the arguments as a JSON
object), `GET /types[?server=NAME...][&tool=SERVER__TOOL...]` (the typed module of
`toolscript types`, as Python source) and `POST /complete` (`{server, prompt |
uriTemplate, argument, value?, context?}`); the reads, prompts and completions take `?timeout=SECONDS` too. `/mcp` and
`/mcp/SERVER` are MCP over streamable HTTP: after the same checks as every endpoint, such
a request goes to an ASGI app (`LoopApp`, the MCP front of front.py) on the gateway's event
loop, where the API serves its connections (http_loop.py), and its answer, JSON or an SSE
stream, is written out as it comes. Requests that block (the synchronous gateway's
calls) are answered in worker threads. Nobody can
be asked through the API: a server's request for input is declined at once, and the answer
lists it in `declinedInputRequests`, unless the call, read or prompt request presets answers
with `?accept_defaults=1` and `?answer=NAME=VALUE` (repeatable), as `call --accept-defaults
--answer` do (`elicitation.PresetAnswers`); the answer then lists each request, and what was
sent, in `answeredInputRequests`. Every answer is JSON (but the Python source of `/types`);
errors are `{"error": message}`
with 400 (malformed request or body), 401 (an MCP server needs `toolscript auth`), 403 (no
or wrong API token, foreign Host or Origin), 404 (unknown endpoint, server, tool, resource
or prompt), 405 (method not allowed; `Allow` names the ones that are), 411 (a POST without
`Content-Length`, or with `Transfer-Encoding`), 413 (body too large), 415 (not JSON), 502
(the server failed), 503 (the gateway is stopping) or 504 (timeout); MCP's own answers
are the MCP front's. An error toolscript
raised also carries its `kind` and attributes (`{"error": ..., "kind": "auth_required",
"server": ...}`), from which `RemoteGateway` raises the same exception, so a command exits
the same either way.

The API spends the user's credentials, so it refuses what anyone but the user who started
it could send: every request but `GET /health` must carry the gateway's per-run token
(`Authorization: Bearer TOKEN`; other local users and other hosts do not have it), and a
`Host` header other than the bound address or `localhost` with the bound port (DNS
rebinding), an `Origin` other than its own (cross-site requests) and POSTs that are not
`application/json` (which browsers cannot send cross-site without asking) are refused
even with it. The CLI publishes the token in a file only its user can read
(`write_token_file`), where `RemoteGateway` finds it.

A client must not hand the token (nor a call's arguments) to whatever listens on the
port: after a gateway died, another local user may have bound it. So on each new
connection `RemoteGateway` first sends `GET /health` with a random challenge
(`X-Toolscript-Challenge`), and the gateway answers with `gateway_proof`, an HMAC of the
challenge and the address the connection reached, keyed with its token
(`X-Toolscript-Proof`). Only a listener that proves it knows the token gets it; binding the
proof to the address stops a listener on `[::1]:PORT` from relaying the challenge to a
gateway on `127.0.0.1:PORT`.
"""

from __future__ import annotations

import contextlib
import hmac
import http.client
import io
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import stat
import threading
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

if __package__:
    from .config import toolscript_home
    from .elicitation import PresetAnswers, preset_answers
    from .errors import (
        AuthConnectError,
        AuthError,
        AuthRequiredError,
        CallTimeoutError,
        ConfigError,
        ConnectError,
        StorageError,
        ToolscriptError,
        UsageError,
    )
    from .grants import Grant, Grants, grant_id_of
    from .redact import redact, register_secret
    from .storage import write_atomic
    from .urls import is_loopback_host
else:
    from config import toolscript_home
    from elicitation import PresetAnswers, preset_answers
    from errors import (
        AuthConnectError,
        AuthError,
        AuthRequiredError,
        CallTimeoutError,
        ConfigError,
        ConnectError,
        StorageError,
        ToolscriptError,
        UsageError,
    )
    from grants import Grant, Grants, grant_id_of
    from redact import redact, register_secret
    from storage import write_atomic
    from urls import is_loopback_host

if TYPE_CHECKING:  # asyncio and http_loop are imported where the API serves, never by its clients
    import asyncio

    from http_loop import Connection, Workers

__all__ = [
    "CHALLENGE_HEADER",
    "MAX_BODY_BYTES",
    "MCP_PATH",
    "PROOF_HEADER",
    "TOKEN_VAR",
    "URL_VAR",
    "ApiServer",
    "LoopApp",
    "RemoteGateway",
    "SyncGateway",
    "error_body",
    "error_from_body",
    "failed_server_error",
    "find_token",
    "find_tokens",
    "gateway_proof",
    "remove_token_file",
    "status_for",
    "token_file",
    "write_token_file",
]

log = logging.getLogger("toolscript.gateway.http")

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_UNSENT_BYTES = 16 * 1024 * 1024  # of an MCP answer or stream a client has not read yet
_IDLE_TIMEOUT = 300.0  # seconds a keep-alive connection may sit idle, or a client take to read an answer
_MAX_HEAD_BYTES = 1024 * 1024  # http_loop.MAX_HEAD_BYTES: a head cut there is refused
_STOP_LISTENING_TIMEOUT = 5.0  # seconds `shutdown` waits for the listener to close and requests to finish
_CALL_PREFIX = "/tools/"
_PROMPT_PREFIX = "/prompts/"
_COMPLETE_PATH = "/complete"
_TOKENS_PATH = "/tokens"
_MAX_RUN_SECONDS = 86400.0
MCP_PATH = "/mcp"
_SEARCH_PATH = "/search"
_GET_PATHS = ("/health", "/servers", "/tools", _SEARCH_PATH, "/resources", "/resources/read", "/prompts", "/types")
_DIGITS = re.compile(r"[0-9]+")
URL_VAR = "TOOLSCRIPT_GATEWAY_URL"
TOKEN_VAR = "TOOLSCRIPT_GATEWAY_TOKEN"
_TOKEN_BYTES = 32  # 256 bits from the OS's CSPRNG
_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
CHALLENGE_HEADER = "X-Toolscript-Challenge"
RUN_HEADER = "X-Toolscript-Run"  # with a challenge: prove knowing the run token of this grant id instead
PROOF_HEADER = "X-Toolscript-Proof"
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{22,128}")
_TOKEN_FILE_BYTES = 64 * 1024


def _methods_for(path: str) -> tuple[str, ...]:
    """The methods `path` answers to; empty for no endpoint."""
    if path in _GET_PATHS:
        return ("GET",)
    if path.startswith(_CALL_PREFIX) and path != _CALL_PREFIX:
        return ("GET", "POST")  # a tool's description, and a call of it
    if (path.startswith(_PROMPT_PREFIX) and path != _PROMPT_PREFIX) or path in (_COMPLETE_PATH, _TOKENS_PATH):
        return ("POST",)
    if path.startswith(_TOKENS_PATH + "/") and len(path) > len(_TOKENS_PATH) + 1:
        return ("DELETE",)
    return ()


class SyncGateway(Protocol):
    """What the API serves: `gateway.Gateway`, or a `RemoteGateway` in front of one."""

    def servers(self) -> list[dict[str, Any]]: ...

    def tools(self, server: str | None = None) -> list[dict[str, Any]]: ...

    def search(self, query: str, *, limit: int = 5, server: str | None = None) -> list[dict[str, Any]]: ...

    def tool(self, name: str) -> dict[str, Any]: ...

    def call(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        input_handler: Any = None,
        on_progress: Callable[[float, float | None, str | None], None] | None = None,
    ) -> dict[str, Any]: ...

    def resources(self, server: str | None = None) -> list[dict[str, Any]]: ...

    def read_resource(
        self, server: str, uri: str, *, timeout: float | None = None, input_handler: Any = None
    ) -> dict[str, Any]: ...

    def prompts(self, server: str | None = None) -> list[dict[str, Any]]: ...

    def get_prompt(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        input_handler: Any = None,
    ) -> dict[str, Any]: ...

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
    ) -> dict[str, Any]: ...


class LoopApp(Protocol):
    """An ASGI app that runs on an event loop in another thread: the MCP front (front.HttpFront) for `/mcp`.

    The API serves on that loop while `started` is set (from the app's start to its end).
    """

    started: threading.Event

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None: ...

    def start_soon(self, func: Callable[..., Any], *args: Any) -> Future[Any]:
        """Start `func(*args)` (a coroutine function) on the app's loop, to run while the app does."""
        ...


class _MalformedRequest(UsageError):
    """A request body or query the API cannot use (400, not 404)."""


def status_for(exc: ToolscriptError) -> int:
    """Return the HTTP status that reports `exc`."""
    if isinstance(exc, _MalformedRequest):
        return 400
    if isinstance(exc, AuthRequiredError):
        return 401
    if isinstance(exc, (UsageError, ConfigError)):
        return 404
    if isinstance(exc, CallTimeoutError):
        return 504
    return 502


# The `kind` of each error type in an error body. Every class in errors.py is listed, so an
# error crosses the API as itself: same type, same exit code, same message.
_KINDS: dict[str, type[ToolscriptError]] = {
    "error": ToolscriptError,
    "usage": UsageError,
    "config": ConfigError,
    "storage": StorageError,
    "auth": AuthError,
    "auth_required": AuthRequiredError,
    "unreachable": ConnectError,
    "timeout": CallTimeoutError,
    "auth_unreachable": AuthConnectError,
}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}
# Attributes an error body carries besides the message (none of them is ever a secret);
# `oauth_error` is the attribute `error`, renamed so as not to clash with the message.
_ERROR_ATTRIBUTES = {
    "server": "server",
    "path": "path",
    "scope": "scope",
    "oauth_error": "error",
    "next_command": "next_command",
    "variable": "variable",
}


def error_body(exc: ToolscriptError) -> dict[str, Any]:
    """Return the API's JSON error body for `exc`: its message, `kind` and attributes."""
    kind = next((_KIND_OF[cls] for cls in type(exc).__mro__ if cls in _KIND_OF), "error")
    body: dict[str, Any] = {"error": redact(exc.message), "kind": kind}
    for key, attribute in _ERROR_ATTRIBUTES.items():
        value = getattr(exc, attribute, None)
        if isinstance(value, str):
            body[key] = value
    return body


def error_from_body(status: int, body: Any) -> ToolscriptError:
    """Return the exception an API error answer reports (see `error_body`); by status if it has no `kind`."""
    body = body if isinstance(body, dict) else {}
    message = body.get("error") if isinstance(body.get("error"), str) else f"The gateway answered HTTP {status}."
    kind = _KINDS.get(body.get("kind")) if isinstance(body.get("kind"), str) else None
    server = body.get("server") if isinstance(body.get("server"), str) else None
    exc = (kind or _ERRORS.get(status, ConnectError))(message, server=server)
    exc.message, exc.args = message, (message,)  # as sent: its `Run:` hint is in it already
    for key, attribute in _ERROR_ATTRIBUTES.items():
        if key != "server" and isinstance(body.get(key), str) and hasattr(exc, attribute):
            setattr(exc, attribute, body[key])
    return exc


def failed_server_error(rows: list[dict[str, Any]], servers: Collection[str] = ()) -> ToolscriptError | None:
    """The error of the first server of `rows` (as `servers()` returns them; only `servers`, if any) that is
    neither connected nor connecting, as the exception a request to it raises; None when there is none."""
    for row in rows:
        if (not servers or row["name"] in servers) and row["status"] not in ("connected", "connecting"):
            status = 401 if row["status"] == "auth_required" else 502
            return error_from_body(status, {"error": row.get("error") or "", "server": row["name"]})
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class ApiServer(ThreadingHTTPServer):
    """The HTTP API over `gateway`, bound to `host:port` (port 0: any free port).

    `token` is what clients must send as `Authorization: Bearer TOKEN` (default: a fresh
    random one); it is registered as a secret, so no log line shows it. Run the server
    with `serve_forever()`: connections are read and written on an event loop (the one of
    `mcp`, the gateway's, so that MCP requests reach the front without crossing threads),
    and each request that may block runs in a worker thread of its own, so a slow tool call
    never holds up other clients. To stop: `shutdown()` (or interrupt `serve_forever`),
    `stopping.set()` so that what is still asked or answered gets 503 "the gateway is
    stopping", stop the gateway, then `wait_idle()` so those answers go out.
    """

    daemon_threads = True
    request_queue_size = 128  # socketserver's default of 5 resets connections from a burst of clients

    def __init__(
        self,
        gateway: SyncGateway,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        mcp: LoopApp | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.gateway = gateway
        self.mcp = mcp
        self.port: int = self.server_address[1]
        self.authority = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.allowed_hosts = {self.authority.lower(), f"localhost:{self.port}"}
        # Bound to every address: any of them may be named, but only as an IP literal,
        # since DNS rebinding needs a host name.
        self.wildcard = ipaddress.ip_address(host).is_unspecified if _is_ip(host) else False
        self.stopping = threading.Event()
        self._stop_requested = threading.Event()  # by `shutdown`
        self._served = threading.Event()  # set while `serve_forever` is not running
        self._served.set()
        self._loop: asyncio.AbstractEventLoop | None = None  # where it serves
        self._stop_event: asyncio.Event | None = None
        self._workers: Workers | None = None  # made on the loop, with the first request that needs one
        self._connections: set[Connection] = set()  # open, on the loop
        self._with_workers: set[Connection] = set()  # of those, the ones whose request a worker answers
        self._draining = False  # stopped listening: connections end after the request they are in
        self._answering = 0  # requests between reaching the gateway and their answer being sent
        self._idle = threading.Condition()
        self.token = token or secrets.token_urlsafe(_TOKEN_BYTES)
        register_secret(self.token)
        self.grants = Grants()  # run tokens minted for `toolscript exec`
        self._token_bytes = self.token.encode()
        self.token_help = _token_help(self.url)
        if is_loopback_host(host):  # the same gateway by any loopback name (IP literals: no DNS rebinding)
            self.allowed_hosts |= {f"127.0.0.1:{self.port}", f"[::1]:{self.port}"}

    def host_allowed(self, host: str) -> bool:
        """Whether a `Host` header (lowercased) names this gateway."""
        if host in self.allowed_hosts:
            return True
        name, _, port = host.rpartition(":")
        return self.wildcard and port == str(self.port) and _is_ip(name.strip("[]"))

    def accepted_hosts(self) -> str:
        """Describe the `Host` headers this gateway answers to, for a person."""
        if self.wildcard:
            return (
                f"localhost:{self.port} or an IP address of this machine with port {self.port} "
                f"(such as {self.url.removeprefix('http://')})"
            )
        return " and ".join(sorted(self.allowed_hosts))

    def token_matches(self, authorization: str) -> bool:
        """Whether an `Authorization` header carries this gateway's token (compared in constant time)."""
        scheme, _, credential = authorization.strip().partition(" ")
        # Compared even for a wrong scheme, so that the time taken says nothing about the header.
        same = hmac.compare_digest(credential.strip().encode("utf-8", "replace"), self._token_bytes)
        return same and scheme.lower() == "bearer"

    def grant_for(self, authorization: str) -> Grant | None:
        """The live run token an `Authorization` header carries, if any (see grants.py)."""
        scheme, _, credential = authorization.strip().partition(" ")
        grant = self.grants.match(credential.strip())
        return grant if grant is not None and scheme.lower() == "bearer" else None

    def mint_run_token(self, tools: list[str], seconds: float) -> tuple[str, str]:
        """Mint a run token for the tools matching `tools`, valid for `seconds`; return its id and the token."""
        grant, token = self.grants.mint(tools, seconds)
        register_secret(token)
        return grant.id, token

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until `shutdown()`: on the MCP front's event loop (the gateway's) when there is one, else on
        an event loop of its own in this thread. Requests that may block run in worker threads."""
        import asyncio

        self._served.clear()
        try:
            if self.mcp is None:
                asyncio.run(self._serve_on_loop())
                return
            while not self.mcp.started.wait(min(poll_interval, 0.1)):  # the gateway may start after the API
                if self._stop_requested.is_set():
                    return
            try:
                serving = self.mcp.start_soon(self._serve_on_loop)
            except (ToolscriptError, RuntimeError):  # the gateway stopped just now
                return
            serving.add_done_callback(lambda _: self._stop_requested.set())
            try:
                # Not one wait without end: a signal another thread took runs its handler only once the
                # main thread runs again (socketserver polls likewise).
                while not self._stop_requested.wait(poll_interval):
                    pass
            finally:
                self._stop_requested.set()  # also when interrupted: the loop must not go on listening
                self._stop_serving()
                # The listener is the loop's until it has closed it (`server_close` must come after).
                with contextlib.suppress(Exception):
                    serving.exception(timeout=_STOP_LISTENING_TIMEOUT)
        finally:
            self._served.set()

    def shutdown(self) -> None:
        """Stop `serve_forever` (from another thread) and return once it has; requests in flight go on."""
        self._stop_requested.set()
        self._stop_serving()
        self._served.wait()

    def _stop_serving(self) -> None:
        loop, stop = self._loop, self._stop_event
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # that loop has ended already
                loop.call_soon_threadsafe(stop.set)

    async def _serve_on_loop(self) -> None:
        import asyncio

        if __package__:
            from .http_loop import Connection
        else:
            from http_loop import Connection

        loop = asyncio.get_running_loop()
        self._stop_event, self._loop = asyncio.Event(), loop
        if self._stop_requested.is_set():  # after setting both: `shutdown` sees them, or this sees it
            return
        self._draining = False
        listener = await loop.create_server(
            lambda: Connection(self._serve_connection, _IDLE_TIMEOUT), sock=self.socket, backlog=self.request_queue_size
        )
        try:
            await self._stop_event.wait()
        finally:
            self._loop = None
            with contextlib.suppress(OSError, ValueError):  # closed already by `server_close`
                listener.close()
            await self._finish_connections()

    async def _finish_connections(self) -> None:
        """At stop: close the connections waiting for a request; on a loop of its own (which ends now), give
        the others `_STOP_LISTENING_TIMEOUT` to finish the request they are in (a worker's answer goes out
        all the same). On the gateway's loop, they go on as long as it runs."""
        import asyncio

        self._draining = True
        for connection in list(self._connections):
            if connection.waiting_idle:
                connection.close()
        # A worker writes its answer itself, even after this loop ended: no need to wait for it.
        busy = [
            connection.task
            for connection in self._connections
            if connection.task is not None and connection not in self._with_workers
        ]
        if self.mcp is None and busy:
            with contextlib.suppress(Exception):
                await asyncio.wait(busy, timeout=_STOP_LISTENING_TIMEOUT)

    async def _serve_connection(self, connection: Connection) -> None:
        """Answer the requests of one connection in turn, until it ends or one of them closes it."""
        self._connections.add(connection)
        try:
            await self._serve_requests(connection)
        finally:
            self._connections.discard(connection)

    async def _serve_requests(self, connection: Connection) -> None:
        while not self._draining:
            # A client that sends requests without reading the answers waits here, not in our memory.
            if connection.backlog():
                await connection.drained()
            head, whole = await connection.read_head()
            if not head:
                return
            handler = _Handler.reading(self, head, connection)
            parsed = handler.parse(cut=not whole and len(head) >= _MAX_HEAD_BYTES)
            connection.write(handler.written())  # a refusal, or 100 Continue
            if not parsed:
                return
            target = handler.admitted()
            length = handler.body_length() if target is not None else 0
            if length:
                body = await connection.read_body(length)
                if body is None:  # the client closed the connection mid-body
                    return
                handler.rfile = io.BytesIO(body)
            if target is None:
                connection.write(handler.written())
            elif self.mcp is not None and (target[0] == MCP_PATH or target[0].startswith(MCP_PATH + "/")):
                await handler.mcp(target[0], connection)
                connection.write(handler.written())
            elif target[0] == MCP_PATH or target[0].startswith(MCP_PATH + "/"):
                handler._send(404, {"error": "This gateway does not serve MCP."})
                connection.write(handler.written())
            elif not await self._in_worker(handler, target, connection):
                return
            if handler.close_connection:
                return

    async def _in_worker(self, handler: _Handler, target: tuple[str, dict[str, str]], connection: Connection) -> bool:
        """Answer in a worker thread, which writes the answer itself; whether the connection goes on."""
        if __package__:
            from .http_loop import Workers, blocking_copy
        else:
            from http_loop import Workers, blocking_copy

        import asyncio

        await connection.drained()  # nothing of the loop's is still to go out before the worker's answer
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[bool] = loop.create_future()
        sock = blocking_copy(connection, _IDLE_TIMEOUT)

        def settle(keep: bool) -> None:
            if not answered.done():
                answered.set_result(keep)

        def answer() -> None:
            keep = False
            try:
                with self.answering():
                    handler.wfile = _SocketWriter(sock)
                    handler.route(*target)
                    keep = not handler.close_connection
            except OSError as exc:  # the client went away or stalled
                log.debug("gateway API: connection from %s ended: %s", handler.client_address[0], exc)
            finally:
                sock.close()
                with contextlib.suppress(RuntimeError):  # the loop has ended (the gateway stopped): nothing to tell
                    loop.call_soon_threadsafe(settle, keep)

        if self._workers is None:
            self._workers = Workers("toolscript-api")
        self._workers.submit(answer)
        self._with_workers.add(connection)
        try:
            return await answered
        finally:
            self._with_workers.discard(connection)

    @property
    def url(self) -> str:
        """The URL a client on this machine uses: loopback when bound to every address."""
        if self.wildcard:
            loopback = "[::1]" if self.address_family == socket.AF_INET6 else "127.0.0.1"
            return f"http://{loopback}:{self.port}"
        return f"http://{self.authority}"

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Count a request as in flight until its answer is sent (see `wait_idle`)."""
        with self._idle:
            self._answering += 1
        try:
            yield
        finally:
            with self._idle:
                self._answering -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every request in flight has been answered; False if some still were after `timeout`."""
        with self._idle:
            return self._idle.wait_for(lambda: self._answering == 0, timeout)


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
    server_version = "toolscript-gateway"
    timeout = _IDLE_TIMEOUT
    # Headers and body go out in separate writes; with Nagle's algorithm the body then waits
    # for the client's delayed ACK (about 40 ms per request on Linux).
    disable_nagle_algorithm = True
    # Whether the request may have a body this handler has not read: then the connection
    # cannot be reused, as its next bytes would be taken for a new request.
    body_pending = False
    # The run token the request carries instead of the gateway's own (see grants.py).
    grant: Grant | None = None

    @classmethod
    def reading(cls, server: ApiServer, head: bytes, connection: Connection) -> _Handler:
        """A handler for the request whose head is `head`, on `connection` (answers go to `written()` until
        `route` is given a socket)."""
        handler = cls.__new__(cls)  # not BaseRequestHandler.__init__, which would serve a connection itself
        assert connection.transport is not None
        handler.server = server
        handler.request = handler.connection = connection.transport.get_extra_info("socket")
        handler.client_address = connection.transport.get_extra_info("peername")
        handler.rfile = io.BytesIO(head)
        handler.wfile = io.BytesIO()
        handler.close_connection = True
        return handler

    def parse(self, cut: bool) -> bool:
        """Parse the head as http.server does (refusing what it refuses); False when there is no request to
        answer. `cut`: the head ran past its limit, and is refused even if what came of it parses."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return False
        if not self.parse_request():
            return False
        if cut:
            self.send_error(431, "Request header fields too large")
            return False
        return True

    def written(self) -> bytes:
        """What was answered so far (on the loop, before a worker took the request)."""
        assert isinstance(self.wfile, io.BytesIO)
        data = self.wfile.getvalue()
        self.wfile = io.BytesIO()
        return data

    def admitted(self) -> tuple[str, dict[str, str]] | None:
        """The request's path and query if it passes the checks every request must; None once it is refused."""
        headers = self.headers
        self.body_pending = "Transfer-Encoding" in headers or headers.get("Content-Length", "0").strip() != "0"
        path, query = self._target()
        if not self._allowed(needs_token=(self.command, path) != ("GET", "/health")):
            return None
        if self.grant is not None and not self._granted(path):
            self._send(
                403,
                {"error": f"A run token may list and call only its run's tools, not {self.command} {path}."},
            )
            return None
        return path, query

    def body_length(self) -> int:
        """How many body bytes to read before answering: a POST's exact `Content-Length`, if it may be taken.

        Any other framing is refused by the route (`_content_length`) without reading a body,
        and the connection is closed.
        """
        if self.command != "POST" or "Transfer-Encoding" in self.headers:
            return 0
        lengths = {value.strip() for value in self.headers.get_all("Content-Length") or []}
        if len(lengths) != 1:
            return 0
        (length,) = lengths
        return int(length) if _DIGITS.fullmatch(length) and int(length) <= MAX_BODY_BYTES else 0

    def route(self, path: str, query: dict[str, str]) -> None:
        """Answer an admitted request that is not MCP (it may block: a call waits for its server)."""
        methods = _methods_for(path)
        gateway = self.server.gateway
        if not methods:
            self._send(
                404,
                {
                    "error": f"No endpoint {self.command} {path}; try GET /health, /servers, /tools, "
                    "/tools/SERVER__TOOL, /search?q=QUERY, /resources, /resources/read, /prompts, /types, or POST "
                    "/tools/SERVER__TOOL, /prompts/SERVER__PROMPT, /complete, or MCP at /mcp and /mcp/SERVER."
                },
            )
        elif self.command not in methods:
            self._send(
                405,
                {"error": f"{path} answers only {' and '.join(methods)}, not {self.command}."},
                allow=", ".join(methods),
            )
        elif self.command == "DELETE":
            revoked = self.server.grants.revoke(path[len(_TOKENS_PATH) + 1 :])
            self._send(200 if revoked else 404, {"revoked": True} if revoked else {"error": "No such run token."})
        elif self.command == "POST":
            self._post(self._post_route(path), query)
        elif path == "/health":
            self._send(200, {"status": "ok"}, proof=self._proof())
        elif path == "/servers":
            self._answer(gateway.servers)
        elif path == "/tools":
            grant = self.grant
            self._answer(
                lambda: [
                    tool for tool in gateway.tools(query.get("server")) if grant is None or grant.allows(tool["name"])
                ]
            )
        elif path == _SEARCH_PATH:
            self._search(query)
        elif path == "/resources":
            self._answer(lambda: gateway.resources(query.get("server")))
        elif path == "/resources/read":
            self._read_resource(query)
        elif path == "/prompts":
            self._answer(lambda: gateway.prompts(query.get("server")))
        elif path == "/types":
            self._types()
        else:  # GET /tools/SERVER__TOOL
            self._answer(lambda: gateway.tool(unquote(path[len(_CALL_PREFIX) :])))

    def _granted(self, path: str) -> bool:
        """Whether the request's run token reaches `path`: the tool listing, and the tools it was given."""
        assert self.grant is not None
        if path == "/tools":
            return self.command == "GET"
        if path.startswith(_CALL_PREFIX) and path != _CALL_PREFIX:
            return self.grant.allows(unquote(path[len(_CALL_PREFIX) :]))
        return False

    async def mcp(self, path: str, connection: Connection) -> None:
        """Answer an admitted MCP request (streamable HTTP) with the MCP front, on the loop."""
        app = self.server.mcp
        assert app is not None
        if self.server.stopping.is_set():
            self._send(503, error_body(_stopping()), close=True)
            return
        if self.command not in ("GET", "POST", "DELETE"):  # what streamable HTTP uses (HEAD would get a body)
            methods = "GET, POST, DELETE"
            self._send(405, {"error": f"MCP at {path} answers only {methods}, not {self.command}."}, allow=methods)
            return
        body = self._json_body() if self.command == "POST" else b""
        if body is None:
            return
        with self.server.answering():  # a stop waits for the answer (or the end of a stream) to go out
            await _Exchange(self, connection, body).run(app, self._asgi_scope(path))

    def _asgi_scope(self, path: str) -> dict[str, Any]:
        """The ASGI scope of this request, without its `Authorization` (the gateway's token stays here)."""
        target = self.path.split("?", 1)
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.request_version.removeprefix("HTTP/"),
            "method": self.command,
            "scheme": "http",
            "path": unquote(path),
            "raw_path": target[0].encode("latin-1", "replace"),
            "query_string": (target[1] if len(target) > 1 else "").encode("latin-1", "replace"),
            "root_path": "",
            "headers": [
                (name.lower().encode("latin-1", "replace"), value.encode("latin-1", "replace"))
                for name, value in self.headers.items()
                if name.lower() != "authorization"
            ],
            "client": self.client_address[:2],
            "server": self.server.server_address[:2],
        }

    def _search(self, query: dict[str, str]) -> None:
        words, limit, server = query.get("q", ""), query.get("limit", "5"), query.get("server")
        if not words.strip():
            self._send(400, {"error": "Say what to search for: GET /search?q=QUERY."})
            return
        if not _DIGITS.fullmatch(limit) or len(limit) > 6 or int(limit) < 1:
            self._send(400, {"error": "limit must be a whole number of tools above 0: GET /search?q=QUERY&limit=5."})
            return
        self._answer(lambda: self.server.gateway.search(words, limit=int(limit), server=server))

    def _read_resource(self, query: dict[str, str]) -> None:
        server, uri = query.get("server"), query.get("uri")
        if not server or not uri:
            self._send(400, {"error": "Name the resource: GET /resources/read?server=NAME&uri=URI."})
            return
        timeout = _timeout_of(query)
        if timeout is not None and not timeout > 0:
            self._send(400, {"error": "timeout must be a positive number of seconds."})
            return
        gateway = self.server.gateway
        self._answer(
            lambda: self._with_answers(
                lambda handler: gateway.read_resource(server, uri, timeout=timeout, input_handler=handler)
            )
        )

    def _types(self) -> None:
        """The typed module of the tools of every `server` and each `tool` in the query (all without either)."""
        if __package__:
            from . import typegen
        else:
            import typegen

        query = parse_qs(urlsplit(self.path).query)
        servers, tools = query.get("server", []), query.get("tool", [])
        gateway = self.server.gateway

        def produce() -> str:
            rows = typegen.select_tools(gateway, servers, tools)
            failure = failed_server_error(gateway.servers(), servers)
            if failure is not None:
                raise failure
            return typegen.module_source(rows)

        self._answer(produce, content_type="text/x-python; charset=utf-8")

    def _post(self, route: Callable[[dict[str, Any], float | None], Any], query: dict[str, str]) -> None:
        """Read a POST's JSON object body exactly, then answer with what `route` makes of it."""
        body = self._json_body()
        if body is None:
            return
        try:
            arguments = json.loads(body) if body.strip() else {}
        except ValueError as exc:  # also UnicodeDecodeError
            self._send(400, {"error": f"The body is not valid JSON: {exc}."})
            return
        except RecursionError:
            self._send(400, {"error": "The body is not valid JSON: it is nested too deeply."})
            return
        if not isinstance(arguments, dict):
            self._send(400, {"error": f"The body must be a JSON object of arguments, not {type(arguments).__name__}."})
            return
        timeout = _timeout_of(query)
        if timeout is not None and not timeout > 0:
            self._send(400, {"error": "timeout must be a positive number of seconds."})
            return
        self._answer(lambda: self._with_answers(lambda handler: route(arguments, timeout, handler)))

    def _post_route(self, path: str) -> Callable[[dict[str, Any], float | None, Any], Any]:
        """What a POST to `path` (one `_methods_for` allows POST) does with its JSON object body, timeout and
        input handler."""
        gateway = self.server.gateway
        if path == _COMPLETE_PATH:
            return lambda body, timeout, handler: gateway.complete(**_completion_request(body), timeout=timeout)
        if path == _TOKENS_PATH:
            return lambda body, timeout, handler: self._mint(body)
        prefix, method = (
            (_CALL_PREFIX, gateway.call) if path.startswith(_CALL_PREFIX) else (_PROMPT_PREFIX, gateway.get_prompt)
        )
        name = unquote(path[len(prefix) :])
        return lambda body, timeout, handler: method(name, body, timeout=timeout, input_handler=handler)

    def _with_answers(self, produce: Callable[[PresetAnswers | None], Any]) -> Any:
        """What `produce` returns when given the answers this request's query presets (`accept_defaults`,
        `answer`), with the requests they answered listed in it."""
        query = parse_qs(urlsplit(self.path).query)
        flag = query.get("accept_defaults", ["0"])[-1].lower()
        if flag not in _FLAGS:
            raise _MalformedRequest(f"accept_defaults is 1 or 0, not {flag!r}.")
        try:
            handler = preset_answers(query.get("answer", []), accept_defaults=_FLAGS[flag])
        except ValueError as exc:
            raise _MalformedRequest(f"Malformed answer: {exc}.") from None
        result = produce(handler)
        return handler.add_to(result) if handler is not None and isinstance(result, dict) else result

    def _mint(self, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /tokens {"tools": [PATTERN, ...], "seconds": N}`: a run token (only with the gateway's own token)."""
        tools, seconds = body.get("tools", ["*"]), body.get("seconds")
        if not isinstance(tools, list) or not all(isinstance(item, str) and 0 < len(item) <= 300 for item in tools):
            raise _MalformedRequest("tools must be a list of SERVER__TOOL patterns.")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= _MAX_RUN_SECONDS:
            raise _MalformedRequest(f"seconds must be a number of seconds above 0, at most {_MAX_RUN_SECONDS:g}.")
        try:
            grant_id, token = self.server.mint_run_token(tools, float(seconds))
        except OverflowError as exc:
            raise _MalformedRequest(f"Too many run tokens: {exc}; revoke some with DELETE /tokens/ID.") from None
        return {"id": grant_id, "token": token}

    def _json_body(self) -> bytes | None:
        """A POST's body, read exactly by its `Content-Length`; None, after answering, when it is refused."""
        length = self._content_length()
        if length is None:
            return None
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            self._send(415, {"error": "The body must be a JSON object sent as Content-Type: application/json."})
            return None
        if length > MAX_BODY_BYTES:
            self._send(413, {"error": f"The body is larger than {MAX_BODY_BYTES} bytes."})
            return None
        body = self.rfile.read(length)
        if len(body) < length:  # the client closed the connection mid-body
            self.close_connection = True
            return None
        self.body_pending = False
        return body

    def _content_length(self) -> int | None:
        """The length of a POST body; None, after answering, when it is not given exactly."""
        self.body_pending = True  # until the length is known: a refusal closes the connection
        if "Transfer-Encoding" in self.headers:
            self._send(411, {"error": "Send the body with a Content-Length, not with Transfer-Encoding."})
            return None
        lengths = {value.strip() for value in self.headers.get_all("Content-Length") or []}
        if not lengths:
            self._send(411, {"error": "A POST needs a Content-Length header (0 for no arguments)."})
            return None
        if len(lengths) > 1 or not _DIGITS.fullmatch(next(iter(lengths))):
            self._send(400, {"error": "Invalid Content-Length."})
            return None
        length = int(next(iter(lengths)))
        self.body_pending = length > 0
        return length

    def _allowed(self, *, needs_token: bool) -> bool:
        """Refuse requests a web page, another host or another user could make (see the module docstring)."""
        host = (self.headers.get("Host") or "").lower()
        if not self.server.host_allowed(host):
            self._send(
                403,
                {
                    "error": f"Host {host or '(none)'!r} is not allowed; this gateway answers only to "
                    f"{self.server.accepted_hosts()}."
                },
            )
            return False
        origin = self.headers.get("Origin")
        if origin is not None and not (
            origin.lower().startswith("http://") and self.server.host_allowed(origin.lower()[len("http://") :])
        ):
            self._send(403, {"error": f"Cross-origin requests (Origin {origin!r}) are not allowed."})
            return False
        authorization = self.headers.get("Authorization") or ""
        self.grant = None
        if needs_token and not self.server.token_matches(authorization):
            self.grant = self.server.grant_for(authorization)
            if self.grant is None:
                problem = "Wrong gateway token" if authorization else "No gateway token"
                self._send(403, {"error": f"{problem}: {self.server.token_help}."})
                return False
        return True

    def _target(self) -> tuple[str, dict[str, str]]:
        parts = urlsplit(self.path)
        return parts.path, {key: values[-1] for key, values in parse_qs(parts.query).items()}

    def _answer(self, produce: Callable[[], Any], *, content_type: str | None = None) -> None:
        """Answer with what `produce` returns: as JSON, or as text of `content_type`."""
        with self.server.answering():
            if self.server.stopping.is_set():
                self._send(503, error_body(_stopping()), close=True)
                return
            try:
                payload = produce()
            except ToolscriptError as exc:
                # Whatever failed while the gateway stops (a closed session, a cancelled call) failed because of that.
                stopping = self.server.stopping.is_set()
                self._send(
                    503 if stopping else status_for(exc), error_body(_stopping() if stopping else exc), close=stopping
                )
            except Exception:
                log.exception("gateway API: unexpected error for %s %s", self.command, self.path)
                self._send(500, {"error": "Internal gateway error; see the gateway's log."})
            else:
                self._send(200, payload, content_type=content_type)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer http.server's own refusals (malformed request line, headers too long) in JSON too."""
        self.body_pending = True  # the request could not be read: nothing after it can be trusted
        if self.request_version == "HTTP/0.9":  # the default until the request line is read
            self.request_version = self.protocol_version  # answer with a status line all the same
        self._send(code, {"error": f"{message or self.responses.get(code, ('Error',))[0]}."})

    def _proof(self) -> str | None:
        """The answer to a `RemoteGateway`'s challenge: proof that this gateway knows its token."""
        challenge = self.headers.get(CHALLENGE_HEADER)
        if challenge is None or not _CHALLENGE.fullmatch(challenge):
            return None
        key = self.server.token
        run = self.headers.get(RUN_HEADER)
        if run is not None:
            grant = self.server.grants.live(run)
            if grant is None:
                return None
            key = grant.token
        return gateway_proof(key, challenge, self.connection.getsockname())

    def _send(
        self,
        status: int,
        payload: Any,
        *,
        allow: str | None = None,
        close: bool = False,
        content_type: str | None = None,
        proof: str | None = None,
    ) -> None:
        body = json.dumps(payload).encode() if content_type is None else str(payload).encode()
        if self.request_version == "HTTP/0.9":  # no status line, no headers: just the body
            self.wfile.write(body)
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("Content-Type", content_type or "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if allow is not None:
            self.send_header("Allow", allow)
        if proof is not None:
            self.send_header(PROOF_HEADER, proof)
        if self.body_pending or close:  # close: the gateway is stopping
            self.send_header("Connection", "close")
            self.close_connection = True
        # end_headers() plus the body in one write: one send and one wake-up of the client
        # per response instead of two (a measurable share of a loopback round trip).
        self._headers_buffer.append(b"\r\n" + (body if self.command != "HEAD" else b""))  # type: ignore[attr-defined]
        self.flush_headers()

    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("gateway API: %s %s", self.address_string(), format % args)


class _Exchange:
    """One MCP request (streamable HTTP) answered by an ASGI app on the loop, written out as the app sends it.

    A JSON answer goes out at once; an SSE stream event by event (chunked) until the app ends
    it. When the client hangs up, the app's `receive` says `http.disconnect`, as an ASGI
    server's does, and what it sends after is dropped. A POST's headers wait up to
    `_HEAD_HOLD` for its first event, and a first event that is the answer waits up to `_HOLD`
    for the end of the stream (which follows at once): one write, one wake-up of the client,
    instead of three, and an answer with nothing before it goes as plain JSON (see
    `_as_json`), which the client reads to its end and keeps the connection for.
    """

    # Seconds a POST's headers wait for its first event: longer than a call takes on a busy
    # gateway (tens of ms), or its answer would go as a stream; short enough that the
    # client of a silent slow call soon sees its stream open.
    _HEAD_HOLD = 1.0
    _HOLD = 0.05  # seconds an answer waits for the end of its stream, which the app sends at once

    def __init__(self, handler: _Handler, connection: Connection, body: bytes) -> None:
        self._handler = handler
        self._connection = connection
        self._body: bytes | None = body
        self._post = handler.command == "POST"
        self._held: list[dict[str, Any]] = []  # a POST's start, and maybe its first event, not yet written
        self._timer: Any = None  # the loop's timer that writes `_held` after all
        self._started = False  # the status line and headers are written
        self._chunked = False
        self._finished = False

    async def run(self, app: LoopApp, scope: dict[str, Any]) -> None:
        failed = False
        try:
            await app(scope, self._receive, self._send)
        except OSError:  # the client went away: nothing to answer
            pass
        except Exception:
            log.exception("gateway API: the MCP front failed on a request")
            failed = True
        finally:
            self._end(failed)

    async def _receive(self) -> dict[str, Any]:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        # A client that closed its side still reads the answer to its POST; a GET's stream ends with it.
        await (self._connection.gone if self._post else self._connection.ended).wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if self._finished or self._connection.closed:
            # As uvicorn does: what comes after the client has gone is dropped, and `receive` tells the app.
            return
        if message["type"] == "http.response.start":
            self._held = [message]
            if self._post:
                self._hold(self._HEAD_HOLD)
            else:  # a GET's stream may stay quiet for long: the client sees it open at once
                self._write_held()
            return
        if self._held:
            if len(self._held) == 1 and _more_follows(message):
                self._held.append(message)
                self._hold(self._HOLD)
                return
            if len(self._held) == 2 and not message.get("body") and not message.get("more_body"):
                whole = self._as_json(*self._held)
                if whole is not None:
                    self._held = []
                    self._release()
                    self._finished = True
                    self._connection.write(whole)
                    return
            self._write_held()
        self._write_body(message)

    def _hold(self, seconds: float) -> None:
        """Write what is held after `seconds` (from now), unless what the app sends meanwhile decides it."""
        import asyncio

        self._release()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._write_held)

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _write_held(self) -> None:
        """Write the held start (and event) of the answer, as a stream."""
        self._release()
        held, self._held = self._held, []
        if not held:
            return
        head, self._chunked = self._head(self._handler, held[0])
        self._started = True
        self._connection.write(head)
        for message in held[1:]:
            self._write_body(message)

    def _write_body(self, message: dict[str, Any]) -> None:
        data = message.get("body", b"")
        more = message.get("more_body", False)
        if not self._chunked:
            out = data
        else:
            out = b"%x\r\n%s\r\n" % (len(data), data) if data else b""
            if not more:
                out += b"0\r\n\r\n"
        if out:
            self._connection.write(out)
        if not more:
            self._finished = True
        elif self._connection.backlog() > MAX_UNSENT_BYTES:
            # The client reads too slowly (or not at all) for what the server sends: let it go
            # rather than hold everything in memory.
            log.warning("gateway API: an MCP client fell %d bytes behind its stream; disconnected", MAX_UNSENT_BYTES)
            self._handler.close_connection = True
            self._connection.abort()

    def _end(self, failed: bool) -> None:
        """The app has ended: finish its answer, or answer for it if it sent nothing."""
        if self._held and not self._connection.closed:
            self._write_held()
        self._release()
        if self._finished:
            return
        handler = self._handler
        handler.close_connection = True  # the answer is cut short: the connection cannot go on
        if self._started:
            if self._chunked:
                self._connection.write(b"0\r\n\r\n")
        elif handler.server.stopping.is_set():
            handler._send(503, error_body(_stopping()), close=True)
        elif failed:
            handler._send(500, {"error": "Internal gateway error; see the gateway's log."}, close=True)

    def _as_json(self, start: dict[str, Any], event: dict[str, Any]) -> bytes | None:
        """A POST's whole SSE answer (headers, one event; its end came) as plain JSON, or None if it is not one.

        The client accepts both (the SDK refuses a POST that does not); a JSON answer is read
        to its end, so the client can reuse the connection, where it drops one whose stream
        it stopped reading at the answer, before the end. An answer with anything before it
        (progress, a question) stays a stream.
        """
        handler = self._handler
        if start["status"] != 200:
            return None
        headers = [(name.lower(), value) for name, value in start.get("headers", [])]
        if (b"content-type", b"text/event-stream") not in headers or "application/json" not in handler.headers.get(
            "Accept", ""
        ):
            return None
        lines = event.get("body", b"").split(b"\r\n")
        if len(lines) != 4 or lines[0] != b"event: message" or not lines[1].startswith(b"data: ") or any(lines[2:]):
            return None
        data = lines[1][len(b"data: ") :]
        kept = [(name, value) for name, value in headers if name not in _STREAM_HEADERS]
        kept += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        head, _ = self._head(handler, {"status": 200, "headers": kept})
        return head + data

    @staticmethod
    def _head(handler: _Handler, message: dict[str, Any]) -> tuple[bytes, bool]:
        """The status line and headers of the app's answer, and whether its body goes chunked."""
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in message.get("headers", [])]
        length = next((value for name, value in headers if name.lower() == "content-length"), None)
        chunked = length is None and handler.request_version == "HTTP/1.1"
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        if handler.body_pending or (length is None and not chunked):
            headers.append(("Connection", "close"))
            handler.close_connection = True
        return _head(handler, message["status"], headers, None), chunked


# What an SSE answer's headers say of the stream, left out when it goes as JSON (see `_Exchange._as_json`).
_STREAM_HEADERS = {b"content-type", b"cache-control", b"connection", b"x-accel-buffering", b"transfer-encoding"}


def _more_follows(message: dict[str, Any]) -> bool:
    """Whether the app, having sent `message` on a POST's answer, will at once send more of it.

    After the headers comes the first event (unless the call is slow); after an event that
    is a JSON-RPC response (one without a `"method"`, as requests and notifications have),
    the end of the stream. A wrong guess costs only a wait of `_Exchange._HOLD`.
    """
    body = message.get("body", b"")
    return bool(message.get("more_body")) and body.startswith(b"event: message") and b'"method"' not in body


def _head(handler: _Handler, status: int, headers: list[tuple[str, str]], length: int | None) -> bytes:
    """An HTTP/1.1 status line and headers (with `Content-Length` if given), logged as http.server does."""
    handler.log_request(status)
    lines = [f"HTTP/1.1 {status} {handler.responses.get(status, ('',))[0]}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


class _SocketWriter:
    """The `wfile` of a request answered in a worker thread: each write goes straight to the client."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def write(self, data: bytes) -> int:
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass


def _query(timeout: float | None, input_handler: Any, pairs: list[tuple[str, str]] | None = None) -> str:
    """The query of a request of `RemoteGateway`: `pairs`, the timeout and the answers an input handler presets."""
    pairs = list(pairs or [])
    if timeout:
        pairs.append(("timeout", f"{timeout:g}"))
    if isinstance(input_handler, PresetAnswers):
        if input_handler.accept_defaults:
            pairs.append(("accept_defaults", "1"))
        pairs.extend(("answer", f"{name}={value}") for name, value in input_handler.answers.items())
    return "?" + urlencode(pairs) if pairs else ""


def _timeout_of(query: dict[str, str]) -> float | None:
    """The `?timeout=` of a request: None when absent, -1 when not a number (refused by the caller)."""
    try:
        return float(query["timeout"]) if "timeout" in query else None
    except ValueError:
        return -1.0


def _completion_request(body: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `complete` from a `POST /complete` body; `UsageError` if malformed."""
    known = {"server", "argument", "value", "prompt", "uriTemplate", "context"}
    unknown = sorted(set(body) - known)
    if unknown or not isinstance(body.get("server"), str) or not isinstance(body.get("argument"), str):
        raise _MalformedRequest(
            'POST /complete takes {"server": NAME, "prompt": PROMPT or "uriTemplate": TEMPLATE, '
            '"argument": NAME, "value": TEXT, "context": {NAME: TEXT}}'
            + (f"; unknown key {', '.join(map(repr, unknown))}." if unknown else ".")
        )
    return {
        "server": body["server"],
        "argument": body["argument"],
        "value": body.get("value", ""),
        "prompt": body.get("prompt"),
        "uri_template": body.get("uriTemplate"),
        "context": body.get("context"),
    }


def _stopping() -> ConnectError:
    return ConnectError("The gateway is stopping: the request did not finish.")


_ERRORS: dict[int, type[ToolscriptError]] = {
    400: UsageError,
    401: AuthRequiredError,
    403: UsageError,
    404: UsageError,
    504: CallTimeoutError,
}


class RemoteGateway:
    """A running gateway reached over its HTTP API, with the methods of `gateway.Gateway`.

    `token` defaults to the one of `find_tokens(url)` that the listener proves it knows:
    each new connection starts with the challenge of the module docstring, and nothing else
    is sent on a connection whose listener failed it. Errors come back as the same exception
    types the gateway raised (by their `kind`, else by HTTP status), so callers behave the
    same either way. Each thread keeps one keep-alive connection.
    """

    def __init__(self, url: str, token: str | None = None) -> None:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme != "http" or not parts.hostname or port == -1:
            raise UsageError(f"{URL_VAR} must look like http://127.0.0.1:PORT, not {url!r}.")
        self.url = url.rstrip("/")
        self._host = parts.hostname
        self._port = port or 80
        self._explicit = token is not None or bool(os.environ.get(TOKEN_VAR, "").strip())
        self._tokens = [token] if token is not None else find_tokens(url)
        for candidate in self._tokens:
            register_secret(candidate)
        self._headers: dict[str, str] = {}
        self._local = threading.local()

    def check(self) -> None:
        """Raise `ConnectError` unless a gateway answers at the URL."""
        try:
            health = self._request("GET", "/health", timeout=10)
        except (ConnectError, _Unproven):
            raise
        except ToolscriptError as exc:
            raise self._unreachable(exc.message) from None
        if health != {"status": "ok"}:
            raise self._unreachable("it did not answer like a toolscript gateway")

    def servers(self) -> list[dict[str, Any]]:
        return self._request("GET", "/servers")

    def tools(self, server: str | None = None) -> list[dict[str, Any]]:
        return self._request("GET", "/tools" + (f"?server={quote(server)}" if server else ""))

    def search(self, query: str, *, limit: int = 5, server: str | None = None) -> list[dict[str, Any]]:
        arguments = {"q": query, "limit": str(limit), **({"server": server} if server else {})}
        return self._request("GET", _SEARCH_PATH + "?" + urlencode(arguments))

    def tool(self, name: str) -> dict[str, Any]:
        return self._request("GET", _CALL_PREFIX + quote(name))

    def call(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        input_handler: Any = None,
        on_progress: Callable[[float, float | None, str | None], None] | None = None,
    ) -> dict[str, Any]:
        """Call a tool through the gateway; of an `input_handler`, only `PresetAnswers` reach it (nobody else
        can be asked through the API), and progress stays at the gateway (the API answers once)."""
        path = _CALL_PREFIX + quote(name) + _query(timeout, input_handler)
        # The gateway bounds every call; the socket timeout only guards against a hung gateway.
        return self._request("POST", path, arguments or {}, timeout=timeout + 30 if timeout else None)

    # Listing resources and prompts asks every server, each bounded by its timeout: no socket timeout here.
    def resources(self, server: str | None = None) -> list[dict[str, Any]]:
        return self._request("GET", "/resources" + (f"?server={quote(server)}" if server else ""), timeout=None)

    def read_resource(
        self, server: str, uri: str, *, timeout: float | None = None, input_handler: Any = None
    ) -> dict[str, Any]:
        path = "/resources/read" + _query(timeout, input_handler, [("server", server), ("uri", uri)])
        return self._request("GET", path, timeout=timeout + 30 if timeout else None)

    def prompts(self, server: str | None = None) -> list[dict[str, Any]]:
        return self._request("GET", "/prompts" + (f"?server={quote(server)}" if server else ""), timeout=None)

    def get_prompt(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        input_handler: Any = None,
    ) -> dict[str, Any]:
        path = _PROMPT_PREFIX + quote(name) + _query(timeout, input_handler)
        return self._request("POST", path, arguments or {}, timeout=timeout + 30 if timeout else None)

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
        body = {
            "server": server,
            "argument": argument,
            "value": value,
            "prompt": prompt,
            "uriTemplate": uri_template,
            "context": context,
        }
        path = _COMPLETE_PATH + (f"?timeout={timeout:g}" if timeout else "")
        return self._request(
            "POST",
            path,
            {key: item for key, item in body.items() if item is not None},
            timeout=timeout + 30 if timeout else None,
        )

    def mint_run_token(self, tools: list[str], seconds: float) -> tuple[str, str]:
        """Ask the gateway for a run token for `tools` (patterns), valid for `seconds`: its id and the token."""
        answer = self._request("POST", _TOKENS_PATH, {"tools": tools, "seconds": seconds})
        register_secret(answer["token"])
        return answer["id"], answer["token"]

    def revoke_run_token(self, grant_id: str) -> None:
        """End a run token minted by `mint_run_token`."""
        self._request("DELETE", f"{_TOKENS_PATH}/{quote(grant_id)}")

    def close(self) -> None:
        """Close this thread's connection."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _request(self, method: str, path: str, body: Any = None, *, timeout: float | None = 60.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(2):
            connection = getattr(self._local, "connection", None)
            reused = connection is not None
            try:
                if connection is None:
                    connection = self._local.connection = self._proven_connection()
                headers = {**self._headers, "Content-Type": "application/json"} if data is not None else self._headers
                connection.timeout = timeout
                if connection.sock is not None:
                    connection.sock.settimeout(timeout)
                connection.request(method, path, body=data, headers=headers)
                response = connection.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                # A kept-alive connection the gateway closed meanwhile: once more on a new (proven) one.
                gone = (ConnectionError, http.client.RemoteDisconnected, http.client.NotConnected)
                if reused and attempt == 0 and isinstance(exc, gone):
                    continue
                if isinstance(exc, TimeoutError):
                    raise CallTimeoutError(f"The gateway at {self.url} did not answer in time.") from None
                raise self._unreachable(str(exc) or type(exc).__name__) from None
        try:
            payload = json.loads(raw)
        except ValueError:
            raise self._unreachable(f"it answered HTTP {response.status} without JSON") from None
        if response.status == 200:
            return payload
        raise error_from_body(response.status, payload)

    def _proven_connection(self) -> http.client.HTTPConnection:
        """A new connection whose listener proved it knows a token of `find_tokens`; that token is sent from now on.

        The connection never reconnects by itself (`auto_open`): a new one is proven again.
        """
        connection = http.client.HTTPConnection(self._host, self._port, timeout=_PROOF_TIMEOUT)
        connection.auto_open = 0  # type: ignore[attr-defined]
        try:
            connection.connect()  # first, so that a gateway that is not there is named as such
            if not self._tokens:
                raise _Unproven(f"No gateway token: {_token_help(self.url)}.")
            peer = connection.sock.getpeername()
            challenge = secrets.token_urlsafe(32)
            headers = {CHALLENGE_HEADER: challenge}
            run_id = grant_id_of(self._tokens[0]) if len(self._tokens) == 1 else None
            if run_id is not None:  # a run token (toolscript exec): the gateway proves it knows that one
                headers[RUN_HEADER] = run_id
            connection.request("GET", "/health", headers=headers)
            response = connection.getresponse()
            proof = (response.getheader(PROOF_HEADER) or "").encode("ascii", "replace")
            response.read(_TOKEN_FILE_BYTES)  # the short {"status": "ok"}
            for token in self._tokens:
                if hmac.compare_digest(proof, gateway_proof(token, challenge, peer).encode()):
                    self._headers = {"Authorization": f"Bearer {token}"}
                    return connection
        except BaseException:
            connection.close()
            raise
        connection.close()
        source = TOKEN_VAR if self._explicit else f"the token file {token_file(self.url)}"
        raise _Unproven(
            f"Wrong gateway token: the program listening at {self.url} did not prove that it knows the token from "
            f"{source}, so nothing was sent to it. If the gateway stopped, another program may hold its port: start "
            f"the gateway again, or unset {URL_VAR}."
        )

    def _unreachable(self, reason: str) -> ConnectError:
        return ConnectError(
            f"The gateway at {self.url} ({URL_VAR}) is not reachable: {reason}. "
            f"Start it with: toolscript gateway, or unset {URL_VAR}."
        )


# -- the token file: how the user who started a gateway, and only that user, gets its token --


_PROOF_TIMEOUT = 10.0


class _Unproven(UsageError):
    """No token, or a listener that did not prove it knows the token: nothing was sent to it."""


def gateway_proof(token: str, challenge: str, address: Any) -> str:
    """The gateway's answer to `challenge` on a connection to `address` (a socket address), keyed with its token.

    An IPv4 address reached over a dual-stack socket (`::ffff:127.0.0.1`) counts as itself.
    """
    host, port = str(address[0]).split("%", 1)[0], int(address[1])
    try:
        ip = ipaddress.ip_address(host)
        host = str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)
    except ValueError:
        pass
    message = f"toolscript-gateway-proof\n{challenge}\n{host}\n{port}".encode()
    return hmac.new(token.encode(), message, "sha256").hexdigest()


def _token_help(url: str) -> str:
    return (
        f"send 'Authorization: Bearer <token>' with the {TOKEN_VAR} the gateway printed "
        f"when it started (also in $TOOLSCRIPT_HOME/gateway/{token_file(url).name}, which only the user "
        "who started it can read, and where toolscript commands find it)"
    )


def token_file(url: str) -> Path:
    """Return where the gateway at `url` keeps its token: `$TOOLSCRIPT_HOME/gateway/HOST_PORT.token`."""
    parts = urlsplit(url)
    host = re.sub(r"[^a-z0-9.:-]", "_", (parts.hostname or "").lower())  # a file name, whatever the URL holds
    try:
        port = parts.port or 80
    except ValueError:
        port = 0
    return toolscript_home() / "gateway" / f"{host}_{port}.token"


def write_token_file(url: str, token: str) -> Path:
    """Write `token` for the gateway at `url`, readable only by this user (0600 in a 0700 directory).

    The file is a JSON object (`token`, `url`, `pid`; readers ignore keys they do not know);
    older versions wrote the bare token, which `find_tokens` still reads. Raises
    `UsageError` naming the file when it cannot be written safely.
    """
    path = token_file(url)
    directory = path.parent
    try:
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        _check_private_directory(directory)
        # Created with its final mode, then renamed over any file a crashed gateway left.
        document = {"token": token, "url": url, "pid": os.getpid()}
        write_atomic(path, (json.dumps(document) + "\n").encode("ascii"))
    except OSError as exc:
        raise UsageError(f"Cannot write the gateway token file {path}: {exc.strerror or exc}.") from None
    return path


def remove_token_file(path: Path) -> None:
    """Remove a token file written by `write_token_file`, if it is still there."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def find_token(url: str) -> str | None:
    """Return the first token `find_tokens(url)` finds, or None."""
    tokens = find_tokens(url)
    return tokens[0] if tokens else None


def find_tokens(url: str) -> list[str]:
    """Return the tokens that may be the gateway's at `url`: `$TOOLSCRIPT_GATEWAY_TOKEN`, else its token files.

    A loopback URL also finds the files written for the same port under another loopback
    name (`localhost`, `127.0.0.1`, `[::1]`): which of them is right, the gateway proves
    (`RemoteGateway`). Raises `UsageError` naming a file that exists but is not this
    user's private file.
    """
    token = os.environ.get(TOKEN_VAR, "").strip()
    if token:
        return [token]
    parts = urlsplit(url)
    urls = [url]
    if is_loopback_host(parts.hostname):
        try:
            port = parts.port or 80
        except ValueError:
            port = 0
        urls += [f"http://{host}:{port}" for host in ("127.0.0.1", "localhost", "[::1]")]
    paths = dict.fromkeys(token_file(each) for each in urls)
    return list(dict.fromkeys(found for path in paths if (found := _read_token_file(path))))


def _read_token_file(path: Path) -> str | None:
    try:
        _check_private_directory(path.parent)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # no gateway of this user's at that address: it will say where the token comes from
    except OSError as exc:
        raise UsageError(
            f"Cannot read the gateway token file {path}: {exc.strerror or exc}; set {TOKEN_VAR} instead."
        ) from None
    try:
        info = os.fstat(fd)  # before fdopen, which refuses a directory with a traceback
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise UsageError(
                f"{path} is not a private file of yours (mode 0600); refusing to use it. "
                f"Delete it and restart the gateway, or set {TOKEN_VAR}."
            )
        text = os.read(fd, _TOKEN_FILE_BYTES).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if not text.startswith("{"):
        return text or None  # the bare token of an older version
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    token = document.get("token") if isinstance(document, dict) else None
    return token.strip() or None if isinstance(token, str) else None


def _check_private_directory(directory: Path) -> None:
    """Raise `OSError` unless `directory` is a real directory of this user's; tighten it to 0700."""
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise OSError(f"{directory} is not a directory of yours")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(directory, 0o700)
