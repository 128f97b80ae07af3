"""The stdio transport: run an MCP server as a child process that may be hostile, and end it on time.

It stands alone (rather than using the SDK's `stdio_client`) for three reasons. The SDK
reads a server's stdout by splitting the growing text on every chunk, which is quadratic
in a line's length and has no limit: one endless line eats memory and slows every other
server of the gateway, whose loop it shares. It reads stderr as the caller's file, with no
limit on a line either. And it always gives a server its full shutdown grace (end of input,
then SIGTERM, then SIGKILL, two seconds each), so a command cannot keep a deadline.

Here stdout is read in bounded chunks, each byte looked at once, and a message longer than
`max_message` bytes ends the transport with `MessageTooLargeError` (so only that server is
dropped); `bounded_lines` reads stderr in bounded lines; and `Ending` says by when the
process must be gone: the grace periods are cut to fit, and a deadline already passed ends
the process group at once with SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from mcp.shared.message import SessionMessage

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "Ending",
    "MessageTooLargeError",
    "bounded_lines",
    "open_stdio",
]

log = logging.getLogger("toolscript.stdio")

DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024  # bytes of one JSON-RPC message (one line) from a server
END_OF_INPUT_GRACE = 2.0  # seconds a server may take to exit once its stdin is closed
TERMINATE_GRACE = 2.0  # seconds after SIGTERM before SIGKILL
_REAP_TIMEOUT = 2.0  # for the loop to see a killed process exit; only an unkillable one runs this out
_CHUNK = 64 * 1024
_POLL = 0.01


class MessageTooLargeError(Exception):
    """A server sent a message (one line) longer than the transport's limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.message = f"it sent a message larger than {_size(limit)} (max_message_mb)"
        super().__init__(self.message)


@dataclass
class Ending:
    """When the process of a closing transport must be gone (an anyio clock time; default: no hurry).

    The transport reads it while it ends the process, so it may be moved earlier at any time.
    """

    deadline: float = math.inf

    def at_once(self) -> None:
        """End the process without any grace period (a request to it was given up on)."""
        self.deadline = -math.inf

    def within(self, seconds: float) -> None:
        """End the process within `seconds` from now, or sooner if that was asked already."""
        self.deadline = min(self.deadline, anyio.current_time() + max(0.0, seconds))


@contextlib.asynccontextmanager
async def open_stdio(
    argv: list[str],
    *,
    name: str,
    env: dict[str, str],
    cwd: str | None,
    stderr: int,
    max_message: int = DEFAULT_MAX_MESSAGE,
    ending: Ending | None = None,
) -> AsyncIterator[tuple[Any, Any]]:
    """Run `argv` (server `name`) in a session of its own and yield the MCP (read, write) streams over its stdio.

    Its stderr goes to the descriptor `stderr`. On exit the process group is ended as
    `ending` says. A message longer than `max_message` bytes raises `MessageTooLargeError`
    out of the block, as does a read or write that fails.
    """
    ending = ending or Ending()
    process = await anyio.open_process(argv, env=env, cwd=cwd, stderr=stderr, start_new_session=True)
    # No await until the task group below is entered: a cancellation there would lose the process.
    to_session, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    assert process.stdin is not None
    # Written by the session's senders themselves, not by a task of ours: one hand-over less per message.
    write_stream = _ToStdin(process.stdin, to_session)

    async def read_stdout() -> None:
        assert process.stdout is not None
        lines: _Lines | None = _Lines(max_message)  # None once the session is gone: then read and drop
        async with to_session:
            while True:
                try:
                    chunk = await process.stdout.receive(_CHUNK)
                except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                    return
                try:
                    for line in lines.feed(chunk) if lines is not None else ():
                        await to_session.send(_parse(line, name))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    # Go on reading: a server blocked writing its stdout could not see its input end.
                    lines = None
                except MessageTooLargeError:
                    ending.at_once()  # a server this far outside the protocol gets no grace
                    raise

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_stdout)
            try:
                yield read_stream, write_stream
            finally:
                with anyio.CancelScope(shield=True):  # a cancelled caller must not leave the process running
                    read_stream.close()  # the reader drops what still comes
                    write_stream.close()
                    await _end(process, ending)  # what was sent is written before stdin closes (see _end)
                tg.cancel_scope.cancel()
    finally:
        for stream in (read_stream, write_stream, to_session):
            stream.close()


