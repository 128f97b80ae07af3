"""`toolscript gateway`'s `/mcp`: what the HTTP side adds to the front that test_serve.py covers.

test_serve.py runs its MCP scenarios against `/mcp` as well as `serve`, and
test_conformance_server.py runs the official suite through `/mcp/SERVER`. Here: who may
use the endpoint (the API token, Host and Origin), unknown servers, open streams when the
gateway stops, streams whose client vanished, that the token stays out of the log, and that
a call refused for its authorization shows in the gateway's OAuth status.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx2
import mcp_types as types
import pytest
from conftest import (
    INITIALIZE,
    SERVERS,
    gateway_variables,
    process_exists,
    serving_api,
    start_gateway_process,
    stdio_server,
    wait_until,
    write_config,
)
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

import gateway_http
from config import load_config
from front import HttpFront
from gateway import Gateway as InProcessGateway
from gateway import SessionHooks
from gateway_http import ApiServer, RemoteGateway

TIMEOUT = 60.0
EVERYTHING = str(SERVERS / "everything.py")
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


class Gateway:
    """A `toolscript -v gateway` process over two stdio servers, with its URL and token."""

    def __init__(self, tmp_path: Path) -> None:
        config = write_config({"files": stdio_server(), "notes": stdio_server()}, tmp_path / "toolscript.toml")
        env = {**os.environ, "TOOLSCRIPT_HOME": str(tmp_path / "home")}
        self.proc, lines = start_gateway_process("-v", "--config", str(config), "--wait", str(TIMEOUT), env=env)
        variables = gateway_variables(lines)
        self.url, self.token = variables["TOOLSCRIPT_GATEWAY_URL"], variables["TOOLSCRIPT_GATEWAY_TOKEN"]
        self.authority = self.url.removeprefix("http://")
        self.stderr = ""

    def headers(self, **extra: str) -> dict[str, str]:
        return {**MCP_HEADERS, "Authorization": f"Bearer {self.token}", **extra}

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        try:
            _, self.stderr = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, self.stderr = self.proc.communicate()
            pytest.fail(f"the gateway did not stop within {TIMEOUT} s of {signal.Signals(signum).name}")
        return self.proc.returncode


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    running = Gateway(tmp_path)
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.stop()


def initialize(client: httpx2.Client, url: str, headers: dict[str, str]) -> httpx2.Response:
    return client.post(url, json=INITIALIZE, headers=headers)


class Session:
    """An MCP session opened by hand on a gateway endpoint (initialize, then initialized)."""

    def __init__(self, client: httpx2.Client, gateway: Gateway, path: str) -> None:
        self.client, self.gateway, self.url = client, gateway, gateway.url + path
        opened = initialize(client, self.url, gateway.headers())
        self.ids = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-11-25"}
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def headers(self, **extra: str) -> dict[str, str]:
        return self.gateway.headers(**self.ids, **extra)

    def post(self, message: dict[str, Any], url: str | None = None) -> httpx2.Response:
        return self.client.post(url or self.url, json=message, headers=self.headers())

    def call(self, tool: str, request_id: int) -> dict[str, Any]:
        """The result of calling `tool` without arguments."""
        return self.call_with(tool, {}, request_id)

    def call_with(self, tool: str, arguments: dict[str, Any], request_id: int) -> dict[str, Any]:
        params = {"name": tool, "arguments": arguments}
        called = self.post({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})
        return events(called)[-1]["result"]


def events(response: httpx2.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an answer: an SSE stream, or plain JSON when nothing came before the answer."""
    if response.headers["content-type"] == "application/json":
        return [response.json()]
    return [json.loads(line[len("data: ") :]) for line in response.text.splitlines() if line.startswith("data: {")]


def test_mcp_needs_the_gateway_token(gateway: Gateway) -> None:
    with httpx2.Client(timeout=TIMEOUT) as client:
        missing = initialize(client, gateway.url + "/mcp", MCP_HEADERS)
        wrong = initialize(client, gateway.url + "/mcp", {**MCP_HEADERS, "Authorization": "Bearer not-the-token"})
        accepted = initialize(client, gateway.url + "/mcp", gateway.headers())
    assert (missing.status_code, wrong.status_code) == (403, 403)
    assert missing.json()["error"].startswith("No gateway token: send 'Authorization: Bearer <token>'")
    assert wrong.json()["error"].startswith("Wrong gateway token: ")
    assert accepted.status_code == 200, accepted.text
    assert accepted.headers["content-type"].split(";")[0] in ("text/event-stream", "application/json")
    assert accepted.headers.get("mcp-session-id")
    [answer] = events(accepted)
    assert answer["result"]["serverInfo"]["name"] == "toolscript"
    assert answer["result"]["capabilities"]["tools"] == {"listChanged": True}


