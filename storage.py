"""Secure on-disk storage of OAuth records, one file per server.

Layout: `$TOOLSCRIPT_HOME/oauth/<server>.toml` (mode 0600) in a directory of mode 0700,
with a `<server>.lock` file beside it for inter-process locking. A record has three
tables: `client` (the registration), `tokens` and `metadata` (what refresh and
revocation need later without new discovery). Keys without a value are omitted.

Writes go to a temporary file created 0600 in the same directory, are fsynced and then
`os.replace`d, so a crash leaves the old or the new complete file, never a partial one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import secrets
import stat
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator
from urllib.parse import urlsplit

import tomli_w

if __package__:
    from .config import toolscript_home, validate_server_name
    from .errors import ConfigError, StorageError
else:
    from config import toolscript_home, validate_server_name
    from errors import ConfigError, StorageError

if TYPE_CHECKING:
    from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

    from config import ServerConfig

__all__ = [
    "ClientInfo",
    "Metadata",
    "Record",
    "RecordTokenStorage",
    "Store",
    "Tokens",
    "client_information",
    "oauth_status",
    "same_resource",
    "url_origin",
]

log = logging.getLogger("toolscript.storage")

REGISTRATION_SOURCES = ("dynamic", "config", "metadata_url")
_SECTIONS = ("client", "tokens", "metadata")
LOCK_TIMEOUT = 60.0


@dataclass
class ClientInfo:
    """How this client is registered with the authorization server."""

    client_id: str
    registration_source: str = "dynamic"
    client_secret: str | None = None
    token_endpoint_auth_method: str | None = None
    issuer: str | None = None
    redirect_uri: str | None = None
    registered_at: float | None = None
    client_secret_expires_at: float | None = None
    scope: str | None = None
    # RFC 7592 client configuration endpoint and its token, when the registration gave them.
    registration_client_uri: str | None = None
    registration_access_token: str | None = None


@dataclass
class Tokens:
    """The tokens; `expires_at` is absolute (epoch seconds), never a relative lifetime."""

    access_token: str
    token_type: str = "Bearer"
    refresh_token: str | None = None
    scope: str | None = None
    expires_at: float | None = None

    def is_expired(self, now: float | None = None, leeway: float = 0.0) -> bool:
        """Return whether the access token is expired, `leeway` seconds early."""
        if self.expires_at is None:
            return False
        return (time.time() if now is None else now) >= self.expires_at - leeway


@dataclass
class Metadata:
    """What later refresh and revocation need, recorded at authorization time."""

    server_url: str | None = None
    issuer: str | None = None
    token_endpoint: str | None = None
    authorization_endpoint: str | None = None
    revocation_endpoint: str | None = None
    resource: str | None = None
    # Why the last use of these credentials failed (no secret), for `servers` and `auth`.
    last_error: str | None = None
    # Scopes a call was refused for (insufficient_scope); the next `auth` asks for them.
    step_up_scope: str | None = None
    # The discovery chain followed by the last `auth`, for `auth --status`.
    discovery: list[str] = field(default_factory=list)
    scope_requested: str | None = None
    # The server URL that `toolscript auth` found answering without asking for authorization.
    auth_not_needed_for: str | None = None


@dataclass
class Record:
    """Everything stored for one server."""

    client: ClientInfo | None = None
    tokens: Tokens | None = None
    metadata: Metadata = field(default_factory=Metadata)
    # Keys this version does not know (written by a newer one), kept as they were:
    # `{"client": {...}, ...}` for unknown keys of a section, other tables by name.
    unknown: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def auth_not_needed(self, server_url: str | None) -> bool:
        """Whether `server_url` last answered a probe without asking for authorization, and has no tokens."""
        probed = self.metadata.auth_not_needed_for
        return (server_url is not None and probed is not None and same_resource(probed, server_url)
                and self.tokens_for(server_url) is None)

    def tokens_for(self, server_url: str | None) -> Tokens | None:
        """Return the tokens only if they were issued for `server_url`.

        Tokens recorded for another URL (the config changed) are never to be sent.
        """
        if self.tokens is None or server_url is None or self.metadata.server_url is None:
            return None
        if not same_resource(self.metadata.server_url, server_url):
            return None
        return self.tokens

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {k: v for k, v in self.unknown.items() if k not in _SECTIONS}
        for name in _SECTIONS:
            section = getattr(self, name)
            if section is None:
                continue
            values = {k: v for k, v in dataclasses.asdict(section).items() if v is not None and v != []}
            values.update(self.unknown.get(name, {}))
            if values:
                data[name] = values
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """Build a record from parsed TOML; raise ValueError when it is not one."""
        unknown: dict[str, Any] = {k: v for k, v in data.items() if k not in _SECTIONS}
        client = _section(data, "client", ClientInfo, unknown)
        tokens = _section(data, "tokens", Tokens, unknown)
        metadata = _section(data, "metadata", Metadata, unknown) or Metadata()
        if client is not None and client.registration_source not in REGISTRATION_SOURCES:
            raise ValueError(f"client.registration_source {client.registration_source!r} is not one of {REGISTRATION_SOURCES}")
        return cls(client=client, tokens=tokens, metadata=metadata, unknown=unknown)


def same_resource(a: str, b: str) -> bool:
    """Return whether two URLs name the same resource (scheme/host case, default port, trailing slash)."""
    return _normalize_url(a) == _normalize_url(b)


def oauth_status(record: Record | None, server_url: str, now: float | None = None) -> tuple[str, str | None]:
    """Return `(status, reason)` from storage alone: authenticated, pending_authorization or authentication_failed."""
    tokens = record.tokens_for(server_url) if record else None
    last_error = record.metadata.last_error if record else None
    if tokens is None:
        if last_error:
            return "authentication_failed", last_error
        return "pending_authorization", None
    if tokens.is_expired(now) and not tokens.refresh_token:
        return "authentication_failed", "the access token expired and there is no refresh token"
    if last_error:
        return "authentication_failed", last_error
    return "authenticated", None


class Store:
    """The OAuth records under `$TOOLSCRIPT_HOME/oauth`."""

    def __init__(self, home: Path | str | None = None) -> None:
        self.home = Path(home) if home is not None else toolscript_home()
        self.directory = self.home / "oauth"

    def path(self, server: str) -> Path:
        """Return the record path for `server`, refusing names that could escape the directory."""
        _check_name(server)
        return self.directory / f"{server}.toml"

    def exists(self, server: str) -> bool:
        return self.path(server).exists()

    def oauth_status_of(self, server: ServerConfig) -> tuple[str, str | None] | None:
        """`oauth_status` of a server that uses OAuth (an oauth table or a stored record), else None."""
        if not server.is_remote or (server.oauth is None and not self.exists(server.name)):
            return None
        try:
            record = self.load(server.name)
        except StorageError as exc:
            return "authentication_failed", exc.message
        if server.oauth is None and record is not None and record.auth_not_needed(server.url):
            return None  # the record only says that the server does not use OAuth
        return oauth_status(record, server.url or "")

    def load(self, server: str) -> Record | None:
        """Return the record for `server`, or None if there is none."""
        path = self.path(server)
        if not self.directory.exists():
            return None
        self._check_directory()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StorageError(f"{path} is a symbolic link; refusing to read it. Delete it and run: toolscript auth {server}", path=str(path), server=server) from None
            raise StorageError(f"Cannot read {path}: {exc.strerror}.", path=str(path), server=server) from None
        with os.fdopen(fd, "rb") as handle:
            self._check_file(handle.fileno(), path)
            raw = handle.read()
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            data, reason = None, "not valid TOML"
        if data is not None:
            try:
                return Record.from_dict(data)
            except ValueError as exc:
                reason = str(exc)
        raise StorageError(
            f"OAuth record {path} is corrupt ({reason}). "
            f"Run: toolscript auth --logout {server} --forget-client, or delete the file.",
            path=str(path), server=server,
        )

    def save(self, server: str, record: Record) -> None:
        """Write the record atomically with mode 0600."""
        path = self.path(server)
        self._ensure_directory()
        data = tomli_w.dumps(record.to_dict()).encode("utf-8")
        _write_atomic(path, data)

    def delete(self, server: str) -> bool:
        """Delete the record; return whether there was one."""
        path = self.path(server)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_directory(path.parent)
        return True

    @contextlib.contextmanager
    def lock(self, server: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Hold the inter-process lock of `server`'s record (not reentrant)."""
        fd = self.acquire_lock(server, timeout)
        try:
            yield
        finally:
            self.release_lock(fd)

    def acquire_lock(self, server: str, timeout: float = LOCK_TIMEOUT) -> int:
        """Take the lock of `server`'s record and return the handle for `release_lock`.

        The lock is per open file, not per thread: it may be released from another
        thread, and a second acquire in the same process waits like any other.
        """
        lock_path = self.path(server).with_suffix(".lock")
        self._ensure_directory()
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StorageError(
                        f"Timed out after {timeout:.0f}s waiting for the lock on {lock_path}; "
                        "another toolscript process is holding it.",
                        path=str(lock_path), server=server,
                    ) from None
                time.sleep(0.01)
            except BaseException:
                os.close(fd)
                raise

    @staticmethod
    def release_lock(fd: int) -> None:
        """Release a lock taken with `acquire_lock`."""
        os.close(fd)  # closing the descriptor releases the flock

    def update(self, server: str, change: Callable[[Record | None], Record | None]) -> Record | None:
        """Read, change and write one record under its lock; `change` returning None deletes it."""
        with self.lock(server):
            new = change(self.load(server))
            if new is None:
                self.delete(server)
            else:
                self.save(server, new)
            return new

    def _ensure_directory(self) -> None:
        try:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.directory.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"Cannot create {self.directory}: {exc.strerror}.", path=str(self.directory)) from None
        self._check_directory()

    def _check_directory(self) -> None:
        info = os.lstat(self.directory)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise StorageError(f"{self.directory} is not a directory; move it away so toolscript can recreate it.", path=str(self.directory))
        _check_owner(info, self.directory)
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            log.warning("%s had permissions %03o; tightened to 700", self.directory, mode)
            os.chmod(self.directory, 0o700)

    def _check_file(self, fd: int, path: Path) -> None:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StorageError(f"{path} is not a regular file; delete it and run toolscript auth again.", path=str(path))
        _check_owner(info, path)
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            log.warning("%s had permissions %03o; tightened to 600", path, mode)
            os.fchmod(fd, 0o600)


