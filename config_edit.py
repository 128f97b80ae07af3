"""Change toolscript's files in place (`toolscript add`, `remove`, `import`, `trust`), and read other clients' configs.

It stands alone because `config.py` only reads and validates, for every command, while only
these commands write; and reading the MCP configs of Claude Desktop, Claude Code, VS Code,
Cursor and Codex concerns nothing else. Edits are textual, so the rest of the file
(comments, order, layout, line endings) stays byte for byte as it was; every edit is checked
by parsing the result before the file is replaced atomically, and refused if anything else
would change. Each edit holds a lock on the file's directory from reading to replacing, so
parallel edits all land, and removes the temporary files an interrupted edit left.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

if __package__:
    from . import trust
    from .config import find_config, parse_config, toolscript_home
    from .errors import ConfigError
    from .storage import remove_temporary_files, write_atomic
else:
    import trust
    from config import find_config, parse_config, toolscript_home
    from errors import ConfigError
    from storage import remove_temporary_files, write_atomic

__all__ = [
    "ImportPlan",
    "add_servers",
    "configured_servers",
    "plan_import",
    "remove_server",
    "revoke_project",
    "servers_toml",
    "trust_project",
    "unset_variables",
    "writable_config_path",
]

LOCK_TIMEOUT = 60.0

# `${VAR}` and `${VAR:-default}` (toolscript, Claude Code), `${env:VAR}` (VS Code, Cursor), and the
# VS Code/Cursor placeholders `${input:ID}`, `${workspaceFolder}`, `${userHome}`; anything else in
# `${...}` is a placeholder toolscript cannot resolve.
_REFERENCE_RE = re.compile(r"\$\{([^}]*)\}")
_VARIABLE_RE = re.compile(r"(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?")
_VARIABLE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
_HEADER_RE = re.compile(r"^[ \t]*\[\[?(.*?)\]\]?[ \t]*(?:#.*)?$")
_KEY_PART_RE = re.compile(r"""[ \t]*(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([A-Za-z0-9_-]+))[ \t]*(\.|$)""")


def writable_config_path(explicit: str | None = None) -> Path:
    """The file `add` and `import` write: the user's config (a project file only when named by `--config`)."""
    return find_config(explicit) or toolscript_home() / "config.toml"


def configured_servers(path: Path) -> dict[str, Any]:
    """The raw `[servers.NAME]` tables in the config at `path` (none if it does not exist)."""
    _text, data = _read(path)
    return _servers_of(data, path)


def servers_toml(servers: Mapping[str, Mapping[str, Any]]) -> str:
    """`[servers.NAME]` tables for `servers`, as they are appended to a config file."""
    return tomli_w.dumps({"servers": {name: dict(table) for name, table in servers.items()}})


def add_servers(
    path: Path, servers: Mapping[str, Mapping[str, Any]], *, replace: bool = False, private: bool = False
) -> bool:
    """Append `[servers.NAME]` tables to the config at `path` (created 0600 if missing), keeping the rest as it is.

    With `replace`, a server of the same name is removed first; else it is refused. With
    `private` (the servers came from a file only its owner can read), a config others can
    read is made private too. Return whether it was.
    """
    with _locked(path):
        text, data = _read(path)
        existing = _servers_of(data, path)
        for name, table in servers.items():
            if name in existing and not replace:
                raise ConfigError(
                    f"Server '{name}' is already configured in {path}; to replace it, first run: "
                    f"toolscript remove {name}",
                    path=str(path),
                    server=name,
                )
            check_server_table(name, table, path)
        kept = dict(existing)
        for name in servers:
            if name in kept:
                text = _without_table(text, name, path)
                del kept[name]
        newline = "\r\n" if "\r\n" in text else "\n"
        block = servers_toml(servers).replace("\n", newline)
        if text.strip():
            if not text.endswith("\n"):
                text += newline
            if not text.endswith(newline * 2):
                text += newline  # a blank line before the new tables
            new_text = text + block
        else:
            new_text = block
        expected = {**kept, **{name: dict(table) for name, table in servers.items()}}
        return _replace(path, new_text, expected, data, private=private)


