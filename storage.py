"""Secure on-disk storage of OAuth records, one file per server, and what they hold.

Layout: `$TOOLSCRIPT_HOME/oauth/<server>.toml` (mode 0600) in a directory of mode 0700,
with a `<server>.lock` file beside it for inter-process locking. A record has three
tables: `client` (the registration), `tokens` and `metadata` (what refresh and
revocation need later without new discovery). Keys without a value are omitted.

Writes go to a temporary file created 0600 in the same directory, are fsynced and then
`os.replace`d, so a crash leaves the old or the new complete file, never a partial one.

Tokens enter a record only through `Tokens.from_response`, which turns a token
endpoint's relative `expires_in` into the absolute `expires_at` that is stored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import math
import os
import secrets
import stat
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

if __package__:
    from .config import toolscript_home, validate_server_name
    from .errors import ConfigError, StorageError, auth_command
    from .redact import redact, register_secret
    from .urls import same_resource
else:
    from config import toolscript_home, validate_server_name
    from errors import ConfigError, StorageError, auth_command
    from redact import redact, register_secret
    from urls import same_resource

if TYPE_CHECKING:
    from config import ServerConfig

__all__ = [
    "ClientInfo",
    "Metadata",
    "OAuthStatus",
    "Record",
    "Store",
    "Tokens",
    "expires_at_from",
    "note_auth_not_needed",
    "oauth_status",
    "remove_temporary_files",
    "write_atomic",
]

log = logging.getLogger("toolscript.storage")

REGISTRATION_SOURCES = ("dynamic", "config", "metadata_url")
_SECTIONS = ("client", "tokens", "metadata")
LOCK_TIMEOUT = 60.0
# A token lifetime or stored time further ahead than this is treated as unknown: no server
# means it, and times that far out break date formatting.
MAX_LIFETIME = 10 * 365 * 86400.0


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
    """The tokens; `expires_at` and `issued_at` are absolute (epoch seconds), never a relative lifetime."""

    access_token: str
    token_type: str = "Bearer"
    refresh_token: str | None = None
    scope: str | None = None
    expires_at: float | None = None
    issued_at: float | None = None

    @classmethod
    def from_response(
        cls, body: Mapping[str, Any] | bytes, *, now: float, scope: str | None = None, refresh_token: str | None = None
    ) -> Tokens:
        """Build the tokens of a token endpoint's success answer (RFC 6749 §5.1), a JSON object or its bytes.

        `expires_in` counts from `now` (when the request was sent). `scope` and
        `refresh_token` stand in for what the answer leaves out: the scope asked for
        (§5.1), the refresh token used (§6). Every token in it is registered as a secret
        first; a ValueError says, without a secret, what makes it unusable.
        """
        if isinstance(body, bytes):
            try:
                body = json.loads(body)
            except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
                body = None
        if not isinstance(body, Mapping):
            raise ValueError("the answer is not a JSON object")
        access, refresh = body.get("access_token"), body.get("refresh_token")
        for value in (access, refresh, body.get("id_token")):
            register_secret(value if isinstance(value, str) else None)
        if not isinstance(access, str) or not access:
            raise ValueError("the answer has no access_token")
        token_type = body.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise ValueError(f"token_type is {token_type!r}, not Bearer")
        granted = body.get("scope")
        return cls(
            access_token=access,
            token_type="Bearer",
            refresh_token=refresh if isinstance(refresh, str) and refresh else refresh_token,
            scope=(granted if isinstance(granted, str) and granted else scope) or None,
            expires_at=expires_at_from(body.get("expires_in"), now),
            issued_at=now,
        )

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
    # Why the last use of these credentials failed (no secret), and when, for `servers` and `auth`.
    last_error: str | None = None
    last_error_at: float | None = None
    # Scopes a call was refused for (insufficient_scope); the next `auth` asks for them.
    step_up_scope: str | None = None
    # The discovery chain followed by the last `auth`, for `auth --status`.
    discovery: list[str] = field(default_factory=list)
    scope_requested: str | None = None
    # The server URL that `toolscript auth` found answering without asking for authorization.
    auth_not_needed_for: str | None = None
    # A dynamic registration whose authorization never came back (the authorization server
    # may have forgotten it and shown the browser an error): the next `auth` registers anew.
    suspect_client_id: str | None = None

    def note_error(self, reason: str | None, now: float | None = None) -> None:
        """Record why the last use failed, and when (None: it works again)."""
        self.last_error = reason
        self.last_error_at = None if reason is None else (time.time() if now is None else now)


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
        return (
            server_url is not None
            and probed is not None
            and same_resource(probed, server_url)
            and self.tokens_for(server_url) is None
        )

    def tokens_for(self, server_url: str | None) -> Tokens | None:
        """Return the tokens only if they were issued for `server_url`.

        Tokens recorded for another URL (the config changed) are never to be sent.
        """
        if self.tokens is None or server_url is None or self.metadata.server_url is None:
            return None
        if not same_resource(self.metadata.server_url, server_url):
            return None
        return self.tokens

    def secret_values(self) -> list[str]:
        """The tokens and client secret held by this record."""
        values = [self.tokens.access_token, self.tokens.refresh_token] if self.tokens else []
        if self.client:
            values += [self.client.client_secret, self.client.registration_access_token]
        return [value for value in values if value]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {k: v for k, v in self.unknown.items() if k not in _SECTIONS}
        for name in _SECTIONS:
            section = getattr(self, name)
            if section is None:
                continue
            values = {
                k: v
                for k, v in dataclasses.asdict(section).items()
                if v is not None and v != [] and (not isinstance(v, float) or _usable_time(v))
            }
            values.update(self.unknown.get(name, {}))
            if values:
                data[name] = values
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path | str = "an OAuth record") -> Record:
        """Build a record from parsed TOML; raise ValueError when it is not one.

        A time that is not finite or lies absurdly far off is read as unknown, with a
        warning naming `source`.
        """
        unknown: dict[str, Any] = {k: v for k, v in data.items() if k not in _SECTIONS}
        client = _section(data, "client", ClientInfo, unknown, source)
        tokens = _section(data, "tokens", Tokens, unknown, source)
        metadata = _section(data, "metadata", Metadata, unknown, source) or Metadata()
        if client is not None and client.registration_source not in REGISTRATION_SOURCES:
            raise ValueError(
                f"client.registration_source {client.registration_source!r} is not one of {REGISTRATION_SOURCES}"
            )
        return cls(client=client, tokens=tokens, metadata=metadata, unknown=unknown)


@dataclass(frozen=True)
class OAuthStatus:
    """A server's OAuth state as `servers` and the gateway report it, with why it failed."""

    status: str  # "authenticated", "pending_authorization" or "authentication_failed"
    reason: str | None = None

    def row(self) -> dict[str, str]:
        """The `oauth_status` (and `oauth_error`) fields of a server's row."""
        return {"oauth_status": self.status, **({"oauth_error": self.reason} if self.reason else {})}


