"""OAuth2 for MCP servers: discovery, client registration and the Authorization Code flow.

`authenticate` runs the whole interactive flow for one configured `http` or `sse` server
and stores the result with `storage.Store`: probe the server, discover its protected
resource metadata (RFC 9728) and authorization server metadata (RFC 8414, OpenID Connect
discovery), obtain a client (stored, configured, client ID metadata document or dynamic
registration per RFC 7591), run the Authorization Code flow with PKCE through a loopback
redirect server, and exchange the code for tokens. `logout` revokes and deletes what was
stored; `auth_state` and `status_report` describe it without network.

It is built on `requests` and `http.server` and is synchronous; the MCP SDK is not
imported. Progress goes to the `toolscript.auth` logger at INFO (each URL requested at
DEBUG, query values masked); every token, code, state, verifier and client secret is
registered with `redact` before it could reach a log line. Errors are `AuthError`s whose
message names the step and what the server said, never a secret.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import hmac
import html
import http.server
import logging
import os
import queue
import re
import secrets
import shlex
import shutil
import signal
import socket
import socketserver
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit, urlunsplit

if __package__:
    from .errors import AuthConnectError, AuthError, OAuthErrorResponse, StorageError, auth_command
    from .redact import redact, register_secret
    from .storage import ClientInfo, Metadata, Record, Store, Tokens, note_auth_not_needed, oauth_status
    from .urls import is_https_or_loopback, is_loopback_host, is_unambiguous, url_origin
else:
    from errors import AuthConnectError, AuthError, OAuthErrorResponse, StorageError, auth_command
    from redact import redact, register_secret
    from storage import ClientInfo, Metadata, Record, Store, Tokens, note_auth_not_needed, oauth_status
    from urls import is_https_or_loopback, is_loopback_host, is_unambiguous, url_origin

if TYPE_CHECKING:
    import requests

    from config import ServerConfig

__all__ = [
    "AuthState",
    "LogoutResult",
    "auth_state",
    "authenticate",
    "browser_commands",
    "describe_duration",
    "describe_tokens",
    "logout",
    "open_in_browser",
    "parse_www_authenticate",
    "status_report",
]

log = logging.getLogger("toolscript.auth")

HTTP_TIMEOUT = 30.0  # seconds for a whole request to the servers `auth` talks to, answer included
# Metadata, registrations and tokens are a few KiB; anything near this is not one of them.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
CALLBACK_PATH = "/callback"
# A connection to the loopback callback server that sends nothing for this long is dropped.
CALLBACK_IDLE_TIMEOUT = 5.0
OFFLINE_ACCESS = "offline_access"
PROTOCOL_VERSION = "2025-11-25"
_MAX_REDIRECTS = 5
_AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post")
_USER_AGENT = "toolscript"


# -- public results ------------------------------------------------------------------


@dataclass(frozen=True)
class AuthState:
    """What `toolscript auth` (no server) shows for one server: a state word and details."""

    state: str  # "authenticated", "expired", "failed", "not authenticated", "no auth needed" or "n/a"
    detail: str = ""
    needs_auth: bool = False

    def __str__(self) -> str:
        return f"{self.state} ({self.detail})" if self.detail else self.state


@dataclass
class LogoutResult:
    """What `logout` did: which tokens the server revoked, what failed, what was deleted."""

    revoked: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    deleted_tokens: bool = False
    deleted_client: bool = False
    # The server offers no revocation: the deleted tokens stay valid until they expire (this access token then).
    not_revocable: bool = False
    access_token_expires_at: float | None = None


# -- the flow ------------------------------------------------------------------------


def authenticate(
    server: ServerConfig,
    store: Store,
    *,
    open_browser: Callable[[str], object] | None,
    show_url: Callable[[str], None],
    read_pasted: Callable[[], str] | None = None,
    timeout: float = 300.0,
    http_timeout: float = HTTP_TIMEOUT,
    forget_client: bool = False,
) -> Record | None:
    """Authenticate `server` interactively and store the result; None if it needs no auth.

    `show_url` is given the authorization URL (always); `open_browser` then opens it
    (None: do not). `read_pasted`, when given, is called repeatedly in a thread for a
    line holding the redirected URL, as an alternative to the loopback callback.
    `timeout` bounds the wait for the browser. `forget_client` registers anew instead of
    reusing the stored client registration. A server that answers without asking for
    authorization is recorded as such (`Record.auth_not_needed`).
    """
    if not server.is_remote or server.url is None:
        raise AuthError(
            f"Server '{server.name}' is a {server.type} server; only http and sse servers use OAuth.",
            server=server.name,
        )
    http = _Http(http_timeout)
    try:
        discovery = _discover(http, server)
        if discovery is None:
            store.update(server.name, lambda old: note_auth_not_needed(old, server.url))
            return None
        record = store.load(server.name)
        for secret in record.secret_values() if record else ():
            register_secret(secret)  # a stored client secret goes to the token endpoint, which may echo it
        scope = _choose_scope(server, discovery, record)
        stored = record.client if record is not None and not forget_client else None
        if stored is not None and stored.client_id == record.metadata.suspect_client_id:
            log.info("The last authorization with the stored client registration never came back; registering anew")
            stored = None
        callback, client = _prepare_client(http, server, discovery, stored, scope)
        try:
            with callback:
                code, verifier = _authorize(
                    server,
                    discovery,
                    client,
                    scope,
                    callback,
                    open_browser=open_browser,
                    show_url=show_url,
                    read_pasted=read_pasted,
                    timeout=timeout,
                    stored_client=stored is not None and client is stored,
                )
        except _SuspectClient:
            store.update(server.name, lambda old: _suspect(old, client))
            raise
        log.info("Exchanging the authorization code for tokens")
        try:
            tokens = _exchange_code(http, discovery, client, code, verifier, scope)
        except AuthError as exc:
            if exc.error != "invalid_client" or client.registration_source != "dynamic":
                raise
            # The authorization server no longer knows the registration (it restarted and
            # forgot it): forget it too, with the tokens issued under it, so that the next
            # `toolscript auth` registers anew.
            store.update(server.name, lambda old: _forget_client(old, client))
            raise AuthError(
                f"{exc.message.rstrip('.')}. The authorization server no longer knows the client registration of "
                f"'{server.name}'; toolscript forgot it, and the next authorization registers anew.",
                server=server.name,
                error=exc.error,
                next_command=auth_command(server.name),
            ) from None
    finally:
        http.close()

    new = Record(
        client=client,
        tokens=tokens,
        metadata=Metadata(
            server_url=server.url,
            issuer=discovery.issuer,
            token_endpoint=discovery.token_endpoint,
            authorization_endpoint=discovery.authorization_endpoint,
            revocation_endpoint=discovery.revocation_endpoint,
            resource=discovery.resource,
            discovery=discovery.chain,
            scope_requested=scope,
        ),
    )
    store.update(server.name, lambda old: _keep_unknown(old, new))
    return new


def _suspect(record: Record | None, client: ClientInfo) -> Record | None:
    """`record`, noting that the authorization with its (stored, dynamic) `client` never came back."""
    if record is not None and record.client is not None and record.client.client_id == client.client_id:
        record.metadata.suspect_client_id = client.client_id
    return record


def _forget_client(record: Record | None, client: ClientInfo) -> Record | None:
    """`record` without the registration of `client` and the tokens issued under it (None: nothing left)."""
    if record is None or record.client is None or record.client.client_id != client.client_id:
        return record
    record.client, record.tokens = None, None
    record.metadata.note_error("the authorization server no longer knows the client registration: invalid_client")
    return record


def _keep_unknown(old: Record | None, new: Record) -> Record:
    """`new`, keeping the keys a newer version wrote in `old` (its unknown token keys went with its tokens)."""
    if old is not None:
        new.unknown = {name: value for name, value in old.unknown.items() if name != "tokens"}
        if old.client is None or new.client is None or old.client.client_id != new.client.client_id:
            new.unknown.pop("client", None)  # they described another registration
    return new


def logout(
    server: ServerConfig, store: Store, *, forget_client: bool = False, http_timeout: float = HTTP_TIMEOUT
) -> LogoutResult:
    """Revoke the stored tokens at the server (RFC 7009) when it can, then delete them."""
    result = LogoutResult()
    try:
        record = store.load(server.name)
    except StorageError:
        if not forget_client:
            raise
        with store.lock(server.name):
            result.deleted_client = result.deleted_tokens = store.delete(server.name)  # corrupt: nothing to revoke
        return result
    if record is None:
        if store.directory.exists():  # nothing stored, but a crashed write may have left a temporary file
            store.update(server.name, lambda old: old)
        return result
    tokens, client, endpoint = record.tokens, record.client, record.metadata.revocation_endpoint
    for value in (tokens.access_token, tokens.refresh_token) if tokens else ():
        register_secret(value)
    register_secret(client.client_secret if client else None)
    if tokens is not None and client is not None and endpoint:
        http = _Http(http_timeout)
        try:
            for kind, value in (("refresh_token", tokens.refresh_token), ("access_token", tokens.access_token)):
                if not value:
                    continue
                name = kind.replace("_", " ")
                try:
                    _check_endpoint(endpoint, "revocation endpoint")
                    data, auth = _client_auth(client, {"token": value, "token_type_hint": kind})
                    response = http.request("POST", endpoint, step=f"Revoking the {name}", data=data, auth=auth)
                    if response.status_code != 200:
                        raise _server_error(f"Revoking the {name}", response)
                    result.revoked.append(name)
                except AuthError as exc:
                    result.failures.append(exc.message)
        finally:
            http.close()

    def change(old: Record | None) -> Record | None:
        if old is None or forget_client:
            return None
        old.tokens = None
        old.metadata.step_up_scope = None
        return old if old.client is not None else None

    result.deleted_tokens = tokens is not None
    result.deleted_client = forget_client and client is not None
    if tokens is not None and not endpoint:
        result.not_revocable, result.access_token_expires_at = True, tokens.expires_at
    store.update(server.name, change)
    return result


# -- status (no network) -------------------------------------------------------------


def auth_state(server: ServerConfig, record: Record | None, now: float | None = None) -> AuthState:
    """Classify `server` from its config and stored record alone."""
    if not server.is_remote:
        return AuthState("n/a", "stdio server")
    if server.has_authorization_header:
        return AuthState("n/a", "Authorization header configured")
    tokens = record.tokens_for(server.url) if record else None
    now = time.time() if now is None else now
    if record is not None and record.metadata.last_error:
        # The last use failed: say so, why and when, whatever tokens are left.
        reason = oauth_status(record, server.url or "", now).reason or record.metadata.last_error
        at = record.metadata.last_error_at
        when = f"; {time.strftime('%Y-%m-%d %H:%M', time.localtime(at))}, {_duration(now - at)} ago" if at else ""
        return AuthState("failed", f"{reason}{when}", needs_auth=True)
    if tokens is None:
        if record is not None and record.auth_not_needed(server.url):
            return AuthState("no auth needed", "it answered toolscript auth without asking for authorization")
        return AuthState("not authenticated", needs_auth=True)
    if tokens.is_expired(now):
        if tokens.refresh_token:
            return AuthState("expired", "refreshable")
        return AuthState("expired", "not refreshable", needs_auth=True)
    return AuthState("authenticated", describe_tokens(tokens, now))


def describe_duration(seconds: float) -> str:
    """Return e.g. `59 min` or `3 days`."""
    return _duration(seconds)


def describe_tokens(tokens: Tokens, now: float | None = None) -> str:
    """Return e.g. `scopes: repo read:user; expires in 59 min; refresh token: yes`."""
    now = time.time() if now is None else now
    expiry = "no expiry" if tokens.expires_at is None else f"expires in {_duration(tokens.expires_at - now)}"
    return f"scopes: {tokens.scope or '(none)'}; {expiry}; refresh token: {'yes' if tokens.refresh_token else 'no'}"


def status_report(server: ServerConfig, store: Store, now: float | None = None) -> list[tuple[str, str]]:
    """Return (label, value) lines for `toolscript auth SERVER --status`; no secret values."""
    now = time.time() if now is None else now
    path = store.path(server.name)
    record = store.load(server.name)
    state = auth_state(server, record, now)
    lines = [("Server", f"{server.name} ({server.type} {server.target})"), ("State", str(state))]
    if record is None:
        lines.append(("Record", f"{path} (none)"))
        return lines
    try:
        mode = f"mode {stat.S_IMODE(path.stat().st_mode):03o}"
    except OSError:
        mode = "unreadable"
    lines.append(("Record", f"{path} ({mode}; directory mode {stat.S_IMODE(path.parent.stat().st_mode):03o})"))
    meta = record.metadata
    for number, step in enumerate(meta.discovery, 1):
        lines.append(("Discovery" if number == 1 else "", f"{number}. {step}"))
    lines += [
        ("Issuer", meta.issuer or "-"),
        ("Token endpoint", meta.token_endpoint or "-"),
        ("Revocation endpoint", meta.revocation_endpoint or "none"),
        ("Resource", meta.resource or "-"),
    ]
    client = record.client
    if client is not None:
        how = {
            "dynamic": "dynamic client registration (RFC 7591)",
            "config": "configured client_id",
            "metadata_url": "client ID metadata document",
        }.get(client.registration_source, client.registration_source)
        secret = "; client secret stored" if client.client_secret else ""
        lines += [
            ("Client", f"{client.client_id} via {how}{secret}"),
            ("Token auth method", client.token_endpoint_auth_method or "-"),
            ("Redirect URI", client.redirect_uri or "-"),
        ]
        if client.registration_client_uri:
            lines.append(("Client configuration", f"{client.registration_client_uri} (RFC 7592)"))
    lines.append(("Scopes requested", meta.scope_requested or "(none)"))
    if meta.step_up_scope:
        lines.append(("Step-up scopes", f"{meta.step_up_scope} (asked for by the next toolscript auth)"))
    tokens = record.tokens
    if tokens is not None:
        expires = (
            "never"
            if tokens.expires_at is None
            else (
                time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(tokens.expires_at))
                + (" (expired)" if tokens.is_expired(now) else f" (in {_duration(tokens.expires_at - now)})")
            )
        )
        lines += [
            ("Scopes granted", tokens.scope or "(none)"),
            ("Expires", expires),
            ("Refresh token", "yes" if tokens.refresh_token else "no"),
        ]
    return lines


# -- HTTP ----------------------------------------------------------------------------


class _Http:
    """requests with a total deadline and a size cap on every answer, same-origin redirects only, and DEBUG lines.

    Each request, from connecting to the last byte of the answer, must end within
    `timeout` seconds: a watchdog shuts its connection down at the deadline, so an
    authorization server that sends one byte every few seconds cannot hold `auth` for
    minutes. An answer larger than `MAX_ANSWER_BYTES` is refused unread. Every URL is
    checked as `requests` itself parses it (`urls.is_unambiguous`) before anything is sent.
    `requests` is imported here, not at the top, so the status commands stay fast.
    """

    def __init__(self, timeout: float) -> None:
        import requests

        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = _USER_AGENT
        # The size cap counts decoded bytes; not inviting compression keeps a small bomb from inflating first.
        self.session.headers["Accept-Encoding"] = "identity"
        adapter = _watched_adapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        self.session.close()

    def request(self, method: str, url: str, *, step: str, stream: bool = False, **kwargs: Any) -> requests.Response:
        """Send a request; with `stream`, return once the headers are in (the caller reads no body)."""
        for _ in range(_MAX_REDIRECTS + 1):
            _check_as_sent(url, step)
            log.debug("%s %s", method, _mask_query(url))
            watch = _Watch(self.timeout)
            with watch:
                response = self._send(watch, method, url, step, kwargs)
                if not stream:
                    self._read(watch, response, url, step)
            location = response.headers.get("Location")
            # Only GETs and method-preserving redirects are followed, and only on the same origin.
            if response.status_code not in (301, 302, 303, 307, 308) or not location:
                return response
            target = urljoin(url, location)
            if url_origin(target) != url_origin(url) or (method != "GET" and response.status_code not in (307, 308)):
                log.debug("not following redirect from %s to %s", _mask_query(url), _mask_query(target))
                return response
            response.close()
            url = target
        raise AuthError(f"{step} failed: too many redirects from {url_origin(url)}.")

    def _send(self, watch: _Watch, method: str, url: str, step: str, kwargs: dict[str, Any]) -> requests.Response:
        import requests

        try:
            return self.session.request(method, url, timeout=self.timeout, allow_redirects=False, stream=True, **kwargs)
        except requests.RequestException as exc:
            if watch.expired or isinstance(exc, requests.Timeout):
                raise self._late(step, url) from None
            raise AuthConnectError(f"{step} failed: cannot reach {url_origin(url)} ({_reason(exc)}).") from None

    def _read(self, watch: _Watch, response: requests.Response, url: str, step: str) -> None:
        """Read the whole answer into `response.content`, within the deadline and the size cap."""
        import requests

        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(64 * 1024):
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    response.close()
                    raise AuthError(
                        f"{step} failed: {url_origin(url)} sent an answer larger than "
                        f"{MAX_ANSWER_BYTES // (1024 * 1024)} MiB; refusing it."
                    )
                chunks.append(chunk)
        except (requests.RequestException, OSError) as exc:
            response.close()
            if watch.expired or isinstance(exc, requests.Timeout):
                raise self._late(step, url) from None
            raise AuthConnectError(f"{step} failed: {url_origin(url)} broke off its answer ({_reason(exc)}).") from None
        # What `Response.content` itself stores once it has read the body.
        response._content = b"".join(chunks)

    def _late(self, step: str, url: str) -> AuthConnectError:
        return AuthConnectError(f"{step} failed: {url_origin(url)} did not answer within {self.timeout:g}s.")


def _check_as_sent(url: str, step: str) -> None:
    """Refuse a URL that `requests` would send to another origin than the one the checks saw."""
    import requests

    try:
        prepared = requests.Request("GET", url).prepare().url or ""
    except (requests.RequestException, ValueError):
        prepared = ""
    if not is_unambiguous(url) or url_origin(prepared) != url_origin(url):
        raise AuthError(
            f"{step} failed: the URL {_mask_query(url)!r} holds a backslash, userinfo or characters that URL "
            "parsers read differently; refusing to send anything to it."
        )


class _Watch:
    """The deadline of one request: when it passes, the connections the request used are shut down.

    A connection enters itself here when it connects or a request goes out on it (new or
    kept alive; `_WatchedMixin`), so the watchdog finds its socket in every phase: the TLS
    handshake, sending, waiting for headers, reading the body. Only the TCP connect itself
    is bounded by the connect timeout instead.
    """

    _current = threading.local()

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.expired = False
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Watch:
        _Watch._current.watch = self
        _start_without_signals(self._timer)
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        _Watch._current.watch = None

    @classmethod
    def enter(cls, connection: Any) -> None:
        watch = getattr(cls._current, "watch", None)
        if watch is not None:
            with watch._lock:
                watch._connections.append(connection)
                expired = watch.expired
            if expired:
                _shut(connection)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)


def _shut(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # a blocked read or write returns at once


class _WatchedMixin:
    """Makes a urllib3 connection enter the current `_Watch` when it connects (TLS handshake included) or sends."""

    def connect(self) -> None:
        _Watch.enter(self)
        super().connect()  # type: ignore[misc]

    def request(self, *args: Any, **kwargs: Any) -> None:
        _Watch.enter(self)
        super().request(*args, **kwargs)  # type: ignore[misc]


def _watched_adapter() -> Any:
    """A `requests` adapter whose connections enter the current `_Watch`."""
    import requests.adapters
    import urllib3
    from urllib3.connection import HTTPConnection, HTTPSConnection

    class Pool(urllib3.HTTPConnectionPool):
        ConnectionCls = type("WatchedConnection", (_WatchedMixin, HTTPConnection), {})

    class TLSPool(urllib3.HTTPSConnectionPool):
        ConnectionCls = type("WatchedTLSConnection", (_WatchedMixin, HTTPSConnection), {})

    pools = {"http": Pool, "https": TLSPool}

    class WatchedAdapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            if hasattr(manager, "pool_classes_by_scheme") and not proxy.lower().startswith("socks"):
                manager.pool_classes_by_scheme = pools
            return manager

    return WatchedAdapter()


def _server_error(step: str, response: requests.Response) -> AuthError:
    """Build `<step> failed: 400 invalid_grant: code expired` from an error response."""
    answer = OAuthErrorResponse.parse(response.status_code, response.content)
    detail = str(answer)
    if answer.error is None and response.status_code in (301, 302, 303, 307, 308):
        target = urljoin(response.url, response.headers.get("Location", ""))
        detail += f" (redirect to {url_origin(target)}, not followed)"
    return AuthError(f"{step} failed: {detail}", error=answer.error)


def _json_object(response: requests.Response, step: str, url: str) -> dict[str, Any]:
    try:
        body = response.json()
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        body = None
    if not isinstance(body, dict):
        raise AuthError(f"{step} failed: {url} did not return a JSON object.")
    return body


def _check_endpoint(url: str, what: str) -> None:
    """Refuse a discovered endpoint that is not https, unless it is on a loopback host."""
    if is_https_or_loopback(url):
        return
    if not is_unambiguous(url):
        raise AuthError(
            f"The {what} {_mask_query(url)!r} holds a backslash, userinfo or characters that URL parsers read "
            "differently; refusing to use it."
        )
    raise AuthError(
        f"The {what} {_mask_query(url)} is not an https URL; refusing to use it "
        "(plain http is allowed only for localhost, 127.0.0.0/8 and ::1)."
    )


# -- step 1-3: probe and discovery ---------------------------------------------------


@dataclass
class _Discovery:
    server_url: str
    resource: str
    issuer: str
    metadata: dict[str, Any]
    challenge_scope: str | None
    resource_scopes: list[str] | None
    chain: list[str]
    defaults: bool = False  # no metadata was published: legacy default endpoints

    @property
    def authorization_endpoint(self) -> str:
        return self.metadata["authorization_endpoint"]

    @property
    def token_endpoint(self) -> str:
        return self.metadata["token_endpoint"]

    @property
    def registration_endpoint(self) -> str | None:
        return self.metadata.get("registration_endpoint")

    @property
    def revocation_endpoint(self) -> str | None:
        return self.metadata.get("revocation_endpoint")

    def supports(self, key: str, value: str) -> bool:
        values = self.metadata.get(key)
        return isinstance(values, list) and value in values


def _discover(http: _Http, server: ServerConfig) -> _Discovery | None:
    assert server.url is not None
    name, url = server.name, server.url
    _check_endpoint(url, f"URL of server '{name}'")  # a token must never travel in clear text
    log.info("Probing %s", url)
    challenge = _probe(http, server)
    if challenge is None:
        return None
    chain = [
        f"probe {url}: 401, WWW-Authenticate "
        + (
            ", ".join(f"{k}={v}" for k, v in challenge.items() if k in ("resource_metadata", "scope"))
            or "without parameters"
        )
    ]
    prm, prm_url = _fetch_resource_metadata(http, url, challenge.get("resource_metadata"), chain)
    if prm is not None:
        resource = prm.get("resource")
        if not isinstance(resource, str) or not _resource_covers(resource, url):
            alias = _loopback_alias(resource, url) if isinstance(resource, str) else None
            hint = (
                (
                    f" The server calls itself {urlsplit(alias).hostname}, not {urlsplit(url).hostname}: configure "
                    f'url = "{alias}" in [servers.{name}].'
                )
                if alias
                else ""
            )
            raise AuthError(
                f"Protected resource metadata at {prm_url} names resource {resource!r}, which does not "
                f"match server '{name}' at {url} (RFC 8707); refusing to authenticate.{hint}",
                server=name,
            )
        servers = prm.get("authorization_servers")
        if not isinstance(servers, list) or not servers or not isinstance(servers[0], str):
            raise AuthError(f"Protected resource metadata at {prm_url} lists no authorization server.", server=name)
        issuer = servers[0]
        scopes = prm.get("scopes_supported")
        resource_scopes = [s for s in scopes if isinstance(s, str)] if isinstance(scopes, list) else None
        metadata, defaults = _fetch_server_metadata(http, issuer, chain), False
        if metadata is None:
            raise AuthError(
                f"No authorization server metadata found for issuer {issuer} "
                f"(tried {', '.join(_metadata_urls(issuer))}).",
                server=name,
            )
    else:
        # MCP 2025-03-26: no protected resource metadata; the server's origin is the
        # authorization server, with default endpoints when it publishes no metadata.
        resource, issuer, resource_scopes = url, url_origin(url), None
        log.info("No protected resource metadata; using %s as the authorization server (MCP 2025-03-26)", issuer)
        metadata = _fetch_server_metadata(http, issuer, chain)
        defaults = metadata is None
        found = metadata.get("issuer") if metadata else None
        if isinstance(found, str) and found.rstrip("/") != issuer and _same_origin_issuer(found, issuer):
            # MCP 2025-03-26 puts the metadata at the origin's well-known URL whatever the
            # issuer's path (e.g. <origin>/oauth). The document comes from the server's own
            # origin, the only trust anchor on this path, so an issuer on that origin is
            # accepted and used from here on; an issuer on another origin is still refused.
            log.info("Legacy authorization server metadata names issuer %s on the server's origin; using it", found)
            chain.append(f"legacy issuer {found} on the server's origin accepted")
            issuer = found.rstrip("/")
        if metadata is None:
            metadata = {
                "issuer": issuer,
                "authorization_endpoint": issuer + "/authorize",
                "token_endpoint": issuer + "/token",
                "registration_endpoint": issuer + "/register",
            }
            chain.append(f"no authorization server metadata: default endpoints {issuer}/authorize, /token, /register")
            log.info("No authorization server metadata; using the default endpoints /authorize, /token, /register")
    _check_server_metadata(metadata, issuer, name, pkce=not defaults)
    log.info("Authorization server: %s", issuer)
    return _Discovery(
        server_url=url,
        resource=resource,
        issuer=issuer,
        metadata=metadata,
        challenge_scope=challenge.get("scope"),
        resource_scopes=resource_scopes,
        chain=chain,
        defaults=defaults,
    )


def _probe(http: _Http, server: ServerConfig) -> dict[str, str] | None:
    """Make an unauthenticated MCP request; return the 401's WWW-Authenticate parameters."""
    assert server.url is not None
    headers = {k: v for k, v in server.headers.items()}
    step = f"Probing server '{server.name}'"
    if server.type == "sse":
        with http.request(
            "GET", server.url, step=step, headers={**headers, "Accept": "text/event-stream"}, stream=True
        ) as response:
            return _challenge(response, server)
    headers.update({"Accept": "application/json, text/event-stream", "Content-Type": "application/json"})
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "toolscript", "version": "auth-probe"},
        },
    }
    with http.request("POST", server.url, step=step, json=initialize, headers=headers, stream=True) as response:
        challenge = _challenge(response, server)
        session = response.headers.get("Mcp-Session-Id")
    if challenge is not None:
        return challenge
    # Some servers let `initialize` through and protect only the methods after it.
    headers["MCP-Protocol-Version"] = PROTOCOL_VERSION
    if session:
        headers["Mcp-Session-Id"] = session
    try:
        http.request(
            "POST",
            server.url,
            step=step,
            headers=headers,
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
        ).close()
        with http.request(
            "POST",
            server.url,
            step=step,
            headers=headers,
            stream=True,
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        ) as response:
            challenge = _challenge(response, server, strict=False)
    finally:
        if session:
            try:
                http.request("DELETE", server.url, step=step, headers=headers).close()
            except AuthError:
                pass
    return challenge