@pytest.mark.parametrize(
    ("header", "value"),
    [("Host", "evil.example.com"), ("Host", "evil.example.com:{port}"), ("Origin", "http://evil.example.com")],
)
def test_mcp_refuses_a_foreign_host_or_origin_even_with_the_token(gateway: Gateway, header: str, value: str) -> None:
    """DNS rebinding and cross-site pages: the MCP spec asks servers on localhost to check both."""
    port = gateway.authority.rpartition(":")[2]
    with httpx2.Client(timeout=TIMEOUT) as client:
        refused = initialize(client, gateway.url + "/mcp/files", gateway.headers(**{header: value.format(port=port)}))
        own_origin = initialize(client, gateway.url + "/mcp/files", gateway.headers(Origin=gateway.url))
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/json"
    assert "mcp-session-id" not in refused.headers  # no session was made
    assert own_origin.status_code == 200, own_origin.text


def test_a_server_left_out_for_an_unset_variable_says_which(tmp_path: Path) -> None:
    config = write_config(
        {"files": stdio_server(), "remote": {"url": "https://x.example/mcp", "headers": {"K": "${NO_SUCH_V}"}}},
        tmp_path / "toolscript.toml",
    )
    env = {**os.environ, "TOOLSCRIPT_HOME": str(tmp_path / "home")}
    proc, lines = start_gateway_process("--config", str(config), env=env)
    try:
        variables = gateway_variables(lines)
        url, token = variables["TOOLSCRIPT_GATEWAY_URL"], variables["TOOLSCRIPT_GATEWAY_TOKEN"]
        with httpx2.Client(timeout=TIMEOUT) as client:
            answer = initialize(client, url + "/mcp/remote", {**MCP_HEADERS, "Authorization": f"Bearer {token}"})
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=TIMEOUT)
    assert answer.status_code == 404
    assert answer.json()["error"].endswith(
        "servers.remote.headers.K: environment variable NO_SUCH_V is not set (server 'remote'); "
        "set it or write ${NO_SUCH_V:-default}."
    )
    assert "warning: server 'remote' is left out: environment variable NO_SUCH_V is not set" in stderr


def test_an_unknown_server_is_named_with_the_ones_there_are(gateway: Gateway) -> None:
    with httpx2.Client(timeout=TIMEOUT) as client:
        typo = initialize(client, gateway.url + "/mcp/file", gateway.headers())
        nested = initialize(client, gateway.url + "/mcp/files/extra", gateway.headers())
    assert typo.status_code == 404
    assert typo.json() == {
        "error": "No server 'file' here (did you mean 'files'?); /mcp serves every server, "
        "/mcp/SERVER one of: files, notes."
    }
    assert nested.status_code == 404


def test_one_server_at_mcp_server_keeps_its_names(gateway: Gateway) -> None:
    with httpx2.Client(timeout=TIMEOUT) as client:
        session = Session(client, gateway, "/mcp/notes")
        listed = session.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        # A session belongs to the endpoint that made it.
        elsewhere = session.post({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, gateway.url + "/mcp/files")
    [answer] = events(listed)
    names = {tool["name"] for tool in answer["result"]["tools"]}
    assert {"echo", "pid"} <= names and not any("__" in name for name in names)
    assert elsewhere.status_code == 404


def test_stopping_ends_open_streams_and_the_stdio_servers(gateway: Gateway) -> None:
    """A client holding its server-to-client (GET) stream open does not keep the gateway from stopping."""
    with httpx2.Client(timeout=httpx2.Timeout(TIMEOUT, read=TIMEOUT)) as client:
        session = Session(client, gateway, "/mcp")
        pids = [
            int(session.call(f"{server}__pid", n)["content"][0]["text"]) for n, server in enumerate(("files", "notes"))
        ]
        with client.stream("GET", session.url, headers=session.headers(Accept="text/event-stream")) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert gateway.stop() == 0
            assert stream.read() is not None  # the stream ended (else read() would wait for TIMEOUT and raise)
    wait_until(lambda: not any(process_exists(pid) for pid in pids), TIMEOUT, "the stdio servers to exit")
    assert "Traceback" not in gateway.stderr


def test_the_token_stays_out_of_the_log(gateway: Gateway) -> None:
    with httpx2.Client(timeout=TIMEOUT) as client:
        assert Session(client, gateway, "/mcp").call("files__pid", 2)["isError"] is False
    gateway.stop()
    assert "POST /mcp" in gateway.stderr  # -v: the requests were logged
    assert gateway.token not in gateway.stderr


def raw_request(gateway: Gateway, method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {gateway.authority}", f"Authorization: Bearer {gateway.token}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(gateway: Gateway) -> socket.socket:
    host, port = gateway.authority.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=TIMEOUT)


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    """What `sock` sends until `marker` (or until it closes), within TIMEOUT."""
    sock.settimeout(TIMEOUT)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_head_on_mcp_is_refused_without_a_body(gateway: Gateway) -> None:
    """A HEAD answer with a body would be read as the start of the next answer on the connection."""
    with connect(gateway) as sock:
        sock.sendall(raw_request(gateway, "HEAD", "/mcp") + raw_request(gateway, "GET", "/health"))
        answers = read_until(sock, b'{"status": "ok"}')
    head, _, rest = answers.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, POST, DELETE" in head
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b'{"status": "ok"}')


