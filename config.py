"""Find, read and validate the toolscript configuration file.

It stands alone because the CLI, `auth` and `gateway` all need the validated server
definitions, and it needs nothing from them. Besides `errors`, `trust` and `urls`, only
the standard library is imported.

The file is TOML with one table per server under `servers`; see `config.toml.example`.
Every mistake raises `ConfigError` with one line naming the file and the key path.

Two files may be read: the user's own config, and a project's `toolscript.toml`, which is
used only once trusted (see `trust`) and then merged over the user's, server by server.
Loading reads the files afresh each time, so it can be called again to reload them.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__:
    from . import trust
    from .errors import ConfigError, did_you_mean
    from .urls import is_loopback_http
else:
    import trust
    from errors import ConfigError, did_you_mean
    from urls import is_loopback_http

__all__ = [
    "PROJECT_FILE_NAME",
    "Config",
    "IgnoredProject",
    "OAuthConfig",
    "ServerConfig",
    "find_config",
    "find_project_config",
    "load_config",
    "parse_config",
    "parse_config_file",
    "toolscript_home",
    "validate_server_name",
]

SERVER_TYPES = ("stdio", "http", "sse")
PROJECT_FILE_NAME = "toolscript.toml"
_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
# `$$` is a literal `$`; `${NAME}` and `${NAME:-default}` are substitutions.
_VAR_RE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})")

_COMMON_KEYS = {"type", "timeout", "include_tools", "exclude_tools"}
_STDIO_KEYS = _COMMON_KEYS | {"command", "args", "env", "cwd", "max_message_mb"}
_REMOTE_KEYS = _COMMON_KEYS | {"url", "headers", "oauth"}
_OAUTH_KEYS = {"client_id", "client_secret", "scopes", "redirect_uri", "client_metadata_url"}


@dataclass(frozen=True)
class OAuthConfig:
    """The optional `[servers.NAME.oauth]` table."""

    client_id: str | None = None
    client_secret: str | None = None
    scopes: tuple[str, ...] = ()
    redirect_uri: str | None = None
    client_metadata_url: str | None = None


@dataclass(frozen=True)
class ServerConfig:
    """One validated `[servers.NAME]` table, variables already substituted."""

    name: str
    type: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    oauth: OAuthConfig | None = None
    include_tools: tuple[str, ...] = ()
    exclude_tools: tuple[str, ...] = ()
    max_message_mb: float | None = None  # a stdio server's longest message (default: stdio_transport's)

    @property
    def is_remote(self) -> bool:
        return self.type in ("http", "sse")

    @property
    def has_authorization_header(self) -> bool:
        """Whether the config sets an `Authorization` header itself (then OAuth stays out of the way)."""
        return any(name.lower() == "authorization" for name in self.headers)

    @property
    def target(self) -> str:
        """The command line or URL, for display."""
        if self.url is not None:
            return self.url
        return " ".join([self.command or "", *self.args]).strip()


@dataclass(frozen=True)
class IgnoredProject:
    """A project config file that was not used, because it is not trusted (or changed since it was)."""

    path: Path
    changed: bool  # trusted once, with other content


@dataclass(frozen=True)
class Config:
    """The whole configuration: where it came from and its servers, in file order."""

    path: Path | None
    servers: dict[str, ServerConfig]
    # Servers left out because a variable they use is not set: what using one raises.
    unusable: dict[str, ConfigError] = field(default_factory=dict)
    # The files read, the user's config first; a trusted project file merged over it last.
    sources: tuple[Path, ...] = ()
    # Which of `sources` defines each server (usable or not).
    origins: dict[str, Path] = field(default_factory=dict)
    # A project file found but not used, for the warning that says how to trust it.
    ignored_project: IgnoredProject | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        """The files this config was read from (what a running gateway watches)."""
        return self.sources or ((self.path,) if self.path else ())

    def server(self, name: str) -> ServerConfig:
        """Return the server called `name` or raise a `ConfigError` (listing the known ones, or why it is unusable)."""
        if name in self.unusable:
            raise self.unusable[name]
        try:
            return self.servers[name]
        except KeyError:
            raise self.unknown_server(
                name, f"in {' and '.join(map(str, self.sources))}" if self.sources else ""
            ) from None

    def unknown_server(self, name: str, where: str) -> ConfigError:
        """The error for a server `name` this config lacks; `where` ("in FILE") says which config that is."""
        # A near miss names the server meant; else the list shows what there is.
        known = [*self.servers, *self.unusable]
        hint = did_you_mean(name, known) or f" (configured: {', '.join(known) or 'none'})"
        return ConfigError(f"Unknown server '{name}'{' ' + where if where else ''}{hint}.", server=name)


def toolscript_home(environ: dict[str, str] | None = None) -> Path:
    """Return `$TOOLSCRIPT_HOME`, defaulting to `~/.toolscript`."""
    env = os.environ if environ is None else environ
    home = env.get("TOOLSCRIPT_HOME")
    return Path(home).expanduser() if home else Path.home() / ".toolscript"


def find_config(explicit: str | None = None, environ: dict[str, str] | None = None) -> Path | None:
    """Return the user's config path, or None when there is none.

    Order: `--config`, `$TOOLSCRIPT_CONFIG`, `$TOOLSCRIPT_HOME/config.toml`. The first two are
    returned even if missing, so that reading them fails loudly. A project file is not the
    user's: see `find_project_config`.
    """
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit).expanduser()
    if env.get("TOOLSCRIPT_CONFIG"):
        return Path(env["TOOLSCRIPT_CONFIG"]).expanduser()
    candidate = toolscript_home(env) / "config.toml"
    return candidate if candidate.is_file() else None


def find_project_config(directory: Path | None = None) -> Path | None:
    """Return the project config for `directory` (default: the working directory), or None.

    That is the nearest `toolscript.toml` from `directory` up to the root of the repository
    it is in (the nearest directory holding `.git`); outside a repository, only `directory`'s
    own. One in the working directory is returned as the relative `toolscript.toml`.
    """
    start = Path.cwd() if directory is None else directory
    here = start.resolve()
    chain = [here, *here.parents]
    root = next((index for index, folder in enumerate(chain) if (folder / ".git").exists()), 0)
    for index, folder in enumerate(chain[: root + 1]):
        candidate = folder / PROJECT_FILE_NAME
        if candidate.is_file():
            return Path(PROJECT_FILE_NAME) if index == 0 and directory is None else candidate
    return None


def load_config(explicit: str | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read and validate the user's config, and the project's if it is trusted; merge them.

    A config named by `--config` or `$TOOLSCRIPT_CONFIG` is used alone. Otherwise a
    trusted project file (see `find_project_config`) is merged over `$TOOLSCRIPT_HOME/config.toml`,
    server by server; an untrusted one is not parsed at all, only noted in `ignored_project`.
    """
    env = os.environ if environ is None else environ
    path = find_config(explicit, env)
    user = Config(path=None, servers={})
    if path is not None:
        hint = "--config" if explicit else "$TOOLSCRIPT_CONFIG" if env.get("TOOLSCRIPT_CONFIG") else None
        user = parse_config_file(path, _read_config_bytes(path, hint), env)
    if explicit or env.get("TOOLSCRIPT_CONFIG"):
        return user
    project = find_project_config()
    if project is None:
        return user
    try:
        data = project.read_bytes()
    except OSError:
        return replace(user, ignored_project=IgnoredProject(project, changed=False))
    trusted = trust.read_trusted(toolscript_home(env)).get(trust.project_key(project))
    # The bytes hashed are the bytes parsed: a file changed in between is never used unchecked.
    if trusted != trust.content_digest(data):
        return replace(user, ignored_project=IgnoredProject(project, changed=trusted is not None))
    return _merged(user, parse_config_file(project, data, env))