def remove_server(path: Path, name: str) -> None:
    """Delete the `[servers.NAME]` table (and its sub-tables and the comment just above it) from the config."""
    with _locked(path):
        text, data = _read(path)
        existing = _servers_of(data, path)
        if name not in existing:
            known = ", ".join(existing) or "none"
            raise ConfigError(f"Unknown server '{name}' in {path} (configured: {known}).", path=str(path), server=name)
        new_text = _without_table(text, name, path)
        expected = {key: value for key, value in existing.items() if key != name}
        _replace(path, new_text, expected, data)


def _without_table(text: str, name: str, path: Path) -> str:
    """`text` without the `[servers.NAME]` table: its header, body and sub-tables, the comment just
    above it and the blank lines that set it apart; every other byte stays as it was."""
    lines = text.splitlines(keepends=True)
    headers: list[tuple[int, list[str]]] = []
    for index, line in enumerate(lines):
        keys = _table_header(line)
        if keys is not None:
            headers.append((index, keys))
    ours = [index for index, keys in headers if keys[:2] == ["servers", name]]
    if not ours:
        raise ConfigError(
            f"Server '{name}' in {path} is not written as a [servers.{name}] table; remove it by editing the file.",
            path=str(path),
            server=name,
        )
    start = ours[0]
    # The table and its sub-tables run until the next header of anything else.
    following = [index for index, keys in headers if index > start and keys[:2] != ["servers", name]]
    end = following[0] if following else len(lines)

    def blank(index: int) -> bool:
        return not lines[index].strip()

    def comment(index: int) -> bool:
        return lines[index].lstrip().startswith("#")

    # Comments and blank lines at its end introduce what follows (or close the file): they stay.
    while end > start + 1 and (blank(end - 1) or comment(end - 1)):
        end -= 1
    while start > 0 and comment(start - 1):  # the comment that introduces it
        start -= 1
    # The blank lines that separated it from what came before go with it; at the top of the
    # file, those that separated it from what follows.
    if start > 0:
        while start > 0 and blank(start - 1):
            start -= 1
    else:
        while end < len(lines) and blank(end):
            end += 1
    return "".join(lines[:start] + lines[end:])


def check_server_table(name: str, table: Mapping[str, Any], path: Path | None = None) -> None:
    """Raise `ConfigError` unless `table` is a valid server (a value using an unset variable: once it is set)."""
    try:
        parse_config({"servers": {name: dict(table)}}, path=path, environ=_UnsetIsEmpty(os.environ))
    except ConfigError:
        if not unset_variables(table):
            raise


