"""`toolscript tools`, `call` and `gateway`: in-process through `main()`, and as a user runs them."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest
import requests
from conftest import (
    BROKEN,
    INITIALIZE,
    ROOT,
    STDIO_SERVER,
    DenyingAuth,
    cli,
    explain,
    gateway_variables,
    process_exists,
    run_cli,
    serving,
    serving_api,
    start_gateway_process,
    stdio_server,
    wait_until,
    write_config,
)

from config import load_config, toolscript_home
from errors import ConfigError
from gateway import Gateway
from gateway_http import CHALLENGE_HEADER, PROOF_HEADER, RemoteGateway, token_file, write_token_file

ECHO_LINE = "s__echo    Echo the text back."


@pytest.fixture
def servers() -> Path:
    return write_config({"s": stdio_server(exclude_tools=["crash"]), "broken": {"command": "/nonexistent/mcp-server"}})


# -- tools ---------------------------------------------------------------------------


def test_tools_lists_one_per_line_and_reports_failures(servers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "tools")
    lines = out.splitlines()
    assert code == 4  # what could be listed is, but a server is missing from the list
    assert lines[0] == ECHO_LINE
    assert lines[1] == "s__add     Add two integers; the result is structured."
    assert len(lines) == 10 and not any("crash" in line for line in lines)
    assert err == BROKEN


def test_tools_exit_3_when_only_authorization_is_missing(oauth_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    write_config({"s": stdio_server(), "demo": {"url": oauth_server().url}})
    code, out, err = cli(capsys, "tools")
    assert (code, out.splitlines()[0]) == (3, ECHO_LINE)
    assert err.startswith("error: Server 'demo' ") and err.endswith(" Run: toolscript auth demo\n"), err
    assert err.count("\n") == 1


def test_tools_without_any_config_is_not_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    notice = (
        f"No servers configured (no config file at {toolscript_home() / 'config.toml'}). "
        "For an example with every key, run: toolscript config example\n"
    )
    assert cli(capsys, "tools") == (0, "", notice)
    assert cli(capsys, "tools", "--json") == (0, "[]\n", notice)


def test_tools_json_has_schemas(servers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "tools", "--server", "s", "--json")
    tools = json.loads(out)
    assert code == 0
    assert tools[0]["name"] == "s__echo"
    assert tools[0]["description"] == "Echo the text back.\nSecond line of the description."
    assert tools[0]["inputSchema"]["properties"]["text"]["type"] == "string"


def test_tools_of_a_failed_server_exit_4(servers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "tools", "--server", "broken") == (4, "", BROKEN)
    code, _, err = cli(capsys, "tools", "--server", "nope")
    assert code == 2 and "Unknown server 'nope'" in err


# -- call ----------------------------------------------------------------------------


def test_call_prints_text_and_readable_content(servers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "call", "s__echo", '{"text": "hello"}') == (0, "hello\n", "")
    code, out, err = cli(capsys, "call", "s__mixed")
    assert (code, err) == (0, "")
    assert out == (
        "first\n[image: image/png, 25 bytes]\n[resource: file:///notes.txt]\nnote text\n"
        "[resource link: big.bin <file:///big.bin>]\nlast\n"
    )


def test_call_json_prints_the_whole_result(servers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "call", "s__add", '{"a": 4, "b": 5}', "--json")
    assert code == 0
    assert json.loads(out) == {
        "content": [{"type": "text", "text": json.dumps({"total": 9, "terms": [4, 5]}, indent=2)}],
        "structuredContent": {"total": 9, "terms": [4, 5]},
        "isError": False,
    }


def test_call_options_go_before_or_after_the_arguments(servers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "call", "s__add", "--json", '{"a": 4, "b": 5}')
    assert code == 0 and json.loads(out)["structuredContent"] == {"total": 9, "terms": [4, 5]}
    assert cli(capsys, "call", "--timeout", "60", "s__echo", '{"text": "a"}') == (0, "a\n", "")
    assert cli(capsys, "call", "s__echo", "--timeout", "60", '{"text": "b"}') == (0, "b\n", "")
    assert cli(capsys, "call", "s__echo", '{"text": "c"}', "--timeout", "60", "-q") == (0, "c\n", "")


def test_call_is_error_exits_1(servers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "call", "s__fail", '{"message": "disk full"}') == (
        1,
        "",
        "Error executing tool fail: disk full\n",
    )
    code, out, _ = cli(capsys, "call", "s__mixed", '{"is_error": true}', "--json")
    assert code == 1 and json.loads(out)["isError"] is True


def test_call_arguments_from_file_stdin_or_nothing(
    servers: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    Path("args.json").write_text('{"text": "from a file"}')
    assert cli(capsys, "call", "s__echo", "@args.json") == (0, "from a file\n", "")
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"text": "from stdin"}'))
    assert cli(capsys, "call", "s__echo", "-") == (0, "from stdin\n", "")
    code, out, _ = cli(capsys, "call", "s__pid")
    assert code == 0 and out.strip().isdigit()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["s__echo", "{bad"],
            "error: The arguments for 's__echo' (ARGS) are not valid JSON: Expecting property name "
            "enclosed in double quotes: line 1 column 2 (char 1). "
            """Give a JSON object such as '{"path": "README.md"}'.\n""",
        ),
        (["s__echo", "[1]"], "error: The arguments for 's__echo' (ARGS) must be a JSON object, not list.\n"),
        (
            ["s__echo", "@missing.json"],
            "error: Cannot read the arguments for 's__echo' from missing.json: No such file or directory.\n",
        ),
        (["s__nope"], "error: Unknown tool 'nope' on server 's'. Run: toolscript tools --server s\n"),
        (["s__crash"], "error: Tool 's__crash' is hidden by the include_tools/exclude_tools of server 's'.\n"),
        (["echo"], "error: 'echo' is not a SERVER__TOOL name (such as files__read_file). Run: toolscript tools\n"),
    ],
)
def test_call_usage_errors_exit_2(
    servers: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert cli(capsys, "call", *args) == (2, "", message)


def test_call_unknown_server_exits_2(servers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "call", "nope__echo")
    assert (code, out) == (2, "")
    assert err == "error: Unknown server 'nope' in toolscript.toml (configured: s, broken).\n"


def test_call_connects_only_its_server_and_failures_exit_4(servers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "call", "broken__echo") == (4, "", BROKEN)
    # `s` works although `broken` is configured: it is never started for this call.
    assert cli(capsys, "call", "s__echo", '{"text": "fine"}') == (0, "fine\n", "")
    # --timeout is one deadline for starting the server and the call: 0.2 s is too short to start it.
    assert cli(capsys, "call", "s__slow", '{"seconds": 30}', "--timeout", "0.2") == (
        4,
        "",
        "error: Server 's' did not connect within 0.2 s.\n",
    )


def test_call_timeout_bounds_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    write_config({"hang": stdio_server("--hang")})  # never answers; its own connect timeout is 30 s
    assert cli(capsys, "call", "hang__echo", '{"text": "x"}', "--timeout", "1") == (
        4,
        "",
        "error: Server 'hang' did not connect within 1 s.\n",
    )


# -- through a running gateway (TOOLSCRIPT_GATEWAY_URL) -------------------------------


@pytest.fixture
def running_gateway(servers: Path, http_server: Any) -> Iterator[str]:
    write_config(
        {
            "s": stdio_server(exclude_tools=["crash"]),
            "broken": {"command": "/nonexistent/mcp-server"},
            "locked": {"url": http_server.url},
        }
    )
    gateway = Gateway(load_config(), auth=lambda server: DenyingAuth("locked")).start()
    try:
        with serving_api(gateway) as api:  # its token file written, as `toolscript gateway` does
            yield api.url
    finally:
        gateway.stop()


def test_tools_and_call_through_the_gateway_match_direct_use(
    running_gateway: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = [
        ["tools", "--server", "s"],
        ["tools", "--server", "s", "--json"],
        ["tools", "--server", "broken"],
        ["call", "s__echo", '{"text": "same"}'],
        ["call", "s__mixed", "--json"],
        ["call", "s__fail"],
        ["call", "s__nope"],
        ["call", "s__crash"],
        ["call", "s__echo", "[1]"],
        ["call", "broken__echo"],
        ["call", "nope__echo"],
        ["call", "s__ehco"],
    ]
    direct = [cli(capsys, *command) for command in commands]
    monkeypatch.setenv("TOOLSCRIPT_GATEWAY_URL", running_gateway)
    through = [cli(capsys, *command) for command in commands]
    assert [result[0] for result in direct] == [0, 0, 4, 0, 0, 1, 2, 2, 2, 4, 2, 2]
    assert through == direct
    # The running gateway is connected already, so the whole 0.2 s go to the call.
    assert cli(capsys, "call", "s__slow", '{"seconds": 30}', "--timeout", "0.2") == (
        4,
        "",
        "error: Tool 's__slow' did not answer within 0.2 s.\n",
    )


def test_auth_required_exits_3(
    running_gateway: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLSCRIPT_GATEWAY_URL", running_gateway)
    message = "error: Server 'locked' is not authenticated. Run: toolscript auth locked\n"
    assert cli(capsys, "call", "locked__echo", '{"text": "x"}') == (3, "", message)
    assert cli(capsys, "tools", "--server", "locked") == (3, "", message)


def test_unreachable_gateway_exits_4(
    servers: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLSCRIPT_GATEWAY_URL", "http://127.0.0.1:9")
    for command in (["tools"], ["call", "s__echo", '{"text": "x"}']):
        code, out, err = cli(capsys, *command)
        assert (code, out) == (4, "")
        assert err.startswith("error: The gateway at http://127.0.0.1:9 (TOOLSCRIPT_GATEWAY_URL) is not reachable: ")


# -- as a user runs them -------------------------------------------------------------


def test_call_end_to_end(servers: Path) -> None:
    proc = run_cli("call", "s__echo", '{"text": "hi there"}')
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "hi there\n", ""), explain(proc)


@pytest.mark.parametrize(("stop", "exit_code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130), (signal.SIGHUP, 0)])
def test_gateway_command_serves_and_stops_cleanly(
    servers: Path, stop: signal.Signals, exit_code: int, isolated_env: Path
) -> None:
    proc, first = start_gateway_process("--port", "0")
    try:
        assert first[0].startswith("TOOLSCRIPT_GATEWAY_URL=http://127.0.0.1:"), first
        assert first[1].startswith("TOOLSCRIPT_GATEWAY_TOKEN="), first
        url, token = gateway_variables(first).values()
        path = token_file(url)
        written = json.loads(path.read_text())
        assert (written["token"], written["pid"], path.parent) == (token, proc.pid, isolated_env / "gateway")
        env = {"TOOLSCRIPT_GATEWAY_URL": url}  # the same user needs nothing more: the token is in the file
        called = run_cli("call", "s__pid", env=env)
        assert called.returncode == 0, explain(called)
        child = int(called.stdout)
        assert process_exists(child)
        listed = run_cli("tools", env=env)
        assert (listed.returncode, listed.stdout.splitlines()[0]) == (4, ECHO_LINE), explain(listed)
        assert listed.stderr == BROKEN
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == exit_code, err
    assert out == ""  # nothing after the URL and token lines
    assert "Server 's': connected, 10 tools" in err and "Gateway stopped." in err
    assert token not in err
    assert not process_exists(child)
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_gateway_serves_before_its_servers_connect(servers: Path, tmp_path: Path) -> None:
    write_config({"s": stdio_server(), "hang": stdio_server("--hang")})  # `hang` would take 30 s to fail
    proc, first = start_gateway_process()
    try:
        url = gateway_variables(first)["TOOLSCRIPT_GATEWAY_URL"]
        env = {"TOOLSCRIPT_GATEWAY_URL": url}
        assert {row["name"]: row["status"] for row in RemoteGateway(url).servers()}["hang"] == "connecting"
        called = run_cli("call", "s__echo", '{"text": "served"}', env=env)  # waits for `s` only
        assert (called.returncode, called.stdout) == (0, "served\n"), explain(called)
        timed_out = run_cli("call", "hang__echo", "{}", "--timeout", "1", env=env)
        assert (timed_out.returncode, timed_out.stderr) == (4, "error: Server 'hang' did not connect within 1 s.\n")
        assert {row["name"]: row["status"] for row in RemoteGateway(url).servers()}["hang"] == "connecting"
        # A call in flight when the gateway stops is answered 503, not dropped.
        started = tmp_path / "started"
        caller = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "toolscript.py"),
                "call",
                "s__slow",
                json.dumps({"seconds": 120, "started_file": str(started)}),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        wait_until(started.exists, timeout=60, what="the call to start")
        proc.send_signal(signal.SIGINT)
        out, err = caller.communicate(timeout=60)
        assert (caller.returncode, out, err) == (4, "", "error: The gateway is stopping: the request did not finish.\n")
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130


def test_the_gateway_follows_its_config_file(capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    # The user's own config, which `add` and `remove` edit (a project file they leave alone).
    user_config = toolscript_home() / "config.toml"
    user_config.parent.mkdir(parents=True, exist_ok=True)
    config = write_config({"a": stdio_server()}, user_config)
    proc, first = start_gateway_process()
    try:
        url, token = gateway_variables(first).values()
        monkeypatch.setenv("TOOLSCRIPT_GATEWAY_URL", url)
        gateway = RemoteGateway(url)

        def pid(server: str) -> int:
            return int(gateway.call(f"{server}__pid")["content"][0]["text"])

        def mcp_status(server: str) -> int:  # of an MCP initialize at /mcp/SERVER
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
            return httpx2.post(f"{url}/mcp/{server}", json=INITIALIZE, headers=headers, timeout=60).status_code

        a_pid = pid("a")
        # Added: usable at once, through the gateway, by the next command.
        assert cli(capsys, "add", "b", "--", sys.executable, STDIO_SERVER)[0] == 0
        assert cli(capsys, "call", "b__echo", '{"text": "new"}') == (0, "new\n", "")
        b_pid = pid("b")
        assert pid("a") == a_pid  # an unchanged server keeps its session
        assert mcp_status("b") == 200  # /mcp/b too
        # Changed: reconnected (a new process; the old one ends); the others untouched.
        write_config({"a": stdio_server(exclude_tools=["crash"]), "b": stdio_server()}, user_config)
        a_pid_changed = pid("a")
        assert a_pid_changed != a_pid and pid("b") == b_pid
        wait_until(lambda: not process_exists(a_pid), timeout=30, what="the changed server's old process to end")
        # Removed: no longer listed, its process ended, and the gateway says which config it serves.
        assert cli(capsys, "remove", "a")[0] == 0
        assert [row["name"] for row in gateway.servers()] == ["b"]
        wait_until(lambda: not process_exists(a_pid_changed), timeout=30, what="the removed server's process to end")
        assert mcp_status("a") == 404
        unknown = f"Unknown server 'a' in {config.absolute()}, the config this gateway serves (configured: b)."
        assert cli(capsys, "call", "a__echo") == (2, "", f"error: {unknown}\n")
        # A file that does not validate: logged once, naming the key; the last good config is served.
        config.write_text(config.read_text() + '\n[servers.c]\nurl = "ftp://example.com"\n')
        assert gateway.call("b__echo", {"text": "still"})["content"][0]["text"] == "still"
        with pytest.raises(ConfigError) as stale:
            gateway.call("c__echo")
        assert stale.value.message.startswith(
            f"Unknown server 'c' in the config this gateway serves, {config.absolute()} as last read before it "
            f"stopped validating ({config}: servers.c.url: must be an http:// or https:// URL"
        )
        assert [row["name"] for row in gateway.servers()] == ["b"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert [line for line in err.splitlines() if "servers.c.url" in line] == [
        f"{config}: servers.c.url: must be an http:// or https:// URL, not 'ftp://example.com'; "
        "still serving the config read before."
    ], err
    assert "The config changed: added b." in err and "The config changed: removed a." in err


def test_gateway_command_on_every_address_prints_a_usable_url(servers: Path) -> None:
    write_config({"s": stdio_server()})
    proc, first = start_gateway_process("--host", "0.0.0.0")
    try:
        assert first[0].startswith("TOOLSCRIPT_GATEWAY_URL=http://127.0.0.1:"), first
        listed = run_cli("tools", env={"TOOLSCRIPT_GATEWAY_URL": gateway_variables(first)["TOOLSCRIPT_GATEWAY_URL"]})
        assert (listed.returncode, listed.stdout.splitlines()[0]) == (0, ECHO_LINE), explain(listed)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "warning: --host 0.0.0.0 is not a loopback address" in err
    assert proc.returncode == 0


def test_gateway_command_port_in_use_exits_2(servers: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("gateway", "--port", str(port))
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.startswith(f"error: Cannot listen on 127.0.0.1:{port}: "), explain(proc)
    assert os.environ.get("TOOLSCRIPT_GATEWAY_URL") is None


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_gateway_command_port_out_of_range_is_a_usage_error(servers: Path, port: str) -> None:
    proc = run_cli("gateway", "--port", port)
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.splitlines()[-1] == (
        f"toolscript gateway: error: argument --port: must be a port number from 0 (any free port) to 65535, "
        f"not {port!r}"
    ), explain(proc)


def test_gateway_token_is_required_and_found_by_its_user_only(servers: Path, tmp_path: Path) -> None:
    proc, first = start_gateway_process()
    try:
        url, token = gateway_variables(first).values()
        other_home = {"TOOLSCRIPT_GATEWAY_URL": url, "TOOLSCRIPT_HOME": str(tmp_path / "another-user")}
        refused = run_cli("call", "s__echo", '{"text": "x"}', env=other_home)
        assert (refused.returncode, refused.stdout) == (2, ""), explain(refused)
        assert refused.stderr.startswith(
            "error: No gateway token: send 'Authorization: Bearer <token>' "
            "with the TOOLSCRIPT_GATEWAY_TOKEN the gateway printed"
        ), explain(refused)
        wrong = run_cli("tools", env={**other_home, "TOOLSCRIPT_GATEWAY_TOKEN": "guessed"})
        assert (wrong.returncode, wrong.stderr.split(":")[:2]) == (2, ["error", " Wrong gateway token"]), explain(wrong)
        # Another program that was handed the token: the variable is enough.
        given = run_cli("call", "s__echo", '{"text": "x"}', env={**other_home, "TOOLSCRIPT_GATEWAY_TOKEN": token})
        assert (given.returncode, given.stdout) == (0, "x\n"), explain(given)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert token not in err


def _gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie waiting for a parent that never reaps it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:
        return not process_exists(pid)


@pytest.mark.parametrize(
    "signals",
    [
        [signal.SIGHUP],
        [signal.SIGTERM],
        [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],  # impatience must not cut the shutdown short
    ],
    ids=["SIGHUP", "SIGTERM", "several"],
)
def test_a_stdio_server_that_ignores_sigterm_is_gone_when_the_gateway_exits(
    signals: list[signal.Signals], isolated_env: Path
) -> None:
    write_config({"stubborn": stdio_server("--stubborn")})
    proc, first = start_gateway_process()
    child = None
    try:
        url, _ = gateway_variables(first).values()
        called = run_cli("call", "stubborn__pid", env={"TOOLSCRIPT_GATEWAY_URL": url})
        assert called.returncode == 0, explain(called)
        child = int(called.stdout)
        for number in signals:
            proc.send_signal(number)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Gateway stopped." in err
        assert not token_file(url).exists()
        wait_until(lambda: _gone(child), timeout=10, what=f"the stdio server {child} to be gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if child is not None and not _gone(child):
            os.killpg(child, signal.SIGKILL)  # the old code leaves it running: do not leak it


# -- text from servers cannot drive the terminal ---------------------------------------


def _controls(text: str) -> list[str]:
    """The C0/C1 control characters in `text` other than newline and tab."""
    return [c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F]


@pytest.fixture
def hostile() -> Path:
    return write_config({"hostile": stdio_server("--hostile")})


def test_server_text_is_shown_with_controls_escaped(hostile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from toolbox import CLEAR, CLIPBOARD, CSI_C1, TITLE

    code, out, err = cli(capsys, "tools")
    assert (code, err, _controls(out)) == (0, "", [])
    assert out.splitlines() == [
        r"hostile__echo\x1b]0;pwned\x07  Clears\x1b[2J the screen\x1b]52;c;aGk=\x07",
        "hostile__fail                  Fail with controls in the message.",
    ]
    code, out, err = cli(capsys, "call", "hostile__fail")
    assert (code, out, _controls(err)) == (1, "", [])
    assert err == "Error executing tool fail: broke\\x1b[2J\\x9b31m\\x0dfake prompt$ \n"
    code, out, err = cli(capsys, "call", f"hostile__echo{TITLE}", json.dumps({"text": f"a{CLIPBOARD}\tb\nc"}))
    assert (code, out, err) == (0, "a\\x1b]52;c;aGk=\\x07\tb\nc\n", "")
    code, out, err = cli(capsys, "call", "nothere__x")
    assert (code, _controls(err)) == (2, [])
    # --json stays exact: the controls are JSON escapes, and come back whole.
    code, out, _ = cli(capsys, "tools", "--json")
    assert code == 0 and not _controls(out)
    assert json.loads(out)[0]["name"] == f"hostile__echo{TITLE}"
    assert json.loads(out)[0]["description"] == f"Clears{CLEAR} the screen{CLIPBOARD}\nline two"
    code, out, _ = cli(capsys, "call", "hostile__fail", "--json")
    assert code == 1 and not _controls(out)
    assert json.loads(out)["content"][0]["text"] == f"Error executing tool fail: broke{CLEAR}{CSI_C1}\rfake prompt$ "


def test_log_lines_and_a_stdio_servers_stderr_are_escaped(hostile: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "toolscript.py"), "-v", "gateway"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        stderr = proc.stderr
        seen: list[str] = []

        def read_until_the_servers_line() -> None:
            for line in stderr:
                seen.append(line)
                if "hostile (stderr): toolbox" in line:
                    return

        reader = threading.Thread(target=read_until_the_servers_line, daemon=True)
        reader.start()
        reader.join(60)
        assert seen and "hostile (stderr): toolbox" in seen[-1], "".join(seen)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    assert seen[-1].endswith("hostile (stderr): toolbox\\x1b]0;pwned\\x07: starting on stdio\n")
    assert not _controls("".join(seen) + rest)


# -- who listens at TOOLSCRIPT_GATEWAY_URL ---------------------------------------------


class _Impostor(ThreadingHTTPServer):
    """Another local user's program on a dead gateway's port: it answers like a gateway and records what it got.

    With `relay_to`, it passes each request's challenge on to that (real) gateway and returns its proof.
    """

    def __init__(self, host: str, port: int, relay_to: str | None = None) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.relay_to = relay_to
        impostor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                impostor.seen.append((self.command, self.path, dict(self.headers), body))
                headers = {}
                if impostor.relay_to and self.headers.get(CHALLENGE_HEADER):
                    relayed = requests.get(
                        impostor.relay_to + "/health", headers={CHALLENGE_HEADER: self.headers[CHALLENGE_HEADER]}
                    )
                    headers[PROOF_HEADER] = relayed.headers.get(PROOF_HEADER, "")
                answer = json.dumps(
                    {"status": "ok"}
                    if self.path == "/health"
                    else {"content": [{"type": "text", "text": "FAKE ANSWER"}], "isError": False}
                ).encode()
                self.send_response(200)
                for name, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__((host, port), Handler)


@contextlib.contextmanager
def _impostor(host: str, port: int, relay_to: str | None = None) -> Iterator[_Impostor]:
    with serving(_Impostor(host, port, relay_to)) as server:
        yield server


def test_a_program_on_a_dead_gateways_port_gets_neither_the_token_nor_the_call(
    servers: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    write_token_file(url, "the-dead-gateways-token")  # left by a gateway that was killed
    monkeypatch.setenv("TOOLSCRIPT_GATEWAY_URL", url)
    with _impostor("127.0.0.1", port) as impostor:
        code, out, err = cli(capsys, "call", "s__echo", '{"text": "the call\'s secret argument"}')
    assert (code, out) == (2, "")
    assert err == (
        f"error: Wrong gateway token: the program listening at {url} did not prove that it knows the token from "
        f"the token file {token_file(url)}, so nothing was sent to it. If the gateway stopped, another program "
        "may hold its port: start the gateway again, or unset TOOLSCRIPT_GATEWAY_URL.\n"
    )
    [(method, path, headers, body)] = impostor.seen
    assert (method, path, body) == ("GET", "/health", b"")
    assert "Authorization" not in headers and "the-dead-gateways-token" not in json.dumps(headers)


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_a_listener_on_another_loopback_address_cannot_relay_the_gateways_proof(
    running_gateway: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = running_gateway.rsplit(":", 1)[1]
    try:
        impostor = _impostor("::1", int(port), relay_to=running_gateway)
        server = impostor.__enter__()
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        monkeypatch.setenv("TOOLSCRIPT_GATEWAY_URL", f"http://[::1]:{port}")  # finds the 127.0.0.1 token file
        code, out, err = cli(capsys, "call", "s__echo", '{"text": "x"}')
    finally:
        impostor.__exit__(None, None, None)
    assert (code, out) == (2, "") and err.startswith("error: Wrong gateway token: ")
    assert [seen[:2] for seen in server.seen] == [("GET", "/health")]


@pytest.mark.parametrize(("bound", "named"), [("127.0.0.1", "localhost"), ("localhost", "127.0.0.1")])
def test_a_gateway_url_naming_another_loopback_name_finds_the_token(servers: Path, bound: str, named: str) -> None:
    gateway = Gateway(load_config(), only=["broken"]).start()  # fails at once: nothing to wait for
    try:
        with serving_api(gateway, host=bound) as api:
            assert token_file(api.url).name == f"{bound}_{api.port}.token"
            assert [row["name"] for row in RemoteGateway(f"http://{named}:{api.port}").servers()] == ["broken"]
    finally:
        gateway.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_a_dual_stack_gateway_proves_itself_to_an_ipv4_client(servers: Path) -> None:
    gateway = Gateway(load_config(), only=["broken"]).start()
    try:
        try:
            serving = serving_api(gateway, host="::")
            api = serving.__enter__()
        except OSError:
            pytest.skip("no IPv6")
        try:
            # The gateway sees the connection arrive at ::ffff:127.0.0.1; its proof must name 127.0.0.1.
            assert api.url == f"http://[::1]:{api.port}"
            assert [row["name"] for row in RemoteGateway(f"http://127.0.0.1:{api.port}").servers()] == ["broken"]
        finally:
            serving.__exit__(None, None, None)
    finally:
        gateway.stop()