def note_auth_not_needed(record: Record | None, server_url: str | None) -> Record:
    """`record` (or a new one) noting that `server_url` answered without asking for authorization.

    A record holding tokens for that URL is returned as it is: the server did ask, once.
    """
    record = record or Record()
    if server_url is None or record.tokens_for(server_url) is None:
        record.metadata.auth_not_needed_for = server_url
    return record


def expires_at_from(expires_in: object, now: float) -> float | None:
    """The absolute expiry for a token response's `expires_in`, or None when it is absent or unusable.

    An unusable value (not a number, not finite, not positive, or beyond `MAX_LIFETIME`)
    is logged as a warning and treated as "expiry unknown": the token is used until the
    server refuses it.
    """
    if expires_in is None:
        return None
    try:
        lifetime = float(expires_in) if not isinstance(expires_in, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        lifetime = math.nan
    if 0 < lifetime <= MAX_LIFETIME:  # also false for nan
        return now + lifetime
    log.warning(
        "The token endpoint sent expires_in %.40r, which is not a usable lifetime; "
        "treating the token's expiry as unknown.",
        expires_in,
    )
    return None


def oauth_status(record: Record | None, server_url: str, now: float | None = None) -> OAuthStatus:
    """Classify a server's OAuth state from its record alone."""
    tokens = record.tokens_for(server_url) if record else None
    last_error = _masked(record.metadata.last_error, record) if record else None
    if tokens is None:
        if last_error:
            return OAuthStatus("authentication_failed", last_error)
        return OAuthStatus("pending_authorization")
    if tokens.is_expired(now) and not tokens.refresh_token:
        return OAuthStatus("authentication_failed", "the access token expired and there is no refresh token")
    if last_error:
        return OAuthStatus("authentication_failed", last_error)
    return OAuthStatus("authenticated")


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

    def oauth_status_of(self, server: ServerConfig) -> OAuthStatus | None:
        """`oauth_status` of a server that uses OAuth (an oauth table or a stored record), else None."""
        if not server.is_remote or (server.oauth is None and not self.exists(server.name)):
            return None
        try:
            record = self.load(server.name)
        except StorageError as exc:
            return OAuthStatus("authentication_failed", exc.message)
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
            # O_NONBLOCK: opening a FIFO planted here must not wait for a writer.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StorageError(
                    f"{path} is a symbolic link; refusing to read it (delete it first).",
                    path=str(path),
                    server=server,
                    next_command=auth_command(server),
                ) from None
            raise StorageError(f"Cannot read {path}: {exc.strerror}.", path=str(path), server=server) from None
        try:
            try:
                self._check_file(fd, path, server)  # before any use: it may be a directory or a FIFO
            except BaseException:
                os.close(fd)
                raise
            with os.fdopen(fd, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            raise StorageError(f"Cannot read {path}: {exc.strerror}.", path=str(path), server=server) from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            data, reason = None, "not valid TOML"
        if data is not None:
            try:
                return Record.from_dict(data, source=path)
            except ValueError as exc:
                reason = str(exc)
        raise StorageError(
            f"OAuth record {path} is corrupt ({reason}); delete it, or log out and forget the client.",
            path=str(path),
            server=server,
            next_command=auth_command(server, "--logout", "--forget-client"),
        )

    def save(self, server: str, record: Record) -> None:
        """Write the record atomically with mode 0600 (removing temporary files a crashed write left)."""
        path = self.path(server)
        self._ensure_directory()
        data = tomli_w.dumps(record.to_dict()).encode("utf-8")
        try:
            remove_temporary_files(path)
            write_atomic(path, data)
        except OSError as exc:
            raise StorageError(f"Cannot write {path}: {exc.strerror or exc}.", path=str(path), server=server) from None

    def delete(self, server: str) -> bool:
        """Delete the record (and temporary files a crashed write left); return whether there was one."""
        path = self.path(server)
        try:
            remove_temporary_files(path)
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"Cannot delete {path}: {exc.strerror or exc}.", path=str(path), server=server) from None
        with contextlib.suppress(OSError):  # it is gone; a failed directory sync only weakens durability
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
        fd = _open_lock_file(lock_path, server)
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
                        path=str(lock_path),
                        server=server,
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
            raise StorageError(
                f"{self.directory} is not a directory; move it away so toolscript can recreate it.",
                path=str(self.directory),
            )
        _check_owner(info, self.directory)
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            log.warning("%s had permissions %03o; tightened to 700", self.directory, mode)
            try:
                os.chmod(self.directory, 0o700)
            except OSError as exc:
                raise StorageError(
                    f"Cannot tighten the permissions of {self.directory}: {exc.strerror or exc}.",
                    path=str(self.directory),
                ) from None

    def _check_file(self, fd: int, path: Path, server: str) -> None:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StorageError(
                f"{path} is not a regular file (delete it first).",
                path=str(path),
                server=server,
                next_command=auth_command(server),
            )
        _check_owner(info, path)
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            log.warning("%s had permissions %03o; tightened to 600", path, mode)
            os.fchmod(fd, 0o600)