def unset_variables(table: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> list[str]:
    """The `${VAR}` references in `table` (without a default) that `environ` does not set."""
    env = os.environ if environ is None else environ
    found: list[str] = []

    def visit(value: Any) -> None:
        if isinstance(value, str):
            for match in _REFERENCE_RE.finditer(value.replace("$$", "")):
                variable = _VARIABLE_RE.fullmatch(match[1])
                if variable and not variable[2] and variable[1] not in env and variable[1] not in found:
                    found.append(variable[1])
        elif isinstance(value, Mapping):
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    visit(table)
    return found


# -- other clients' configs --------------------------------------------------------------


@dataclass
class ImportPlan:
    """What `toolscript import FILE` would add, what it skips and why, and what the user should know."""

    source: str  # the kind of file, e.g. "Claude Code (.mcp.json)"
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plan_import(
    path: Path, configured: Mapping[str, Any] | None = None, *, prefix: str = "", replace: bool = False
) -> ImportPlan:
    """Read an MCP client's config file and convert its servers; skip (with a reason) what cannot be converted.

    Each server is named `prefix` + its name there; one named like a `configured` server is
    skipped, or with `replace` replaces it.
    """
    if prefix and not _NAME_RE.fullmatch(prefix):
        raise ConfigError(f"Invalid --prefix {prefix!r}: use letters, digits, '_' and '-'.")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found.", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({_os_reason(exc)}).", path=str(path)) from None
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc}).", path=str(path)) from None
        except RecursionError:
            raise ConfigError(f"{path}: values are nested too deeply to read.", path=str(path)) from None
        entries = data.get("mcp_servers")
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: no [mcp_servers.NAME] tables (expected a Codex config.toml).", path=str(path))
        plan, convert = ImportPlan("Codex (config.toml)"), _from_codex
    else:
        try:
            data = json.loads(_strip_json_comments(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).", path=str(path)
            ) from None
        except RecursionError:
            raise ConfigError(f"{path}: values are nested too deeply to read.", path=str(path)) from None
        entries, source = _json_servers(data, path)
        plan, convert = ImportPlan(source), _from_json
    workspace = path.resolve().parent
    if workspace.name in (".vscode", ".cursor"):
        workspace = workspace.parent
    inputs = _vscode_inputs(data)
    for raw_name, entry in entries.items():
        name = _server_name(str(raw_name))
        if not name:
            plan.skipped.append((str(raw_name), "no usable name (use letters, digits, '_' and '-')"))
            continue
        name = _server_name(prefix + name)
        if name in plan.servers:
            plan.skipped.append((str(raw_name), f"a server named '{name}' comes earlier in that file"))
            continue
        if name in (configured or {}) and not replace:
            plan.skipped.append(
                (str(raw_name), f"a server named '{name}' is already configured (use --prefix P or --replace)")
            )
            continue
        if not isinstance(entry, dict):
            plan.skipped.append((str(raw_name), "its entry is not an object"))
            continue
        try:
            table, notes = convert(entry, _Placeholders(workspace, inputs))
            check_server_table(name, table)
        except (_Unconvertible, ConfigError) as exc:
            plan.skipped.append((str(raw_name), str(exc).rstrip(".")))
            continue
        if name != raw_name and name != prefix + str(raw_name):
            notes.insert(0, f"named '{name}' ('{raw_name}' is not a valid toolscript server name)")
        if name in (configured or {}):
            notes.insert(0, f"replaces the server '{name}' configured before")
        missing = [variable for variable in unset_variables(table) if not any(variable in note for note in notes)]
        if missing:
            notes.append(f"set {', '.join(missing)} in the environment before using it")
        plan.servers[name] = table
        plan.notes.extend(f"{name}: {note}" for note in notes)
    return plan


class _Unconvertible(Exception):
    """A server entry toolscript cannot express; the message says why."""


class _UnsetIsEmpty(dict):  # type: ignore[type-arg]
    """The environment, with every unset variable empty: defaults apply, nothing is refused for being unset."""

    def get(self, key: str, default: Any = None) -> str:
        return super().get(key) or ""