def _merged(user: Config, project: Config) -> Config:
    """`project`'s servers over `user`'s: a project server replaces the user's server of the same name."""
    overridden = {*project.servers, *project.unusable}
    return Config(
        path=user.path or project.path,
        servers={
            **{name: server for name, server in user.servers.items() if name not in overridden},
            **project.servers,
        },
        unusable={
            **{name: problem for name, problem in user.unusable.items() if name not in overridden},
            **project.unusable,
        },
        sources=(*user.sources, *project.sources),
        origins={**{name: where for name, where in user.origins.items() if name not in overridden}, **project.origins},
    )


def _read_config_bytes(path: Path, given_by: str | None) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        given = f" (given by {given_by})" if given_by else ""
        raise ConfigError(f"{path}: config file not found{given}.", path=str(path)) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file.", path=str(path)) from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot read config file: permission denied.", path=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}.", path=str(path)) from None


def parse_config_file(path: Path, data: bytes, env: dict[str, str] | None = None) -> Config:
    """Parse and validate exactly `data`, the bytes read from `path`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not valid UTF-8.", path=str(path)) from None
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {_describe_toml_error(exc, text)}", path=str(path)) from None
    except RecursionError:
        raise ConfigError(f"{path}: values are nested too deeply to read.", path=str(path)) from None
    return parse_config(parsed, path=path, environ=env)


def parse_config(data: dict[str, Any], *, path: Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Validate an already parsed TOML document."""
    env = os.environ if environ is None else environ
    where = f"{path}: " if path else ""

    def fail(message: str, server: str | None = None, variable: str | None = None) -> ConfigError:
        return ConfigError(where + message, path=str(path) if path else None, server=server, variable=variable)

    for key in data:
        if key != "servers":
            hint = did_you_mean(key, ["servers"]) or " (expected only [servers.NAME] tables)"
            raise fail(f"{key}: unknown key{hint}")
    servers_table = data.get("servers", {})
    if not isinstance(servers_table, dict):
        raise fail("servers: must be a table of [servers.NAME] tables")
    servers: dict[str, ServerConfig] = {}
    unusable: dict[str, ConfigError] = {}
    for name, table in servers_table.items():
        if not _is_valid_name(name):
            raise fail(f"servers.{name}: {_name_problem(name)}", name)
        if not isinstance(table, dict):
            raise fail(f"servers.{name}: must be a table", name)
        try:
            servers[name] = _parse_server(name, table, env)
        except _UnsetVariable as exc:  # the table is fine; the others stay usable meanwhile
            unusable[name] = fail(str(exc), name, exc.variable)
        except _Invalid as exc:
            raise fail(str(exc), name) from None
    return Config(
        path=path,
        servers=servers,
        unusable=unusable,
        sources=(path,) if path else (),
        origins=dict.fromkeys([*servers, *unusable], path) if path else {},
    )


