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


def _run_demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # run_cli merges into os.environ; the demo needs variables *removed*, so call directly.
    return subprocess.run([sys.executable, str(ROOT / "toolscript.py"), "demo"], capture_output=True, text=True,
                          env=env, timeout=90)


def test_demo_without_browser_or_network(headless, isolated_env, tmp_path):
    write_config("this is [not valid toml")  # the user's config is not the demo's business
    proc = _run_demo(headless)
    assert proc.returncode == 0, explain(proc)
    lines = proc.stdout.splitlines()
    assert lines[0] == "toolscript demo: a local OAuth-protected MCP server; no network, browser or account needed."
    assert lines[1].startswith("1. Started the demo MCP server at http://127.0.0.1:")
    assert lines[3] == "3. Authenticating, as 'toolscript auth demo' does:"
    assert lines[4].startswith("✓ Authenticated 'demo' (scopes: mcp:tools offline_access; expires in 59 min; ")
    assert lines[5] == "4. The server's tools: echo, add, whoami"
    assert lines[6] == "5. Called demo__add(a=2, b=3): 5"
    assert lines[7].startswith("6. Called demo__whoami(): client ") and lines[7].endswith("with scopes mcp:tools offline_access")
    assert lines[8] == "Done: the demo server is stopped and its temporary files are removed."
    assert "(no browser: toolscript follows the authorization URL itself)" in proc.stderr
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not isolated_env.exists()


def test_demo_uses_the_browser_when_there_is_one(headless, browser):
    proc = _run_demo({**headless, **browser})
    assert proc.returncode == 0, explain(proc)
    assert "5. Called demo__add(a=2, b=3): 5" in proc.stdout
    assert "no browser" not in proc.stderr
