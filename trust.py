"""Which project config files the user trusted with `toolscript trust`, and with what content.

A project config (`toolscript.toml` in a repository) comes with the code someone else wrote:
its servers are commands toolscript would run, and its `${VAR}` substitutions could send the
user's secrets to a URL the repository picked. So it is used only once the user has trusted
it, and only as long as its bytes are the bytes they trusted.

It stands alone because trust is a decision about a file's exact bytes, apart from what
they mean: `config` asks it before parsing a project file, `config_edit` records and revokes
trust. It knows the record's format and nothing else, and imports only the standard
library, `tomli_w` and `errors`.

The record is `$TOOLSCRIPT_HOME/trusted-projects.toml`: one `[projects."PATH"]` table per
trusted file (its resolved absolute path) with the SHA-256 of the content trusted.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path

import tomli_w

if __package__:
    from .errors import ConfigError
else:
    from errors import ConfigError

__all__ = ["TRUST_FILE_NAME", "content_digest", "project_key", "read_trusted", "trusted_text"]

TRUST_FILE_NAME = "trusted-projects.toml"
_HEADER = "# Project config files trusted with `toolscript trust`: each one's path and the SHA-256 of its content.\n"


def content_digest(data: bytes) -> str:
    """The SHA-256 of a project file's bytes, as recorded."""
    return hashlib.sha256(data).hexdigest()


def project_key(path: Path) -> str:
    """How a project file is named in the record: its resolved absolute path."""
    return str(path.resolve())


def read_trusted(home: Path) -> dict[str, str]:
    """The trusted project files (resolved path to SHA-256); none if nothing was ever trusted.

    A record another user owns or can write is refused: whoever can write it decides what runs.
    """
    path = home / TRUST_FILE_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc}).", path=str(path)) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise ConfigError(
                f"{path} is not a file only you can write; refusing to use it. "
                "Delete it and trust your projects again.",
                path=str(path),
            )
        data = handle.read()
    try:
        projects = tomllib.loads(data.decode("utf-8")).get("projects", {})
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        projects = None
    if not isinstance(projects, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("sha256"), str) for entry in projects.values()
    ):
        raise ConfigError(
            f"{path} is corrupt; delete it and trust your projects again (toolscript trust).", path=str(path)
        )
    return {str(key): entry["sha256"] for key, entry in projects.items()}


def trusted_text(entries: Mapping[str, str]) -> str:
    """The record's text for `entries` (resolved path to SHA-256)."""
    projects = {key: {"sha256": digest} for key, digest in sorted(entries.items())}
    return _HEADER + (tomli_w.dumps({"projects": projects}) if projects else "")
