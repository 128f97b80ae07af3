"""`toolscript gateway start | status | stop`: the gateway as a background process of this user.

It stands alone because it manages a process rather than serving: it starts `toolscript
gateway` detached (its own session, stdin closed, its log in a file private to the user),
waits until that process has recorded itself (gateway_state) and answers, and later finds
it through the same record to report on it or end it. The serving itself is the
foreground `gateway` command's, unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if __package__:
    from . import gateway_state
    from .config import toolscript_home
    from .errors import ConnectError, ToolscriptError
    from .redact import escape_controls
else:
    import gateway_state
    from config import toolscript_home
    from errors import ConnectError, ToolscriptError
    from redact import escape_controls

if TYPE_CHECKING:
    from config import Config
    from gateway_http import RemoteGateway

__all__ = ["ACTIONS"]

START_TIMEOUT = 60.0  # seconds for a background gateway to record itself and answer
STOP_TIMEOUT = 30.0  # seconds for it to end its servers and exit after SIGTERM
_LOG_TAIL = 5  # lines of the log shown when it failed to start


def start(args: argparse.Namespace, cfg: Config) -> int:
    record = gateway_state.record_path(toolscript_home(), cfg.sources or cfg.path)
    running = gateway_state.find_running(record)
    if running is not None:
        print(f"A gateway for {_config_name(cfg)} is already running (pid {running.pid}):", file=sys.stderr)
        print(f"TOOLSCRIPT_GATEWAY_URL={running.url}")
        return 0
    log_file = gateway_state.log_path(record)
    log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        child = subprocess.Popen(
            [*_toolscript(), *_gateway_argv(args, cfg)],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,  # not ended by the terminal's Ctrl-C or hang-up
        )
    finally:
        os.close(fd)
    running = _wait_recorded(record, child)
    print(f"TOOLSCRIPT_GATEWAY_URL={running.url}")
    print(f"Started the gateway for {_config_name(cfg)} (pid {running.pid}); it logs to {log_file}.", file=sys.stderr)
    return 0


def status(args: argparse.Namespace, cfg: Config) -> int:
    record = gateway_state.record_path(toolscript_home(), cfg.sources or cfg.path)
    running = gateway_state.find_running(record)
    if running is None:
        print(f"No gateway is running for {_config_name(cfg)}. Start one with: toolscript gateway start")
        return 1
    print(f"url: {running.url}\npid: {running.pid}\nuptime: {_duration(running.uptime())}")
    log_file = gateway_state.log_path(record)
    if log_file.exists():
        print(f"log: {log_file}")
    try:
        rows = _remote(running.url).servers()
    except ToolscriptError as exc:
        print(f"servers: unknown ({escape_controls(exc.message)})")
        return 4
    print("servers:")
    for row in rows:
        print(f"  {escape_controls(str(row.get('name')))}: {escape_controls(str(row.get('status')))}")
    return 0


def stop(args: argparse.Namespace, cfg: Config) -> int:
    record = gateway_state.record_path(toolscript_home(), cfg.sources or cfg.path)
    running = gateway_state.find_running(record)
    if running is None:
        print(f"No gateway is running for {_config_name(cfg)}.", file=sys.stderr)
        return 0
    os.kill(running.pid, signal.SIGTERM)
    if not _wait_exit(running.pid, STOP_TIMEOUT):
        os.kill(running.pid, signal.SIGKILL)
        _wait_exit(running.pid, 5.0)
        gateway_state.remove_record(record, running.pid)
        raise ConnectError(f"The gateway (pid {running.pid}) did not stop within {STOP_TIMEOUT:g} s and was killed.")
    print(f"Stopped the gateway for {_config_name(cfg)} (pid {running.pid}).", file=sys.stderr)
    return 0


ACTIONS: dict[str, Callable[[argparse.Namespace, Config], int]] = {"start": start, "status": status, "stop": stop}


def _toolscript() -> list[str]:
    """The command that runs this toolscript: the installed package, or the checkout's script."""
    if __package__:
        return [sys.executable, "-m", __package__]
    return [sys.executable, str(Path(__file__).resolve().with_name("toolscript.py"))]


def _gateway_argv(args: argparse.Namespace, cfg: Config) -> list[str]:
    """The foreground gateway's command line, with the config and the options `start` was given."""
    # The same config as this command: `--config` only if it was given (it turns project files off), and
    # the child runs in this directory with this environment, so it finds the same project file.
    config = ["--config", os.path.abspath(args.config)] if getattr(args, "config", None) else []
    return [*config, "gateway", "--host", args.host, "--port", str(args.port), "--wait", f"{args.wait:g}"]


def _wait_recorded(record: Path, child: subprocess.Popen[bytes]) -> gateway_state.Running:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        running = gateway_state.find_running(record)
        if running is not None and running.pid == child.pid:
            with contextlib.suppress(ToolscriptError):
                _remote(running.url).check()
                return running
        if child.poll() is not None:
            raise ConnectError(f"The gateway exited at once (code {child.returncode}): {_log_tail(record)}")
        time.sleep(0.05)
    child.terminate()
    raise ConnectError(f"The gateway did not start within {START_TIMEOUT:g} s: {_log_tail(record)}")


def _log_tail(record: Path) -> str:
    try:
        lines = gateway_state.log_path(record).read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    return " / ".join(escape_controls(line) for line in lines[-_LOG_TAIL:]) or "nothing logged"


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait until process `pid` (not our child) has exited; False if it still runs after `timeout`."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):  # no pidfd: look again and again
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not gateway_state.is_alive(pid):
                return True
            time.sleep(0.05)
        return False
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def _remote(url: str) -> RemoteGateway:
    if __package__:
        from .gateway_http import RemoteGateway
    else:
        from gateway_http import RemoteGateway
    return RemoteGateway(url)


def _config_name(cfg: Config) -> str:
    return " and ".join(map(str, cfg.sources)) or (str(cfg.path) if cfg.path else "no config file")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
