"""Where a running gateway says it runs, so that every command of the same user and config finds it.

It stands alone because the gateway writes this record and every command (and
`import toolscript`) reads it, and neither side may import the other: it needs only the
standard library and `storage.write_atomic`.

A gateway serving the config at PATH writes `$TOOLSCRIPT_HOME/gateway/running-KEY.json`
(KEY: a hash of PATH), private to its user: its URL, pid, the process's start time (from
/proc, so a recycled pid is not taken for it) and the config. A background gateway logs
beside it, to `running-KEY.log`. A record whose
process is gone, or whose pid now belongs to another process, is stale: it is ignored
(and removed when its owner can remove it), never trusted. Whether the listener on the
port is still that process is for the client to prove (gateway_http).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__:
    from .storage import write_atomic
else:
    from storage import write_atomic

__all__ = [
    "Running",
    "find_running",
    "is_alive",
    "log_path",
    "process_started",
    "record_path",
    "remove_record",
    "write_record",
]


@dataclass(frozen=True)
class Running:
    """A gateway's record: what a command needs to find it and to tell it is still the same process."""

    url: str
    pid: int
    started: str  # the process's start time, as /proc/PID/stat gives it ("" where there is no /proc)
    config: str  # the config file it serves ("" for none)
    since: float  # time.time() when it began serving

    def uptime(self) -> float:
        return max(0.0, time.time() - self.since)


def record_path(home: Path, config: os.PathLike[str] | str | Sequence[os.PathLike[str] | str] | None) -> Path:
    """Where the gateway serving `config` records itself under `home`.

    `config` is the config file, or the files a config was read from (`Config.sources`: the
    user's, and a trusted project file); None or none for no config file.
    """
    paths = [] if config is None else [config] if isinstance(config, (str, os.PathLike)) else list(config)
    key = hashlib.sha256("\n".join(str(Path(path).resolve()) for path in paths).encode()).hexdigest()[:16]
    return home / "gateway" / f"running-{key}.json"


def log_path(record: Path) -> Path:
    """Where the background gateway recorded at `record` logs."""
    return record.with_suffix(".log")


def write_record(path: Path, running: Running) -> None:
    """Write `running` at `path`, readable only by this user."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, json.dumps(asdict(running)).encode())


def remove_record(path: Path, pid: int) -> None:
    """Remove the record at `path` if it is still the one process `pid` wrote."""
    found = _read(path)
    if found is not None and found.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def find_running(path: Path) -> Running | None:
    """The gateway recorded at `path` if its process still runs; None for none or a stale record."""
    found = _read(path)
    if found is None:
        return None
    if process_started(found.pid) != found.started or (not found.started and not is_alive(found.pid)):
        with contextlib.suppress(OSError):
            path.unlink()  # stale: its process ended (or its pid is another process's now)
        return None
    return found


def process_started(pid: int) -> str:
    """The start time of process `pid` (clock ticks since boot, from /proc); "" where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return ""
    # The command name (field 2) is in parentheses and may hold spaces and ')'; fields follow the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else ""


def is_alive(pid: int) -> bool:
    """Whether a process `pid` exists (of any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> Running | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        # Another user's file, or one others could have written, is not this user's gateway.
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
            return None
        try:
            data = json.loads(handle.read(64 * 1024))
            return Running(
                url=str(data["url"]),
                pid=int(data["pid"]),
                started=str(data["started"]),
                config=str(data["config"]),
                since=float(data["since"]),
            )
        except (ValueError, KeyError, TypeError, RecursionError):
            return None
