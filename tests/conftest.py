"""Shared fixtures: an isolated TOOLSCRIPT_HOME and config per test, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Give every test its own TOOLSCRIPT_HOME and working directory, and no inherited config."""
    home = tmp_path / "home"
    monkeypatch.setenv("TOOLSCRIPT_HOME", str(home))
    monkeypatch.delenv("TOOLSCRIPT_CONFIG", raising=False)
    monkeypatch.delenv("TOOLSCRIPT_GATEWAY_URL", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


def run_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 60, cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python toolscript.py ARGS` in a subprocess, as a user would."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, str(ROOT / "toolscript.py"), *args],
        capture_output=True, text=True, env=full_env, input=input, timeout=timeout, cwd=cwd,
    )


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    """Describe a finished subprocess for an assertion message."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


# == auth: OAuth test server, stand-in browser, config writer ===========================

import contextlib  # noqa: E402
import stat  # noqa: E402
from typing import Any, Callable, Iterator  # noqa: E402


@pytest.fixture
def oauth_server() -> Iterator[Callable[..., Any]]:
    """Start `tests/oauth_server.OAuthTestServer`s (port 0, own thread); stopped after the test."""
    from oauth_server import OAuthTestServer

    with contextlib.ExitStack() as stack:
        yield lambda **options: stack.enter_context(OAuthTestServer(**options))


@pytest.fixture
def browser(tmp_path: Path) -> dict[str, str]:
    """Environment for `run_cli` whose `$BROWSER` is `tests/browser.py` (an executable, as webbrowser needs)."""
    script = tmp_path / "browser"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "tests" / "browser.py"}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"BROWSER": str(script)}


def write_config(text: str) -> Path:
    """Write `./toolscript.toml` (the test's own working directory)."""
    path = Path("toolscript.toml")
    path.write_text(text)
    return path
