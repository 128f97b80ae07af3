"""The gateway API's connections, read and written on one asyncio event loop.

It stands apart from gateway_http, which decides what a request may do and what it gets,
because this is the plumbing under those rules: bytes in and out of HTTP/1.1 connections.
On the gateway it runs on the gateway's own event loop, so that an MCP request (`/mcp`)
reaches the MCP front, and its answer the client, without crossing to another thread;
32 connections cost 32 buffers, not 32 threads fighting the loop for the GIL. A request
that blocks (a call through the synchronous gateway) runs in a worker thread (`Workers`),
which writes its answer itself, so that an answer given while the gateway stops still
goes out after the loop has ended.

Only the standard library: the CLI's side of the API never imports this module.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import re
import socket
import threading
from collections.abc import Awaitable, Callable

__all__ = ["Connection", "Workers", "blocking_copy"]

log = logging.getLogger("toolscript.gateway.http")

# A request's head (request line and headers) longer than this without its end is cut here
# and answered 414 or 431 (http.server's own limits, 64 KiB a line, are smaller).
MAX_HEAD_BYTES = 1024 * 1024
# Bytes buffered ahead of what the current request needs before the connection stops reading: a
# client pipelining requests it never reads the answers of is held to that, and to one answer.
_READ_AHEAD = 256 * 1024
_HEAD_END = re.compile(rb"\n\r?\n")  # a blank line, after the line before it (http.server takes bare \n too)


class Connection(asyncio.Protocol):
    """One client's connection: `serve(connection)` answers its requests in order, then it closes.

    Reading, and waiting for what was written to go out, take at most `idle_timeout` seconds
    each. `ended` is set when the client closed its side (what it sent before is still
    served), `gone` when the connection broke or was closed.
    """

    def __init__(self, serve: Callable[[Connection], Awaitable[None]], idle_timeout: float) -> None:
        self._serve = serve
        self.idle_timeout = idle_timeout
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._eof = False
        self._paused = False
        self.ended = asyncio.Event()
        self.gone = asyncio.Event()
        self.waiting_idle = False  # waiting for the next request, none of it come yet
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    # -- asyncio's callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # pause_writing whenever anything waits to be sent, resume_writing once all of it is: `drained`.
        transport.set_write_buffer_limits(high=0, low=0)
        self.task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > _READ_AHEAD and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self.ended.set()
        self._wake()
        return True  # half-closed: the requests already sent are still answered

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self.ended.set()
        self.gone.set()
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        if self._drained is None or self._drained.done():
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- for `serve` ---------------------------------------------------------------------

    async def read_head(self) -> tuple[bytes, bool]:
        """The next request's head (request line and headers, with the blank line) and whether it is whole.

        A head is not whole when the client ended the connection before its end, or when
        it ran past `MAX_HEAD_BYTES`: then it is what came, for http.server's rules to refuse
        (or take, as http.server takes a head cut by the end of the connection). Empty at the end.
        """
        searched = 0
        while True:
            self.waiting_idle = not self._buffer
            start = self._buffer.find(b"\n")
            if start >= 0:
                self.waiting_idle = False
                if not self._buffer[:start].strip():  # a blank request line: nothing follows it
                    return bytes(self._buffer[: start + 1]), True
                found = _HEAD_END.search(self._buffer, max(start, searched - 2))
                if found is not None and found.end() <= MAX_HEAD_BYTES:
                    return self._take(found.end()), True
                searched = len(self._buffer)
            if len(self._buffer) > MAX_HEAD_BYTES:
                self.waiting_idle = False
                return self._take(MAX_HEAD_BYTES), False
            if self._eof:
                self.waiting_idle = False
                return self._take(len(self._buffer)), False
            await self._more()

    async def read_body(self, length: int) -> bytes | None:
        """The next `length` bytes; None if the connection ends before them."""
        while len(self._buffer) < length:
            if self._eof:
                return None
            await self._more()
        return self._take(length)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    @property
    def closed(self) -> bool:
        """Whether nothing can be written any more (the connection broke, or is being closed)."""
        return self.transport is None or self.transport.is_closing()

    def backlog(self) -> int:
        """Bytes written and not yet sent to the client."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    async def drained(self) -> None:
        """Return once everything written went out (or the connection broke); `TimeoutError` if that takes
        longer than `idle_timeout` (the client does not read)."""
        if self._drained is not None and not self._drained.done():
            async with asyncio.timeout(self.idle_timeout):
                while self._drained is not None and not self._drained.done():
                    await asyncio.shield(self._drained)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- inside --------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._serve(self)
        except TimeoutError:  # the client neither sent nor read for `idle_timeout`
            self.abort()
        except ConnectionError:
            pass
        except Exception:
            log.exception("gateway API: unexpected error on a connection")
        finally:
            self.close()
            if self.backlog():  # a close waits for what is written to go out: not for ever
                asyncio.get_running_loop().call_later(self.idle_timeout, self.abort)

    def _take(self, size: int) -> bytes:
        taken = bytes(self._buffer[:size])
        del self._buffer[:size]
        return taken

    async def _more(self) -> None:
        """Wait for more bytes (or the end) from the client, at most `idle_timeout` seconds."""
        if self._paused and self.transport is not None:  # what is buffered is not enough: read on
            self._paused = False
            self.transport.resume_reading()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.idle_timeout):
                await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def blocking_copy(connection: Connection, timeout: float) -> socket.socket:
    """A socket of its own on `connection`'s, for a worker thread to write an answer with (each send
    waits at most `timeout` seconds); it keeps the connection open until closed, even past the loop's end."""
    assert connection.transport is not None
    sock = connection.transport.get_extra_info("socket")
    copy = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
    copy.settimeout(timeout)
    return copy


class Workers:
    """Daemon threads for requests that block: started as needed, each kept `linger` seconds once idle.

    Daemon threads, as http.server's were: a call that never returns does not hold the process.
    """

    def __init__(self, name: str, linger: float = 60.0) -> None:
        self._name = name
        self._linger = linger
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job that none was promised to yet

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._jobs.put(job)
                return
        threading.Thread(target=self._work, args=(job,), name=self._name, daemon=True).start()

    def _work(self, job: Callable[[], None]) -> None:
        while True:
            try:
                job()
            except Exception:
                log.exception("gateway API: unexpected error in a worker")
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=self._linger)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # not needed: leave (a job put meanwhile was promised to another)
                        self._idle -= 1
                        return
                job = self._jobs.get()  # promised to this thread, and already queued