def _challenge(response: requests.Response, server: ServerConfig, strict: bool = True) -> dict[str, str] | None:
    if response.status_code == 401:
        return parse_www_authenticate(response.headers.get("WWW-Authenticate", ""))
    if 200 <= response.status_code < 300 or not strict:
        return None
    raise AuthError(
        f"Probing server '{server.name}' failed: {response.status_code} {response.reason or ''}".strip()
        + f" from {server.url} (expected 401 asking for authentication).",
        server=server.name,
    )


_PARAM_RE = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]+)')


def parse_www_authenticate(header: str) -> dict[str, str]:
    """Return the auth-params of a `WWW-Authenticate: Bearer ...` header (unquoted)."""
    match = re.search(r"(?i)\bbearer\b", header)
    text = header[match.end() :] if match else header
    params: dict[str, str] = {}
    for key, value in _PARAM_RE.findall(text):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params.setdefault(key.lower(), value)
    return params


def _fetch_resource_metadata(
    http: _Http, server_url: str, hinted: str | None, chain: list[str]
) -> tuple[dict[str, Any] | None, str | None]:
    parts = urlsplit(server_url)
    origin = url_origin(server_url)
    candidates = [hinted] if hinted else []
    path = parts.path.rstrip("/")
    if path:
        candidates.append(f"{origin}/.well-known/oauth-protected-resource{path}")
    candidates.append(f"{origin}/.well-known/oauth-protected-resource")
    for url in dict.fromkeys(candidates):
        _check_endpoint(url, "protected resource metadata URL")
        log.info("Fetching protected resource metadata from %s", url)
        document = _fetch_document(http, url, "Fetching protected resource metadata", chain)
        if document is not None:
            return document, url
    return None, None


