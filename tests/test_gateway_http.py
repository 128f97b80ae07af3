"""The local HTTP API (`gateway_http.ApiServer`) and its client (`RemoteGateway`), over a real Gateway."""

from __future__ import annotations

import http.client
import json
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DenyingAuth, run_threads, serving, stdio_server, wait_until

from config import parse_config
from errors import (
    AuthConnectError,
    AuthError,
    AuthRequiredError,
    CallTimeoutError,
    ConfigError,
    ConnectError,
    StorageError,
    ToolscriptError,
    UsageError,
)
from gateway import Gateway
from gateway_http import (
    MAX_BODY_BYTES,
    TOKEN_VAR,
    ApiServer,
    RemoteGateway,
    find_token,
    remove_token_file,
    token_file,
    write_token_file,
)
from redact import MASK, redact


class _Recording:
    """A real gateway that also records the tools called through it (`calls`)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:  # servers, tools, resources, prompts ...: the gateway's own
        return getattr(self.gateway, name)

    def call(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        input_handler: Any = None,
    ) -> Any:
        self.calls.append(name)
        return self.gateway.call(name, arguments, timeout=timeout, input_handler=input_handler)


@pytest.fixture(scope="module")
def api(http_server_module: Any) -> Iterator[ApiServer]:
    cfg = parse_config(
        {
            "servers": {
                "s": stdio_server(timeout=5),
                "missing": {"command": "/nonexistent/mcp-server"},
                "locked": {"url": http_server_module.url},
            }
        }
    )
    gateway = Gateway(cfg, auth=lambda server: DenyingAuth("locked")).start()
    try:
        with serving(ApiServer(_Recording(gateway))) as server:
            yield server
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def http_server_module() -> Iterator[Any]:
    from http_server import serving

    with serving("http") as running:
        yield running


def request(
    api: ApiServer,
    method: str,
    path: str,
    body: bytes | str | None = None,
    headers: dict[str, str | None] | None = None,
) -> tuple[int, Any]:
    """Send one raw request (so that tests control every header) and return (status, JSON).

    It carries the API's token unless `headers` has an `Authorization` of its own (None: none).
    """
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        headers = {"Host": f"127.0.0.1:{api.port}", "Authorization": f"Bearer {api.token}", **(headers or {})}
        headers = {name: value for name, value in headers.items() if value is not None}
        if body is not None:
            data = body.encode() if isinstance(body, str) else body
            headers.setdefault("Content-Type", "application/json")
            headers.setdefault("Content-Length", str(len(data)))
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(data if body is not None else None)
        response = connection.getresponse()
        assert response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def post(api: ApiServer, tool: str, arguments: Any = None, **kwargs: Any) -> tuple[int, Any]:
    return request(api, "POST", f"/tools/{tool}", json.dumps(arguments if arguments is not None else {}), **kwargs)


# -- endpoints -----------------------------------------------------------------------


def test_health_servers_and_tools(api: ApiServer) -> None:
    assert request(api, "GET", "/health") == (200, {"status": "ok"})
    code, servers = request(api, "GET", "/servers")
    assert code == 200
    assert servers[0] == {"name": "s", "type": "stdio", "status": "connected", "tools": 11}
    assert servers[1]["status"] == "failed" and "cannot run '/nonexistent/mcp-server'" in servers[1]["error"]
    assert servers[2] == {
        "name": "locked",
        "type": "http",
        "status": "auth_required",
        "tools": 0,
        "error": "Server 'locked' is not authenticated. Run: toolscript auth locked",
    }
    code, tools = request(api, "GET", "/tools?server=s")
    assert code == 200
    echo = tools[0]
    assert echo["name"] == "s__echo" and echo["server"] == "s" and echo["tool"] == "echo"
    assert echo["inputSchema"]["required"] == ["text"]
    assert "outputSchema" in echo
    code, everything = request(api, "GET", "/tools")
    assert code == 200 and [tool["name"] for tool in everything] == [tool["name"] for tool in tools]
    assert request(api, "GET", "/tools?server=nope")[0] == 404
    assert request(api, "GET", "/nowhere")[0] == 404


def test_call_returns_the_result(api: ApiServer) -> None:
    assert post(api, "s__echo", {"text": "hi"}) == (
        200,
        {"content": [{"type": "text", "text": "hi"}], "structuredContent": {"result": "hi"}, "isError": False},
    )
    code, result = post(api, "s__mixed", {"is_error": True})
    assert code == 200
    assert result["isError"] is True and result["structuredContent"] == {"answer": 42, "nested": {"ok": [1, 2]}}
    assert len(result["content"]) == 5
    code, result = request(api, "POST", "/tools/s__pid", "")  # an empty body means no arguments
    assert code == 200 and isinstance(result["structuredContent"]["result"], int)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "The body is not valid JSON"),
        ("[1, 2]", "The body must be a JSON object of arguments, not list"),
        ('"text"', "The body must be a JSON object of arguments, not str"),
    ],
)
def test_malformed_bodies_are_400(api: ApiServer, body: str, message: str) -> None:
    code, payload = request(api, "POST", "/tools/s__echo", body)
    assert code == 400
    assert payload["error"].startswith(message)


def test_error_statuses(api: ApiServer) -> None:
    assert post(api, "s__nope") == (
        404,
        {
            "error": "Unknown tool 'nope' on server 's'. Run: toolscript tools --server s",
            "kind": "usage",
            "server": "s",
        },
    )
    assert post(api, "other__echo")[0] == 404
    assert post(api, "no_separator")[0] == 404
    assert post(api, "locked__echo", {"text": "x"}) == (
        401,
        {
            "error": "Server 'locked' is not authenticated. Run: toolscript auth locked",
            "kind": "auth_required",
            "server": "locked",
            "next_command": "toolscript auth locked",
        },
    )
    code, payload = post(api, "missing__echo", {"text": "x"})
    assert code == 502 and "cannot run '/nonexistent/mcp-server'" in payload["error"]
    assert (payload["kind"], payload["server"]) == ("unreachable", "missing")
    code, payload = request(api, "POST", "/tools/s__slow?timeout=0.2", json.dumps({"seconds": 30}))
    assert (code, payload) == (
        504,
        {"error": "Tool 's__slow' did not answer within 0.2 s.", "kind": "timeout", "server": "s"},
    )
    assert request(api, "POST", "/tools/s__slow?timeout=-1", "{}")[0] == 400
    assert request(api, "POST", "/elsewhere", "{}")[0] == 404


# -- the API token: what another local user could send --------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/servers", None),
        ("GET", "/tools", None),
        ("GET", "/tools?server=s", None),
        ("POST", "/tools/s__echo", '{"text": "x"}'),
        ("GET", "/nowhere", None),
        ("PUT", "/tools/s__echo", "{}"),
        ("GET", "/tools/s__echo", None),
        ("GET", "/resources", None),
        ("GET", "/resources/read?server=s&uri=x", None),
        ("GET", "/prompts", None),
        ("POST", "/prompts/s__greet", "{}"),
        ("POST", "/complete", '{"server": "s"}'),
    ],
)
def test_every_request_but_health_needs_the_token(api: ApiServer, method: str, path: str, body: str | None) -> None:
    calls = len(api.gateway.calls)
    code, payload = request(api, method, path, body, headers={"Authorization": None})
    assert code == 403
    assert payload["error"] == (
        "No gateway token: send 'Authorization: Bearer <token>' with the TOOLSCRIPT_GATEWAY_TOKEN the "
        f"gateway printed when it started (also in $TOOLSCRIPT_HOME/gateway/127.0.0.1_{api.port}.token, which "
        "only the user who started it can read, and where toolscript commands find it)."
    )
    for wrong in (f"Bearer {api.token}x", f"Bearer {api.token[:-1]}", "Bearer", f"Basic {api.token}", api.token):
        code, payload = request(api, method, path, body, headers={"Authorization": wrong})
        assert (code, payload["error"].split(":")[0]) == (403, "Wrong gateway token"), wrong
    assert len(api.gateway.calls) == calls  # no tool ran
    assert (
        request(
            api, method, f"{path}{'&' if '?' in path else '?'}token={api.token}", body, headers={"Authorization": None}
        )[0]
        == 403
    )  # never taken from the URL
    assert request(api, "GET", "/health", headers={"Authorization": None}) == (200, {"status": "ok"})


def test_the_token_is_accepted_with_any_case_of_bearer(api: ApiServer) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert request(api, "GET", "/servers", headers={"Authorization": f"{scheme} {api.token}"})[0] == 200


def test_each_api_has_its_own_random_secret_token() -> None:
    class Idle:
        pass

    first, second = ApiServer(Idle()), ApiServer(Idle())  # type: ignore[arg-type]
    try:
        assert first.token != second.token
        assert len(first.token) >= 22  # at least 128 bits in URL-safe base64
        assert redact(f"token {first.token} in a log line") == f"token {MASK} in a log line"
    finally:
        first.server_close()
        second.server_close()


def test_remote_gateway_sends_the_token_it_is_given_or_finds(api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert RemoteGateway(api.url, api.token).servers()[0]["name"] == "s"
    with pytest.raises(UsageError) as caught:
        RemoteGateway(api.url).servers()  # no token anywhere
    assert str(caught.value).startswith("No gateway token: send 'Authorization: Bearer <token>' with")
    with pytest.raises(UsageError, match=r"^Wrong gateway token: "):
        RemoteGateway(api.url, "not-the-token").tools()
    path = write_token_file(api.url, api.token)  # what `toolscript gateway` does
    assert RemoteGateway(api.url).servers()[0]["name"] == "s"
    monkeypatch.setenv(TOKEN_VAR, "overridden")  # the variable wins over the file
    with pytest.raises(UsageError, match=r"^Wrong gateway token: "):
        RemoteGateway(api.url).servers()
    remove_token_file(path)


def test_the_token_file_is_private_to_its_user(isolated_env: Any) -> None:
    url = "http://127.0.0.1:8123"
    path = write_token_file(url, "the-token-value")
    assert path == isolated_env / "gateway" / "127.0.0.1_8123.token" == token_file(url + "/")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text())["token"] == "the-token-value"
    assert find_token(url) == "the-token-value"
    path.write_text("an-older-version\n")  # the bare token older versions wrote is still read
    assert find_token(url) == "an-older-version"
    assert find_token("http://127.0.0.1:8124") is None  # another address: another gateway
    assert token_file("http://[::1]:8123").name == "::1_8123.token"
    write_token_file(url, "a-newer-one")  # over a file a crashed gateway left
    assert find_token(url) == "a-newer-one"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    remove_token_file(path)
    remove_token_file(path)
    assert not path.exists() and find_token(url) is None


def test_a_token_file_others_could_have_touched_is_refused(isolated_env: Any, tmp_path: Any) -> None:
    url = "http://127.0.0.1:8123"
    path = write_token_file(url, "the-token-value")
    path.chmod(0o644)
    with pytest.raises(UsageError, match=r"is not a private file of yours \(mode 0600\); refusing to use it"):
        find_token(url)
    path.unlink()
    (tmp_path / "elsewhere").write_text("planted")
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UsageError, match=f"^Cannot read the gateway token file {path}: "):
        find_token(url)
    path.unlink()
    path.parent.rmdir()
    path.parent.symlink_to(tmp_path)
    with pytest.raises(UsageError, match="is not a directory of yours"):
        find_token(url)
    with pytest.raises(UsageError, match=f"^Cannot write the gateway token file {path}: .* not a directory of yours"):
        write_token_file(url, "x")
    assert not (tmp_path / path.name).exists()


# -- bodies are read exactly ---------------------------------------------------------


def raw_exchange(api: ApiServer, data: bytes) -> bytes:
    """Send `data` on a fresh connection, half-close it, and return everything the API answered."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def responses(raw: bytes) -> list[tuple[int, dict[str, str], Any]]:
    """Split what `raw_exchange` got into (status, headers, JSON) per response; every one must be JSON."""
    answers = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
        length = int(headers["content-length"])
        body, raw = raw[:length], raw[length:]
        assert headers["content-type"] == "application/json", head
        answers.append((int(status_line.split()[1]), headers, json.loads(body)))
    return answers


