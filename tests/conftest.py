"""Shared fixtures: an isolated TOOLSCRIPT_HOME and config per test, and a CLI runner.

The whole session runs with HOME and TOOLSCRIPT_HOME in a temporary directory, set before
any fixture (a module-scoped gateway, say) runs; at the end, the session fails if anything
was written to the user's own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# == the session's own HOME and TOOLSCRIPT_HOME ===========================================


_REAL_HOME = Path.home()
_REAL_TOOLSCRIPT_HOME = os.environ.get("TOOLSCRIPT_HOME")


def _snapshot() -> dict[str, tuple[int, int]]:
    """Every file under the user's $TOOLSCRIPT_HOME and ~/.toolscript (size, modification time), and the names in ~."""
    homes = [Path(_REAL_TOOLSCRIPT_HOME).expanduser()] if _REAL_TOOLSCRIPT_HOME else []
    found: dict[str, tuple[int, int]] = {}
    for home in [*homes, _REAL_HOME / ".toolscript"]:
        for path in [home, *home.rglob("*")] if home.is_dir() else []:
            with contextlib.suppress(OSError):
                info = path.lstat()
                found[str(path)] = (0, 0) if path.is_dir() else (info.st_size, info.st_mtime_ns)
    with contextlib.suppress(OSError):
        for entry in _REAL_HOME.iterdir():
            found.setdefault(str(entry), (0, 0))
    return found


_USERS_FILES = _snapshot()
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="toolscript-tests-"))
# Tools' caches stay where they are, if they are there (pip builds a wheel in test_packaging,
# npm installs the conformance suite); toolscript's files do not.
for _variable, _cache in (("XDG_CACHE_HOME", _REAL_HOME / ".cache"), ("npm_config_cache", _REAL_HOME / ".npm")):
    if _cache.is_dir():
        os.environ.setdefault(_variable, str(_cache))
os.environ["HOME"] = str(_SESSION_HOME / "user")
os.environ["TOOLSCRIPT_HOME"] = str(_SESSION_HOME / "user" / ".toolscript")
(_SESSION_HOME / "user").mkdir()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if a test wrote to the user's own HOME or TOOLSCRIPT_HOME; remove the session's."""
    after = _snapshot()
    changed = sorted(path for path in {*after, *_USERS_FILES} if after.get(path) != _USERS_FILES.get(path))
    if changed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = "the tests changed the user's own files: " + ", ".join(changed)
        if reporter is not None:
            reporter.write_line(f"ERROR: {message}", red=True)
        else:
            print(f"ERROR: {message}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Give every test its own TOOLSCRIPT_HOME and working directory, and no inherited config."""
    home = tmp_path / "home"
    monkeypatch.setenv("TOOLSCRIPT_HOME", str(home))
    monkeypatch.delenv("TOOLSCRIPT_CONFIG", raising=False)
    monkeypatch.delenv("TOOLSCRIPT_GATEWAY_URL", raising=False)
    monkeypatch.delenv("TOOLSCRIPT_GATEWAY_TOKEN", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`main()` configures the root logger; undo it after each test so tests stay independent."""
    root, ours = logging.getLogger(), logging.getLogger("toolscript")
    handlers, levels = list(root.handlers), (root.level, ours.level)
    yield
    root.handlers[:] = handlers
    root.setLevel(levels[0])
    ours.setLevel(levels[1])


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 60,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python toolscript.py ARGS` in a subprocess, as a user would."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, str(ROOT / "toolscript.py"), *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=input,
        timeout=timeout,
        cwd=cwd,
    )


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    """Describe a finished subprocess for an assertion message."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


# == auth: OAuth test server, stand-in browser, config writer ===========================

import stat  # noqa: E402


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


def write_config(config: str | dict[str, dict[str, Any]], path: Path | None = None) -> Path:
    """Write ./toolscript.toml, trusted as `toolscript trust` does (so the CLI uses it in the test's directory).

    `config` is TOML text, or a dict of `[servers.NAME]` tables. A `path` given is written
    only, not trusted: pass it with --config.
    """
    import tomli_w

    import config_edit

    text = config if isinstance(config, str) else tomli_w.dumps({"servers": config})
    if path is not None:
        path.write_text(text, encoding="utf-8")
        return path
    path = Path("toolscript.toml")
    path.write_text(text, encoding="utf-8")
    config_edit.trust_project(path, path.read_bytes())
    return path


# ======================================================================================
# Gateway fixtures (tests/test_gateway*.py, tests/test_cli_gateway.py)
# ======================================================================================

import threading  # noqa: E402
import time  # noqa: E402

import httpx2  # noqa: E402

from errors import AuthRequiredError  # noqa: E402

SERVERS = Path(__file__).resolve().parent / "servers"
STDIO_SERVER = str(SERVERS / "stdio_server.py")
sys.path.insert(0, str(SERVERS))


def stdio_server(*flags: str, **extra: Any) -> dict[str, Any]:
    """A `[servers.NAME]` table running the test toolbox over stdio."""
    return {"command": sys.executable, "args": [STDIO_SERVER, *flags], **extra}


def run_threads(target: Callable[[int], Any], count: int, timeout: float = 60.0) -> None:
    """Run `target(0..count-1)` in `count` threads at once; fail the test if any is still running after `timeout`."""
    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "threads still running after the timeout"


def finish_within(timeout: float, func: Callable[[], Any]) -> Any:
    """Return `func()` run in a thread, or raise what it raised; fail the test if it is still running after `timeout`.

    For "fails promptly" checks: give the code under test a much longer timeout of its own,
    so that only a hang, never a slow machine, exceeds `timeout`.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = func()
        except BaseException as exc:  # handed to the test's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"still running after {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def http_server() -> Iterator[Any]:
    """The test toolbox over streamable HTTP on a loopback port, in this process."""
    from http_server import serving

    with serving("http") as running:
        yield running


@pytest.fixture
def sse_server() -> Iterator[Any]:
    """The test toolbox over SSE on a loopback port, in this process."""
    from http_server import serving

    with serving("sse") as running:
        yield running


class DenyingAuth(httpx2.Auth):
    """Let `allow` requests through, then raise AuthRequiredError for `server` like an OAuth provider would."""

    def __init__(self, server: str, allow: int = 0) -> None:
        self.server = server
        self.allow = allow

    async def async_auth_flow(self, request: httpx2.Request) -> Any:
        if self.allow <= 0:
            raise AuthRequiredError(f"Server '{self.server}' is not authenticated.", server=self.server)
        self.allow -= 1
        yield request


def start_gateway_process(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], list[str]]:
    """Start `toolscript gateway ARGS` in a subprocess; return it and the first two lines it printed (URL, token)."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "toolscript.py"), "gateway", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(stdout.readline() for _ in range(2)), daemon=True)
    reader.start()
    reader.join(60)
    if reader.is_alive():
        proc.kill()
        pytest.fail("toolscript gateway did not print its two lines within 60 s")
    return proc, lines


@contextlib.contextmanager
def serving(server: Any) -> Iterator[Any]:
    """Run `server.serve_forever()` (a socketserver's, or an `ApiServer`'s) in a thread until the block ends."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def serving_api(gateway: Any, **options: Any) -> Iterator[Any]:
    """Serve `gateway` over the HTTP API (`ApiServer(gateway, **options)`) in a thread until the block ends.

    Its token is published as `toolscript gateway` does, so `RemoteGateway(api.url)` and the
    CLI with TOOLSCRIPT_GATEWAY_URL find it.
    """
    from gateway_http import ApiServer, remove_token_file, write_token_file

    with serving(ApiServer(gateway, **options)) as api:
        token_path = write_token_file(api.url, api.token)
        try:
            yield api
        finally:
            remove_token_file(token_path)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `toolscript.main(ARGS)` in this process; return its exit code, stdout and stderr."""
    import toolscript

    code = toolscript.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# The error line of a configured server whose command does not exist ({"command": "/nonexistent/mcp-server"}).
BROKEN = "error: Server 'broken' failed to connect: cannot run '/nonexistent/mcp-server': No such file or directory\n"

# An MCP `initialize` request, for tests that speak the protocol by hand.
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
}