def _metadata_urls(issuer: str) -> list[str]:
    """The RFC 8414 / OIDC discovery URLs for `issuer`, in the MCP specification's order."""
    origin, path = url_origin(issuer), urlsplit(issuer).path.rstrip("/")
    if path:
        return [
            f"{origin}/.well-known/oauth-authorization-server{path}",
            f"{origin}/.well-known/openid-configuration{path}",
            f"{origin}{path}/.well-known/openid-configuration",
        ]
    return [f"{origin}/.well-known/oauth-authorization-server", f"{origin}/.well-known/openid-configuration"]


def _fetch_server_metadata(http: _Http, issuer: str, chain: list[str]) -> dict[str, Any] | None:
    _check_endpoint(issuer, "authorization server")
    for url in _metadata_urls(issuer):
        log.info("Fetching authorization server metadata from %s", url)
        document = _fetch_document(http, url, "Fetching authorization server metadata", chain)
        if document is not None:
            return document
    return None


def _fetch_document(http: _Http, url: str, step: str, chain: list[str]) -> dict[str, Any] | None:
    response = http.request(
        "GET", url, step=step, headers={"Accept": "application/json", "MCP-Protocol-Version": PROTOCOL_VERSION}
    )
    if response.status_code != 200:
        chain.append(f"{url}: {response.status_code}")
        return None
    chain.append(f"{url}: 200")
    return _json_object(response, step, url)


