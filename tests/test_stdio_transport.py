"""A hostile stdio server costs only itself: a message over the limit drops that server alone,
its stderr is read in bounded lines, and a closing gateway ends its process within a deadline."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import SERVERS, finish_within, process_exists, write_config

from config import load_config
from errors import ConfigError, ConnectError
from gateway import Gateway
from stdio_transport import bounded_lines

RAW = str(SERVERS / "raw_stdio.py")


def raw(*flags: str, **extra: Any) -> dict[str, Any]:
    """A `[servers.NAME]` table running the hand-written misbehaving server."""
    return {"command": sys.executable, "args": [RAW, *flags], **extra}


def test_an_endless_line_drops_only_its_server() -> None:
    write_config({"hostile": raw(), "fine": raw()})
    with Gateway(load_config(), announce=False) as gateway:
        # Before, the line was read until the call's own timeout (here far longer than the test waits).
        with pytest.raises(ConnectError) as caught:
            finish_within(60, lambda: gateway.call("hostile__endless", timeout=600))
        assert str(caught.value) == (
            "Server 'hostile' failed (it sent a message larger than 16 MiB (max_message_mb)) during the call to "
            "'endless'; it is reconnected on the next call."
        )
        assert gateway.call("fine__echo", {"text": "unharmed"})["content"][0]["text"] == "unharmed"
        assert gateway.call("hostile__echo", {"text": "back"})["content"][0]["text"] == "back"


def test_max_message_mb_sets_a_servers_limit() -> None:
    write_config({"small": raw(max_message_mb=0.5)})
    with Gateway(load_config(), announce=False) as gateway:
        text = gateway.call("small__big", {"size": 400_000})["content"][0]["text"]
        assert text == "x" * 400_000
        with pytest.raises(ConnectError, match=r"it sent a message larger than 524288 bytes \(max_message_mb\)"):
            gateway.call("small__big", {"size": 600_000})


@pytest.mark.parametrize("value", [0, -1, True, "16"])
def test_max_message_mb_must_be_a_positive_number(value: object) -> None:
    path = write_config({"small": raw(max_message_mb=value)})
    with pytest.raises(ConfigError) as caught:
        load_config()
    assert str(caught.value) == f"{path}: servers.small.max_message_mb: must be a positive number of MiB"


def test_stderr_is_read_in_lines_cut_to_the_limit() -> None:
    read_fd, write_fd = os.pipe()

    def write() -> None:
        with open(write_fd, "wb") as out:
            out.write(b"a" * 3_000_000 + b"\nshort\n" + b"b" * 100 + b"\n" + b"no newline at the end")

    threading.Thread(target=write, daemon=True).start()
    try:
        lines = finish_within(30, lambda: list(bounded_lines(read_fd, 10)))
    finally:
        os.close(read_fd)
    assert lines == ["a" * 10, "short", "b" * 10, "no newline"]


def test_a_closing_gateway_ends_a_server_that_ignores_end_of_input_within_the_time_given(tmp_path: Path) -> None:
    # The server ignores SIGTERM and the end of its input, and leaves a file 3 s after its input ended:
    # with the usual grace (2 s after the end of input, 2 s after SIGTERM) it would leave it.
    write_config({"stubborn": raw("--stubborn", str(tmp_path), "--outlive", "3")})
    gateway = Gateway(load_config(), announce=False).start()
    try:
        assert gateway.call("stubborn__echo", {"text": "hi"})["content"][0]["text"] == "hi"
    finally:
        gateway.stop(within=0.5)
    pid = int((tmp_path / "pid").read_text())
    assert not process_exists(pid)  # ended (and reaped) before stop returned
    assert not (tmp_path / "outlived").exists()
