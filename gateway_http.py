"""The gateway's local HTTP API, and the client that reaches a running gateway through it.

It stands apart from `gateway` because it needs only a gateway's synchronous methods
(`servers`, `tools`, `call`) and the standard library, never the MCP SDK: the CLI's
`tools` and `call` go through a running gateway without importing the SDK.

Endpoints: `GET /health`, `GET /servers`, `GET /tools[?server=NAME]` and
`POST /tools/SERVER__TOOL` (a JSON object body; `?timeout=SECONDS` optional). Every answer
is JSON; errors are `{"error": message}` with 400 (malformed request or body), 401 (an MCP
server needs `toolscript auth`), 403 (no or wrong API token, foreign Host or Origin), 404
(unknown endpoint, server or tool), 405 (method not allowed; `Allow` names the one that
is), 411 (a POST without `Content-Length`, or with `Transfer-Encoding`), 413 (body too
large), 415 (not JSON), 502 (the server failed) or 504 (timeout).

The API spends the user's credentials, so it refuses what anyone but the user who started
it could send: every request but `GET /health` must carry the gateway's per-run token
(`Authorization: Bearer TOKEN`; other local users and other hosts do not have it), and a
`Host` header other than the bound address or `localhost` with the bound port (DNS
rebinding), an `Origin` other than its own (cross-site requests) and POSTs that are not
`application/json` (which browsers cannot send cross-site without asking) are refused
even with it. The CLI publishes the token in a file only its user can read
(`write_token_file`), where `RemoteGateway` finds it.
"""

from __future__ import annotations

import contextlib
import hmac
import http.client
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import stat
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Protocol
from urllib.parse import parse_qs, quote, unquote, urlsplit

if __package__:
    from .config import toolscript_home
    from .errors import AuthRequiredError, CallTimeoutError, ConfigError, ConnectError, ToolscriptError, UsageError
    from .redact import redact, register_secret
else:
    from config import toolscript_home
    from errors import AuthRequiredError, CallTimeoutError, ConfigError, ConnectError, ToolscriptError, UsageError
    from redact import redact, register_secret

__all__ = [
    "MAX_BODY_BYTES",
    "TOKEN_VAR",
    "URL_VAR",
    "ApiServer",
    "RemoteGateway",
    "SyncGateway",
    "find_token",
    "remove_token_file",
    "status_for",
    "token_file",
    "write_token_file",
]

log = logging.getLogger("toolscript.gateway.http")

MAX_BODY_BYTES = 4 * 1024 * 1024
_IDLE_TIMEOUT = 300.0  # seconds a keep-alive connection may sit idle before its thread gives up
_CALL_PREFIX = "/tools/"
_GET_PATHS = ("/health", "/servers", "/tools")
_DIGITS = re.compile(r"[0-9]+")
URL_VAR = "TOOLSCRIPT_GATEWAY_URL"
TOKEN_VAR = "TOOLSCRIPT_GATEWAY_TOKEN"
_TOKEN_BYTES = 32  # 256 bits from the OS's CSPRNG


def _method_for(path: str) -> str | None:
    """The one method `path` answers to, or None for no endpoint."""
    if path in _GET_PATHS:
        return "GET"
    return "POST" if path.startswith(_CALL_PREFIX) and path != _CALL_PREFIX else None


class SyncGateway(Protocol):
    """What the API serves: `gateway.Gateway`, or a `RemoteGateway` in front of one."""

    def servers(self) -> list[dict[str, Any]]: ...

    def tools(self, server: str | None = None) -> list[dict[str, Any]]: ...

    def call(self, name: str, arguments: dict[str, Any] | None = None, *, timeout: float | None = None) -> dict[str, Any]: ...


