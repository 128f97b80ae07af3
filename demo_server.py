"""A local OAuth-protected MCP server for `toolscript demo` and the test suite.

It stands alone, as a top-level module rather than under `tests/`, because
`toolscript demo` imports it from an installed package. Nothing else imports it: it
needs the MCP SDK, Starlette and uvicorn (all dependencies of `mcp`), which the rest of
toolscript loads only when a command needs them.

The server is a real OAuth 2.1 authorization server and MCP resource server built from
the SDK's `mcp.server.auth` routes over an in-memory provider (`DemoProvider`). It has no
user to ask, so its authorization endpoint approves every request at once and redirects
straight back to the client with a code. Tokens live in memory and die with the server.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    RefreshToken,
    construct_redirect_uri,
)
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions
from mcp.server.mcpserver import MCPServer
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

if TYPE_CHECKING:
    from starlette.types import ASGIApp

__all__ = ["DEMO_SCOPE", "DemoProvider", "DemoServer"]

DEMO_SCOPE = "mcp:tools"
OFFLINE_SCOPE = "offline_access"
_CODE_LIFETIME = 300
_START_TIMEOUT = 10.0


class DemoProvider:
    """An in-memory authorization server that approves every request.

    It records what clients sent (`registrations`, `authorizations`) and keeps its
    codes and tokens in plain dicts, so tests can look at both.
    """

    def __init__(
        self,
        issuer: str,
        *,
        token_lifetime: int | None = 3600,
        refresh_tokens: bool = True,
        rotate_refresh_tokens: bool = True,
    ) -> None:
        self.issuer = issuer
        self.token_lifetime = token_lifetime
        self.refresh_tokens_enabled = refresh_tokens
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.clients: dict[str, OAuthClientInformationFull] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.revoked: list[str] = []
        self.registrations: list[OAuthClientInformationFull] = []
        self.authorizations: list[AuthorizationParams] = []

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        return self.clients.get(client_id)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        assert client_info.client_id is not None
        self.clients[client_info.client_id] = client_info
        self.registrations.append(client_info)

    def add_client(
        self, client_id: str, *, secret: str | None, auth_method: str, redirect_uri: str, scope: str | None = None
    ) -> None:
        """Pre-register a client, as an administrator would out of band."""
        self.clients[client_id] = OAuthClientInformationFull(
            client_id=client_id,
            client_secret=secret,
            token_endpoint_auth_method=auth_method,  # type: ignore[arg-type]
            redirect_uris=[redirect_uri],
            scope=scope,
            grant_types=["authorization_code", "refresh_token"],
        )

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        # The consent step: approve at once.
        self.authorizations.append(params)
        code = secrets.token_urlsafe(32)
        self.codes[code] = AuthorizationCode(
            code=code,
            scopes=params.scopes or [],
            expires_at=time.time() + _CODE_LIFETIME,
            client_id=client.client_id or "",
            code_challenge=params.code_challenge,
            redirect_uri=params.redirect_uri,
            redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
            resource=params.resource,
        )
        return construct_redirect_uri(str(params.redirect_uri), code=code, state=params.state)

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> AuthorizationCode | None:
        return self.codes.get(authorization_code)

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: AuthorizationCode
    ) -> OAuthToken:
        del self.codes[authorization_code.code]  # single use
        return self._issue(authorization_code.client_id, authorization_code.scopes, authorization_code.resource)

    async def load_refresh_token(self, client: OAuthClientInformationFull, refresh_token: str) -> RefreshToken | None:
        return self.refresh_tokens.get(refresh_token)

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: RefreshToken, scopes: list[str]
    ) -> OAuthToken:
        if self.rotate_refresh_tokens:
            del self.refresh_tokens[refresh_token.token]
        token = self._issue(
            refresh_token.client_id,
            scopes,
            refresh_token.resource,
            keep_refresh=None if self.rotate_refresh_tokens else refresh_token.token,
        )
        return token

    async def load_access_token(self, token: str) -> AccessToken | None:
        return self.access_tokens.get(token)

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        self.revoked.append(token.token)
        self.access_tokens.pop(token.token, None)
        self.refresh_tokens.pop(token.token, None)

    def _issue(
        self, client_id: str, scopes: list[str], resource: str | None, keep_refresh: str | None = None
    ) -> OAuthToken:
        access = secrets.token_urlsafe(32)
        expires_at = int(time.time()) + self.token_lifetime if self.token_lifetime is not None else None
        self.access_tokens[access] = AccessToken(
            token=access, client_id=client_id, scopes=scopes, expires_at=expires_at, resource=resource
        )
        refresh = keep_refresh
        if refresh is None and self.refresh_tokens_enabled:
            refresh = secrets.token_urlsafe(32)
            self.refresh_tokens[refresh] = RefreshToken(
                token=refresh, client_id=client_id, scopes=scopes, resource=resource
            )
        # A refresh token kept (not rotated) is not sent again, as many servers do (RFC 6749 §6).
        return OAuthToken(
            access_token=access,
            token_type="Bearer",
            expires_in=self.token_lifetime,
            scope=" ".join(scopes) or None,
            refresh_token=None if keep_refresh else refresh,
        )


class DemoServer:
    """Run the demo MCP server on a loopback port in a background thread.

    Use it as a context manager; `url` is the MCP endpoint once it is entered. The
    options exist for the test suite: `registration` and `revocation` switch those
    endpoints, `resource_metadata=False` serves no RFC 9728 document (an MCP 2025-03-26
    style server), `transport` is "http" (streamable HTTP at /mcp) or "sse" (at /sse), and
    `wrap` puts an ASGI middleware in front of the whole application,
    `require_auth=False` serves the tools to anyone (no OAuth at all), `extra_scopes`
    are scopes clients may register and ask for besides the demo's own, and `extend` adds
    to the MCP server before it is served (the tests add resources and prompts).
    """

    def __init__(
        self,
        *,
        transport: str = "http",
        require_auth: bool = True,
        registration: bool = True,
        revocation: bool = True,
        resource_metadata: bool = True,
        token_lifetime: int | None = 3600,
        refresh_tokens: bool = True,
        rotate_refresh_tokens: bool = True,
        extra_scopes: tuple[str, ...] = (),
        wrap: Callable[[ASGIApp], ASGIApp] | None = None,
        extend: Callable[[MCPServer], None] | None = None,
    ) -> None:
        if transport not in ("http", "sse"):
            raise ValueError(f"transport must be 'http' or 'sse', not {transport!r}")
        self.transport = transport
        self._require_auth = require_auth
        self._registration = registration
        self._revocation = revocation
        self._resource_metadata = resource_metadata
        self._wrap = wrap
        self._extend = extend
        self._extra_scopes = list(extra_scopes)
        self._provider_options: dict[str, Any] = {
            "token_lifetime": token_lifetime,
            "refresh_tokens": refresh_tokens,
            "rotate_refresh_tokens": rotate_refresh_tokens,
        }
        self._sock: socket.socket | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.provider: DemoProvider
        self.origin = ""
        self.url = ""

    def __enter__(self) -> DemoServer:
        import uvicorn

        # Bind first: the issuer and resource URLs must name the real port, and the
        # listening socket queues connections until uvicorn accepts them, so no wait
        # for "ready" is needed.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        port = self._sock.getsockname()[1]
        self.origin = f"http://127.0.0.1:{port}"
        self.url = self.origin + ("/mcp" if self.transport == "http" else "/sse")
        self.provider = DemoProvider(self.origin, **self._provider_options)
        app = self._build_app()
        if self._wrap is not None:
            app = self._wrap(app)
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on", log_config=None, timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="demo-mcp-server", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server and wait (bounded) for its thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(_START_TIMEOUT)
        if self._sock is not None:
            self._sock.close()

    def _build_app(self) -> ASGIApp:
        auth = (
            None
            if not self._require_auth
            else AuthSettings(
                issuer_url=self.origin,  # type: ignore[arg-type]
                resource_server_url=self.url if self._resource_metadata else None,  # type: ignore[arg-type]
                validate_token_resource=True if self._resource_metadata else None,
                required_scopes=[DEMO_SCOPE],
                client_registration_options=ClientRegistrationOptions(
                    enabled=self._registration,
                    valid_scopes=[DEMO_SCOPE, OFFLINE_SCOPE, *self._extra_scopes],
                    default_scopes=[DEMO_SCOPE],
                ),
                revocation_options=RevocationOptions(enabled=self._revocation),
            )
        )
        mcp = MCPServer(
            "toolscript-demo",
            auth_server_provider=self.provider if auth else None,
            auth=auth,
            log_level="WARNING",
            instructions="A local demo server: its OAuth consent step approves automatically.",
        )

        @mcp.tool()
        def echo(text: str) -> str:
            """Return the text unchanged."""
            return text

        @mcp.tool()
        def add(a: int, b: int) -> int:
            """Add two numbers."""
            return a + b

        @mcp.tool()
        def whoami() -> str:
            """Describe the OAuth client and scopes the calling token was issued to."""
            token = get_access_token()
            if token is None:
                return "anonymous"
            return f"client {token.client_id} with scopes {' '.join(token.scopes) or '(none)'}"

        if self._extend is not None:
            self._extend(mcp)
        if self.transport == "sse":
            return mcp.sse_app()
        return mcp.streamable_http_app()
