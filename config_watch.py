"""Follow the configuration of a gateway that runs for long, as its files change.

It stands alone because both long-running fronts (`toolscript gateway`, `toolscript serve`)
follow their config, and what "the config changed" means needs neither the MCP SDK nor the
gateway: read it again with the function that read it first, compare, and keep the last
config that validated. Only `config` and `errors` are imported.

A `ConfigWatch` knows the files the current config was read from (`Config.files`) and how
to read it again (`load`). `changed()` compares those files' identity, time and size, cheap
enough for every request; `check()` reads the config again, which also notices a file that
appears (the first `toolscript add`, a new project config), and returns the new config when
it differs. A config that does not validate is logged once, as its one-line error naming the
file and the key, and left alone: the last good config stays in use.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if __package__:
    from .errors import ConfigError
else:
    from errors import ConfigError

if TYPE_CHECKING:
    from config import Config

__all__ = ["CHECK_INTERVAL", "ConfigWatch", "file_stamp"]

log = logging.getLogger("toolscript.config")

CHECK_INTERVAL = 2.0  # seconds between two readings of a followed config

Stamp = tuple[int, int, int] | None


def file_stamp(path: os.PathLike[str] | str) -> Stamp:
    """A file's identity, modification time and size (None if it is missing): what changes when it is written."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns, found.st_size


class ConfigWatch:
    """The config a gateway serves: the last one that validated, and how to read it again. Thread-safe."""

    def __init__(self, config: Config, load: Callable[[], Config]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._config = config
        self._stamps = _stamps(config)
        self.problem: ConfigError | None = None  # why the files do not validate now, if they do not

    @property
    def config(self) -> Config:
        return self._config

    def changed(self) -> bool:
        """Whether a file the config was read from changed since (or a problem waits to be looked at again)."""
        return self.problem is not None or _stamps(self._config) != self._stamps

    def check(self) -> Config | None:
        """Read the config again; return it when it differs from the last good one, else None."""
        with self._lock:
            try:
                config = self._load()
            except ConfigError as exc:
                if self.problem is None or self.problem.message != exc.message:
                    log.warning("%s; still serving the config read before.", exc.message.rstrip("."))
                self.problem = exc
                return None
            if self.problem is not None:
                log.info("The config validates again.")
            self.problem = None
            same = _key(config) == _key(self._config)
            self._config, self._stamps = config, _stamps(config)
            return None if same else config


def _stamps(config: Config) -> list[Stamp]:
    return [file_stamp(path) for path in config.files]


def _key(config: Config) -> tuple[Any, ...]:
    """What decides how a config is served (an unusable server's error is a new object each time it is read)."""
    return config.files, config.servers, {name: error.message for name, error in config.unusable.items()}