@dataclass
class _Placeholders:
    """Turns a client's `${...}` placeholders into toolscript's syntax, noting what the user must do."""

    workspace: Path
    inputs: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def convert(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise _Unconvertible(f"{where} is not a string")

        def replace(match: re.Match[str]) -> str:
            inner = match[1]
            if inner in ("workspaceFolder", "workspaceRoot"):
                return str(self.workspace).replace("$", "$$")
            if inner == "userHome":
                return str(Path.home()).replace("$", "$$")
            variable = _VARIABLE_RE.fullmatch(inner)
            if variable:
                return f"${{{variable[1]}{variable[2] or ''}}}"
            if inner.startswith("input:"):
                variable_name = re.sub(r"[^A-Za-z0-9_]", "_", inner[len("input:") :]).upper()
                asked = self.inputs.get(inner[len("input:") :])
                note = f"set {variable_name} in the environment (the client asked for input '{inner[6:]}'"
                note += f": {asked})" if asked else ")"
                if note not in self.notes:
                    self.notes.append(note)
                return f"${{{variable_name}}}"
            raise _Unconvertible(f"{where} uses ${{{inner}}}, which toolscript cannot resolve")

        out, done = [], 0
        for match in _REFERENCE_RE.finditer(value):
            out += [value[done : match.start()].replace("$", "$$"), replace(match)]  # a literal `$` is `$$` here
            done = match.end()
        return "".join([*out, value[done:].replace("$", "$$")])

    def strings(self, value: Any, where: str) -> list[str]:
        if not isinstance(value, list):
            raise _Unconvertible(f"{where} is not a list of strings")
        return [self.convert(item, where) for item in value]

    def table(self, value: Any, where: str) -> dict[str, str]:
        if not isinstance(value, dict):
            raise _Unconvertible(f"{where} is not an object of strings")
        return {str(key): self.convert(item, f"{where}.{key}") for key, item in value.items()}


_JSON_TYPES = {
    "stdio": "stdio",
    "http": "http",
    "streamable-http": "http",
    "streamableHttp": "http",
    "streamable_http": "http",
    "sse": "sse",
}
_JSON_KNOWN = {"type", "command", "args", "env", "url", "headers", "cwd", "disabled", "transport"}


def _json_servers(data: Any, path: Path) -> tuple[dict[str, Any], str]:
    if isinstance(data, dict) and isinstance(data.get("mcpServers"), dict):
        name = path.name
        if name == ".mcp.json":
            return data["mcpServers"], "Claude Code (.mcp.json)"
        if path.parent.name == ".cursor":
            return data["mcpServers"], "Cursor (mcp.json)"
        if "claude_desktop" in name:
            return data["mcpServers"], "Claude Desktop"
        return data["mcpServers"], "mcpServers JSON"
    if isinstance(data, dict) and isinstance(data.get("servers"), dict):
        return data["servers"], "VS Code (mcp.json)"
    if isinstance(data, dict) and isinstance(data.get("mcp"), dict) and isinstance(data["mcp"].get("servers"), dict):
        return data["mcp"]["servers"], "VS Code (settings.json)"
    raise ConfigError(
        f'{path}: no MCP servers found (expected "mcpServers" or "servers", or a Codex '
        "config.toml with [mcp_servers.NAME]).",
        path=str(path),
    )


def _vscode_inputs(data: Any) -> dict[str, str]:
    inputs = data.get("inputs") if isinstance(data, dict) else None
    if not isinstance(inputs, list):
        return {}
    return {
        str(item["id"]): str(item.get("description", "")) for item in inputs if isinstance(item, dict) and "id" in item
    }


def _from_json(entry: dict[str, Any], placeholders: _Placeholders) -> tuple[dict[str, Any], list[str]]:
    if entry.get("disabled") is True:
        raise _Unconvertible("disabled in that file")
    declared = entry.get("type", entry.get("transport"))
    if declared is not None and declared not in _JSON_TYPES:
        raise _Unconvertible(f"transport type {declared!r} is not one toolscript speaks (stdio, http, sse)")
    table: dict[str, Any] = {}
    if "command" in entry:
        table = _stdio_table(entry, placeholders)
    elif "url" in entry:
        url = placeholders.convert(entry["url"], "url")
        kind = _JSON_TYPES.get(declared or "", "")
        if not kind:
            kind = "sse" if url.rstrip("/").endswith("/sse") else "http"
            if kind == "sse":
                placeholders.notes.append("its URL ends in /sse, so it is imported as an SSE server")
        table["type"] = kind
        table["url"] = url
        if entry.get("headers"):
            table["headers"] = placeholders.table(entry["headers"], "headers")
    else:
        raise _Unconvertible("it has neither a command nor a url")
    ignored = sorted(set(entry) - _JSON_KNOWN - {"inputs"})
    if ignored:
        placeholders.notes.append(f"ignored {', '.join(ignored)} (no toolscript equivalent)")
    return table, placeholders.notes


def _stdio_table(entry: dict[str, Any], placeholders: _Placeholders) -> dict[str, Any]:
    """`command`, `args`, `env` and `cwd` of a stdio server entry, which every client writes alike."""
    table: dict[str, Any] = {"command": placeholders.convert(entry["command"], "command")}
    if entry.get("args"):
        table["args"] = placeholders.strings(entry["args"], "args")
    if entry.get("env"):
        table["env"] = placeholders.table(entry["env"], "env")
    if entry.get("cwd"):
        table["cwd"] = placeholders.convert(entry["cwd"], "cwd")
    return table


_CODEX_KNOWN = {
    "command",
    "args",
    "env",
    "cwd",
    "url",
    "bearer_token_env_var",
    "http_headers",
    "env_http_headers",
    "startup_timeout_sec",
    "startup_timeout_ms",
    "tool_timeout_sec",
    "enabled",
    "enabled_tools",
    "disabled_tools",
    "env_vars",
}


def _from_codex(entry: dict[str, Any], placeholders: _Placeholders) -> tuple[dict[str, Any], list[str]]:
    if entry.get("enabled") is False:
        raise _Unconvertible("disabled in that file (enabled = false)")
    table: dict[str, Any] = {}
    if "command" in entry:
        table = _stdio_table(entry, placeholders)
        if entry.get("env_vars"):
            placeholders.notes.append("env_vars ignored: a stdio server inherits toolscript's whole environment")
    elif "url" in entry:
        table["type"] = "http"
        table["url"] = placeholders.convert(entry["url"], "url")
        headers = placeholders.table(entry.get("http_headers") or {}, "http_headers")
        for header, variable in (entry.get("env_http_headers") or {}).items():
            headers[str(header)] = f"${{{_variable_name(variable, 'env_http_headers')}}}"
        if entry.get("bearer_token_env_var"):
            variable = _variable_name(entry["bearer_token_env_var"], "bearer_token_env_var")
            headers["Authorization"] = f"Bearer ${{{variable}}}"
        if headers:
            table["headers"] = headers
    else:
        raise _Unconvertible("it has neither a command nor a url")
    timeout = _codex_timeout(entry, placeholders.notes)
    if timeout is not None:
        table["timeout"] = timeout
    for key, ours in (("enabled_tools", "include_tools"), ("disabled_tools", "exclude_tools")):
        if entry.get(key):
            table[ours] = placeholders.strings(entry[key], key)
    ignored = sorted(set(entry) - _CODEX_KNOWN)
    if ignored:
        placeholders.notes.append(f"ignored {', '.join(ignored)} (no toolscript equivalent)")
    return table, placeholders.notes


def _codex_timeout(entry: dict[str, Any], notes: list[str]) -> float | None:
    """One `timeout` for Codex's startup and tool timeouts: toolscript's covers connecting and each request alike.

    The longer one is taken, so that neither is cut short; the note says what became of each.
    """
    given = {}
    for key, scale in (("startup_timeout_sec", 1), ("startup_timeout_ms", 1000), ("tool_timeout_sec", 1)):
        value = entry.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            notes.append(f"{key} = {value!r} dropped (not a positive number)")
            continue
        given[key] = value / scale
    if not given:
        return None
    timeout = max(given.values())
    timeout = int(timeout) if float(timeout).is_integer() else timeout
    if len(given) > 1 or "tool_timeout_sec" not in given:
        notes.append(
            f"{' and '.join(given)} became timeout = {timeout} (toolscript has one timeout, for connecting "
            "and for each request)"
        )
    return timeout


def _variable_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _VARIABLE_NAME_RE.fullmatch(value):
        raise _Unconvertible(f"{where} names {value!r}, which is not an environment variable name")
    return value


def _server_name(raw: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", raw.strip()).strip("-")
    while "__" in name:
        name = name.replace("__", "_")
    return name


def _strip_json_comments(text: str) -> str:
    """JSON with comments and trailing commas (VS Code's and Cursor's files) made plain JSON."""
    out, i, n = [], 0, len(text)
    while i < n:
        char = text[i]
        if char == '"':
            end = i + 1
            while end < n and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            out.append(text[i : end + 1])
            i = end + 1
        elif text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(char)
            i += 1
    return re.sub(r",(\s*[}\]])", r"\1", "".join(out))


# -- reading and replacing the file ------------------------------------------------------


def _read(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        text = path.read_bytes().decode("utf-8")  # not read_text: CRLF line endings must stay CRLF
    except FileNotFoundError:
        return "", {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({_os_reason(exc)}).", path=str(path)) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: fix its TOML syntax first ({exc}).", path=str(path)) from None
    except RecursionError:
        raise ConfigError(f"{path}: values are nested too deeply to read.", path=str(path)) from None


def _servers_of(data: dict[str, Any], path: Path) -> dict[str, Any]:
    servers = data.get("servers", {})
    if not isinstance(servers, dict):
        raise ConfigError(f"{path}: servers must be a table of [servers.NAME] tables.", path=str(path))
    return servers


def _table_header(line: str) -> list[str] | None:
    """The key path of a `[a.b."c"]` table header line, or None for any other line."""
    match = _HEADER_RE.match(line.rstrip("\r\n"))
    if not match:
        return None
    keys, rest = [], match[1]
    while rest.strip():
        part = _KEY_PART_RE.match(rest)
        if not part:
            return None
        keys.append(part[1] if part[1] is not None else part[2] if part[2] is not None else part[3])
        rest = rest[part.end() :]
        if not part[4]:
            break
    return keys


def _replace(
    path: Path, new_text: str, servers: dict[str, Any], old_data: dict[str, Any], *, private: bool = False
) -> bool:
    """Write `new_text` if it parses to `old_data` with exactly `servers`; else refuse, leaving the file alone.

    With `private`, a file others could read is written 0600 instead; return whether it was.
    """
    try:
        new_data = tomllib.loads(new_text)
    except (tomllib.TOMLDecodeError, RecursionError):
        new_data = None
    expected = {**old_data, "servers": servers}
    if not servers and new_data is not None and "servers" not in new_data:
        expected.pop("servers")  # the last server removed: no empty [servers] table is left behind
    if new_data != expected:
        raise ConfigError(
            f"{path}: cannot edit this file safely by text (its layout is unusual); make the change by hand.",
            path=str(path),
        )
    tightened = False
    try:
        if path.exists():
            mode = path.stat().st_mode & 0o777
            if private and mode & 0o077:
                mode, tightened = mode & 0o700, True
        else:
            mode = 0o600  # it may hold API keys in headers
        write_atomic(path.resolve(), new_text.encode("utf-8"), mode)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the config ({_os_reason(exc)}).", path=str(path)) from None
    return tightened


@contextlib.contextmanager
def _locked(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the lock of the directory `path` is in (created 0700 if missing) while editing `path`.

    The directory, not the file: the file is replaced by each edit (a lock on it would stay
    on the old one) and may not exist yet. Temporary files an interrupted edit left are
    removed once the lock is held, so no other editor's is taken.
    """
    target = path.resolve()
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open its directory ({_os_reason(exc)}).", path=str(path)) from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    reason = _os_reason(exc)
                    raise ConfigError(f"{path}: cannot lock its directory ({reason}).", path=str(path)) from None
                if time.monotonic() >= deadline:
                    raise ConfigError(
                        f"{path}: timed out after {timeout:.0f}s waiting for another toolscript editing it.",
                        path=str(path),
                    ) from None
                time.sleep(0.01)
        remove_temporary_files(target)
        yield
    finally:
        os.close(fd)  # releases the lock


# -- trusted project files ------------------------------------------------------------------


def trust_project(path: Path, data: bytes, home: Path | None = None) -> None:
    """Record that the project file at `path` is trusted with the content `data` (the bytes the user saw)."""
    _edit_trusted(home, lambda entries: {**entries, trust.project_key(path): trust.content_digest(data)})


def revoke_project(path: Path, home: Path | None = None) -> bool:
    """Forget the trust in the project file at `path`; return whether it was trusted."""
    key = trust.project_key(path)
    found = False

    def without(entries: dict[str, str]) -> dict[str, str]:
        nonlocal found
        found = key in entries or str(path) in entries
        return {name: digest for name, digest in entries.items() if name not in (key, str(path))}

    _edit_trusted(home, without)
    return found


def _edit_trusted(home: Path | None, change: Any) -> None:
    home = home or toolscript_home()
    record = home / trust.TRUST_FILE_NAME
    with _locked(record):
        entries = change(trust.read_trusted(home))
        try:
            write_atomic(record, trust.trusted_text(entries).encode("utf-8"), 0o600)
        except OSError as exc:
            raise ConfigError(f"{record}: cannot write it ({_os_reason(exc)}).", path=str(record)) from None


def _os_reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__