def _check_server_metadata(metadata: dict[str, Any], issuer: str, server: str, *, pkce: bool) -> None:
    found = metadata.get("issuer")
    # RFC 8414 §3.3 and the mix-up defence: the document must be the expected issuer's.
    # Only a trailing slash is forgiven (URL libraries add one to a bare origin).
    if not isinstance(found, str) or found.rstrip("/") != issuer.rstrip("/"):
        raise AuthError(
            f"Authorization server metadata names issuer {found!r}, but {issuer!r} was expected; "
            "refusing to use it (possible mix-up attack).",
            server=server,
        )
    for key in ("authorization_endpoint", "token_endpoint"):
        if not isinstance(metadata.get(key), str):
            raise AuthError(f"Authorization server metadata of {issuer} has no {key}.", server=server)
    for key in ("authorization_endpoint", "token_endpoint", "registration_endpoint", "revocation_endpoint"):
        if isinstance(metadata.get(key), str):
            _check_endpoint(metadata[key], key.replace("_", " "))
    methods = metadata.get("code_challenge_methods_supported")
    if pkce:  # the MCP spec: refuse an authorization server that does not advertise S256
        if not isinstance(methods, list) or "S256" not in methods:
            raise AuthError(
                f"The authorization server {issuer} does not advertise PKCE with S256 "
                "(code_challenge_methods_supported); refusing to authenticate.",
                server=server,
            )


