"""`toolscript gateway start | status | stop`, and commands finding the running gateway of their config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, STDIO_SERVER, explain, run_cli, stdio_server, write_config

import gateway_state
from config import toolscript_home


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config({"box": stdio_server(timeout=30)}, tmp_path / "config.toml")


@pytest.fixture
def started(config: Path) -> Iterator[str]:
    """A background gateway for `config`; its URL. Stopped (and checked stopped) after the test."""
    proc = run_cli("--config", str(config), "gateway", "start")
    assert proc.returncode == 0, explain(proc)
    url = proc.stdout.strip().removeprefix("TOOLSCRIPT_GATEWAY_URL=")
    yield url
    record = gateway_state.find_running(gateway_state.record_path(toolscript_home(), config))
    run_cli("--config", str(config), "gateway", "stop")
    if record is not None:
        assert not process_exists(record.pid)


def process_exists(pid: int) -> bool:
    """Whether `pid` runs: a zombie has ended, waiting only for whoever reaps it (not us: it was detached)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def server_pid(config: Path, *options: str) -> int:
    proc = run_cli("--config", str(config), *options, "call", "box__pid", "--json")
    assert proc.returncode == 0, explain(proc)
    return int(json.loads(proc.stdout)["structuredContent"]["result"])


def test_commands_use_the_running_gateway_of_their_config(config: Path, started: str) -> None:
    first, second = server_pid(config), server_pid(config)
    assert first == second, "each call started its own server: the running gateway was not used"
    assert server_pid(config, "--no-gateway") != first


def test_a_second_start_names_the_same_gateway(config: Path, started: str) -> None:
    proc = run_cli("--config", str(config), "gateway", "start")
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.strip() == f"TOOLSCRIPT_GATEWAY_URL={started}"
    assert "already running" in proc.stderr


def test_status_names_url_pid_and_servers(config: Path, started: str) -> None:
    server_pid(config)  # connected by now
    proc = run_cli("--config", str(config), "gateway", "status")
    assert proc.returncode == 0, explain(proc)
    assert f"url: {started}" in proc.stdout
    assert "  box: connected" in proc.stdout


def test_stop_ends_the_gateway_and_its_servers_and_removes_its_files(config: Path) -> None:
    proc = run_cli("--config", str(config), "gateway", "start")
    assert proc.returncode == 0, explain(proc)
    record_file = gateway_state.record_path(toolscript_home(), config)
    record = gateway_state.find_running(record_file)
    assert record is not None
    child = server_pid(config)
    proc = run_cli("--config", str(config), "gateway", "stop")
    assert proc.returncode == 0, explain(proc)
    assert not process_exists(record.pid)
    assert not process_exists(child)
    assert not record_file.exists()
    assert [path.name for path in record_file.parent.iterdir() if not path.name.endswith(".log")] == []
    proc = run_cli("--config", str(config), "gateway", "status")
    assert proc.returncode == 1
    assert "No gateway is running" in proc.stdout


def test_a_stale_record_is_ignored_and_removed(config: Path) -> None:
    record_file = gateway_state.record_path(toolscript_home(), config)
    dead = subprocess.Popen(["true"])
    dead.wait()
    for pid, started in ((dead.pid, "1"), (os.getpid(), "1")):  # gone; alive but another process
        gateway_state.write_record(
            record_file, gateway_state.Running("http://127.0.0.1:9", pid, started, str(config), 0.0)
        )
        assert server_pid(config) > 0  # served here, not sent to port 9
        assert not record_file.exists()


def test_the_url_variable_wins_over_the_record(config: Path, started: str) -> None:
    proc = run_cli(
        "--config", str(config), "call", "box__echo", "text=hi", env={"TOOLSCRIPT_GATEWAY_URL": "http://127.0.0.1:9"}
    )
    assert proc.returncode == 4, explain(proc)
    assert "http://127.0.0.1:9" in proc.stderr


def test_a_second_gateway_of_the_config_neither_takes_nor_removes_the_first_ones_record(
    config: Path, started: str
) -> None:
    record_file = gateway_state.record_path(toolscript_home(), config)
    first = gateway_state.find_running(record_file)
    assert first is not None
    second = subprocess.Popen(
        [sys.executable, str(ROOT / "toolscript.py"), "--config", str(config), "gateway"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert second.stdout is not None
        assert second.stdout.readline().startswith("TOOLSCRIPT_GATEWAY_URL=")  # it serves, at its own URL
    finally:
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=60)
    assert f"another gateway (pid {first.pid}" in err
    assert gateway_state.find_running(record_file) == first
    proc = run_cli("--config", str(config), "gateway", "status")
    assert proc.returncode == 0 and f"pid: {first.pid}" in proc.stdout, explain(proc)


def test_start_in_a_trusted_project_serves_and_finds_the_project_config(tmp_path: Path) -> None:
    project = tmp_path / "repo"
    (project / ".git").mkdir(parents=True)
    toolscript_home().mkdir(parents=True, exist_ok=True)
    user = write_config({"box": stdio_server(timeout=30)}, toolscript_home() / "config.toml")
    (project / "toolscript.toml").write_text(
        f'[servers.extra]\ncommand = "{sys.executable}"\nargs = ["{STDIO_SERVER}"]\n', encoding="utf-8"
    )
    assert run_cli("trust", cwd=project).returncode == 0
    proc = run_cli("gateway", "start", cwd=project)
    try:
        assert proc.returncode == 0, explain(proc)
        status = run_cli("gateway", "status", cwd=project)
        assert status.returncode == 0, explain(status)
        assert "  extra: " in status.stdout and "  box: " in status.stdout
        assert run_cli("gateway", "status").returncode == 1  # the user's config alone has no gateway
        assert user.exists()
    finally:
        run_cli("gateway", "stop", cwd=project)