def call_head(api: ApiServer, tool: str, *headers: str) -> bytes:
    return "\r\n".join(
        (
            f"POST /tools/{tool} HTTP/1.1",
            f"Host: 127.0.0.1:{api.port}",
            f"Authorization: Bearer {api.token}",
            "Content-Type: application/json",
            *headers,
            "",
            "",
        )
    ).encode()


def test_a_chunked_body_is_refused_with_411(api: ApiServer) -> None:
    calls = len(api.gateway.calls)
    chunked = b'd\r\n{"text": "x"}\r\n0\r\n\r\n'
    for framing in (["Transfer-Encoding: chunked"], ["Transfer-Encoding: chunked", "Content-Length: 13"]):
        [(code, headers, payload)] = responses(raw_exchange(api, call_head(api, "s__echo", *framing) + chunked))
        assert (code, payload) == (411, {"error": "Send the body with a Content-Length, not with Transfer-Encoding."})
        assert headers["connection"] == "close"
    assert len(api.gateway.calls) == calls


def test_a_body_without_content_length_is_refused_with_411(api: ApiServer) -> None:
    calls = len(api.gateway.calls)
    # Without the 411 the body would be taken for a second request on the connection.
    [(code, headers, payload)] = responses(raw_exchange(api, call_head(api, "s__echo") + b'{"text": "x"}'))
    assert (code, payload) == (411, {"error": "A POST needs a Content-Length header (0 for no arguments)."})
    assert headers["connection"] == "close"
    assert len(api.gateway.calls) == calls