def _same_origin_issuer(issuer: str, origin: str) -> bool:
    parts = urlsplit(issuer)
    return not parts.query and not parts.fragment and url_origin(issuer) == origin


def _loopback_alias(resource: str, server_url: str) -> str | None:
    """`server_url` on the resource's host, when the two name the loopback host differently (localhost, 127.0.0.1)."""
    named, configured = urlsplit(resource), urlsplit(server_url)
    try:
        same_port = named.port == configured.port
    except ValueError:
        return None
    if named.scheme != configured.scheme or not same_port or named.hostname == configured.hostname:
        return None
    if not (is_loopback_host(named.hostname) and is_loopback_host(configured.hostname)):
        return None
    alias = urlunsplit((configured.scheme, named.netloc, configured.path, configured.query, ""))
    return alias if _resource_covers(resource, alias) else None


def _resource_covers(resource: str, server_url: str) -> bool:
    """Whether the metadata's `resource` is the server URL or a parent of it (RFC 8707, RFC 9728)."""
    if url_origin(resource) != url_origin(server_url):
        return False
    base = urlsplit(resource).path.rstrip("/")
    path = urlsplit(server_url).path.rstrip("/")
    return path == base or path.startswith(base + "/")


# -- step 4: scope and client --------------------------------------------------------


def _choose_scope(server: ServerConfig, discovery: _Discovery, record: Record | None) -> str | None:
    """The scope per the MCP spec, joined with configured and step-up scopes, plus offline_access."""
    if discovery.challenge_scope:
        scopes = discovery.challenge_scope.split()
    else:
        scopes = list(discovery.resource_scopes or [])
    scopes += list(server.oauth.scopes if server.oauth else ())
    if record is not None and record.metadata.step_up_scope:
        scopes += record.metadata.step_up_scope.split()
    if scopes and discovery.supports("scopes_supported", OFFLINE_ACCESS):
        scopes.append(OFFLINE_ACCESS)
    return " ".join(dict.fromkeys(scopes)) or None


def _prepare_client(
    http: _Http, server: ServerConfig, discovery: _Discovery, stored: ClientInfo | None, scope: str | None
) -> tuple[_CallbackServer, ClientInfo]:
    """Pick the client and start the loopback server on its redirect port (registering if needed)."""
    oauth = server.oauth
    configured_redirect = oauth.redirect_uri if oauth else None
    client = _configured_client(server, discovery)
    if client is None and stored is not None and _reusable(stored, discovery, scope, configured_redirect):
        if _registration_gone(http, stored):
            log.info(
                "%s no longer knows the stored client registration (client_id %s); registering anew",
                discovery.issuer,
                stored.client_id,
            )
        else:
            log.info("Using the client registration stored for %s (client_id %s)", discovery.issuer, stored.client_id)
            client = stored
    elif client is not None and stored is not None and stored.client_id == client.client_id:
        client.redirect_uri = client.redirect_uri or stored.redirect_uri  # keep the port across runs
    redirect = client.redirect_uri if client else configured_redirect
    try:
        callback = _CallbackServer(redirect)
    except _PortInUse as exc:
        if client is None or client.registration_source != "dynamic" or configured_redirect:
            raise AuthError(
                f"Port {exc.port} of the redirect URI {redirect} is in use by another program; "
                f"stop it or set another [servers.{server.name}.oauth] redirect_uri.",
                server=server.name,
            ) from None
        log.info("Port %s of the stored redirect URI is in use; registering a new client", exc.port)
        client = None
        callback = _CallbackServer(None)
    except _CannotListen as exc:
        raise AuthError(
            f"Cannot listen on {exc.host} port {exc.port} for the redirect URI {redirect} ({exc.reason}); "
            f"set another [servers.{server.name}.oauth] redirect_uri.",
            server=server.name,
        ) from None
    if client is None:
        try:
            client = _register(http, server, discovery, callback.redirect_uri, scope)
        except BaseException:
            callback.close()
            raise
    else:
        client.redirect_uri = callback.redirect_uri
    return callback, client


