"""The API's connections on an event loop (http_loop.py): heads, bodies in pieces, and the worker threads."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import serving_api, wait_until

from gateway_http import ApiServer
from http_loop import Workers

TIMEOUT = 30.0


class _Answering:
    """A gateway whose `call` answers once `release` is set, and says which thread answered."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def servers(self) -> list[dict[str, Any]]:
        return [{"name": "s", "status": "connected"}]

    def call(self, name: str, arguments: Any = None, **options: Any) -> dict[str, Any]:
        if not self.release.wait(TIMEOUT):
            raise AssertionError("never released")
        return {"content": [{"type": "text", "text": json.dumps(arguments)}], "isError": False}


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with serving_api(_Answering()) as server:
        yield server


def _head(api: ApiServer, request_line: str, *headers: str, newline: str = "\r\n") -> bytes:
    lines = [request_line, f"Host: 127.0.0.1:{api.port}", f"Authorization: Bearer {api.token}", *headers, "", ""]
    return newline.join(lines).encode()


def _read_answer(answers: Any) -> tuple[int, Any]:
    """The next answer from `answers` (the connection's `makefile("rb")`): its status and JSON body."""
    status = int(answers.readline().split()[1])
    length = 0
    while (line := answers.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, json.loads(answers.read(length))


def test_a_head_with_bare_newlines_is_read_as_http_server_reads_it(api: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=TIMEOUT) as sock:
        sock.sendall(_head(api, "GET /servers HTTP/1.1", newline="\n"))
        assert _read_answer(sock.makefile("rb")) == (200, [{"name": "s", "status": "connected"}])


def test_a_body_that_comes_in_pieces_is_waited_for(api: ApiServer) -> None:
    api.gateway.release.set()  # type: ignore[attr-defined]
    body = json.dumps({"text": "in pieces"}).encode()
    head = _head(api, "POST /tools/s__echo HTTP/1.1", "Content-Type: application/json", f"Content-Length: {len(body)}")
    with socket.create_connection(("127.0.0.1", api.port), timeout=TIMEOUT) as sock:
        sock.sendall(head[:20])
        sock.sendall(head[20:] + body[:5])
        sock.sendall(body[5:])
        status, answer = _read_answer(sock.makefile("rb"))
    assert (status, answer["content"][0]["text"]) == (200, json.dumps({"text": "in pieces"}))


def test_a_blocked_call_holds_up_neither_its_neighbours_nor_the_next_request_on_its_connection(api: ApiServer) -> None:
    gateway: _Answering = api.gateway  # type: ignore[assignment]
    body = b"{}"
    call = _head(api, "POST /tools/s__echo HTTP/1.1", "Content-Type: application/json", "Content-Length: 2") + body
    with (
        socket.create_connection(("127.0.0.1", api.port), timeout=TIMEOUT) as blocked,
        socket.create_connection(("127.0.0.1", api.port), timeout=TIMEOUT) as other,
    ):
        blocked.sendall(call + _head(api, "GET /servers HTTP/1.1"))  # pipelined behind the call
        other.sendall(_head(api, "GET /servers HTTP/1.1"))
        assert _read_answer(other.makefile("rb"))[0] == 200  # while the call waits in its worker
        gateway.release.set()
        answers = blocked.makefile("rb")
        assert _read_answer(answers)[0] == 200
        assert _read_answer(answers) == (200, [{"name": "s", "status": "connected"}])  # then the next, in order


def test_a_client_that_never_reads_its_answers_is_not_answered_into_memory(api: ApiServer) -> None:
    """Requests refused without a token keep the connection; a client pipelining them without reading the
    answers must fill its own buffers, not the gateway's memory (each answer is 12 times its request)."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=3) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with contextlib.suppress(TimeoutError):
            sock.sendall(b"GET /tools HTTP/1.1\r\n\r\n" * 400_000)  # 9 MiB
        unsent = sum(connection.backlog() for connection in api._connections)
    assert unsent < 64 * 1024


def test_workers_run_every_job_and_idle_ones_leave() -> None:
    workers = Workers("test-workers", linger=0.2)
    gate, done = threading.Event(), []
    lock = threading.Lock()

    def job(number: int) -> None:
        gate.wait(TIMEOUT)
        with lock:
            done.append(number)

    for number in range(12):  # all wait at once: 12 threads
        workers.submit(lambda number=number: job(number))
    wait_until(lambda: _alive("test-workers") == 12, TIMEOUT, "a thread for each blocked job")
    gate.set()
    wait_until(lambda: len(done) == 12, TIMEOUT, "every job to run")
    for number in range(12, 20):  # one after another: taken by the idle threads, no new ones
        workers.submit(lambda number=number: job(number))
    wait_until(lambda: len(done) == 20, TIMEOUT, "the later jobs to run")
    assert sorted(done) == list(range(20))
    wait_until(lambda: _alive("test-workers") == 0, TIMEOUT, "idle threads to leave")
    workers.submit(lambda: job(20))  # a thread again, once all left
    wait_until(lambda: 20 in done, TIMEOUT, "a job after the threads left")


def _alive(name: str) -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == name)