@pytest.mark.parametrize("lengths", [["+2"], [" 0x2"], ["2", "3"], ["-1"], ["2_0"], ["²"]])
def test_an_inexact_content_length_is_400(api: ApiServer, lengths: list[str]) -> None:
    calls = len(api.gateway.calls)
    head = call_head(api, "s__pid", *(f"Content-Length: {length}" for length in lengths))
    [(code, headers, payload)] = responses(raw_exchange(api, head + b"{}"))
    assert (code, payload, headers["connection"]) == (400, {"error": "Invalid Content-Length."}, "close")
    assert len(api.gateway.calls) == calls


@pytest.mark.parametrize("path", ["/prompts/s__greet", "/complete"])
def test_every_post_reads_its_body_exactly(api: ApiServer, path: str) -> None:
    head = "\r\n".join(
        (
            f"POST {path} HTTP/1.1",
            f"Host: 127.0.0.1:{api.port}",
            f"Authorization: Bearer {api.token}",
            "Content-Type: application/json",
            "{framing}",
            "",
            "",
        )
    ).encode()
    chunked = head.replace(b"{framing}", b"Transfer-Encoding: chunked") + b"2\r\n{}\r\n0\r\n\r\n"
    [(code, headers, payload)] = responses(raw_exchange(api, chunked))
    assert (code, headers["connection"], payload["error"]) == (
        411,
        "close",
        "Send the body with a Content-Length, not with Transfer-Encoding.",
    )
    unframed = head.replace(b"{framing}\r\n", b"") + b"{}"
    [(code, headers, payload)] = responses(raw_exchange(api, unframed))
    assert (code, headers["connection"], payload["error"]) == (
        411,
        "close",
        "A POST needs a Content-Length header (0 for no arguments).",
    )
    assert request(api, "POST", path, "[" * 100_000) == (
        400,
        {"error": "The body is not valid JSON: it is nested too deeply."},
    )