def _registration_gone(http: _Http, client: ClientInfo) -> bool:
    """Ask the client configuration endpoint (RFC 7592) whether the registration still exists.

    Only a registration that came with `registration_client_uri` and `registration_access_token`
    can be asked about; any answer but a refusal (401, 403, 404) counts as still there.
    """
    uri, token = client.registration_client_uri, client.registration_access_token
    if not uri or not token:
        return False
    register_secret(token)
    try:
        _check_endpoint(uri, "client configuration endpoint")
        response = http.request(
            "GET",
            uri,
            step="Checking the stored client registration",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )
    except AuthError as exc:
        log.debug("Not checking the stored client registration: %s", exc.message)
        return False
    if response.status_code in (401, 403, 404):
        return True
    if response.status_code == 200:
        try:
            body = response.json()
        except (ValueError, RecursionError):
            body = None
        rotated = body.get("registration_access_token") if isinstance(body, dict) else None
        if isinstance(rotated, str) and rotated:  # RFC 7592 §3: the server may issue a new one
            register_secret(rotated)
            client.registration_access_token = rotated
    return False


def _configured_client(server: ServerConfig, discovery: _Discovery) -> ClientInfo | None:
    oauth = server.oauth
    if oauth is None:
        return None
    if oauth.client_id:
        register_secret(oauth.client_secret)
        method = _pick_auth_method(discovery, secret=bool(oauth.client_secret))
        log.info("Using the configured client_id %s (%s)", oauth.client_id, method)
        return ClientInfo(
            client_id=oauth.client_id,
            registration_source="config",
            client_secret=oauth.client_secret,
            token_endpoint_auth_method=method,
            issuer=discovery.issuer,
            redirect_uri=oauth.redirect_uri,
        )
    if oauth.client_metadata_url and discovery.metadata.get("client_id_metadata_document_supported") is True:
        _check_endpoint(oauth.client_metadata_url, "client metadata URL")
        log.info("Using the client ID metadata document %s", oauth.client_metadata_url)
        return ClientInfo(
            client_id=oauth.client_metadata_url,
            registration_source="metadata_url",
            token_endpoint_auth_method="none",
            issuer=discovery.issuer,
            redirect_uri=oauth.redirect_uri,
        )
    return None


def _reusable(client: ClientInfo, discovery: _Discovery, scope: str | None, configured_redirect: str | None) -> bool:
    if client.registration_source != "dynamic" or not client.redirect_uri or client.issuer is None:
        return False
    if client.issuer.rstrip("/") != discovery.issuer.rstrip("/"):
        return False
    if configured_redirect and configured_redirect != client.redirect_uri:
        return False
    if client.client_secret_expires_at and client.client_secret_expires_at <= time.time():
        return False
    if client.token_endpoint_auth_method in ("client_secret_basic", "client_secret_post") and not client.client_secret:
        return False
    # A server that checks scopes against the registration would refuse new ones.
    return not (scope and client.scope is not None and not set(scope.split()) <= set(client.scope.split()))


def _pick_auth_method(discovery: _Discovery, *, secret: bool) -> str:
    """Prefer `none`, else the first secret method the server lists (RFC 8414 default: basic)."""
    if discovery.defaults:
        return "client_secret_basic" if secret else "none"  # no metadata at all (legacy defaults)
    listed = discovery.metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    if not secret and "none" in listed:
        return "none"
    for method in listed:
        if method in _AUTH_METHODS[1:]:
            return method
    return "none" if "none" in listed else "client_secret_basic"


def _register(
    http: _Http, server: ServerConfig, discovery: _Discovery, redirect_uri: str, scope: str | None
) -> ClientInfo:
    endpoint = discovery.registration_endpoint
    if not endpoint:
        raise AuthError(
            f"Server '{server.name}' does not support dynamic client registration. "
            f'Add [servers.{server.name}.oauth] client_id = "..." to your config.',
            server=server.name,
        )
    method = _pick_auth_method(discovery, secret=False)
    body: dict[str, Any] = {
        "client_name": "toolscript",
        "redirect_uris": [redirect_uri],
        "application_type": "native",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": method,
    }
    if scope:
        body["scope"] = scope
    log.info("Registering a client at %s", endpoint)
    response = http.request("POST", endpoint, step="Client registration", json=body)
    if response.status_code not in (200, 201):
        raise _server_error("Client registration", response)
    info = _json_object(response, "Client registration", endpoint)
    client_id, secret = info.get("client_id"), info.get("client_secret")
    register_secret(secret if isinstance(secret, str) else None)
    if not isinstance(client_id, str) or not client_id:
        raise AuthError(f"Client registration failed: {endpoint} returned no client_id.", server=server.name)
    assigned = info.get("token_endpoint_auth_method") or ("client_secret_basic" if secret else method)
    # RFC 7591 §3.2.1: use what the server assigned, if toolscript can.
    if assigned not in _AUTH_METHODS:
        raise AuthError(
            f"Client registration failed: {endpoint} assigned token endpoint auth method "
            f"{assigned!r}, which toolscript does not support.",
            server=server.name,
        )
    if assigned != "none" and not isinstance(secret, str):
        raise AuthError(
            f"Client registration failed: {endpoint} assigned {assigned} but returned no client_secret.",
            server=server.name,
        )
    uris = info.get("redirect_uris")
    if isinstance(uris, list) and uris and redirect_uri not in uris:
        raise AuthError(
            f"Client registration failed: {endpoint} did not register the redirect URI {redirect_uri}.",
            server=server.name,
        )
    expires_at = info.get("client_secret_expires_at")
    # RFC 7592: where the registration can be read later, to find out whether it still exists.
    management_uri, management_token = info.get("registration_client_uri"), info.get("registration_access_token")
    if not (isinstance(management_uri, str) and isinstance(management_token, str) and management_token):
        management_uri = management_token = None
    register_secret(management_token)
    log.info("Registered client_id %s (%s)", client_id, assigned)
    return ClientInfo(
        client_id=client_id,
        registration_source="dynamic",
        client_secret=secret if assigned != "none" else None,
        token_endpoint_auth_method=assigned,
        issuer=discovery.issuer,
        redirect_uri=redirect_uri,
        registered_at=time.time(),
        client_secret_expires_at=float(expires_at) if isinstance(expires_at, (int, float)) and expires_at else None,
        scope=info["scope"] if isinstance(info.get("scope"), str) else scope,
        registration_client_uri=management_uri,
        registration_access_token=management_token,
    )


# -- step 5-7: loopback server, authorization request, callback ----------------------


class _CannotListen(Exception):
    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(host, port, reason)
        self.host, self.port, self.reason = host, port, reason


class _PortInUse(_CannotListen):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port, "in use")


class _Listener(http.server.ThreadingHTTPServer):
    """One listening socket of the callback server; each connection is served in its own daemon thread."""

    block_on_close = False  # closing never waits for a connection's thread

    def __init__(self, host: str, port: int, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), handler)

    def server_bind(self) -> None:
        # HTTPServer's own also looks up the host's name, which can stall on a broken resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("callback server: connection from %s failed", client_address)


