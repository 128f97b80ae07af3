"""`toolscript add`, `remove` and `import`: the config file edited in place, other clients' files read."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from conftest import STDIO_SERVER, explain, run_cli, run_threads

import toolscript

EXISTING = """\
# my servers
[servers.time]  # the time server
command = "uvx"
args = ["mcp-server-time"]

# GitHub, with a token from the environment
[servers.gh]
url = "https://api.githubcopilot.com/mcp/"

[servers.gh.headers]
Authorization = "Bearer ${GH_TOKEN:-none}"

# the last one
[servers.z]
command = "z"   # keep this comment
"""


@pytest.fixture(autouse=True)
def config_in_use(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The config these tests edit: ./toolscript.toml, as the user's own (named by $TOOLSCRIPT_CONFIG)."""
    monkeypatch.setenv("TOOLSCRIPT_CONFIG", "toolscript.toml")
    return Path("toolscript.toml")


def _servers_json(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, object]]:
    capsys.readouterr()
    assert toolscript.main(["servers", "--json"]) == 0
    return {row["name"]: row for row in json.loads(capsys.readouterr().out)}


# -- add ---------------------------------------------------------------------------------


def test_add_appends_a_table_and_keeps_the_file_byte_for_byte(capsys: pytest.CaptureFixture[str]) -> None:
    Path("toolscript.toml").write_text(EXISTING)
    assert toolscript.main(["add", "ev", "--env", "A=1", "--", "npx", "-y", "@scope/server", "--flag"]) == 0
    assert (
        toolscript.main(
            [
                "add",
                "remote",
                "--url",
                "https://x.example/sse",
                "--type",
                "sse",
                "--header",
                "X-Key=${KEY:-k}",
                "--timeout",
                "12",
            ]
        )
        == 0
    )
    text = Path("toolscript.toml").read_text()
    assert text.startswith(EXISTING)
    servers = _servers_json(capsys)
    assert list(servers) == ["time", "gh", "z", "ev", "remote"]
    assert servers["ev"]["command"] == ["npx", "-y", "@scope/server", "--flag"]
    assert servers["remote"] == {**servers["remote"], "type": "sse", "url": "https://x.example/sse"}
    from config import load_config

    cfg = load_config()
    assert cfg.servers["ev"].env == {"A": "1"}
    assert cfg.servers["remote"].headers == {"X-Key": "k"} and cfg.servers["remote"].timeout == 12