def test_content_length_0_means_no_arguments_and_keeps_the_connection(api: ApiServer) -> None:
    head = call_head(api, "s__pid", "Content-Length: 0")
    answers = responses(raw_exchange(api, head + head))
    assert [code for code, _, _ in answers] == [200, 200]
    assert isinstance(answers[0][2]["structuredContent"]["result"], int)


def test_deeply_nested_json_is_400(api: ApiServer) -> None:
    calls = len(api.gateway.calls)
    assert request(api, "POST", "/tools/s__echo", "[" * 100_000) == (
        400,
        {"error": "The body is not valid JSON: it is nested too deeply."},
    )
    assert request(api, "POST", "/tools/s__echo", '{"text": ' * 100_000)[0] == 400
    assert len(api.gateway.calls) == calls
    assert post(api, "s__echo", {"text": "still serving"})[0] == 200


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/tools/s__echo", "GET, POST"),
        ("PUT", "/tools/s__echo", "GET, POST"),
        ("DELETE", "/servers", "GET"),
        ("POST", "/health", "GET"),
        ("PATCH", "/tools", "GET"),
        ("BREW", "/tools", "GET"),
        ("POST", "/resources", "GET"),
        ("POST", "/resources/read", "GET"),
        ("DELETE", "/prompts", "GET"),
        ("GET", "/prompts/s__greet", "POST"),
        ("GET", "/complete", "POST"),
        ("PUT", "/complete", "POST"),
    ],
)
def test_unsupported_methods_are_405_with_allow(api: ApiServer, method: str, path: str, allow: str) -> None:
    calls = len(api.gateway.calls)
    [(code, headers, payload)] = responses(
        raw_exchange(
            api,
            "\r\n".join(
                (
                    f"{method} {path} HTTP/1.1",
                    f"Host: 127.0.0.1:{api.port}",
                    f"Authorization: Bearer {api.token}",
                    "Content-Type: application/json",
                    "Content-Length: 2",
                    "",
                    "{}",
                )
            ).encode(),
        )
    )
    assert (code, headers["allow"]) == (405, allow)
    assert payload == {"error": f"{path} answers only {allow.replace(', ', ' and ')}, not {method}."}
    assert len(api.gateway.calls) == calls


