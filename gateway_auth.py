"""The gateway's OAuth: the MCP SDK's `OAuthClientProvider`, non-interactive, over stored records.

It stands alone because it is the one place that subclasses SDK internals
(`OAuthClientProvider._auth_flow`), so an SDK upgrade touches this file only. Only the
gateway imports it, and it imports only `storage`, `urls`, `errors` and `redact`.

What it changes in the SDK's provider:
- tokens, client and the recorded token endpoint are (re)read from the record before
  every request, so a token another process refreshed, or a new `toolscript auth`, is
  picked up without a restart, and the SDK knows the absolute expiry;
- an expired token is refreshed a little before expiry, under the record's
  inter-process lock, after re-reading the record, so a refresh token is spent once
  even with many concurrent calls and several processes;
- it never starts an interactive authorization: without tokens a request goes out
  without one, and where the SDK would then open a browser it raises
  `AuthRequiredError` naming `toolscript auth SERVER`;
- a rejected refresh deletes only the tokens that were used (and a refused dynamic
  registration); a 403 `insufficient_scope` fails only its request and records the
  scope for the next `toolscript auth`;
- the bearer token is only attached to https (or loopback) requests to the origin of
  the server URL it was issued for.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncGenerator, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import httpx2
from mcp.client.auth import OAuthClientProvider
from mcp.client.auth.utils import extract_field_from_www_auth, extract_scope_from_www_auth
from mcp.shared.auth import (
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthMetadata,
    OAuthToken,
    ProtectedResourceMetadata,
)

if __package__:
    from .errors import (
        AuthError,
        AuthRequiredError,
        ConnectError,
        OAuthErrorResponse,
        StorageError,
        auth_command,
        run_hint,
    )
    from .redact import register_secret
    from .storage import ClientInfo, Record, Store, Tokens
    from .urls import is_https_or_loopback, url_origin
else:
    from errors import (
        AuthError,
        AuthRequiredError,
        ConnectError,
        OAuthErrorResponse,
        StorageError,
        auth_command,
        run_hint,
    )
    from redact import register_secret
    from storage import ClientInfo, Record, Store, Tokens
    from urls import is_https_or_loopback, url_origin

if TYPE_CHECKING:
    from config import ServerConfig

__all__ = ["CALL_FAILURES", "StoredTokenAuth"]

log = logging.getLogger("toolscript.gateway.auth")

# Refresh this long before the recorded expiry, so a call never starts with a token
# that dies in flight; for a short-lived token, this fraction of its lifetime instead, so a
# fresh token is never taken for an expired one.
EXPIRY_SKEW = 30.0
EXPIRY_SKEW_FRACTION = 0.1
_REJECTED = ("invalid_grant", "invalid_client", "unauthorized_client")


# The auth errors met while sending one call's requests. The SDK's transports send each
# message in a copy of the caller's context, so a caller that sets a fresh list here
# before a call finds in it the errors of that call only, however many run at once.
CALL_FAILURES: ContextVar[list[AuthError | ConnectError] | None] = ContextVar("toolscript_call_failures", default=None)


def _auth_required(server: str, reason: str | None = None, *, error: str | None = None) -> AuthRequiredError:
    """The error of every failure that only a new `toolscript auth SERVER` fixes."""
    why = f" ({reason})" if reason else ""
    return AuthRequiredError(f"Server '{server}' requires OAuth2 authorization{why}.", server=server, error=error)


class StoredTokenAuth(OAuthClientProvider):
    """A non-interactive `OAuthClientProvider` over one server's stored record.

    `failure` holds the last authentication error, because some transports swallow
    exceptions raised inside an auth flow; the gateway checks it when a connection ends.
    A call's own errors (a step-up refusal is let through to fail only its request) are
    also added to `CALL_FAILURES`.
    `on_failure`, when set, is called with each such error as it happens.
    """

    def __init__(self, store: Store, server: ServerConfig, *, lock_timeout: float = 30.0) -> None:
        assert server.url is not None
        self.store = store
        self.server = server
        self.lock_timeout = lock_timeout
        self.failure: AuthError | ConnectError | None = None
        self.on_failure: Callable[[AuthError | ConnectError], None] | None = None
        self._stat: tuple[int, int, int] | None = None
        self._record: Record | None = None
        self._applied: Record | None = None  # the record the SDK's context was last filled from
        # Refreshed tokens the record could not take (a full disk), and the access token the
        # record holds instead: used from memory, and written as soon as the disk lets it.
        self._unsaved: tuple[str | None, Tokens] | None = None
        super().__init__(
            server_url=server.url,
            # Both required by the SDK's constructor; only its own flow (never run) reads them.
            client_metadata=OAuthClientMetadata(redirect_uris=["http://127.0.0.1/callback"]),
            storage=_NoTokenStorage(),
        )

    # -- the flow ----------------------------------------------------------------------

    async def _auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        if not _may_carry_token(str(request.url), self.server.url or ""):
            # Never send the token elsewhere, nor in clear text; let the request go as it is.
            yield request
            return
        name = self.server.name
        sent: str | None = None
        for attempt in (1, 2):
            async with self.context.lock:
                tokens = await self._load()
                if tokens is None:
                    break  # no credentials: the request goes without, and a 401 says auth is needed
                # First pass: refresh if (nearly) expired. Second pass, after a 401: refresh
                # unless another task already replaced the token that was refused.
                if attempt == 1:
                    stale = tokens.is_expired(leeway=_refresh_margin(tokens))
                else:
                    stale = tokens.access_token == sent
                if stale:
                    # Shielded: a cancellation must not lose a lock the worker thread took.
                    with anyio.CancelScope(shield=True):
                        fd = await anyio.to_thread.run_sync(self.store.acquire_lock, name, self.lock_timeout)
                    try:
                        refresh = await self._refresh_request(tokens, forced=attempt == 2)
                        if refresh is not None:
                            refresh_request, used = refresh
                            await self._store_refresh((yield refresh_request), used)
                    finally:
                        self.store.release_lock(fd)  # closing a descriptor never blocks
                sent = self._attach(request)
            response = yield request
            if response.status_code != 401:
                break
            if attempt == 1:
                log.debug("server '%s' answered 401; refreshing once", name)
            else:
                reason = "the server rejected the access token"
                await self._record_error(reason)
                raise self._fail(_auth_required(name, reason))

        if tokens is None:
            response = yield request
            if response.status_code == 401:
                raise self._fail(self._needs_auth())

        if response.status_code == 403 and extract_field_from_www_auth(response, "error") == "insufficient_scope":
            # Not raised: the 403 fails only this request, and the gateway reports `failure`.
            scope = extract_scope_from_www_auth(response)
            granted = set((tokens.scope or "").split()) if tokens else set()
            if scope and tokens is not None and set(scope.split()) <= granted:
                # Asking again for what was granted would loop; say so instead.
                self._fail(
                    AuthError(
                        f"Server '{name}' refused the request for lack of scope '{scope}', which was already granted; "
                        "authorizing again will not help.",
                        server=name,
                        error="insufficient_scope",
                    )
                )
                return
            await self._record_scope(scope)
            wanted = f"scope '{scope}'" if scope else "more scopes"
            self._fail(
                AuthRequiredError(
                    f"Server '{name}' needs {wanted} for this request (insufficient_scope).",
                    server=name,
                    error="insufficient_scope",
                    scope=scope,
                )
            )
            return
        self.failure = None
        if self._record is not None and self._record.metadata.last_error:
            await self._record_error(None)  # it works again

    async def _refresh_request(self, used: Tokens, forced: bool) -> tuple[httpx2.Request, Tokens] | None:
        """With the record lock held: the refresh request to send, or None if another process already refreshed."""
        name = self.server.name
        current = await self._load(locked=True)
        if current is None:
            raise self._fail(self._needs_auth())
        if current.access_token != used.access_token:
            if not current.is_expired(leeway=_refresh_margin(current)):
                log.debug("server '%s': using tokens refreshed by another process", name)
                return None
        elif not forced and not current.is_expired(leeway=_refresh_margin(current)):
            return None
        if not current.refresh_token:
            if forced:  # the server refused a token it issued: the last use failed, and `auth` lists it so
                reason = "the server rejected the access token and there is no refresh token"
                await anyio.to_thread.run_sync(lambda: self._set_last_error(self.store.load(name), reason))
            else:
                reason = "the access token expired and there is no refresh token"
            raise self._fail(_auth_required(name, reason))
        if self.context.client_info is None or self.context.oauth_metadata is None:
            reason = "the stored record lacks the client or token endpoint needed to refresh"
            raise self._fail(_auth_required(name, reason))
        log.debug("server '%s': refreshing the access token at %s", name, self.context.oauth_metadata.token_endpoint)
        return await self._refresh_token(), current

    async def _store_refresh(self, response: httpx2.Response, used: Tokens) -> None:
        """Persist a refresh response (the lock is held) or raise what it means."""
        name = self.server.name
        body = await response.aread()
        if response.status_code == 200:
            try:
                new = Tokens.from_response(body, now=time.time(), scope=used.scope, refresh_token=used.refresh_token)
            except ValueError as exc:
                failure = ConnectError(f"Token refresh for server '{name}' failed: {exc}.", server=name)
                raise self._fail(failure) from None

            on_disk: list[str | None] = []

            def save(record: Record | None) -> None:
                record = record or Record()
                on_disk.append(record.tokens.access_token if record.tokens else None)
                record.tokens = new
                record.metadata.note_error(None)
                self.store.save(name, record)

            try:
                await anyio.to_thread.run_sync(lambda: save(self.store.load(name)))
                self._unsaved = None
            except StorageError as exc:
                # The server may have rotated the refresh token: the new one exists only here now.
                over = self._unsaved[0] if self._unsaved else (on_disk[0] if on_disk else None)
                self._unsaved = (over, new)
                log.error(
                    "Server '%s': the refreshed tokens could not be saved (%s). This process keeps them in memory "
                    "and retries the write; if it ends first, the next use may need: %s",
                    name,
                    exc.message,
                    auth_command(name),
                )
            self._use(new)
            log.debug("server '%s': access token refreshed", name)
            return
        answer = OAuthErrorResponse.parse(response.status_code, body)
        error = answer.error
        if response.status_code in (400, 401) and error in _REJECTED:
            reason = f"the refresh token was rejected: {error}"

            def forget(record: Record | None) -> None:
                # Delete only the tokens that were used, never newer ones (the lock is held).
                if record is not None and record.tokens is not None and record.tokens.access_token == used.access_token:
                    record.tokens = None
                    record.metadata.note_error(reason)
                    if error != "invalid_grant" and record.client and record.client.registration_source == "dynamic":
                        # The registration itself was refused: forget it, so `toolscript auth` registers anew.
                        record.client = None
                    self.store.save(name, record)

            await anyio.to_thread.run_sync(lambda: forget(self.store.load(name)))
            self.context.clear_tokens()
            log.error("Token refresh for server '%s' was rejected (%s). %s", name, error, run_hint(auth_command(name)))
            raise self._fail(_auth_required(name, reason, error=error))
        reason = f"token refresh failed: {answer}"
        await anyio.to_thread.run_sync(lambda: self._set_last_error(self.store.load(name), reason))
        log.error("Token refresh for server '%s' failed: %s; will retry on the next call", name, answer)
        raise self._fail(ConnectError(f"Token refresh for server '{name}' failed: {answer}.", server=name))

    # -- state -------------------------------------------------------------------------

    async def _load(self, *, locked: bool = False) -> Tokens | None:
        """Re-read the record into the SDK's context; return the tokens usable for this URL.

        Refreshed tokens not saved yet are written first (unless the caller holds the record's
        lock, `locked`), and used instead of the record's while they still cannot be.
        """
        if self._unsaved is not None and not locked:
            await anyio.to_thread.run_sync(self._retry_save)
        record = self._read()
        tokens = record.tokens_for(self.server.url) if record else None
        if self._unsaved is not None:
            tokens = self._unsaved[1]
        if record is not None and record is self._applied:
            return tokens  # the context already holds this record (it is parsed anew when the file changes)
        self._applied = record
        for secret in record.secret_values() if record else ():
            register_secret(secret)  # before any server could echo one back
        ctx = self.context
        ctx.client_info = _client_information(record.client) if record and record.client else None
        meta = record.metadata if record else None
        if meta and meta.issuer and meta.token_endpoint:
            ctx.oauth_metadata = OAuthMetadata(
                issuer=meta.issuer,
                # The model requires it; only the interactive path, never taken here, reads it.
                authorization_endpoint=meta.authorization_endpoint or meta.token_endpoint,
                token_endpoint=meta.token_endpoint,
                revocation_endpoint=meta.revocation_endpoint,
            )
            ctx.auth_server_url = meta.issuer
            # With resource metadata set, the SDK sends `resource` on refresh (RFC 8707).
            ctx.protected_resource_metadata = (
                ProtectedResourceMetadata(resource=meta.resource, authorization_servers=[meta.issuer])
                if meta.resource
                else None
            )
        else:
            ctx.oauth_metadata = None
        if ctx.client_info is not None and ctx.client_info.token_endpoint_auth_method is None:
            # The SDK sends no secret when the method is unknown; RFC 7591's default is basic.
            ctx.client_info.token_endpoint_auth_method = (
                "client_secret_basic" if ctx.client_info.client_secret else "none"
            )
        self._use(tokens)
        self._initialized = True
        return tokens

    def _retry_save(self) -> None:
        """Write the refreshed tokens the record could not take before, unless it changed meanwhile."""
        if self._unsaved is None:
            return
        name = self.server.name
        over, new = self._unsaved
        try:
            with self.store.lock(name, self.lock_timeout):
                record = self.store.load(name)
                held = record.tokens.access_token if record and record.tokens else None
                if record is None or held != over:
                    # Another process wrote or deleted tokens since (a new `toolscript auth`, a logout): theirs win.
                    log.warning("Server '%s': the stored tokens changed; dropping the unsaved refreshed ones", name)
                    self._unsaved = None
                    return
                record.tokens = new
                self.store.save(name, record)
        except StorageError as exc:
            log.debug("server '%s': the refreshed tokens still cannot be saved: %s", name, exc.message)
            return
        self._unsaved = None
        log.warning("Server '%s': the refreshed tokens are saved now.", name)

    def _read(self) -> Record | None:
        """The record, parsed again only when the file changed (it is replaced, never edited)."""
        try:
            info = os.stat(self.store.path(self.server.name))
        except FileNotFoundError:
            self._stat, self._record = None, None
            return None
        key = (info.st_ino, info.st_mtime_ns, info.st_size)
        if key != self._stat:
            # A small local file: reading it inline costs less than a trip to a worker thread.
            self._record = self.store.load(self.server.name)
            self._stat = key
        return self._record

    def _use(self, tokens: Tokens | None) -> None:
        if tokens is None:
            self.context.clear_tokens()
            return
        register_secret(tokens.access_token)
        register_secret(tokens.refresh_token)
        self.context.current_tokens = OAuthToken(
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token,
            scope=tokens.scope,
        )
        margin = _refresh_margin(tokens)
        self.context.token_expiry_time = tokens.expires_at - margin if tokens.expires_at is not None else None

    def _attach(self, request: httpx2.Request) -> str | None:
        tokens = self.context.current_tokens
        if tokens is None:
            return None
        request.headers["Authorization"] = f"Bearer {tokens.access_token}"
        return tokens.access_token

    def _needs_auth(self) -> AuthRequiredError:
        record = self._record
        if record is not None and record.tokens is not None and record.tokens_for(self.server.url) is None:
            return _auth_required(self.server.name, "the stored tokens were issued for another URL")
        return _auth_required(self.server.name, record.metadata.last_error if record else None)

    def _fail(self, error: AuthError | ConnectError) -> AuthError | ConnectError:
        self.failure = error
        call_failures = CALL_FAILURES.get()
        if call_failures is not None:
            call_failures.append(error)
        log.debug("server '%s': %s", self.server.name, error)
        if self.on_failure is not None:
            self.on_failure(error)
        return error

    async def _record_error(self, reason: str | None) -> None:
        """Record (or, with None, clear) why these credentials last failed; takes the lock."""

        def change() -> None:
            with self.store.lock(self.server.name):
                self._set_last_error(self.store.load(self.server.name), reason)

        await anyio.to_thread.run_sync(change)

    def _set_last_error(self, record: Record | None, reason: str | None) -> None:
        # Only call with the record lock held.
        if record is not None and record.metadata.last_error != reason:
            record.metadata.note_error(reason)
            try:
                self.store.save(self.server.name, record)
            except StorageError as exc:  # only the note is lost: the failure itself is still raised
                log.warning("Server '%s': cannot note the last error: %s", self.server.name, exc.message)

    async def _record_scope(self, scope: str | None) -> None:
        if not scope:
            return

        def change(record: Record | None) -> Record:
            # What the next `toolscript auth` must ask for: what was granted, plus this.
            record = record or Record()
            wanted = (record.metadata.step_up_scope or "").split()
            if record.tokens is not None:
                wanted += (record.tokens.scope or "").split()
            wanted += scope.split()
            record.metadata.step_up_scope = " ".join(dict.fromkeys(wanted))
            return record

        await anyio.to_thread.run_sync(self.store.update, self.server.name, change)


def _refresh_margin(tokens: Tokens) -> float:
    """How long before its expiry a token is refreshed: `EXPIRY_SKEW`, less for a short-lived token."""
    if tokens.expires_at is None or tokens.issued_at is None:
        return EXPIRY_SKEW  # lifetime unknown (a record from an older version)
    lifetime = tokens.expires_at - tokens.issued_at
    return max(0.0, min(EXPIRY_SKEW, lifetime * EXPIRY_SKEW_FRACTION))


def _may_carry_token(url: str, server_url: str) -> bool:
    """Whether a request to `url` may carry the token issued for `server_url`: same origin, and not clear text."""
    return is_https_or_loopback(url) and url_origin(url) == url_origin(server_url)


def _client_information(client: ClientInfo) -> OAuthClientInformationFull:
    """Return the stored client as the SDK's model."""
    return OAuthClientInformationFull(
        client_id=client.client_id,
        client_secret=client.client_secret,
        token_endpoint_auth_method=client.token_endpoint_auth_method,
        redirect_uris=[client.redirect_uri] if client.redirect_uri else None,
        issuer=client.issuer,
        scope=client.scope,
        client_id_issued_at=int(client.registered_at) if client.registered_at is not None else None,
        client_secret_expires_at=int(client.client_secret_expires_at) if client.client_secret_expires_at else None,
    )


class _NoTokenStorage:
    """The `TokenStorage` the SDK's constructor requires, never used: `StoredTokenAuth` reads and
    writes the record itself. A call means the SDK changed what it calls; look before moving its bound."""

    async def _unused(self, *args: object) -> None:
        raise NotImplementedError(self.__doc__)

    get_tokens = set_tokens = get_client_info = set_client_info = _unused