def test_a_stream_whose_client_vanished_is_given_up_so_the_session_can_open_another(gateway: Gateway) -> None:
    """Writing to a reset connection ends that stream at the server; the session's next GET stream is accepted."""
    with httpx2.Client(timeout=TIMEOUT) as client:
        session = Session(client, gateway, "/mcp")
        stream_request = raw_request(gateway, "GET", "/mcp", session.headers(Accept="text/event-stream"))
        with connect(gateway) as sock:
            sock.sendall(stream_request)
            assert read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 200 ")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        # A tool list change goes out on the session's GET stream: its write meets the reset.
        assert session.call_with("files__grow", {"name": "sprout"}, 2)["isError"] is False

        def another_stream() -> bool:
            with connect(gateway) as again:
                again.sendall(stream_request)
                return read_until(again, b"\r\n\r\n").startswith(b"HTTP/1.1 200 ")  # 409 while the old one lives

        wait_until(another_stream, TIMEOUT, "the session to accept a new GET stream")


def slow_call(gateway: Gateway, session: Session, release: Path) -> bytes:
    """A raw POST to /mcp of a call to `files__slow` that answers "late" once the file `release` exists."""
    params = {"name": "files__slow", "arguments": {"seconds": TIMEOUT, "text": "late", "until_file": str(release)}}
    body = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}).encode()
    return raw_request(gateway, "POST", "/mcp", {**session.headers(), "Content-Length": str(len(body))}) + body


