"""`toolscript demo`: the newcomer's first command, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, explain, write_config


@pytest.fixture
def headless(tmp_path: Path) -> dict[str, str]:
    """No display, no $BROWSER, and a private TMPDIR to check that nothing is left behind."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")}
    env["TMPDIR"] = str(tmp)
    return env


def _run_demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # run_cli merges into os.environ; the demo needs variables *removed*, so call directly.
    return subprocess.run(
        [sys.executable, str(ROOT / "toolscript.py"), "demo", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
    )


@pytest.fixture
def recording_browser(browser: dict[str, str], tmp_path: Path) -> tuple[dict[str, str], Path]:
    """`$BROWSER` (the stand-in browser) that also appends each URL it is given to a file."""
    visits = tmp_path / "visits"
    script = tmp_path / "recording-browser"
    script.write_text(f'#!/bin/sh\necho "$1" >> "{visits}"\nexec "{browser["BROWSER"]}" "$@"\n')
    script.chmod(0o755)
    return {"BROWSER": str(script), "DISPLAY": ":0"}, visits


def test_demo_without_browser_or_network(headless, isolated_env, tmp_path):
    # The user's config is not the demo's business.
    headless["TOOLSCRIPT_CONFIG"] = str(write_config("this is [not valid toml", tmp_path / "broken.toml"))
    proc = _run_demo(headless)
    assert proc.returncode == 0, explain(proc)
    lines = proc.stdout.splitlines()
    assert lines[0] == "toolscript demo: a local OAuth-protected MCP server; no network, browser or account needed."
    assert lines[1].startswith("1. Started the demo MCP server at http://127.0.0.1:")
    assert lines[3] == "3. Authenticating, as 'toolscript auth demo' does:"
    assert lines[4].startswith("✓ Authenticated 'demo' (scopes: mcp:tools offline_access; expires in 59 min; ")
    assert lines[5] == "4. The server's tools: echo, add, whoami"
    assert lines[6] == "5. Called demo__add(a=2, b=3): 5"
    assert lines[7].startswith("6. Called demo__whoami(): client ") and lines[7].endswith(
        "with scopes mcp:tools offline_access"
    )
    assert lines[8] == "Done: the demo server is stopped and its temporary files are removed."
    assert FOLLOWS in proc.stderr
    assert "connected" not in proc.stderr  # the numbered steps say what happens; no gateway log lines
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not isolated_env.exists()


FOLLOWS = "(toolscript follows the authorization URL itself, as a browser would; --browser opens yours)"


def test_demo_opens_no_browser_tab_unless_asked(headless, recording_browser):
    env, visits = recording_browser
    proc = _run_demo({**headless, **env})  # a desktop with a browser: still none is opened
    assert proc.returncode == 0, explain(proc)
    assert "5. Called demo__add(a=2, b=3): 5" in proc.stdout
    assert FOLLOWS in proc.stderr
    assert not visits.exists()
    proc = _run_demo({**headless, **env}, "--browser")
    assert proc.returncode == 0, explain(proc)
    assert "5. Called demo__add(a=2, b=3): 5" in proc.stdout
    assert FOLLOWS not in proc.stderr
    assert len(visits.read_text().splitlines()) == 1


def test_demo_help_says_what_it_does() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "toolscript.py"), "demo", "--help"], capture_output=True, text=True, timeout=60
    )
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0
    assert "no browser tab opens unless you ask for one with --browser" in text
    assert "your config and stored tokens are not touched" in text