def gateway_variables(lines: list[str]) -> dict[str, str]:
    """The `NAME=value` lines a gateway printed (TOOLSCRIPT_GATEWAY_URL, TOOLSCRIPT_GATEWAY_TOKEN), as a dict."""
    return dict(line.rstrip("\n").split("=", 1) for line in lines)


# ======================================================================================
# The official MCP conformance suite (tests/test_conformance*.py)
# ======================================================================================


@pytest.fixture(scope="session")
def conformance_cli() -> list[str]:
    """The command that runs the pinned conformance suite's CLI, installed with `npm ci` if needed."""
    import conformance_suite

    try:
        return conformance_suite.install()
    except conformance_suite.MissingRunner as exc:
        if conformance_suite.conformance_required():
            pytest.fail(str(exc))
        pytest.skip(f"{exc}; the conformance tests are skipped")


def lock_racer(argv: str) -> str:
    """A script running `toolscript.main(ARGV)` (a Python list expression), where taking a record's lock
    first waits at a barrier: a folder (`sys.argv[2]`; `sys.argv[1]` is the checkout) both racers leave a
    file in, until the other racer has come to take it too. Both have then found the token expired and
    are about to refresh it, however slowly each process started."""
    return f"""
import os, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import storage, toolscript
barrier = Path(sys.argv[2])
acquire_lock = storage.Store.acquire_lock

def acquire_lock_together(self, *args, **kwargs):
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(barrier.iterdir())) < 2:
        if time.monotonic() > deadline:
            print("racer: the other process never came to take the lock", file=sys.stderr, flush=True)
            os._exit(5)
        time.sleep(0.01)
    return acquire_lock(self, *args, **kwargs)

storage.Store.acquire_lock = acquire_lock_together
sys.exit(toolscript.main({argv}))
"""


from config import parse_config  # noqa: E402
from gateway import Gateway  # noqa: E402
from gateway_http import ApiServer  # noqa: E402


@pytest.fixture(scope="module")
def api_env() -> Iterator[dict[str, str]]:
    """A gateway in this process serving the test toolbox as `box`: the environment that sends commands to it."""
    gateway = Gateway(parse_config({"servers": {"box": stdio_server(timeout=30)}})).start()
    api = ApiServer(gateway)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    try:
        yield {"TOOLSCRIPT_GATEWAY_URL": api.url, "TOOLSCRIPT_GATEWAY_TOKEN": api.token}
    finally:
        api.shutdown()
        gateway.stop()
        api.server_close()
