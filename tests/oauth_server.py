"""The demo OAuth MCP server with a wiretap, for tests.

`OAuthTestServer` is `demo_server.DemoServer` (a real authorization server and MCP server
from the SDK) plus an ASGI layer in front that records every request (method, path,
query, headers, body) and lets a test replace a JSON document or rewrite the redirect
the authorization endpoint answers with. That is how tests serve a wrong issuer, drop
the registration endpoint from metadata, or tamper with `state` and `iss`. It can also play
a hostile token endpoint: one that echoes every credential it receives in its error
messages (`echo_credentials`), or rewrites the token responses it sends (`expires_in`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import requests

from demo_server import DemoServer

__all__ = ["OAuthTestServer", "Seen", "pkce_challenge", "with_query"]


@dataclass
class Seen:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Wiretap:
    app: Any
    seen: list[Seen] = field(default_factory=list)
    documents: dict[str, tuple[int, Any]] = field(default_factory=dict)
    rewrite_redirect: Callable[[str], str] | None = None
    www_authenticate: str | None = None  # replaces the header of every 401
    # Step-up: tool name -> the scope its calls need; a token without it gets a 403.
    step_up: dict[str, str] = field(default_factory=dict)
    scopes_of: Callable[[str], set[str]] = lambda token: set()
    # (status, OAuth error): the token endpoint refuses every request, echoing its credentials.
    echo_credentials: tuple[int, str] | None = None
    rewrite_token_response: Callable[[bytes], bytes] | None = None
    # RFC 7592: registrations get a registration_client_uri and registration_access_token, and
    # GET on that URI answers 200 while the client exists, 401 once the server forgot it.
    registration_management: bool = False
    client_exists: Callable[[str], bool] = lambda client_id: False
    management_tokens: dict[str, str] = field(default_factory=dict)  # client_id -> registration access token
    # path -> "slow" (one byte every 0.2 s, for a minute at most) or "huge" (64 MiB of JSON whitespace).
    hostile: dict[str, str] = field(default_factory=dict)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = Seen(
            scope["method"],
            scope["path"],
            dict(parse_qsl(scope["query_string"].decode())),
            {k.decode().lower(): v.decode() for k, v in scope["headers"]},
        )
        self.seen.append(seen)
        if scope["path"] == "/token" and self.echo_credentials is not None:
            seen.body = await _read_body(receive)
            await self._echo(seen, send)
            return
        if scope["path"] == "/token" and self.rewrite_token_response is not None:
            send = _rewriting(send, self.rewrite_token_response)
        if scope["path"] in self.hostile:
            await self._hostile(self.hostile[scope["path"]], send)
            return
        if scope["path"] in self.documents:
            status, document = self.documents[scope["path"]]
            await _send_json(send, status, document)
            return
        if self.registration_management and scope["path"].startswith("/register/") and scope["method"] == "GET":
            client_id = scope["path"].rsplit("/", 1)[1]
            token = seen.headers.get("authorization", "").removeprefix("Bearer ")
            known = self.management_tokens.get(client_id) == token and self.client_exists(client_id)
            await _send_json(
                send, 200 if known else 401, {"client_id": client_id} if known else {"error": "invalid_token"}
            )
            return
        if self.registration_management and scope["path"] == "/register" and scope["method"] == "POST":
            send = self._managed_registration(send, f"http://{seen.headers.get('host')}")

        if self.step_up and scope["method"] == "POST":
            seen.body = await _read_body(receive)
            challenge = self._step_up_challenge(seen)
            if challenge is not None:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [(b"www-authenticate", challenge.encode()), (b"content-length", b"0")],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return
            replayed, upstream = [{"type": "http.request", "body": seen.body, "more_body": False}], receive

            async def replay() -> dict[str, Any]:
                return replayed.pop() if replayed else await upstream()

            receive = replay
            seen.body = b""  # tapped_receive records it again

        async def tapped_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                seen.body += message.get("body", b"")
            return message

        async def tapped_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = message["headers"]
                if scope["path"] == "/authorize" and self.rewrite_redirect:
                    headers = [
                        (k, self.rewrite_redirect(v.decode()).encode() if k.lower() == b"location" else v)
                        for k, v in headers
                    ]
                if message["status"] == 401 and self.www_authenticate is not None:
                    headers = [(k, v) for k, v in headers if k.lower() != b"www-authenticate"]
                    headers.append((b"www-authenticate", self.www_authenticate.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, tapped_receive, tapped_send)

    async def _hostile(self, kind: str, send: Any) -> None:
        chunk, count, pause = (b" ", 300, 0.2) if kind == "slow" else (b" " * 65536, 1024, 0.0)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        for _ in range(count):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await anyio.sleep(pause)
        await send({"type": "http.response.body", "body": b"{}"})

    async def _echo(self, seen: Seen, send: Any) -> None:
        status, error = self.echo_credentials or (400, "invalid_request")
        received = [f"{key} is {value}" for key, value in seen.form.items() if key not in ("grant_type", "resource")]
        authorization = seen.headers.get("authorization", "")
        if authorization.startswith("Basic "):
            received.append("basic credentials are " + base64.b64decode(authorization[6:]).decode())
        body = json.dumps({"error": error, "error_description": "cannot use " + "; ".join(received)}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _managed_registration(self, send: Any, origin: str) -> Any:
        """Wrap `send` so a registration response also carries the RFC 7592 fields."""
        start: dict[str, Any] = {}
        body = b""

        async def managed_send(message: dict[str, Any]) -> None:
            nonlocal body
            if message["type"] == "http.response.start":
                start.update(message)
                return
            body += message.get("body", b"")
            if message.get("more_body"):
                return
            document = json.loads(body)
            if isinstance(document, dict) and "client_id" in document:
                token = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode()
                self.management_tokens[document["client_id"]] = token
                document["registration_client_uri"] = f"{origin}/register/{document['client_id']}"
                document["registration_access_token"] = token
            await _send_json(send, start["status"], document)

        return managed_send

    def _step_up_challenge(self, seen: Seen) -> str | None:
        try:
            message = json.loads(seen.body)
        except ValueError:
            return None
        if not isinstance(message, dict) or message.get("method") != "tools/call":
            return None
        needed = self.step_up.get(message.get("params", {}).get("name"))
        token = seen.headers.get("authorization", "").removeprefix("Bearer ")
        if needed is None or needed in self.scopes_of(token):
            return None
        return f'Bearer error="insufficient_scope", scope="{" ".join([*sorted(self.scopes_of(token)), needed])}"'


def _rewriting(send: Any, rewrite: Callable[[bytes], bytes]) -> Any:
    """An ASGI `send` that passes the whole response body through `rewrite`."""
    held: dict[str, Any] = {"body": b""}

    async def rewriting_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            held["start"] = message
        elif message["type"] == "http.response.body":
            held["body"] += message.get("body", b"")
            if not message.get("more_body"):
                body, start = rewrite(held["body"]), held["start"]
                headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
        else:
            await send(message)

    return rewriting_send


async def _send_json(send: Any, status: int, document: Any) -> None:
    body = json.dumps(document).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Any) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


class OAuthTestServer(DemoServer):
    """`DemoServer` with `tap`: recorded requests, replaceable documents, redirect rewriting."""

    def __init__(self, **options: Any) -> None:
        self.tap: _Wiretap

        def wrap(app: Any) -> Any:
            self.tap = _Wiretap(
                app, scopes_of=self._scopes_of, client_exists=lambda client_id: client_id in self.provider.clients
            )
            return self.tap

        super().__init__(wrap=wrap, **options)

    def _scopes_of(self, token: str) -> set[str]:
        found = self.provider.access_tokens.get(token)
        return set(found.scopes) if found else set()

    @property
    def metadata_path(self) -> str:
        return "/.well-known/oauth-authorization-server"

    @property
    def resource_metadata_path(self) -> str:
        return "/.well-known/oauth-protected-resource" + urlsplit(self.url).path

    def document(self, path: str) -> dict[str, Any]:
        """The JSON document the SDK serves at `path` (ignoring replacements)."""
        saved = self.tap.documents.pop(path, None)
        try:
            return requests.get(self.origin + path, timeout=10).json()
        finally:
            if saved is not None:
                self.tap.documents[path] = saved
            self.tap.seen.pop()

    def patch_document(self, path: str, **changes: Any) -> None:
        """Serve the document at `path` with `changes` (a value of None removes the key)."""
        document = self.document(path)
        for key, value in changes.items():
            if value is None:
                document.pop(key, None)
            else:
                document[key] = value
        self.tap.documents[path] = (200, document)

    def hide(self, path: str) -> None:
        """Answer 404 at `path`."""
        self.tap.documents[path] = (404, {"error": "not_found"})

    def echo_credentials(self, status: int = 400, error: str = "invalid_request") -> None:
        """Make the token endpoint refuse every request with `error`, echoing every credential it received."""
        self.tap.echo_credentials = (status, error)

    def answer_slowly(self, path: str) -> None:
        """Make `path` answer 200 and then one byte every 0.2 s (for a minute at most)."""
        self.tap.hostile[path] = "slow"

    def answer_hugely(self, path: str) -> None:
        """Make `path` answer 200 with 64 MiB of JSON whitespace before `{}`."""
        self.tap.hostile[path] = "huge"

    def send_expires_in(self, raw: str) -> None:
        """Make the token endpoint's responses carry `"expires_in": RAW` (raw JSON text, e.g. `Infinity`)."""
        self.tap.rewrite_token_response = lambda body: re.sub(
            rb'"expires_in":\s*[^,}]+', b'"expires_in": ' + raw.encode(), body
        )

    def requests_to(self, path: str, method: str | None = None) -> list[Seen]:
        return [s for s in self.tap.seen if s.path == path and (method is None or s.method == method)]


def with_query(url: str, **changes: str | None) -> str:
    """`url` with query parameters replaced (None removes one)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def pkce_challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