class RecordTokenStorage:
    """The MCP SDK's `TokenStorage` protocol over one server's record.

    Expiry is stored as an absolute time: `set_tokens` turns the SDK's relative
    `expires_in` into `expires_at`, `get_tokens` turns it back into what is left.
    Tokens recorded for another server URL are not returned.
    """

    def __init__(self, store: Store, server: str, server_url: str) -> None:
        _check_name(server)
        self.store = store
        self.server = server
        self.server_url = server_url

    async def get_tokens(self) -> OAuthToken | None:
        from mcp.shared.auth import OAuthToken

        record = await _in_thread(self.store.load, self.server)
        tokens = record.tokens_for(self.server_url) if record else None
        if tokens is None:
            return None
        expires_in = None
        if tokens.expires_at is not None:
            expires_in = max(0, int(tokens.expires_at - time.time()))
        return OAuthToken(
            access_token=tokens.access_token,
            token_type="Bearer",
            expires_in=expires_in,
            scope=tokens.scope,
            refresh_token=tokens.refresh_token,
        )

    async def set_tokens(self, tokens: OAuthToken) -> None:
        now = time.time()
        new = Tokens(
            access_token=tokens.access_token,
            token_type=tokens.token_type,
            refresh_token=tokens.refresh_token,
            scope=tokens.scope,
            expires_at=now + tokens.expires_in if tokens.expires_in is not None else None,
        )

        def change(record: Record | None) -> Record:
            record = record or Record()
            record.tokens = new
            record.metadata.server_url = self.server_url
            return record

        await _in_thread(self.store.update, self.server, change)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        record = await _in_thread(self.store.load, self.server)
        if record is None or record.client is None:
            return None
        return client_information(record.client)

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        def change(record: Record | None) -> Record:
            record = record or Record()
            source = record.client.registration_source if record.client else "dynamic"
            redirect = client_info.redirect_uris[0] if client_info.redirect_uris else None
            record.client = ClientInfo(
                client_id=client_info.client_id,
                registration_source=source,
                client_secret=client_info.client_secret,
                token_endpoint_auth_method=client_info.token_endpoint_auth_method,
                issuer=client_info.issuer,
                redirect_uri=str(redirect) if redirect is not None else None,
                registered_at=float(client_info.client_id_issued_at or time.time()),
                client_secret_expires_at=client_info.client_secret_expires_at or None,
                scope=client_info.scope,
            )
            return record

        await _in_thread(self.store.update, self.server, change)