class _CallbackServer:
    """A loopback HTTP server, on the redirect URI's host and port, that takes one authorization response.

    Every connection is served in its own thread and dropped after `CALLBACK_IDLE_TIMEOUT`
    seconds of silence, so stray or hostile connections never delay the genuine callback nor
    keep `close` waiting. A response whose `state` does not match the request gets an error
    page, is logged and ignored. The first one that matches (from the browser at
    `redirect_uri`, or pasted via `submit`) is checked and ends the wait, whatever its
    outcome; the browser gets a page saying which. Other paths get 404.
    """

    def __init__(self, redirect_uri: str | None) -> None:
        parts = urlsplit(redirect_uri) if redirect_uri else None
        port = parts.port or 80 if parts else 0
        host = parts.hostname if parts and parts.hostname else "127.0.0.1"
        if not is_loopback_host(host):  # e.g. an edited record: never listen beyond this machine
            raise _CannotListen(host, port, "not a loopback address")
        self.path = (parts.path or "/") if parts else CALLBACK_PATH
        self._results: queue.Queue[tuple[str | None, AuthError | None]] = queue.Queue()
        self._lock = threading.Lock()
        self._done = False
        self._expect: tuple[str, str, str, bool] | None = None
        handler = self._handler_class()
        self._listeners: list[_Listener] = []
        try:
            # Listen where the browser will connect: the host the redirect URI names.
            for address in ("127.0.0.1", "::1") if host == "localhost" else (host,):
                try:
                    self._listeners.append(_Listener(address, port, handler))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise _PortInUse(address, port) from None
                    if self._listeners and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                        continue  # localhost on a machine without IPv6 loopback
                    raise _CannotListen(address, port, exc.strerror or str(exc)) from None
                port = self._listeners[0].server_address[1]
        except BaseException:
            for listener in self._listeners:
                listener.server_close()
            raise
        self.port = port
        host = f"[{host}]" if ":" in host else host
        self.redirect_uri = f"http://{host}:{self.port}{self.path}"
        self._threads = [
            threading.Thread(
                target=listener.serve_forever, kwargs={"poll_interval": 0.1}, name="oauth-callback", daemon=True
            )
            for listener in self._listeners
        ]
        for thread in self._threads:
            _start_without_signals(thread)

    def __enter__(self) -> _CallbackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for listener in self._listeners:
            listener.shutdown()  # returns within a poll interval: connections have their own threads
            listener.server_close()
        for thread in self._threads:
            thread.join(5)

    @property
    def done(self) -> bool:
        """Whether an authorization response has ended the wait."""
        return self._done

    def expect(self, server: str, state: str, issuer: str, iss_required: bool) -> None:
        self._expect = (server, state, issuer, iss_required)

    def submit(self, params: dict[str, str]) -> tuple[bool, str]:
        """Check one authorization response; return (accepted, message for the user)."""
        with self._lock:
            if self._done:
                return False, "This authorization has already been completed; you can close this window."
            if self._expect is None:
                return False, "toolscript is not waiting for an authorization yet."
            try:
                code = _check_callback(params, *self._expect)
            except _ForeignState as exc:
                log.warning("%s", exc.message)  # not the end: the genuine response may still come
                return False, exc.message
            except AuthError as exc:
                self._done = True
                self._results.put((None, exc))
                return False, exc.message
            self._done = True
            self._results.put((code, None))
            return True, "toolscript received the authorization. You can close this window and return to the terminal."

    def wait(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            # In short slices: a Ctrl-C that a thread toolscript did not start took is acted on at once.
            try:
                code, error = self._results.get(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
                break
            except queue.Empty:
                if time.monotonic() >= deadline:
                    raise _Timeout() from None
        if error is not None:
            raise error
        assert code is not None
        return code

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            server_version = "toolscript"
            sys_version = ""
            timeout = CALLBACK_IDLE_TIMEOUT  # per read: a silent connection is dropped

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                params = dict(parse_qsl(parts.query, keep_blank_values=True))
                if parts.path != owner.path:
                    self._page(404, "Not found", "This is toolscript's OAuth callback server; nothing is here.")
                elif not params.keys() & {"code", "error", "state"}:
                    self._page(400, "Not an authorization response", "The request carried no authorization response.")
                else:
                    ok, message = owner.submit(params)
                    self._page(200 if ok else 400, "Authorized" if ok else "Authorization failed", message)

            def _page(self, status: int, title: str, message: str) -> None:
                body = (
                    f'<!doctype html><html><head><meta charset="utf-8"><title>toolscript: {html.escape(title)}'
                    f"</title></head><body><h1>{html.escape(title)}</h1><p>{html.escape(redact(message))}</p>"
                    "</body></html>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Referrer-Policy", "no-referrer")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("callback server: %s", _mask_query(format % args))

        return Handler


class _Timeout(Exception):
    pass


def _start_without_signals(thread: threading.Thread) -> None:
    """Start `thread` with SIGINT and SIGTERM blocked in it and in the threads it starts.

    The kernel hands a signal sent to the process to any thread that does not block it;
    one taken by a helper thread would leave the main thread waiting, Ctrl-C unheeded.
    """
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: signals reach the main thread only
        thread.start()
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _ForeignState(AuthError):
    """An authorization response that does not answer this request (its `state` differs)."""


class _SuspectClient(AuthError):
    """No authorization response came for a stored registration, which the server may have forgotten."""


def _authorize(
    server: ServerConfig,
    discovery: _Discovery,
    client: ClientInfo,
    scope: str | None,
    callback: _CallbackServer,
    *,
    open_browser: Callable[[str], object] | None,
    show_url: Callable[[str], None],
    read_pasted: Callable[[], str] | None,
    timeout: float,
    stored_client: bool = False,
) -> tuple[str, str]:
    """Send the user to the authorization endpoint; return the checked code and the PKCE verifier.

    `stored_client`: the client is a dynamic registration stored by an earlier run, which the
    authorization server may have forgotten since.
    """
    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)
    register_secret(state)
    register_secret(verifier)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()
    params = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": callback.redirect_uri,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": discovery.resource,
    }
    if scope:
        params["scope"] = scope
    url = _add_query(discovery.authorization_endpoint, params)
    iss_required = discovery.metadata.get("authorization_response_iss_parameter_supported") is True
    callback.expect(server.name, state, discovery.issuer, iss_required)
    show_url(url)
    if read_pasted is not None:
        _start_without_signals(
            threading.Thread(target=_read_pasted, args=(read_pasted, callback), name="oauth-paste", daemon=True)
        )
    if open_browser is not None:
        log.info("Opening the authorization URL in the browser")
        if not open_browser(url):
            log.warning(
                "Could not open a browser; open the URL above yourself "
                "(or run again with --no-browser to paste the redirected URL)."
            )
    log.info("Waiting for the authorization (up to %s)", _duration(timeout))
    try:
        code = callback.wait(timeout)
    except _Timeout:
        name = server.name
        if stored_client:  # the browser may have shown the server's invalid_client page: a dead end
            raise _SuspectClient(
                f"Timed out after {_duration(timeout)} waiting for the authorization of '{name}'. If the "
                "browser showed an error such as invalid_client, the authorization server has forgotten "
                "the client registration toolscript stored; the next authorization registers anew",
                server=name,
                next_command=auth_command(name),
            ) from None
        raise AuthError(
            f"Timed out after {_duration(timeout)} waiting for the authorization of '{name}' "
            "(--timeout SECONDS waits longer; --no-browser lets you paste the redirected URL).",
            server=name,
            next_command=auth_command(name),
        ) from None
    log.info("Authorization received")
    return code, verifier


