"""The official MCP conformance auth suite, run end to end through the real CLI.

tests/conformance_suite.py installs the pinned suite (the `conformance_cli` fixture) and
reads its results. Every check must pass: a FAILURE or a WARNING fails the test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conformance_suite import SUITE_DIR, read_results

CLIENT = f"{sys.executable} {SUITE_DIR / 'client.py'}"
# Each scenario runs once: the `auth` suite, then these, which the suite leaves out
# (the 2025-03-26 back-compat and the draft scenarios); test_auth_suite checks that.
SCENARIOS = [
    "auth/2025-03-26-oauth-metadata-backcompat",
    "auth/2025-03-26-oauth-endpoint-fallback",
    "auth/resource-mismatch",
    "auth/offline-access-scope",
    "auth/offline-access-not-supported",
]

pytestmark = pytest.mark.timeout(600)


def run_conformance(runner: list[str], args: list[str], out: Path) -> list[str]:
    """Run the suite or scenario that `args` name; return the scenarios that ran, all of them passed."""
    # 5 min per scenario, not the default 30 s: the suite runs its scenarios in parallel on 2 cores.
    proc = subprocess.run(
        [*runner, "client", "--command", CLIENT, *args, "--timeout", "300000", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=540,
        cwd=SUITE_DIR,
    )
    scenarios, summary, problems = read_results(out)
    print("\n".join(summary))
    detail = f"\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    assert summary, "no results were written" + detail
    assert not problems, "\n".join(problems) + detail
    assert proc.returncode == 0, f"conformance runner exited {proc.returncode}" + detail
    return scenarios


def test_auth_suite(conformance_cli: list[str], tmp_path: Path) -> None:
    ran = run_conformance(conformance_cli, ["--suite", "auth"], tmp_path)
    assert len(ran) == len(set(ran)), ran
    twice = sorted(set(ran) & set(SCENARIOS))
    assert not twice, f"the suite now runs {twice} too: drop them from SCENARIOS"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(conformance_cli: list[str], tmp_path: Path, scenario: str) -> None:
    assert run_conformance(conformance_cli, ["--scenario", scenario], tmp_path) == [scenario]
    if scenario == "auth/resource-mismatch":
        # The suite only checks that no authorization was attempted; a client that did
        # nothing would pass. toolscript must also have refused, saying why.
        [stderr] = tmp_path.rglob("stderr.txt")
        assert "which does not match server 'conformance'" in stderr.read_text()
        assert "refusing to authenticate" in stderr.read_text()