def validate_server_name(name: str) -> str:
    """Return `name` if it is a valid server name, else raise `ConfigError`."""
    if not isinstance(name, str) or not _is_valid_name(name):
        raise ConfigError(f"Invalid server name {name!r}: {_name_problem(str(name))}.", server=None)
    return name


def _describe_toml_error(exc: tomllib.TOMLDecodeError, text: str) -> str:
    # tomllib (3.11) puts the position only in the message text.
    message = str(exc)
    found = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if found:
        return f"TOML syntax error at line {found[1]}, column {found[2]}: {message[: found.start()]}"
    if message.endswith(" (at end of document)"):
        lines = text.count("\n") + 1
        return f"TOML syntax error at line {lines} (end of file): {message[: -len(' (at end of document)')]}"
    return f"TOML syntax error: {message}"


class _Invalid(Exception):
    """A validation problem; the message starts with the key path."""


class _UnsetVariable(_Invalid):
    """A `${VAR}` without a default whose variable is not set: only that server is unusable."""

    def __init__(self, message: str, variable: str) -> None:
        super().__init__(message)
        self.variable = variable


def _is_valid_name(name: str) -> bool:
    return bool(_NAME_RE.fullmatch(name)) and "__" not in name


def _name_problem(name: str) -> str:
    if "__" in name and _NAME_RE.fullmatch(name):
        return "server names must not contain '__' (it separates server and tool in SERVER__TOOL)"
    return "server names may contain only letters, digits, '_' and '-'"