def test_add_creates_a_private_config_in_toolscript_home(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOOLSCRIPT_CONFIG")
    assert toolscript.main(["add", "s", "--", sys.executable, STDIO_SERVER]) == 0
    path = isolated_env / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    proc = run_cli("tools", "--server", "s")  # the added server works
    assert proc.returncode == 0 and "s__echo" in proc.stdout, explain(proc)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["add", "time", "--", "x"],
            "error: Server 'time' is already configured in toolscript.toml; to replace it, "
            "first run: toolscript remove time\n",
        ),
        (
            ["add", "bad.name", "--", "x"],
            "error: toolscript.toml: servers.bad.name: server names may contain only letters, digits, '_' and '-'\n",
        ),
        (
            ["add", "x", "--url", "ftp://x"],
            "error: toolscript.toml: servers.x.url: must be an http:// or https:// URL, not 'ftp://x'\n",
        ),
        (["add", "x"], "error: Say what to run: toolscript add x -- COMMAND ARGS..., or toolscript add x --url URL\n"),
        (
            ["add", "x", "--header", "A=b", "--", "cmd"],
            "error: --type and --header are for http/sse servers (toolscript add NAME --url URL).\n",
        ),
        (
            ["add", "x", "--url", "https://x", "--header", "novalue"],
            "error: --header takes KEY=VALUE, not 'novalue'.\n",
        ),
    ],
)
def test_add_refuses_bad_input_and_changes_nothing(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Path("toolscript.toml").write_text(EXISTING)
    assert toolscript.main(argv) == 2
    assert capsys.readouterr().err == message
    assert Path("toolscript.toml").read_text() == EXISTING


def test_add_warns_of_unset_variables(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOME_TOKEN", raising=False)
    assert (
        toolscript.main(
            ["add", "r", "--url", "https://x.example/mcp", "--header", "Authorization=Bearer ${SOME_TOKEN}"]
        )
        == 0
    )
    assert "Set SOME_TOKEN in the environment before using 'r'." in capsys.readouterr().err


# -- remove ------------------------------------------------------------------------------


def test_remove_deletes_the_table_its_subtables_and_its_comment_only(capsys: pytest.CaptureFixture[str]) -> None:
    Path("toolscript.toml").write_text(EXISTING)
    assert toolscript.main(["remove", "gh"]) == 0
    assert capsys.readouterr().out == "Removed server 'gh' from toolscript.toml.\n"
    assert (
        Path("toolscript.toml").read_text()
        == """\
# my servers
[servers.time]  # the time server
command = "uvx"
args = ["mcp-server-time"]

# the last one
[servers.z]
command = "z"   # keep this comment
"""
    )
    assert toolscript.main(["remove", "z"]) == 0
    assert toolscript.main(["remove", "time"]) == 0
    assert Path("toolscript.toml").read_text() == ""
    assert _servers_json(capsys) == {}


def test_remove_refuses_what_it_cannot_edit_safely(capsys: pytest.CaptureFixture[str]) -> None:
    inline = '[servers]\na = { command = "a" }\n\n[servers.b]\ncommand = "b"\n'
    Path("toolscript.toml").write_text(inline)
    assert toolscript.main(["remove", "a"]) == 2
    assert capsys.readouterr().err == (
        "error: Server 'a' in toolscript.toml is not written as a [servers.a] table; remove it by editing the file.\n"
    )
    assert toolscript.main(["remove", "c"]) == 2
    assert capsys.readouterr().err == "error: Unknown server 'c' in toolscript.toml (configured: a, b).\n"
    tricky = '[servers.a]\ncommand = "a"\nargs = ["""\n[servers.b]\n"""]\n\n[servers.b]\ncommand = "b"\n'
    Path("toolscript.toml").write_text(tricky)
    assert toolscript.main(["remove", "a"]) == 2
    assert "cannot edit this file safely" in capsys.readouterr().err
    assert Path("toolscript.toml").read_text() == tricky


# -- import ------------------------------------------------------------------------------


def _write(path: str, text: str) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def test_import_claude_desktop(capsys: pytest.CaptureFixture[str]) -> None:
    _write(
        "claude_desktop_config.json",
        json.dumps(
            {
                "mcpServers": {
                    "filesystem": {
                        "command": "npx",
                        "args": ["-y", "@modelcontextprotocol/server-filesystem", "/Users/me/$HOME"],
                    },
                    "toolbox": {"command": sys.executable, "args": [STDIO_SERVER], "env": {"GREETING": "hi"}},
                    "my server.v2": {"command": "srv"},
                }
            }
        ),
    )
    assert toolscript.main(["import", "claude_desktop_config.json"]) == 0
    out, err = capsys.readouterr()
    assert "Added 3 server(s) from Claude Desktop to " in out and "filesystem, toolbox, my-server-v2" in out
    assert "my-server-v2: named 'my-server-v2' ('my server.v2' is not a valid toolscript server name)" in err
    from config import load_config

    cfg = load_config()
    assert cfg.servers["filesystem"].args[-1] == "/Users/me/$HOME"  # a literal $ stays literal
    assert cfg.servers["toolbox"].env == {"GREETING": "hi"}
    proc = run_cli("tools", "--server", "toolbox")
    assert proc.returncode == 0 and "toolbox__echo" in proc.stdout, explain(proc)


def test_import_claude_code_mcp_json_with_http_headers_and_variables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("API_KEY", "k1")
    _write(
        ".mcp.json",
        json.dumps(
            {
                "mcpServers": {
                    "api": {
                        "type": "http",
                        "url": "${API_BASE_URL:-https://api.example.com}/mcp",
                        "headers": {"Authorization": "Bearer ${API_KEY}"},
                    },
                    "events": {"type": "sse", "url": "https://events.example.com/sse"},
                    "local": {
                        "type": "stdio",
                        "command": "node",
                        "args": ["server.js"],
                        "env": {"DEBUG": "${DEBUG:-0}"},
                    },
                    "ws": {"type": "websocket", "url": "wss://x"},
                }
            }
        ),
    )
    assert toolscript.main(["import", ".mcp.json"]) == 0
    out, err = capsys.readouterr()
    assert "Added 3 server(s) from Claude Code (.mcp.json)" in out
    assert "Skipped 'ws': transport type 'websocket' is not one toolscript speaks (stdio, http, sse)." in err
    from config import load_config

    cfg = load_config()
    assert (cfg.servers["api"].type, cfg.servers["api"].url) == ("http", "https://api.example.com/mcp")
    assert cfg.servers["api"].headers == {"Authorization": "Bearer k1"}
    assert cfg.servers["events"].type == "sse"
    assert cfg.servers["local"].env == {"DEBUG": "0"}


def test_import_vscode_with_inputs_workspace_and_comments(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(
        ".vscode/mcp.json",
        """\
{
  // VS Code's mcp.json allows comments
  "inputs": [
    {"type": "promptString", "id": "perplexity-key", "description": "Perplexity API Key", "password": true}
  ],
  "servers": {
    "Perplexity": {
      "type": "stdio",
      "command": "npx",
      "args": ["-y", "server-perplexity-ask"],
      "env": {"PERPLEXITY_API_KEY": "${input:perplexity-key}"},  /* and trailing commas */
    },
    "fetch": {"type": "stdio", "command": "uvx", "args": ["mcp-server-fetch", "${workspaceFolder}/data"]},
    "github": {"type": "http", "url": "https://api.githubcopilot.com/mcp/"},
    "odd": {"command": "x", "args": ["${command:pickFile}"]},
  }
}
""",
    )
    workspace = Path.cwd().resolve()
    assert toolscript.main(["import", ".vscode/mcp.json"]) == 0
    out, err = capsys.readouterr()
    assert "Added 3 server(s) from VS Code (mcp.json)" in out and "Perplexity, fetch, github" in out
    assert (
        "Perplexity: set PERPLEXITY_KEY in the environment (the client asked for input 'perplexity-key': "
        "Perplexity API Key)"
    ) in err
    assert "Skipped 'odd': args uses ${command:pickFile}, which toolscript cannot resolve." in err
    monkeypatch.setenv("PERPLEXITY_KEY", "pk")
    from config import load_config

    cfg = load_config()
    assert cfg.servers["Perplexity"].env == {"PERPLEXITY_API_KEY": "pk"}
    assert cfg.servers["fetch"].args == ("mcp-server-fetch", f"{workspace}/data")
    assert cfg.servers["github"].url == "https://api.githubcopilot.com/mcp/"


def test_import_cursor_and_codex(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _write(
        ".cursor/mcp.json",
        json.dumps(
            {
                "mcpServers": {
                    "remote": {"url": "https://mcp.example.com/sse", "headers": {"X-Token": "${env:CURSOR_TOKEN}"}},
                    "off": {"command": "x", "disabled": True},
                }
            }
        ),
    )
    _write(
        "codex/config.toml",
        """\
model = "o3"

[mcp_servers.docs]
command = "npx"
args = ["-y", "docs-mcp"]
env = { "LOG" = "1" }
tool_timeout_sec = 90
enabled_tools = ["search", "read_*"]

[mcp_servers.linear]
url = "https://mcp.linear.app/mcp"
bearer_token_env_var = "LINEAR_TOKEN"
env_http_headers = { "X-Org" = "LINEAR_ORG" }

[mcp_servers.old]
command = "old"
enabled = false
""",
    )
    monkeypatch.setenv("CURSOR_TOKEN", "ct")
    monkeypatch.setenv("LINEAR_TOKEN", "lt")
    monkeypatch.setenv("LINEAR_ORG", "acme")
    assert toolscript.main(["import", ".cursor/mcp.json"]) == 0
    assert toolscript.main(["import", "codex/config.toml"]) == 0
    out, err = capsys.readouterr()
    assert "from Cursor (mcp.json)" in out and "from Codex (config.toml)" in out
    assert "Skipped 'off': disabled in that file." in err
    assert "Skipped 'old': disabled in that file (enabled = false)." in err
    assert "remote: its URL ends in /sse, so it is imported as an SSE server." in err
    from config import load_config

    cfg = load_config()
    assert (cfg.servers["remote"].type, cfg.servers["remote"].headers) == ("sse", {"X-Token": "ct"})
    docs = cfg.servers["docs"]
    assert (docs.timeout, docs.include_tools, docs.env) == (90.0, ("search", "read_*"), {"LOG": "1"})
    assert cfg.servers["linear"].headers == {"Authorization": "Bearer lt", "X-Org": "acme"}


def test_import_dry_run_prints_toml_and_changes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    Path("toolscript.toml").write_text(EXISTING)
    _write(".mcp.json", json.dumps({"mcpServers": {"time": {"command": "t"}, "new": {"command": "n", "args": ["a"]}}}))
    assert toolscript.main(["import", ".mcp.json", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert out == '[servers.new]\ncommand = "n"\nargs = [\n    "a",\n]\n'
    assert "Skipped 'time': a server named 'time' is already configured (use --prefix P or --replace)." in err
    assert "Would add 1 server(s) from Claude Code (.mcp.json) to toolscript.toml." in err
    assert Path("toolscript.toml").read_text() == EXISTING


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "x.json",
            "{",
            "x.json: not valid JSON (line 1, column 2: Expecting property name enclosed in double quotes).",
        ),
        (
            "x.json",
            "{}",
            'x.json: no MCP servers found (expected "mcpServers" or "servers", or a Codex config.toml '
            "with [mcp_servers.NAME]).",
        ),
        ("x.toml", "a = 1", "x.toml: no [mcp_servers.NAME] tables (expected a Codex config.toml)."),
        ("missing.json", None, "missing.json: file not found."),
    ],
)
def test_import_refuses_unreadable_files(
    name: str, text: str | None, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if text is not None:
        _write(name, text)
    assert toolscript.main(["import", name]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not os.path.exists("toolscript.toml")


def test_import_codex_keeps_a_dollar_literal_and_refuses_a_bad_variable_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _write(
        "config.toml",
        """\
[mcp_servers.tools]
command = "t"
enabled_tools = ["a$b"]

[mcp_servers.bad]
url = "https://x.example/mcp"
bearer_token_env_var = "TOK}x"
""",
    )
    assert toolscript.main(["import", "config.toml", "--config", "toolscript.toml"]) == 0
    err = capsys.readouterr().err
    assert "Skipped 'bad': bearer_token_env_var names 'TOK}x', which is not an environment variable name." in err
    from config import load_config

    assert load_config("toolscript.toml").servers["tools"].include_tools == ("a$b",)


# -- edits are locked, exact and clean ------------------------------------------------------


def test_parallel_adds_all_land(config_in_use: Path) -> None:
    """Each edit reads, changes and replaces the file under one lock: none is lost to another."""
    import config_edit

    def add_ten(worker: int) -> None:
        for n in range(10):
            config_edit.add_servers(config_in_use, {f"s{worker}-{n}": {"command": "x"}})

    run_threads(add_ten, 8)
    assert len(config_edit.configured_servers(config_in_use)) == 80


CRLF_CONFIG = (
    "# mine\r\n"
    "[servers.a]\r\n"
    'command = "a"\r\n'
    "\r\n"
    "\r\n"
    "\r\n"
    "# about b\r\n"
    "[servers.b]\r\n"
    'command = "b"\r\n'
    "\r\n"
    "[servers.c]\r\n"
    'command = "c"\r\n'
    "\r\n"
    "# notes after the last table\r\n"
)


def test_remove_changes_only_its_table_byte_for_byte(config_in_use: Path) -> None:
    import config_edit

    config_in_use.write_bytes(CRLF_CONFIG.encode())
    config_edit.remove_server(config_in_use, "c")
    assert config_in_use.read_bytes() == CRLF_CONFIG.replace('[servers.c]\r\ncommand = "c"\r\n\r\n', "").encode()
    config_edit.remove_server(config_in_use, "b")
    assert config_in_use.read_bytes() == (
        b'# mine\r\n[servers.a]\r\ncommand = "a"\r\n\r\n# notes after the last table\r\n'
    )
    config_edit.add_servers(config_in_use, {"d": {"command": "d"}})  # in the file's line endings
    assert config_in_use.read_bytes() == (
        b'# mine\r\n[servers.a]\r\ncommand = "a"\r\n\r\n# notes after the last table\r\n\r\n'
        b'[servers.d]\r\ncommand = "d"\r\n'
    )


def test_an_edit_removes_the_temporary_files_an_interrupted_edit_left(config_in_use: Path) -> None:
    import config_edit

    config_in_use.write_text(EXISTING)
    left = Path(".toolscript.toml.0a1b2c3d4e5f.tmp")
    left.write_text('[servers.x]\nheaders = { Authorization = "Bearer secret" }\n')
    other = Path(".other.toml.0a1b2c3d4e5f.tmp")  # another file's: not ours to remove
    other.write_text("")
    config_edit.remove_server(config_in_use, "z")
    assert not left.exists() and other.exists()
    assert sorted(path.name for path in Path().iterdir()) == [".other.toml.0a1b2c3d4e5f.tmp", "toolscript.toml"]


def test_import_from_a_private_file_keeps_the_config_private(
    config_in_use: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_in_use.write_text(EXISTING)
    config_in_use.chmod(0o644)
    source = _write(".mcp.json", json.dumps({"mcpServers": {"api": {"url": "https://x/mcp", "headers": {"K": "s"}}}}))
    source.chmod(0o600)
    assert toolscript.main(["import", ".mcp.json"]) == 0
    assert stat.S_IMODE(config_in_use.stat().st_mode) == 0o600
    assert capsys.readouterr().err == (
        "Note: made toolscript.toml readable only by you, as .mcp.json is: the servers imported may hold secrets.\n"
    )
    source.chmod(0o644)  # from a file anyone can read: the config's mode is left alone
    config_in_use.chmod(0o640)
    _write(".mcp.json", json.dumps({"mcpServers": {"api2": {"url": "https://x/mcp"}}}))
    assert toolscript.main(["import", ".mcp.json"]) == 0
    assert stat.S_IMODE(config_in_use.stat().st_mode) == 0o640


def test_import_resolves_name_clashes_with_a_prefix_or_by_replacing(
    config_in_use: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_in_use.write_text(EXISTING)
    _write(".mcp.json", json.dumps({"mcpServers": {"time": {"command": "new-time"}, "z": {"command": "new-z"}}}))
    assert toolscript.main(["import", ".mcp.json", "--prefix", "work-"]) == 0
    assert "Added 2 server(s) from Claude Code (.mcp.json) to toolscript.toml: work-time, work-z." in (
        capsys.readouterr().out
    )
    assert toolscript.main(["import", ".mcp.json", "--replace"]) == 0
    _out, err = capsys.readouterr()
    assert "Note: time: replaces the server 'time' configured before." in err
    servers = _servers_json(capsys)
    assert list(servers) == ["gh", "work-time", "work-z", "time", "z"]
    assert (servers["time"]["command"], servers["z"]["command"]) == (["new-time"], ["new-z"])
    text = config_in_use.read_text()
    assert "# GitHub, with a token from the environment\n[servers.gh]" in text and "# the time server" not in text
    assert toolscript.main(["import", ".mcp.json", "--prefix", "a.b"]) == 2
    assert capsys.readouterr().err == "error: Invalid --prefix 'a.b': use letters, digits, '_' and '-'.\n"


def test_import_codex_timeouts_become_timeout(config_in_use: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(
        "codex/config.toml",
        """\
[mcp_servers.slow]
command = "s"
startup_timeout_sec = 120
tool_timeout_sec = 30

[mcp_servers.ms]
command = "m"
startup_timeout_ms = 20000

[mcp_servers.bad]
command = "b"
tool_timeout_sec = -1
""",
    )
    assert toolscript.main(["import", "codex/config.toml"]) == 0
    err = capsys.readouterr().err
    assert (
        "Note: slow: startup_timeout_sec and tool_timeout_sec became timeout = 120 (toolscript has one timeout, "
        "for connecting and for each request)."
    ) in err
    assert "Note: ms: startup_timeout_ms became timeout = 20" in err
    assert "Note: bad: tool_timeout_sec = -1 dropped (not a positive number)." in err
    from config import load_config

    cfg = load_config()
    assert (cfg.servers["slow"].timeout, cfg.servers["ms"].timeout, cfg.servers["bad"].timeout) == (120, 20, None)


@pytest.mark.parametrize("name", ["deep.json", "deep.toml"])
def test_a_deeply_nested_import_file_is_one_line(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    _write(name, '{"mcpServers": ' + nested + "}" if name.endswith(".json") else f"a = {nested}\n")
    assert toolscript.main(["import", name]) == 2
    assert capsys.readouterr().err == f"error: {name}: values are nested too deeply to read.\n"


def test_add_without_dashes_says_to_put_the_command_after_them(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        toolscript.main(["add", "pkg", "npx", "-y", "@scope/pkg"])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "error: Put the server's command after --, so that its options stay its own: "
        "toolscript add pkg -- npx -y @scope/pkg\n"
    )
    assert not Path("toolscript.toml").exists()