def _check_name(server: str) -> None:
    try:
        validate_server_name(server)
    except ConfigError as exc:
        raise StorageError(exc.message, server=None) from None


def _check_owner(info: os.stat_result, path: Path) -> None:
    if info.st_uid != os.getuid():
        raise StorageError(
            f"{path} is owned by another user (uid {info.st_uid}); refusing to use it. Fix its ownership or remove it.",
            path=str(path),
        )


def _section(data: dict[str, Any], name: str, kind: type, unknown: dict[str, Any], source: Path | str) -> Any:
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
        if isinstance(value, float) and not _usable_time(value):
            log.warning("%s: %s.%s = %r is not a usable time; treating it as unknown.", source, name, key, value)
            continue
        kwargs[key] = value
    try:
        return kind(**kwargs)
    except TypeError:
        missing = [
            f.name
            for f in dataclasses.fields(kind)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in kwargs
        ]
        raise ValueError(f"{name}.{missing[0] if missing else '?'} is missing") from None


def _matches(value: Any, annotation: str) -> bool:
    if annotation.startswith("list"):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if "float" in annotation:
        return isinstance(value, float)
    return isinstance(value, str)


def _usable_time(value: float) -> bool:
    """Whether a stored time (epoch seconds) is finite and not absurdly far off."""
    return 0 <= value <= time.time() + MAX_LIFETIME  # false for nan


def _masked(text: str | None, record: Record) -> str | None:
    """Server-supplied `text` with the record's secrets and secret-shaped values masked."""
    if text is None:
        return None
    for value in record.secret_values():
        register_secret(value)
    return redact(text)


def _open_lock_file(path: Path, server: str) -> int:
    """Open (creating) the lock file; refuse anything but a regular file of ours, without blocking."""
    try:
        # O_NONBLOCK: opening a FIFO planted here must not wait for its other end.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StorageError(
                f"{path} is a symbolic link; refusing to use it as a lock. Delete it.", path=str(path), server=server
            ) from None
        raise StorageError(
            f"Cannot open the lock file {path}: {exc.strerror or exc}.", path=str(path), server=server
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StorageError(
                f"{path} is not a regular file; refusing to use it as a lock. Delete it.", path=str(path), server=server
            )
        _check_owner(info, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_temporary_files(path: Path) -> None:
    """Remove the temporary files (`.NAME.*.tmp`, holding tokens or secrets) a crash in `write_atomic` left.

    Only call with the file's lock held, so no other writer's file is taken.
    """
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data`: a temporary file created with `mode`, fsynced, then renamed."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
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