def client_information(client: ClientInfo) -> OAuthClientInformationFull:
    """Return the stored client as the MCP SDK's model."""
    from mcp.shared.auth import OAuthClientInformationFull

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


async def _in_thread(func: Callable[..., Any], *args: Any) -> Any:
    # File locks and fsync block; keep them off the event loop.
    import anyio.to_thread

    return await anyio.to_thread.run_sync(func, *args)


def _check_name(server: str) -> None:
    try:
        validate_server_name(server)
    except ConfigError as exc:
        raise StorageError(exc.message, server=None) from None


def _check_owner(info: os.stat_result, path: Path) -> None:
    if info.st_uid != os.getuid():
        raise StorageError(
            f"{path} is owned by another user (uid {info.st_uid}); refusing to use it. "
            "Fix its ownership or remove it.",
            path=str(path),
        )


def _section(data: dict[str, Any], name: str, kind: type, unknown: dict[str, Any]) -> Any:
    values = data.get(name)
    if values is None:
        return None
    if not isinstance(values, dict):
        raise ValueError(f"[{name}] is not a table")
    known = {f.name: f for f in dataclasses.fields(kind)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            unknown.setdefault(name, {})[key] = value  # written by a newer version: kept, not fatal
            continue
        expected = known[key].type
        if "float" in expected and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not _matches(value, expected):
            raise ValueError(f"{name}.{key} has the wrong type")
        kwargs[key] = value
    try:
        return kind(**kwargs)
    except TypeError:
        missing = [f.name for f in dataclasses.fields(kind) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in kwargs]
        raise ValueError(f"{name}.{missing[0] if missing else '?'} is missing") from None


def _matches(value: Any, annotation: str) -> bool:
    if annotation.startswith("list"):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if "float" in annotation:
        return isinstance(value, float)
    return isinstance(value, str)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def url_origin(url: str) -> str:
    """`scheme://host[:port]` of `url`, lowercased, without a default port: equal for the same origin."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def _normalize_url(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    return url_origin(url), parts.path.rstrip("/"), parts.query