def _parse_server(name: str, table: dict[str, Any], env: dict[str, str]) -> ServerConfig:
    prefix = f"servers.{name}"
    for key in table:
        if key not in _STDIO_KEYS | _REMOTE_KEYS:
            raise _Invalid(f"{prefix}.{key}: unknown key{did_you_mean(key, sorted(_STDIO_KEYS | _REMOTE_KEYS))}")
    explicit_type = table.get("type")
    if explicit_type is not None and explicit_type not in SERVER_TYPES:
        raise _Invalid(f"{prefix}.type: must be one of 'stdio', 'http', 'sse', not {explicit_type!r}")
    has_command, has_url = "command" in table, "url" in table
    if has_command and has_url:
        raise _Invalid(f"{prefix}: give either 'command' (stdio server) or 'url' (http/sse server), not both")
    if explicit_type in ("http", "sse") and not has_url:
        raise _Invalid(f"{prefix}: missing 'url' (required for a {explicit_type} server)")
    if explicit_type == "stdio" and not has_command:
        raise _Invalid(f"{prefix}: missing 'command' (required for a stdio server)")
    if not has_command and not has_url:
        raise _Invalid(f"{prefix}: missing 'command' (stdio server) or 'url' (http/sse server)")
    kind = explicit_type or ("stdio" if has_command else "http")

    allowed = _STDIO_KEYS if kind == "stdio" else _REMOTE_KEYS
    for key in table:
        if key not in allowed:
            raise _Invalid(f"{prefix}.{key}: not allowed for a {kind} server")

    def sub(value: str, path: str) -> str:
        return _substitute(value, path, name, env)

    timeout = table.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise _Invalid(f"{prefix}.timeout: must be a positive number of seconds")
        timeout = float(timeout)
    include = tuple(sub(p, f"{prefix}.include_tools") for p in _str_list(table, "include_tools", prefix))
    exclude = tuple(sub(p, f"{prefix}.exclude_tools") for p in _str_list(table, "exclude_tools", prefix))

    if kind == "stdio":
        command = sub(_str(table, "command", prefix, required=True), f"{prefix}.command")
        if not command:
            raise _Invalid(f"{prefix}.command: must not be empty")
        args = tuple(sub(a, f"{prefix}.args") for a in _str_list(table, "args", prefix))
        env_table = {k: sub(v, f"{prefix}.env.{k}") for k, v in _str_table(table, "env", prefix).items()}
        cwd = table.get("cwd")
        cwd = sub(_str(table, "cwd", prefix), f"{prefix}.cwd") if cwd is not None else None
        max_message_mb = table.get("max_message_mb")
        if max_message_mb is not None and (
            isinstance(max_message_mb, bool) or not isinstance(max_message_mb, (int, float)) or max_message_mb <= 0
        ):
            raise _Invalid(f"{prefix}.max_message_mb: must be a positive number of MiB")
        return ServerConfig(
            name=name,
            type=kind,
            command=command,
            args=args,
            env=env_table,
            cwd=cwd,
            max_message_mb=max_message_mb,
            timeout=timeout,
            include_tools=include,
            exclude_tools=exclude,
        )

    url = sub(_str(table, "url", prefix, required=True), f"{prefix}.url")
    _check_http_url(url, f"{prefix}.url")
    headers = {k: sub(v, f"{prefix}.headers.{k}") for k, v in _str_table(table, "headers", prefix).items()}
    oauth = None
    if "oauth" in table:
        oauth = _parse_oauth(table["oauth"], f"{prefix}.oauth", sub)
    return ServerConfig(
        name=name,
        type=kind,
        url=url,
        headers=headers,
        timeout=timeout,
        oauth=oauth,
        include_tools=include,
        exclude_tools=exclude,
    )


