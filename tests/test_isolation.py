"""The test suite never touches the user's own files: it runs with its own HOME and TOOLSCRIPT_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, explain

# Run with tests/conftest.py as a plugin, as a module-scoped fixture (a gateway started for
# a whole module) would: it runs before any per-test fixture sets a home of its own.
SUITE = """
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def module_wide():
    home = Path(os.environ["TOOLSCRIPT_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "module-wide").write_text("x")
    (Path.home() / "in-home").write_text("x")


def test_module_wide(module_wide):
    pass


def test_writes_to_the_real_home():
    Path(os.environ["LEAK_TO"], "leaked").write_text("x")  # a test that finds the user's home another way
"""


def test_the_session_has_its_own_homes_and_fails_if_the_users_are_written(tmp_path: Path) -> None:
    users_home, users_toolscript = tmp_path / "user", tmp_path / "user-toolscript"
    users_home.mkdir()
    users_toolscript.mkdir()
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_suite.py").write_text(SUITE)
    env = {
        **os.environ,
        "HOME": str(users_home),
        "TOOLSCRIPT_HOME": str(users_toolscript),
        "LEAK_TO": str(users_toolscript),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q", "--rootdir", str(suite)],
        capture_output=True,
        text=True,
        cwd=suite,
        env=env,
        timeout=120,
    )
    assert sorted(path.name for path in users_home.iterdir()) == []
    assert sorted(path.name for path in users_toolscript.iterdir()) == ["leaked"]
    assert proc.returncode == 1, explain(proc)
    assert "2 passed" in proc.stdout, explain(proc)
    assert f"ERROR: the tests changed the user's own files: {users_toolscript / 'leaked'}\n" in proc.stdout, explain(
        proc
    )
