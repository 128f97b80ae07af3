"""Long calls show progress: `toolscript call` asks for it, shows it (a live line on a terminal,
INFO lines otherwise), lets it restart the call's timeout, and shows the server's log messages."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from typing import Any

import pytest
from conftest import ROOT, SERVERS, explain, run_cli, write_config

from config import load_config
from gateway import Gateway

TOOL = "p__work"


@pytest.fixture(autouse=True)
def progress_server() -> None:
    write_config({"p": {"command": sys.executable, "args": [str(SERVERS / "progress_server.py")]}})


def run_on_a_terminal(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run the CLI with its stderr on a pseudo-terminal; return its exit code, stdout and what the terminal got."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "toolscript.py"), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    terminal = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                pytest.fail(f"no end of output within {timeout} s; got {terminal!r}")
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            terminal += chunk
        assert proc.stdout is not None
        stdout = proc.stdout.read().decode()
        return proc.wait(timeout), stdout, terminal.decode()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_progress_is_a_live_line_on_a_terminal() -> None:
    code, stdout, terminal = run_on_a_terminal("call", TOOL, '{"steps": 3}')
    assert (code, stdout) == (0, "worked 3 steps\n"), terminal
    erase = "\r\x1b[K"
    shown = [f"{erase}{TOOL}: step {n} ({n}/3)" for n in (1, 2, 3)]
    positions = [terminal.find(line) for line in shown]
    assert -1 not in positions and positions == sorted(positions), repr(terminal)
    assert terminal.endswith(erase), repr(terminal)  # the line is gone once the call is done
    assert "p: starting the work" in terminal


def test_the_live_line_is_escaped_and_cut_to_the_terminal_s_width() -> None:
    # The pseudo-terminal does not say its width: 80 columns. A longer line would wrap, and
    # only its last row be erased: what a server wrote there would stay.
    label = "\x1b]0;pwned\x07" + "x" * 100 + "\nerror: forged"
    code, stdout, terminal = run_on_a_terminal("call", TOOL, json.dumps({"steps": 1, "label": label}))
    assert (code, stdout) == (0, "worked 1 steps\n"), terminal
    drawn = terminal.split("\r\x1b[K")[-2]  # the last line drawn before the final erase
    assert drawn == f"{TOOL}: \\x1b]0;pwned\\x07{'x' * 100}"[:79], repr(terminal)


def test_progress_without_a_terminal_is_logged_at_info() -> None:
    proc = run_cli("call", TOOL, '{"steps": 3}')
    assert (proc.returncode, proc.stdout) == (0, "worked 3 steps\n"), explain(proc)
    lines = proc.stderr.splitlines()
    progress = [line for line in lines if line.startswith(f"{TOOL}: ")]
    assert progress == [f"{TOOL}: step 1 (1/3)", f"{TOOL}: step 2 (2/3)", f"{TOOL}: step 3 (3/3)"], explain(proc)
    assert "\x1b" not in proc.stderr
    proc = run_cli("-q", "call", TOOL, '{"steps": 3}')
    assert (proc.returncode, proc.stderr) == (0, ""), explain(proc)


def test_server_log_messages_show_at_their_level_with_the_server_name() -> None:
    proc = run_cli("call", TOOL, '{"steps": 0}')
    assert proc.returncode == 0, explain(proc)
    assert sorted(proc.stderr.splitlines()) == ['p (storage): {"disk": "almost full"}', "p: starting the work"]
    proc = run_cli("-v", "call", TOOL, '{"steps": 0}')
    assert "DEBUG toolscript.server: p: debug detail" in proc.stderr, explain(proc)
    assert 'WARNING toolscript.server: p (storage): {"disk": "almost full"}' in proc.stderr, explain(proc)


def test_progress_restarts_the_timeout() -> None:
    # 12 steps of 0.25 s: longer than the 2 s timeout in all, but never 2 s without progress.
    proc = run_cli("call", TOOL, '{"steps": 12, "interval": 0.25}', "--timeout", "2")
    assert (proc.returncode, proc.stdout) == (0, "worked 12 steps\n"), explain(proc)


def test_the_gateway_passes_progress_to_its_caller() -> None:
    seen: list[Any] = []
    with Gateway(load_config()) as gateway:
        result = gateway.call(TOOL, {"steps": 2}, on_progress=lambda *progress: seen.append(progress))
    assert result["content"] == [{"type": "text", "text": "worked 2 steps"}]
    assert seen == [(1.0, 2.0, "step 1"), (2.0, 2.0, "step 2")]
