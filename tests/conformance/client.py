#!/usr/bin/env python3
"""The client the MCP conformance runner starts: the real toolscript CLI, used as a person would.

The runner calls `client.py SERVER_URL` with `MCP_CONFORMANCE_SCENARIO` (and, for some
scenarios, `MCP_CONFORMANCE_CONTEXT`) in the environment. This writes a config for one
server in a fresh temporary TOOLSCRIPT_HOME, runs `toolscript auth` with `$BROWSER` set
to a helper that follows the authorization redirect, then `toolscript call
conformance__test-tool` in a separate process. A call that exits 3 (authentication
required, e.g. after a step-up challenge) is followed by another `auth` and a retry, a
bounded number of times.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BROWSER = Path(__file__).resolve().parents[1] / "browser.py"
SERVER = "conformance"
# The client ID metadata document URL the basic-cimd scenario expects; the AS never fetches it.
CIMD_URL = "https://conformance-test.local/client-metadata.json"
MAX_AUTHORIZATIONS = 3
EXIT_AUTH_REQUIRED = 3


def write_config(path: Path, url: str, scenario: str, context: dict[str, str]) -> None:
    lines = [f"[servers.{SERVER}]", f"url = {json.dumps(url)}"]
    oauth = []
    if context.get("client_id"):
        oauth.append(f"client_id = {json.dumps(context['client_id'])}")
        if context.get("client_secret"):
            oauth.append(f"client_secret = {json.dumps(context['client_secret'])}")
    if scenario == "auth/basic-cimd":
        oauth.append(f"client_metadata_url = {json.dumps(CIMD_URL)}")
    if oauth:
        lines += ["", f"[servers.{SERVER}.oauth]", *oauth]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def toolscript(*args: str, env: dict[str, str]) -> int:
    # Generous: scenarios run in parallel on a loaded 2-core machine (a step-up scenario runs
    # several of these in a row within the suite's per-scenario timeout).
    try:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "toolscript.py"), *args], env=env, timeout=75, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        print(f"client.py: toolscript {args[0]} did not finish within 75 s", file=sys.stderr)
        return 124
    return proc.returncode


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: client.py SERVER_URL", file=sys.stderr)
        return 2
    url = argv[1]
    scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO", "")
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
    home = Path(tempfile.mkdtemp(prefix="toolscript-conformance-"))
    try:
        write_config(home / "config.toml", url, scenario, context)
        # webbrowser wants $BROWSER to be one executable path.
        browser = home / "browser"
        browser.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{BROWSER}" "$@"\n', encoding="utf-8")
        browser.chmod(0o700)
        env = {
            **os.environ,
            "TOOLSCRIPT_HOME": str(home),
            "TOOLSCRIPT_CONFIG": str(home / "config.toml"),
            "BROWSER": str(browser),
        }
        env.pop("TOOLSCRIPT_GATEWAY_URL", None)
        code = EXIT_AUTH_REQUIRED
        for _ in range(MAX_AUTHORIZATIONS):
            code = toolscript("auth", SERVER, "--timeout", "60", env=env)
            if code != 0:
                return code
            code = toolscript("call", f"{SERVER}__test-tool", "{}", env=env)
            if code != EXIT_AUTH_REQUIRED:
                return code
        return code
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