def test_a_client_that_closed_its_side_still_gets_its_answer(gateway: Gateway, tmp_path: Path) -> None:
    """HTTP lets a client end its side once its request is sent: the answer to a POST still comes."""
    release = tmp_path / "release"
    with httpx2.Client(timeout=TIMEOUT) as client:
        session = Session(client, gateway, "/mcp")
        with connect(gateway) as sock:
            sock.sendall(slow_call(gateway, session, release))
            sock.shutdown(socket.SHUT_WR)
            head = read_until(sock, b"\r\n\r\n")
            release.touch()  # answered only after the client's side ended
            rest = read_until(sock, b"0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b'"late"' in rest


def test_a_slow_call_gets_its_headers_before_its_answer(gateway: Gateway, tmp_path: Path) -> None:
    """A POST's headers wait briefly for the first event, then go out alone: the client sees the stream open."""
    release = tmp_path / "release"
    with httpx2.Client(timeout=TIMEOUT) as client:
        session = Session(client, gateway, "/mcp")
        with connect(gateway) as sock:
            sock.sendall(slow_call(gateway, session, release))
            head = read_until(sock, b"\r\n\r\n")
            opened_before_the_answer = not release.exists()
            release.touch()
            rest = read_until(sock, b"0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"content-type: text/event-stream" in head.lower()
    # The headers came alone, not with the stream's keep-alive ping (15 s on) nor with the answer.
    assert head.index(b"\r\n\r\n") == len(head) - 4 and opened_before_the_answer
    assert b'"late"' in head + rest and rest.endswith(b"0\r\n\r\n")


def test_an_answer_with_nothing_before_it_goes_as_json_on_a_kept_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client reads a JSON answer to its end and keeps the connection, where it drops one whose SSE stream it
    stopped reading at the answer; so a POST answered with nothing before it (no progress, no question) is JSON."""
    monkeypatch.setattr(gateway_http._Exchange, "_HOLD", TIMEOUT)  # the rule, not this machine's speed, decides
    write_config({"files": stdio_server()})
    with gateway_in_process() as (_, api):
        host, port = api.url.removeprefix("http://").rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
        headers = {**MCP_HEADERS, "Authorization": f"Bearer {api.token}"}

        def post(message: dict[str, Any]) -> tuple[http.client.HTTPResponse, bytes]:
            connection.request("POST", "/mcp/files", json.dumps(message), headers)
            response = connection.getresponse()
            return response, response.read()

        opened, _ = post(INITIALIZE)
        headers |= {"Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-11-25"}
        post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        # A listing first: it waits for the server to connect, so nothing about the connecting (a list
        # changed, a status) can ride on the call's answer stream.
        post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        kept = connection.sock
        params = {"name": "echo", "arguments": {"text": "plain"}}
        answer, body = post({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params})
        same_connection = connection.sock is kept and kept is not None
        connection.close()
    assert (answer.status, answer.headers["content-type"]) == (200, "application/json"), body
    assert json.loads(body)["result"]["content"] == [{"type": "text", "text": "plain"}]
    assert answer.headers["mcp-session-id"] == headers["Mcp-Session-Id"]
    assert same_connection


def test_a_call_slower_than_the_end_of_its_stream_takes_still_goes_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """Most real calls take longer than the moment an answer waits for the end of its stream: the headers wait
    for the answer longer than that, so those answers go as JSON too (a stream would cost the connection)."""
    monkeypatch.setattr(gateway_http._Exchange, "_HEAD_HOLD", TIMEOUT)  # the rule, not this machine's speed
    write_config({"files": stdio_server()})
    with gateway_in_process() as (_, api), httpx2.Client(timeout=TIMEOUT) as client:
        headers = {**MCP_HEADERS, "Authorization": f"Bearer {api.token}"}
        opened = initialize(client, api.url + "/mcp/files", headers)
        headers |= {"Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-11-25"}
        client.post(
            api.url + "/mcp/files", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
        )
        client.post(api.url + "/mcp/files", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers)
        params = {"name": "slow", "arguments": {"seconds": 0.3, "text": "slow"}}
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}
        answer = client.post(api.url + "/mcp/files", json=call, headers=headers)
    assert answer.headers["content-type"] == "application/json", answer.text
    assert answer.json()["result"]["content"] == [{"type": "text", "text": "slow"}]


@contextlib.contextmanager
def gateway_in_process() -> Iterator[tuple[InProcessGateway, ApiServer]]:
    """The gateway of ./toolscript.toml with its API and /mcp, in this process (as `toolscript gateway` runs it)."""
    hooks = SessionHooks()
    gateway = InProcessGateway(load_config(), hooks=hooks)
    front = HttpFront(gateway, hooks)
    with serving_api(gateway, mcp=front) as api:
        gateway.start(alongside=front.running)
        try:
            yield gateway, api
        finally:
            gateway.stop()


@contextlib.asynccontextmanager
async def mcp_client(api: ApiServer, path: str, **callbacks: Any) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {api.token}"}, timeout=TIMEOUT) as http,
        streamable_http_client(api.url + path, http_client=http) as (read, write),
        ClientSession(read, write, **callbacks) as session,
    ):
        await session.initialize()
        yield session


def test_a_call_refused_for_its_authorization_shows_in_the_servers_oauth_status(oauth_server: Any) -> None:
    """As for calls through the API: /servers says `authentication_failed` until a call works again."""
    from test_gateway_oauth import authenticate

    server = oauth_server(extra_scopes=("extra",))
    write_config(f'[servers.demo]\ntype = "{server.transport}"\nurl = "{server.url}"\n')
    authenticate()
    server.tap.step_up["echo"] = "extra"

    async def calls(gateway: InProcessGateway, api: ApiServer) -> tuple[list[str], list[str]]:
        async with mcp_client(api, "/mcp/demo") as session:
            refused = await session.call_tool("echo", {"text": "x"})
            assert refused.is_error
            statuses = [row["oauth_status"] for row in await anyio.to_thread.run_sync(gateway.servers)]
            worked = await session.call_tool("add", {"a": 1, "b": 2})
            assert not worked.is_error
            return statuses, [row["oauth_status"] for row in await anyio.to_thread.run_sync(gateway.servers)]

    with gateway_in_process() as (gateway, api):
        assert anyio.run(calls, gateway, api) == (["authentication_failed"], ["authenticated"])


def test_a_server_asking_during_an_api_call_is_never_put_to_an_mcp_client() -> None:
    """Only the caller whose request a server serves is asked: an API call's question is declined as documented,
    even while an MCP client that takes questions is connected to the same server."""
    write_config({"ev": {"command": sys.executable, "args": [EVERYTHING, "ev"]}})
    asked: list[str] = []

    async def on_elicitation(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "not the API caller"})

    async def scenario(api: ApiServer) -> tuple[dict[str, Any], str]:
        async with mcp_client(api, "/mcp/ev", elicitation_callback=on_elicitation) as session:
            remote = RemoteGateway(api.url, token=api.token)
            through_api = await anyio.to_thread.run_sync(lambda: remote.call("ev__ask", {"message": "API?"}))
            through_mcp = await session.call_tool("ask", {"message": "MCP?"})
            return through_api, through_mcp.content[0].text  # type: ignore[union-attr]

    with gateway_in_process() as (_, api):
        through_api, through_mcp = anyio.run(scenario, api)
    assert through_api["content"][0]["text"] == "decline None"
    assert [request["message"] for request in through_api["declinedInputRequests"]] == ["API?"]
    assert asked == ["Server 'ev' asks: MCP?"] and through_mcp == "accept {'name': 'not the API caller'}"