def open_in_browser(url: str) -> bool:
    """Open `url` with `$BROWSER`, else the system's browser; return whether a browser took it.

    `$BROWSER` is read as Python's `webbrowser` documents it: commands separated by
    `os.pathsep`, tried in turn; `%s` in a command stands for the URL (else the URL is
    added at the end); a trailing `&` runs it in the background. Unlike `webbrowser` in
    Python 3.11, a command may carry arguments (`firefox --new-window`). No shell is involved.
    """
    import webbrowser

    for argv, background in browser_commands(os.environ.get("BROWSER", ""), url):
        if shutil.which(argv[0]) is None:
            continue
        try:
            # As webbrowser does: a foreground browser is waited for (a console browser needs the terminal).
            process = subprocess.Popen(argv, close_fds=True, start_new_session=background)
        except OSError as exc:
            log.debug("Could not start the browser %s: %s", argv[0], exc.strerror or exc)
            continue
        if background or process.wait() == 0:
            return True
    return webbrowser.open(url)


def browser_commands(setting: str, url: str) -> list[tuple[list[str], bool]]:
    """The commands a `$BROWSER` value names for `url`: (argv, run in the background) each."""
    commands = []
    for entry in setting.split(os.pathsep):
        try:
            argv = shlex.split(entry)
        except ValueError:  # unbalanced quotes
            continue
        background = bool(argv) and argv[-1] == "&"
        argv = argv[:-1] if background else argv
        if not argv:
            continue
        if any("%s" in arg for arg in argv[1:]):
            argv = [argv[0], *(arg.replace("%s", url) for arg in argv[1:])]
        else:
            argv.append(url)
        commands.append((argv, background))
    return commands


def _read_pasted(read: Callable[[], str], callback: _CallbackServer) -> None:
    while True:
        try:
            line = read()
        except (OSError, ValueError):
            return
        if not line:
            return  # end of input: the loopback callback may still come
        line = line.strip()
        if not line:
            continue
        params = dict(parse_qsl(urlsplit(line).query, keep_blank_values=True))
        if "code_challenge" in params or "response_type" in params:
            log.warning(
                "That is the authorization URL toolscript printed; open it in a browser, then paste the address "
                "the browser ends on."
            )
            continue
        if not params.keys() & {"code", "error"}:
            # Names only, and a placeholder form: values would be masked in the log line anyway.
            held = f"only {', '.join(sorted(params))}" if params else "no query"
            log.warning(
                "That URL holds %s, no code or error: it is not the redirected URL (it looks like "
                "%s?code=<code>&state=<state>); paste the whole address from the browser's address bar.",
                held,
                callback.redirect_uri,
            )
            continue
        callback.submit(params)
        if callback.done:
            return


def _check_callback(params: dict[str, str], server: str, state: str, issuer: str, iss_required: bool) -> str:
    """Check an authorization response (state, error, RFC 9207 iss); return the code.

    An error response without `state` ends the wait too: some servers leave it out of an
    error, and waiting on would only end in a timeout.
    """
    stateless_error = "error" in params and "state" not in params
    if not stateless_error and not hmac.compare_digest(params.get("state", "").encode(), state.encode()):
        # Its values are not registered as secrets: anyone can send these, as often as they like.
        raise _ForeignState(
            "Ignored an authorization response whose state does not match the request (it may be "
            "forged or from an older attempt); still waiting for the genuine one."
        )
    register_secret(params.get("code"))  # the state is ours, registered already
    if "error" in params:
        description = params.get("error_description")
        raise AuthError(
            redact(
                f"Authorization was denied by the server: {params['error']}"
                + (f": {description}" if description else "")
            ),
            error=params["error"],
        )
    iss = params.get("iss")
    if iss is not None and iss.rstrip("/") != issuer.rstrip("/"):
        raise AuthError(
            f"The authorization response came from issuer {iss!r}, not {issuer!r}; refusing it "
            "(RFC 9207 mix-up defence)."
        )
    if iss is None and iss_required:
        raise AuthError(
            f"The authorization response has no iss parameter although {issuer} promises one (RFC 9207); refusing it."
        )
    code = params.get("code")
    if not code:
        held = ", ".join(sorted(params)) or "nothing"
        raise AuthError(f"The authorization response holds no code (only {held}); authorize again.")
    return code


# -- step 8: tokens ------------------------------------------------------------------


def _client_auth(client: ClientInfo, data: dict[str, str]) -> tuple[dict[str, str], tuple[str, str] | None]:
    """Add client authentication by the registered method; return (form, Basic credentials)."""
    data = {**data, "client_id": client.client_id}
    method = client.token_endpoint_auth_method or ("client_secret_basic" if client.client_secret else "none")
    if method == "client_secret_post" and client.client_secret:
        data["client_secret"] = client.client_secret
    elif method == "client_secret_basic" and client.client_secret:
        # RFC 6749 §2.3.1: both parts form-encoded before Basic encoding.
        return data, (quote(client.client_id, safe=""), quote(client.client_secret, safe=""))
    return data, None


def _exchange_code(
    http: _Http, discovery: _Discovery, client: ClientInfo, code: str, verifier: str, scope: str | None
) -> Tokens:
    data, auth = _client_auth(
        client,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": client.redirect_uri or "",
            "code_verifier": verifier,
            "resource": discovery.resource,
        },
    )
    response = http.request(
        "POST",
        discovery.token_endpoint,
        step="Token exchange",
        data=data,
        auth=auth,
        headers={"Accept": "application/json"},
    )
    if response.status_code != 200:
        raise _server_error("Token exchange", response)
    try:
        return Tokens.from_response(response.content, now=time.time(), scope=scope)
    except ValueError as exc:
        raise AuthError(f"Token exchange failed: {exc}.") from None


# -- small helpers -------------------------------------------------------------------


def _add_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params, quote_via=quote)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def _mask_query(url: str) -> str:
    """The URL with every query value replaced, for DEBUG lines."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    masked = "&".join(f"{k}=..." for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, masked, ""))


def _reason(exc: BaseException) -> str:
    """Say why a request could not be sent, from the OS or TLS error under the library's wrappers."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return "certificate verify failed"
        if isinstance(cause, TimeoutError):
            return "timed out"
        if isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError) and cause.strerror:
            return cause.strerror.lower()  # e.g. connection refused, name or service not known
    return type(exc).__name__


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: its cause or context, and urllib3's `reason` (MaxRetryError)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None)
        wrapped = current.args[0] if current.args else None
        todo += [c for c in (current.__cause__, current.__context__, reason, wrapped) if isinstance(c, BaseException)]


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600 * 2:
        return f"{seconds // 60} min"
    if seconds < 86400 * 2:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"
