"""config_watch: a followed config is read again, compared, and kept when the new one does not validate."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from conftest import stdio_server, write_config

from config import load_config
from config_watch import ConfigWatch


def watch_of(path: Path) -> ConfigWatch:
    return ConfigWatch(load_config(str(path)), lambda: load_config(str(path)))


def test_an_unchanged_config_is_no_news() -> None:
    path = write_config({"a": stdio_server()})
    watch = watch_of(path)
    assert not watch.changed()
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: the same servers
    assert watch.changed()
    assert watch.check() is None
    assert not watch.changed()


def test_a_changed_config_is_returned_once() -> None:
    path = write_config({"a": stdio_server()})
    watch = watch_of(path)
    write_config({"a": stdio_server(), "b": stdio_server()}, path)
    assert watch.changed()
    changed = watch.check()
    assert changed is not None and list(changed.servers) == ["a", "b"]
    assert watch.config is changed
    assert watch.check() is None


def test_a_config_that_does_not_validate_is_logged_once_and_the_last_good_one_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_config({"a": stdio_server()})
    watch = watch_of(path)
    good = watch.config
    path.write_text(path.read_text() + '[servers.b]\nurl = "ftp://example.com"\n')
    with caplog.at_level(logging.INFO, logger="toolscript"):
        assert watch.check() is None
        assert watch.check() is None
        assert watch.changed()  # a problem is looked at again before each request
        assert watch.config is good
        assert watch.problem is not None and "servers.b.url" in watch.problem.message
        write_config({"c": stdio_server()}, path)
        fixed = watch.check()
    assert fixed is not None and list(fixed.servers) == ["c"] and watch.problem is None
    assert [record.getMessage() for record in caplog.records] == [
        f"{path}: servers.b.url: must be an http:// or https:// URL, not 'ftp://example.com'; "
        "still serving the config read before.",
        "The config validates again.",
    ]


def test_a_config_file_that_appears_is_noticed(isolated_env: Path) -> None:
    watch = ConfigWatch(load_config(), load_config)  # no config file anywhere yet
    assert watch.config.files == ()
    write_config({"a": stdio_server()})  # ./toolscript.toml, as `toolscript add` would create one
    changed = watch.check()
    assert changed is not None and list(changed.servers) == ["a"] and changed.files == (Path("toolscript.toml"),)
