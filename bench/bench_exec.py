"""Measure what code mode costs as whole processes, against a running gateway, in one run.

    python bench/bench_exec.py [--runs 15]

A background gateway (`toolscript gateway start`) serves the stdio echo server
(`echo_server.py`). Each figure is the median wall time of a whole process, in
interleaved rounds:

  (p) `python -c 'import toolscript; toolscript.connect().call("echo__echo", ...)'`: the
      Python API making one call through the running gateway, the baseline
  (x) `toolscript exec -c 'from tools import echo; echo.echo(...)'`: the same call from a
      sandboxed script (the run token, the typed module, Landlock and seccomp included)
  (c) `toolscript call echo__echo text=hi`, finding the running gateway by itself
  (n) `toolscript --no-gateway call echo__echo text=hi`, connecting the server itself

Targets: x - p <= 0.3 s (issue: exec within 0.3 s of import plus one call); c <= 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLSCRIPT = [sys.executable, str(ROOT / "toolscript.py")]
ECHO = str(Path(__file__).resolve().with_name("echo_server.py"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="processes of each kind")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-exec-") as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(f'[servers.echo]\ncommand = "{sys.executable}"\nargs = ["{ECHO}", "stdio"]\n')
        env = {**os.environ, "TOOLSCRIPT_HOME": str(Path(tmp) / "home"), "PYTHONPATH": str(ROOT)}
        env.pop("TOOLSCRIPT_GATEWAY_URL", None)
        base = [*TOOLSCRIPT, "--config", str(config)]
        started = subprocess.run([*base, "gateway", "start"], env=env, capture_output=True, text=True, check=True)
        url = started.stdout.strip().removeprefix("TOOLSCRIPT_GATEWAY_URL=")
        try:
            kinds = {
                "p": [
                    sys.executable,
                    "-c",
                    f"import toolscript; toolscript.connect({str(config)!r}).call('echo__echo', {{'text': 'hi'}})",
                ],
                "x": [*base, "exec", "-c", "from tools import echo; echo.echo(text='hi')"],
                "c": [*base, "call", "echo__echo", "text=hi"],
                "n": [*base, "--no-gateway", "call", "echo__echo", "text=hi"],
            }
            times: dict[str, list[float]] = {kind: [] for kind in kinds}
            for _ in range(options.runs):
                for kind, argv in kinds.items():
                    begin = time.perf_counter()
                    subprocess.run(argv, env=env, capture_output=True, check=True, cwd=tmp)
                    times[kind].append(time.perf_counter() - begin)
        finally:
            subprocess.run([*base, "gateway", "stop"], env=env, capture_output=True)
    median = {kind: statistics.median(values) for kind, values in times.items()}
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {options.runs} processes of each kind ({url})\n")
    for kind, label in (
        ("p", "import toolscript + one call"),
        ("x", "toolscript exec, one call"),
        ("c", "toolscript call (running gateway)"),
        ("n", "toolscript --no-gateway call"),
    ):
        print(f"  ({kind}) {label:<36} median {median[kind] * 1000:7.1f} ms")
    overhead = median["x"] - median["p"]
    print("\nTargets")
    for label, value in (("exec - (import + call)", overhead), ("call via the gateway", median["c"])):
        print(f"  {label:<23} {value:6.3f} s  (target <= 0.3)  {'ok' if value <= 0.3 else 'MISSED'}")
    print(f"  call without: {median['n']:.3f} s, {median['n'] / median['c']:.1f}x the call through the gateway")


if __name__ == "__main__":
    main()