def test_head_gets_405_without_a_body(api: ApiServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        connection.request("HEAD", "/health", headers={"Authorization": f"Bearer {api.token}"})
        response = connection.getresponse()
        assert (response.status, response.getheader("Allow"), response.read()) == (405, "GET", b"")
        connection.request("GET", "/health")  # the connection is still in step
        assert json.loads(connection.getresponse().read()) == {"status": "ok"}
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /health HTTP/9.9\r\n\r\n", 505),
        (b"GET /" + b"x" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /health HTTP/1.1\r\nX-Long: " + b"x" * 70_000 + b"\r\n\r\n", 431),
    ],
)
def test_unreadable_requests_get_json_errors(api: ApiServer, data: bytes, status: int) -> None:
    [(code, headers, payload)] = responses(raw_exchange(api, data))
    assert code == status and headers["connection"] == "close"
    assert isinstance(payload["error"], str) and payload["error"]


def test_a_head_past_a_mebibyte_is_refused_though_each_line_is_short(api: ApiServer) -> None:
    """http.server's limits are per line (64 KiB) and per count (100): 20 lines of 60 KiB passed them."""
    calls = len(api.gateway.calls)
    lines = [f"X-Filler-{number}: {'x' * 60_000}" for number in range(20)]
    [(code, headers, payload)] = responses(
        raw_exchange(api, call_head(api, "s__pid", *lines, "Content-Length: 2") + b"{}")
    )
    assert (code, headers["connection"]) == (431, "close")
    assert payload == {"error": "Request header fields too large."}
    assert len(api.gateway.calls) == calls


# -- what a browser or another host could send ---------------------------------------