def _parse_oauth(table: Any, prefix: str, sub: Any) -> OAuthConfig:
    if not isinstance(table, dict):
        raise _Invalid(f"{prefix}: must be a table")
    for key in table:
        if key not in _OAUTH_KEYS:
            raise _Invalid(f"{prefix}.{key}: unknown key{did_you_mean(key, sorted(_OAUTH_KEYS))}")

    def opt(key: str) -> str | None:
        return sub(_str(table, key, prefix), f"{prefix}.{key}") if key in table else None

    client_id, client_secret = opt("client_id"), opt("client_secret")
    if client_secret is not None and client_id is None:
        raise _Invalid(f"{prefix}.client_secret: needs client_id as well")
    redirect_uri = opt("redirect_uri")
    if redirect_uri is not None:
        if not is_loopback_http(redirect_uri):
            raise _Invalid(
                f"{prefix}.redirect_uri: must be a loopback http URL such as "
                f"http://127.0.0.1:8765/callback, not {redirect_uri!r}"
            )
        try:
            urlsplit(redirect_uri).port  # noqa: B018 (reading the port is what checks it)
        except ValueError:
            raise _Invalid(f"{prefix}.redirect_uri: invalid port in {redirect_uri!r}") from None
    metadata_url = opt("client_metadata_url")
    if metadata_url is not None:
        _check_http_url(metadata_url, f"{prefix}.client_metadata_url")
    scopes = tuple(sub(s, f"{prefix}.scopes") for s in _str_list(table, "scopes", prefix))
    for scope in scopes:
        if not scope or any(c.isspace() for c in scope):
            raise _Invalid(f"{prefix}.scopes: each scope must be one non-empty word, not {scope!r}")
    return OAuthConfig(
        client_id=client_id,
        client_secret=client_secret,
        scopes=scopes,
        redirect_uri=redirect_uri,
        client_metadata_url=metadata_url,
    )


def _check_http_url(url: str, path: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(f"{path}: must be an http:// or https:// URL, not {url!r}")
    try:
        parts.port  # noqa: B018 (reading the port is what checks it)
    except ValueError:
        raise _Invalid(f"{path}: invalid port in {url!r}") from None


def _str(table: dict[str, Any], key: str, prefix: str, *, required: bool = False) -> str:
    value = table.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise _Invalid(f"{prefix}.{key}: must be a string, not {_type_name(value)}")
    return value


def _str_list(table: dict[str, Any], key: str, prefix: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid(f"{prefix}.{key}: must be a list of strings")
    return value


def _str_table(table: dict[str, Any], key: str, prefix: str) -> dict[str, str]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise _Invalid(f"{prefix}.{key}: must be a table of strings, not {_type_name(value)}")
    for k, v in value.items():
        if not isinstance(v, str):
            raise _Invalid(f"{prefix}.{key}.{k}: must be a string, not {_type_name(v)}")
    return value


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _substitute(value: str, path: str, server: str, env: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        var, default = match.group(2), match.group(3)
        found = env.get(var)
        if found:
            return found
        if default is not None:
            return default
        if found is not None:  # set but empty, no default: empty is what the user set
            return found
        raise _UnsetVariable(
            f"{path}: environment variable {var} is not set (server '{server}'); set it or write ${{{var}:-default}}",
            var,
        )

    result = _VAR_RE.sub(replace, value)
    # Anything left that looks like the start of a reference was malformed.
    leftover = _VAR_RE.sub("", value)
    if "${" in leftover:
        raise _Invalid(
            f"{path}: malformed variable reference (write ${{NAME}}, ${{NAME:-default}} or $$ for a literal $)"
        )
    return result