def status_for(exc: ToolscriptError) -> int:
    """Return the HTTP status that reports `exc`."""
    if isinstance(exc, AuthRequiredError):
        return 401
    if isinstance(exc, (UsageError, ConfigError)):
        return 404
    if isinstance(exc, CallTimeoutError):
        return 504
    return 502


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
    with `serve_forever()`; each connection gets its own thread, so a slow tool call never
    holds up other clients.
    """

    daemon_threads = True
    request_queue_size = 128  # socketserver's default of 5 resets connections from a burst of clients

    def __init__(self, gateway: SyncGateway, host: str = "127.0.0.1", port: int = 0, *,
                 token: str | None = None) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.gateway = gateway
        self.port: int = self.server_address[1]
        self.authority = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.allowed_hosts = {self.authority.lower(), f"localhost:{self.port}"}
        # Bound to every address: any of them may be named, but only as an IP literal,
        # since DNS rebinding needs a host name.
        self.wildcard = ipaddress.ip_address(host).is_unspecified if _is_ip(host) else False
        self.token = token or secrets.token_urlsafe(_TOKEN_BYTES)
        register_secret(self.token)
        self._token_bytes = self.token.encode()
        self.token_help = (
            f"send 'Authorization: Bearer <token>' with the {TOKEN_VAR} the gateway printed "
            f"when it started (also in $TOOLSCRIPT_HOME/gateway/{token_file(self.url).name}, which only the user "
            "who started it can read, and where toolscript tools and call find it)"
        )

    def host_allowed(self, host: str) -> bool:
        """Whether a `Host` header (lowercased) names this gateway."""
        if host in self.allowed_hosts:
            return True
        name, _, port = host.rpartition(":")
        return self.wildcard and port == str(self.port) and _is_ip(name.strip("[]"))

    def token_matches(self, authorization: str) -> bool:
        """Whether an `Authorization` header carries this gateway's token (compared in constant time)."""
        scheme, _, credential = authorization.strip().partition(" ")
        # Compared even for a wrong scheme, so that the time taken says nothing about the header.
        same = hmac.compare_digest(credential.strip().encode("utf-8", "replace"), self._token_bytes)
        return same and scheme.lower() == "bearer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print the traceback to stderr, past the log's redaction.
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # the client went away or stalled
            log.debug("gateway API: connection from %s ended", client_address[0], exc_info=error)
        else:
            log.error("gateway API: unexpected error on a connection from %s", client_address[0], exc_info=error)

    @property
    def url(self) -> str:
        return f"http://{self.authority}"


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

    def __getattr__(self, name: str) -> Any:
        # http.server calls do_GET, do_POST, do_PUT ... and answers 501 (HTML) when there is
        # none: every method comes here instead, to get a JSON answer (405 for the unsupported).
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self) -> None:
        headers = self.headers
        self.body_pending = "Transfer-Encoding" in headers or headers.get("Content-Length", "0").strip() != "0"
        path, query = self._target()
        if not self._allowed(needs_token=(self.command, path) != ("GET", "/health")):
            return
        method = _method_for(path)
        if method is None:
            self._send(404, {"error": f"No endpoint {self.command} {path}; "
                                      "try GET /health, /servers, /tools or POST /tools/SERVER__TOOL."})
        elif self.command != method:
            self._send(405, {"error": f"{path} answers only {method}, not {self.command}."}, allow=method)
        elif method == "POST":
            self._call(unquote(path[len(_CALL_PREFIX):]), query)
        elif path == "/health":
            self._send(200, {"status": "ok"})
        elif path == "/servers":
            self._answer(self.server.gateway.servers)
        else:
            self._answer(lambda: self.server.gateway.tools(query.get("server")))

    def _call(self, name: str, query: dict[str, str]) -> None:
        length = self._content_length()
        if length is None:
            return
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            self._send(415, {"error": "The body must be a JSON object sent as Content-Type: application/json."})
            return
        if length > MAX_BODY_BYTES:
            self._send(413, {"error": f"The body is larger than {MAX_BODY_BYTES} bytes."})
            return
        body = self.rfile.read(length)
        if len(body) < length:  # the client closed the connection mid-body
            self.close_connection = True
            return
        self.body_pending = False
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
        try:
            timeout = float(query["timeout"]) if "timeout" in query else None
        except ValueError:
            timeout = -1.0
        if timeout is not None and not timeout > 0:
            self._send(400, {"error": "timeout must be a positive number of seconds."})
            return
        self._answer(lambda: self.server.gateway.call(name, arguments, timeout=timeout))

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
            self._send(403, {
                "error": f"Host {host or '(none)'!r} is not allowed; this gateway answers only to "
                         f"{' and '.join(sorted(self.server.allowed_hosts))}."
            })
            return False
        origin = self.headers.get("Origin")
        if origin is not None and not (origin.lower().startswith("http://")
                                       and self.server.host_allowed(origin.lower()[len("http://"):])):
            self._send(403, {"error": f"Cross-origin requests (Origin {origin!r}) are not allowed."})
            return False
        authorization = self.headers.get("Authorization")
        if needs_token and not self.server.token_matches(authorization or ""):
            problem = "Wrong gateway token" if authorization else "No gateway token"
            self._send(403, {"error": f"{problem}: {self.server.token_help}."})
            return False
        return True

    def _target(self) -> tuple[str, dict[str, str]]:
        parts = urlsplit(self.path)
        return parts.path, {key: values[-1] for key, values in parse_qs(parts.query).items()}

    def _answer(self, produce: Callable[[], Any]) -> None:
        try:
            payload = produce()
        except ToolscriptError as exc:
            self._send(status_for(exc), {"error": redact(exc.message)})
        except Exception:
            log.exception("gateway API: unexpected error for %s %s", self.command, self.path)
            self._send(500, {"error": "Internal gateway error; see the gateway's log."})
        else:
            self._send(200, payload)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer http.server's own refusals (malformed request line, headers too long) in JSON too."""
        self.body_pending = True  # the request could not be read: nothing after it can be trusted
        if self.request_version == "HTTP/0.9":  # the default until the request line is read
            self.request_version = self.protocol_version  # answer with a status line all the same
        self._send(code, {"error": f"{message or self.responses.get(code, ('Error',))[0]}."})

    def _send(self, status: int, payload: Any, *, allow: str | None = None) -> None:
        body = json.dumps(payload).encode()
        if self.request_version == "HTTP/0.9":  # no status line, no headers: just the body
            self.wfile.write(body)
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if allow is not None:
            self.send_header("Allow", allow)
        if self.body_pending:
            self.send_header("Connection", "close")
            self.close_connection = True
        # end_headers() plus the body in one write: one send and one wake-up of the client
        # per response instead of two (a measurable share of a loopback round trip).
        self._headers_buffer.append(b"\r\n" + (body if self.command != "HEAD" else b""))  # type: ignore[attr-defined]
        self.flush_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server signature
        if log.isEnabledFor(logging.DEBUG):
            log.debug("gateway API: %s %s", self.address_string(), format % args)