@pytest.mark.parametrize("host", ["evil.example:80", "evil.example", "127.0.0.1:1", "localhost", "", "0.0.0.0"])
def test_foreign_host_headers_are_refused(api: ApiServer, host: str) -> None:
    code, payload = request(api, "GET", "/servers", headers={"Host": host})
    assert code == 403
    assert "is not allowed; this gateway answers only to" in payload["error"]
    assert post(api, "s__echo", {"text": "x"}, headers={"Host": host})[0] == 403


def test_localhost_with_the_port_is_accepted(api: ApiServer) -> None:
    assert request(api, "GET", "/health", headers={"Host": f"localhost:{api.port}"}) == (200, {"status": "ok"})


def test_cross_origin_requests_are_refused(api: ApiServer) -> None:
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{api.port + 1}", "https://localhost"):
        code, payload = post(api, "s__echo", {"text": "x"}, headers={"Origin": origin})
        assert code == 403 and payload["error"] == f"Cross-origin requests (Origin {origin!r}) are not allowed."
        assert request(api, "GET", "/tools", headers={"Origin": origin})[0] == 403
    for origin in (f"http://127.0.0.1:{api.port}", f"http://localhost:{api.port}"):
        assert post(api, "s__echo", {"text": "x"}, headers={"Origin": origin})[0] == 200


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
def test_posts_must_be_json(api: ApiServer, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {"Content-Type": ""}
    code, payload = request(api, "POST", "/tools/s__echo", '{"text": "x"}', headers=headers)
    assert (code, payload["error"]) == (415, "The body must be a JSON object sent as Content-Type: application/json.")
    headers = {"Content-Type": "application/json; charset=utf-8"}
    assert request(api, "POST", "/tools/s__echo", '{"text": "x"}', headers=headers)[0] == 200


def test_oversized_bodies_are_413(api: ApiServer) -> None:
    code, payload = request(api, "POST", "/tools/s__echo", "{}", headers={"Content-Length": str(MAX_BODY_BYTES + 1)})
    assert (code, payload) == (413, {"error": f"The body is larger than {MAX_BODY_BYTES} bytes."})
    big = json.dumps({"text": "x" * (MAX_BODY_BYTES - 100)})
    assert post(api, "s__echo", json.loads(big))[0] == 200


# -- concurrency ---------------------------------------------------------------------


def test_a_slow_call_does_not_block_others(api: ApiServer, tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"  # the slow call answers once `release` exists
    answers: list[Any] = []

    def slow() -> None:
        arguments = {"seconds": 60, "started_file": str(started), "until_file": str(release), "text": "released"}
        answers.append(post(api, "s__slow", arguments))

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        wait_until(started.exists, what="the slow call to start")
        for i in range(5):
            assert post(api, "s__echo", {"text": str(i)})[1]["content"][0]["text"] == str(i)
        assert answers == []  # still waiting for the release
    finally:
        release.touch()
        thread.join(30)
    assert answers and answers[0][1]["content"][0]["text"] == "released"


def test_many_clients_get_their_own_results(api: ApiServer) -> None:
    remote = RemoteGateway(api.url, api.token)
    errors: list[str] = []
    together = threading.Barrier(32, timeout=30)  # all connect at once, as a burst of clients would

    def worker(n: int) -> None:
        together.wait()
        for i in range(10):
            text = f"client {n} call {i}"
            try:
                result = remote.call("s__echo", {"text": text})
            except Exception as exc:
                result = repr(exc)
            if result != {
                "content": [{"type": "text", "text": text}],
                "structuredContent": {"result": text},
                "isError": False,
            }:
                errors.append(f"{text!r} got {result!r}")
        remote.close()

    run_threads(worker, 32)
    assert errors == []


# -- RemoteGateway -------------------------------------------------------------------


def test_remote_gateway_raises_what_the_gateway_raised(api: ApiServer) -> None:
    remote = RemoteGateway(api.url + "/", api.token)
    remote.check()
    assert remote.servers()[0]["name"] == "s"
    assert [tool["name"] for tool in remote.tools("s")][:2] == ["s__echo", "s__add"]
    assert remote.call("s__add", {"a": 1, "b": 2})["structuredContent"] == {"total": 3, "terms": [1, 2]}
    with pytest.raises(UsageError, match="Unknown tool 'nope'"):
        remote.call("s__nope")
    with pytest.raises(AuthRequiredError, match="Run: toolscript auth locked"):
        remote.call("locked__echo", {"text": "x"})
    with pytest.raises(CallTimeoutError, match=r"did not answer within 0\.2 s"):
        remote.call("s__slow", {"seconds": 30}, timeout=0.2)
    with pytest.raises(ConnectError, match="cannot run"):
        remote.call("missing__echo", {"text": "x"})
    with pytest.raises(ConfigError, match="Unknown server 'nope'"):  # what the gateway raised, not just its status
        remote.tools("nope")


@pytest.mark.parametrize(
    "error",
    [
        ToolscriptError("plain"),
        UsageError("usage", server="s"),
        ConfigError("config", path="/etc/x.toml", server="s"),
        StorageError("storage", path="/home/u/.toolscript/oauth/s.toml", server="s"),
        AuthError("auth", server="s", error="insufficient_scope"),
        AuthRequiredError("auth required", server="s", error="invalid_grant", scope="repo read"),
        ConnectError("connect", server="s"),
        CallTimeoutError("timeout", server="s"),
        AuthConnectError("auth unreachable", server="s", error="temporarily_unavailable"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_every_error_crosses_the_api_as_itself(error: ToolscriptError) -> None:
    class Failing:
        def __getattr__(self, name: str) -> Any:  # every method of the gateway fails with `error`
            def fail(*args: Any, **kwargs: Any) -> Any:
                raise error

            return fail

    server = ApiServer(Failing())  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    remote = RemoteGateway(server.url, server.token)
    try:
        for attempt in (remote.servers, remote.tools, lambda: remote.call("s__x")):
            with pytest.raises(ToolscriptError) as caught:
                attempt()
            assert type(caught.value) is type(error)
            assert vars(caught.value) == vars(error)  # message, server and every attribute
            assert caught.value.exit_code == error.exit_code
    finally:
        remote.close()
        server.shutdown()
        server.server_close()


def test_remote_gateway_not_reachable() -> None:
    remote = RemoteGateway("http://127.0.0.1:9")
    with pytest.raises(ConnectError) as caught:
        remote.check()
    assert str(caught.value).startswith("The gateway at http://127.0.0.1:9 (TOOLSCRIPT_GATEWAY_URL) is not reachable: ")
    assert str(caught.value).endswith("Start it with: toolscript gateway, or unset TOOLSCRIPT_GATEWAY_URL.")
    with pytest.raises(UsageError, match=r"must look like http://127\.0\.0\.1:PORT"):
        RemoteGateway("localhost:8080")
    with pytest.raises(UsageError, match=r"must look like http://127\.0\.0\.1:PORT"):
        RemoteGateway("http://127.0.0.1:port")


def test_a_wildcard_bind_accepts_its_addresses_but_not_host_names() -> None:
    class Idle:
        def servers(self) -> list[Any]:
            return []

    server = ApiServer(Idle(), host="0.0.0.0")  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert request(server, "GET", "/servers") == (200, [])  # Host: 127.0.0.1:PORT
        assert request(server, "GET", "/servers", headers={"Host": f"localhost:{server.port}"})[0] == 200
        assert server.url == f"http://127.0.0.1:{server.port}"  # where a client connects, not 0.0.0.0
        for host in (f"evil.example:{server.port}", "127.0.0.1:1"):
            assert request(server, "GET", "/servers", headers={"Host": host}) == (
                403,
                {
                    "error": f"Host {host!r} is not allowed; this gateway answers only to localhost:{server.port} "
                    f"or an IP address of this machine with port {server.port} (such as 127.0.0.1:{server.port})."
                },
            )
        assert request(server, "GET", "/servers", headers={"Origin": f"http://evil.example:{server.port}"})[0] == 403
    finally:
        server.shutdown()
        server.server_close()
