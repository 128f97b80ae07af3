"""`toolscript exec`: run a Python script that calls the tools, in a sandbox that reaches only the gateway.

It stands alone because a run joins four parts that know nothing of each other: a gateway
(running, or started for the run) that mints a run token (grants.py), the typed `tools`
module (typegen.py), the kernel's confinement (sandbox.py), and a child process whose
life, limits and leftovers it owns. The CLI only parses options and prints.

What the script gets:
- `import tools` (`from tools import github`): the typed functions of the tools the run
  allows, calling through `toolscript.connect()`, which reaches the gateway with the run
  token in its environment;
- a fresh working directory (its cwd, `HOME` and `TMPDIR`), removed afterwards unless kept;
- an environment of `PATH`, `LANG`, `LC_ALL`, `TZ` (when set) and what reaches the gateway,
  never the rest of the user's;
- its own stdin, stdout and stderr; the run's exit code is its exit code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__:
    from . import sandbox
    from .errors import CallTimeoutError, UsageError
else:
    import sandbox
    from errors import CallTimeoutError, UsageError

if TYPE_CHECKING:
    from config import Config
    from gateway_http import RemoteGateway, SyncGateway

__all__ = ["GatewayAccess", "RunOptions", "gateway_for_run", "run_script"]

_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
_PACKAGE_DIR = Path(__file__).resolve().parent  # `toolscript`, installed or as a checkout (it has __init__.py)
_KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for the script's process group


@dataclass
class RunOptions:
    """How a script runs: which tools it reaches, its limits, and what more of the machine it may use."""

    tools: list[str] = field(default_factory=lambda: ["*"])
    timeout: float = 300.0
    memory_bytes: int = 2 << 30
    allow_read: list[str] = field(default_factory=list)
    allow_write: list[str] = field(default_factory=list)
    keep: bool = False
    confined: bool = True


@dataclass
class GatewayAccess:
    """A gateway a run reaches: its URL, and how to mint and revoke a run token there."""

    url: str
    mint: Callable[[list[str], float], tuple[str, str]]
    revoke: Callable[[str], None]


@contextlib.contextmanager
def gateway_for_run(
    cfg: Config, patterns: list[str], remote: RemoteGateway | None
) -> Iterator[tuple[GatewayAccess, SyncGateway]]:
    """The running gateway `remote`, else one started for the run on a loopback port.

    One started here connects only the servers `patterns` can name, and stops when the run ends.
    """
    if __package__:
        from .gateway_http import ApiServer
    else:
        from gateway_http import ApiServer
    if remote is not None:
        yield GatewayAccess(remote.url, remote.mint_run_token, remote.revoke_run_token), remote
        return
    if __package__:
        from .gateway import Gateway
    else:
        from gateway import Gateway
    servers = {pattern.split("__", 1)[0] for pattern in patterns}
    named = None if any(not name or set(name) & set("*?[") for name in servers) else sorted(servers)
    gateway = Gateway(cfg, only=named, announce=False)
    api = ApiServer(gateway, "127.0.0.1", 0)
    serving = threading.Thread(target=api.serve_forever, name="toolscript-exec-api", daemon=True)
    gateway.start(wait=False)
    serving.start()
    try:
        yield GatewayAccess(api.url, api.mint_run_token, api.grants.revoke), gateway
    finally:
        api.shutdown()
        api.stopping.set()
        gateway.stop()
        api.server_close()


def allowed_tools(tools: list[dict[str, Any]], patterns: list[str]) -> list[dict[str, Any]]:
    """The tools (rows of `tools`) a run given `patterns` reaches, by the run token's own rule."""
    if __package__:
        from .grants import Grant
    else:
        from grants import Grant
    grant = Grant("", tuple(patterns), 0.0, b"")
    return [tool for tool in tools if grant.allows(tool["name"])]