class _ToStdin:
    """The session's write stream to the server's stdin: each message is written when sent, whole and in
    order (what the pipe does not take at once waits in asyncio's pipe transport, and the sender with it).

    A write that fails ends the session's read stream too, so that requests in flight see the
    connection end rather than wait for answers.
    """

    def __init__(self, stdin: anyio.abc.ByteSendStream, to_session: Any) -> None:
        self._stdin = stdin
        self._to_session = to_session
        self._closed = False

    async def send(self, message: SessionMessage) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        data = (message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n").encode()
        try:
            await self._stdin.send(data)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            self._closed = True
            self._to_session.close()
            raise anyio.BrokenResourceError from None

    def close(self) -> None:
        self._closed = True

    async def aclose(self) -> None:
        self._closed = True

    async def __aenter__(self) -> _ToStdin:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closed = True


async def _end(process: anyio.abc.Process, ending: Ending) -> None:
    """Close stdin, then SIGTERM, then SIGKILL the process group, each after its grace (cut to `ending`)."""
    with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        assert process.stdin is not None
        await process.stdin.aclose()
    if not await _exited(process, END_OF_INPUT_GRACE, ending):
        _signal_group(process, signal.SIGTERM)
        if not await _exited(process, TERMINATE_GRACE, ending):
            _signal_group(process, signal.SIGKILL)
            if not await _exited(process, _REAP_TIMEOUT, None):
                log.warning("Process %d is still alive after SIGKILL; abandoning it.", process.pid)
    with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        assert process.stdout is not None
        await process.stdout.aclose()
    transport = getattr(getattr(process, "_process", None), "_transport", None)  # asyncio's, else it warns at GC
    if transport is not None:
        with contextlib.suppress(PermissionError):
            transport.close()


async def _exited(process: anyio.abc.Process, grace: float, ending: Ending | None) -> bool:
    """Whether the process exits within `grace` seconds, or by `ending`'s deadline if that comes first."""
    start = anyio.current_time()
    while process.returncode is None:
        now = anyio.current_time()
        if now - start >= grace or (ending is not None and now >= ending.deadline):
            return False
        await anyio.sleep(_POLL)
    return True


def _signal_group(process: anyio.abc.Process, number: int) -> None:
    # The process leads its own session, so its group id is its pid; this reaches its children too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, number)


def _parse(line: bytes, name: str) -> SessionMessage | Exception:
    """One line from server `name` as a message, or (logged) the error that says why it is not one."""
    try:
        text = line.decode("utf-8", errors="replace")
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(text, by_name=False))
    except ValueError as exc:
        log.warning("Server '%s': Failed to parse JSONRPC message from server", name, exc_info=True)  # one line
        return exc


class _Lines:
    """Split a byte stream into lines of at most `limit` bytes, in linear time."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """The lines `chunk` completes (without their newline); raise once a line grows past the limit."""
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if self._size + end - start > self._limit:
                raise MessageTooLargeError(self._limit)
            line = b"".join([*self._parts, chunk[start:end]]) if self._parts else chunk[start:end]
            self._parts, self._size = [], 0
            start = end + 1
            if line.strip():
                yield line
        rest = chunk[start:]
        if rest:
            self._size += len(rest)
            if self._size > self._limit:
                raise MessageTooLargeError(self._limit)
            self._parts.append(rest)


def bounded_lines(fd: int, limit: int) -> Iterator[str]:
    """The lines read from `fd` until its end, each cut to `limit` characters (the rest is skipped, not kept)."""
    pending: list[bytes] = []
    size = 0
    skipping = False
    while chunk := os.read(fd, _CHUNK):
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if not skipping:
                pending.append(chunk[start : min(end, start + max(0, limit - size))])
            yield b"".join(pending).decode("utf-8", errors="replace")
            pending, size, skipping = [], 0, False
            start = end + 1
        if not skipping:
            piece = chunk[start : start + max(0, limit - size)]
            pending.append(piece)
            size += len(piece)
            skipping = size >= limit
    if pending:
        yield b"".join(pending).decode("utf-8", errors="replace")


def _size(limit: int) -> str:
    mib = limit / (1024 * 1024)
    return f"{mib:g} MiB" if mib >= 1 else f"{limit} bytes"