_ERRORS: dict[int, type[ToolscriptError]] = {
    400: UsageError, 401: AuthRequiredError, 403: UsageError, 404: UsageError, 504: CallTimeoutError,
}


class RemoteGateway:
    """A running gateway reached over its HTTP API, with the methods of `gateway.Gateway`.

    `token` defaults to `find_token(url)`. Errors come back as the same exception types the
    gateway raised (by HTTP status), so callers behave the same either way. Each thread
    keeps one keep-alive connection.
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
        token = token if token is not None else find_token(url)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._local = threading.local()

    def check(self) -> None:
        """Raise `ConnectError` unless a gateway answers at the URL."""
        try:
            health = self._request("GET", "/health", timeout=10)
        except ConnectError:
            raise
        except ToolscriptError as exc:
            raise self._unreachable(exc.message) from None
        if health != {"status": "ok"}:
            raise self._unreachable("it did not answer like a toolscript gateway")

    def servers(self) -> list[dict[str, Any]]:
        return self._request("GET", "/servers")

    def tools(self, server: str | None = None) -> list[dict[str, Any]]:
        return self._request("GET", "/tools" + (f"?server={quote(server)}" if server else ""))

    def call(self, name: str, arguments: dict[str, Any] | None = None, *, timeout: float | None = None) -> dict[str, Any]:
        path = _CALL_PREFIX + quote(name) + (f"?timeout={timeout:g}" if timeout else "")
        # The gateway bounds every call; the socket timeout only guards against a hung gateway.
        return self._request("POST", path, arguments or {}, timeout=timeout + 30 if timeout else None)

    def close(self) -> None:
        """Close this thread's connection."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _request(self, method: str, path: str, body: Any = None, *, timeout: float | None = 60.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {**self._headers, "Content-Type": "application/json"} if data is not None else self._headers
        for attempt in range(2):
            connection = getattr(self._local, "connection", None)
            reused = connection is not None
            if connection is None:
                connection = self._local.connection = http.client.HTTPConnection(self._host, self._port)
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            try:
                connection.request(method, path, body=data, headers=headers)
                response = connection.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                # A kept-alive connection the gateway closed meanwhile: once more on a new one.
                if reused and attempt == 0 and isinstance(exc, (ConnectionError, http.client.RemoteDisconnected)):
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
        message = payload.get("error") if isinstance(payload, dict) else None
        raise _ERRORS.get(response.status, ConnectError)(message or f"The gateway answered HTTP {response.status}.")

    def _unreachable(self, reason: str) -> ConnectError:
        return ConnectError(
            f"The gateway at {self.url} ({URL_VAR}) is not reachable: {reason}. "
            f"Start it with: toolscript gateway, or unset {URL_VAR}."
        )


# -- the token file: how the user who started a gateway, and only that user, gets its token --


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

    Raises `UsageError` naming the file when it cannot be written safely.
    """
    path = token_file(url)
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        _check_private_directory(directory)
        # Created with its final mode, then renamed over any file a crashed gateway left.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(token + "\n")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise UsageError(f"Cannot write the gateway token file {path}: {exc.strerror or exc}.") from None
    return path


def remove_token_file(path: Path) -> None:
    """Remove a token file written by `write_token_file`, if it is still there."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def find_token(url: str) -> str | None:
    """Return the token for the gateway at `url`: `$TOOLSCRIPT_GATEWAY_TOKEN`, else its token file, else None.

    Raises `UsageError` naming the file when it exists but is not this user's private file.
    """
    token = os.environ.get(TOKEN_VAR, "").strip()
    if token:
        return token
    path = token_file(url)
    try:
        _check_private_directory(path.parent)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # no gateway of this user's at that address: it will say where the token comes from
    except OSError as exc:
        raise UsageError(f"Cannot read the gateway token file {path}: {exc.strerror or exc}; "
                         f"set {TOKEN_VAR} instead.") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise UsageError(f"{path} is not a private file of yours (mode 0600); refusing to use it. "
                             f"Delete it and restart the gateway, or set {TOKEN_VAR}.")
        return handle.read(1024).decode("ascii", "replace").strip() or None


def _check_private_directory(directory: Path) -> None:
    """Raise `OSError` unless `directory` is a real directory of this user's; tighten it to 0700."""
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise OSError(f"{directory} is not a directory of yours")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(directory, 0o700)