def run_script(
    access: GatewayAccess,
    module_source: str,
    program: list[str],
    options: RunOptions,
    *,
    stdin: Any = None,
    on_kept: Callable[[Path], None] | None = None,
) -> int:
    """Run `program` (`[SCRIPT, ARGS...]` or `["-c", CODE, ARGS...]`) with `tools` made of `module_source`.

    Returns the script's exit code. Raises `UsageError` when the sandbox cannot be had (and
    `options.confined` asks for it), `CallTimeoutError` when the run outlived its timeout.
    """
    if options.confined and (reason := sandbox.unavailable_reason()):
        raise UsageError(f"Cannot sandbox the script: {reason}. To run it unconfined: toolscript exec --no-sandbox ...")
    for path in (*options.allow_read, *options.allow_write):
        if not os.path.exists(path):
            raise UsageError(f"No such file or directory to allow: {path}")
    port = _port_of(access.url)
    grant_id, token = access.mint(options.tools, options.timeout + _KILL_GRACE + 30)
    try:
        with _run_directories(options.keep, on_kept) as (lib, work):
            (lib / "tools.py").write_text(module_source, encoding="utf-8")
            os.symlink(_PACKAGE_DIR, lib / "toolscript")
            argv = [sys.executable, "-s", "-B", *program]
            if program and program[0] != "-c":
                argv[3] = os.path.abspath(program[0])
            policy = sandbox.Policy(
                read=[
                    *sandbox.python_read_paths(),
                    str(lib),
                    str(_PACKAGE_DIR),
                    *([argv[3]] if program and program[0] != "-c" else []),
                    *map(os.path.abspath, options.allow_read),
                ],
                write=[str(work), *map(os.path.abspath, options.allow_write)],
                connect_ports=[port],
                memory_bytes=options.memory_bytes,
                cpu_seconds=int(options.timeout) + 1,
                confined=options.confined,
            )
            env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
            env.update(
                {
                    "TOOLSCRIPT_GATEWAY_URL": access.url,
                    "TOOLSCRIPT_GATEWAY_TOKEN": token,
                    "TOOLSCRIPT_HOME": str(work / ".toolscript"),
                    "PYTHONPATH": str(lib),
                    "PYTHONDONTWRITEBYTECODE": "1",
                    "HOME": str(work),
                    "TMPDIR": str(work),
                }
            )
            return _wait(sandbox.launcher(policy, argv), env, work, options.timeout, stdin)
    finally:
        with contextlib.suppress(Exception):  # expired at its deadline all the same
            access.revoke(grant_id)


@contextlib.contextmanager
def _run_directories(keep: bool, on_kept: Callable[[Path], None] | None) -> Iterator[tuple[Path, Path]]:
    """A private directory for the run: `lib` (the `tools` module, read-only to the script) and `work`."""
    top = Path(tempfile.mkdtemp(prefix="toolscript-exec-"))
    lib, work = top / "lib", top / "work"
    lib.mkdir()
    work.mkdir()
    try:
        yield lib, work
    finally:
        if keep:
            if on_kept is not None:
                on_kept(work)
        else:
            shutil.rmtree(top, ignore_errors=True)


def _wait(argv: list[str], env: dict[str, str], cwd: Path, timeout: float, stdin: Any) -> int:
    """Run `argv` in a process group of its own; end the whole group at `timeout` or on Ctrl-C."""
    child = subprocess.Popen(argv, env=env, cwd=cwd, stdin=stdin, start_new_session=True)
    try:
        code = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _end_group(child)
        raise CallTimeoutError(f"The script ran for more than {timeout:g} s and was stopped (--timeout).") from None
    except BaseException:
        _end_group(child)
        raise
    with contextlib.suppress(ProcessLookupError):  # what an unconfined script left running
        os.killpg(child.pid, signal.SIGKILL)
    return code


def _end_group(child: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)
        try:
            child.wait(timeout=_KILL_GRACE)
            return
        except subprocess.TimeoutExpired:
            continue


def _port_of(url: str) -> int:
    from urllib.parse import urlsplit

    port = urlsplit(url).port
    if not port:
        raise UsageError(f"The gateway URL {url!r} names no port.")
    return port
