"""The `Gateway` against real SDK-built servers over stdio, streamable HTTP and SSE."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import DenyingAuth, process_exists, run_threads, stdio_server, wait_until
from toolbox import PNG

from config import Config, parse_config
from errors import AuthRequiredError, CallTimeoutError, ConfigError, ConnectError, UsageError
from gateway import Gateway, split_tool_name
from redact import redact


def config(**servers: dict[str, Any]) -> Config:
    return parse_config({"servers": servers})


@pytest.fixture
def good() -> Iterator[Gateway]:
    with Gateway(config(good=stdio_server())) as gateway:
        yield gateway


def status(gateway: Gateway, name: str) -> dict[str, Any]:
    return next(row for row in gateway.servers() if row["name"] == name)


# -- start ---------------------------------------------------------------------------


def test_concurrent_start_with_broken_servers_among_good_ones(tmp_path: Path) -> None:
    # A barrier proves that the connections are made at the same time: `one` and `two` answer
    # only once all four barrier servers have been started, so if the gateway connected one
    # server after another, the first of `one` and `two` would wait for the other forever.
    barrier = ["--arrive", str(tmp_path / "barrier")]
    cfg = config(
        one=stdio_server(*barrier, "--wait-for", "4"),
        missing={"command": "/nonexistent/mcp-server"},
        hang1=stdio_server("--hang", *barrier, timeout=3),
        hang2=stdio_server("--hang", *barrier, timeout=3),
        exits=stdio_server("--exit", "3"),
        refused={"url": "http://127.0.0.1:9/mcp"},
        two=stdio_server(*barrier, "--wait-for", "4"),
    )
    with Gateway(cfg) as gateway:
        rows = {row["name"]: row for row in gateway.servers()}
        assert rows["one"] == {"name": "one", "type": "stdio", "status": "connected", "tools": 11}
        assert rows["two"]["status"] == "connected"
        assert rows["hang2"]["status"] == "failed"
        assert rows["missing"]["error"] == (
            "Server 'missing' failed to connect: cannot run '/nonexistent/mcp-server': No such file or directory"
        )
        assert rows["hang1"]["error"] == "Server 'hang1' did not connect within 3 s."
        assert rows["exits"]["error"] == (
            "Server 'exits' failed to connect: the server process closed the connection; its stderr ended with:\n"
            "    toolbox: starting on stdio (this line goes to stderr)"
        )
        assert rows["refused"]["status"] == "failed"
        assert rows["refused"]["error"].startswith(
            "Server 'refused' failed to connect: cannot reach http://127.0.0.1:9/mcp:"
        )
        # Calls to a failed server fail with its reason; the good ones are unaffected.
        with pytest.raises(ConnectError, match="cannot run '/nonexistent/mcp-server'"):
            gateway.call("missing__echo", {"text": "x"})
        with pytest.raises(CallTimeoutError, match="did not connect within 3 s"):
            gateway.call("hang1__echo", {"text": "x"})
        assert gateway.call("one__echo", {"text": "still fine"})["content"][0]["text"] == "still fine"


def test_start_without_waiting_serves_the_others_at_once() -> None:
    cfg = config(one=stdio_server(), hang=stdio_server("--hang"))  # `hang` would take 30 s to fail
    gateway = Gateway(cfg).start(wait=False)
    try:
        assert status(gateway, "hang") == {"name": "hang", "type": "stdio", "status": "connecting", "tools": 0}
        # A call to a server still connecting waits for it; the slow one holds nobody up.
        assert gateway.call("one__echo", {"text": "first"})["content"][0]["text"] == "first"
        assert status(gateway, "one")["status"] == "connected"
        assert status(gateway, "hang")["status"] == "connecting"
        # ... but only within the call's timeout, which covers connecting.
        with pytest.raises(CallTimeoutError) as caught:
            gateway.call("hang__echo", {"text": "x"}, timeout=0.5)
        assert str(caught.value) == "Server 'hang' did not connect within 0.5 s."
        assert status(gateway, "hang")["status"] == "connecting"  # the attempt itself goes on
    finally:
        gateway.stop()


def test_a_call_timeout_is_one_deadline_for_reconnecting(http_server: Any) -> None:
    """A server gone silent costs a call its timeout, not several connection attempts with backoff."""
    import socket

    with Gateway(config(h={"url": http_server.url, "timeout": 2})) as gateway:
        assert gateway.call("h__echo", {"text": "up"})["isError"] is False
        http_server.stop()
        with pytest.raises(ConnectError, match="cannot reach"):  # the connection ends
            gateway.call("h__echo", {"text": "lost"})
        silent = socket.socket()  # accepts connections on the same port, never answers
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        silent.bind(("127.0.0.1", http_server.port))
        silent.listen(16)
        accepted: list[socket.socket] = []

        def accept() -> None:
            with contextlib.suppress(OSError):
                while True:
                    accepted.append(silent.accept()[0])

        threading.Thread(target=accept, daemon=True).start()
        try:
            # Reconnecting: before, each of three attempts could take the 2 s connect timeout.
            with pytest.raises(CallTimeoutError) as caught:
                gateway.call("h__echo", {"text": "silent"}, timeout=2)
            assert str(caught.value) == "Server 'h' did not connect within 2 s."
            assert len(accepted) == 1  # one attempt, not three
        finally:
            silent.close()
            for connection in accepted:
                connection.close()


def test_only_connects_the_named_servers() -> None:
    cfg = config(good=stdio_server(), missing={"command": "/nonexistent/mcp-server"})
    with Gateway(cfg, only=["good"]) as gateway:
        assert [row["name"] for row in gateway.servers()] == ["good"]
        with pytest.raises(UsageError, match="Server 'missing' is not connected by this gateway"):
            gateway.call("missing__echo", {})
    with pytest.raises(ConfigError, match="Unknown server 'nope'"):
        Gateway(cfg, only=["nope"])


# -- results -------------------------------------------------------------------------


def test_results_are_passed_through_faithfully(good: Gateway) -> None:
    expected_content = [
        {"type": "text", "text": "first"},
        {"type": "image", "data": PNG, "mimeType": "image/png"},
        {"type": "resource", "resource": {"uri": "file:///notes.txt", "mimeType": "text/plain", "text": "note text"}},
        {"type": "resource_link", "uri": "file:///big.bin", "name": "big.bin"},
        {"type": "text", "text": "last"},
    ]
    for is_error in (False, True):
        result = good.call("good__mixed", {"is_error": is_error})
        assert result == {
            "content": expected_content,
            "structuredContent": {"answer": 42, "nested": {"ok": [1, 2]}},
            "isError": is_error,
        }


def test_structured_content_and_tool_errors(good: Gateway) -> None:
    added = good.call("good__add", {"a": 2, "b": 3})
    assert added["structuredContent"] == {"total": 5, "terms": [2, 3]}
    assert added["isError"] is False
    failed = good.call("good__fail", {"message": "disk full"})
    assert failed == {"content": [{"type": "text", "text": "Error executing tool fail: disk full"}], "isError": True}


def test_tools_carry_schemas_and_descriptions(good: Gateway) -> None:
    tools = {tool["name"]: tool for tool in good.tools()}
    add = tools["good__add"]
    assert add["server"] == "good" and add["tool"] == "add"
    assert add["description"] == "Add two integers; the result is structured."
    assert set(add["inputSchema"]["properties"]) == {"a", "b"}
    assert add["outputSchema"]["properties"]["total"]["type"] == "integer"
    assert "outputSchema" not in tools["good__mixed"]


def test_unknown_tools_and_bad_names(good: Gateway) -> None:
    with pytest.raises(UsageError) as caught:
        good.call("good__nope", {})
    assert str(caught.value) == "Unknown tool 'nope' on server 'good'. Run: toolscript tools --server good"
    with pytest.raises(UsageError) as caught:
        good.call("good__ehco", {})
    assert str(caught.value) == (
        "Unknown tool 'ehco' on server 'good' (did you mean 'good__echo'?). Run: toolscript tools --server good"
    )
    with pytest.raises(ConfigError, match="Unknown server 'other'"):
        good.call("other__echo", {})
    with pytest.raises(UsageError, match="'echo' is not a SERVER__TOOL name"):
        good.call("echo", {})
    with pytest.raises(UsageError, match="must be a JSON object, not list"):
        good.call("good__echo", [1])  # type: ignore[arg-type]
    assert split_tool_name("my-server__tool__with__parts") == ("my-server", "tool__with__parts")


def test_call_timeout_then_the_server_still_answers(good: Gateway) -> None:
    with pytest.raises(CallTimeoutError) as caught:
        good.call("good__slow", {"seconds": 30}, timeout=0.3)
    assert str(caught.value) == "Tool 'good__slow' did not answer within 0.3 s."
    assert good.call("good__echo", {"text": "after"})["content"][0]["text"] == "after"


def test_pagination_fetches_every_page() -> None:
    with Gateway(config(paged=stdio_server("--paged"))) as gateway:
        names = [tool["tool"] for tool in gateway.tools()]
    assert names == ["echo", "add", "fail", "mixed", "slow", "crash", "pid", "env", "cwd", "header", "grow"]


def test_include_then_exclude_filters() -> None:
    cfg = config(f=stdio_server(include_tools=["e*", "a*", "grow"], exclude_tools=["add", "g*"]))
    with Gateway(cfg) as gateway:
        assert [tool["tool"] for tool in gateway.tools()] == ["echo", "env"]
        assert status(gateway, "f")["tools"] == 2
        for hidden in ("f__add", "f__mixed", "f__grow"):
            with pytest.raises(UsageError, match=f"Tool '{hidden}' is hidden by the include_tools/exclude_tools"):
                gateway.call(hidden, {})
        assert gateway.call("f__echo", {"text": "ok"})["isError"] is False


# -- stdio process handling ----------------------------------------------------------


def test_stdio_env_cwd_and_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FROM_PARENT", "parent-value")
    monkeypatch.setenv("OVERRIDDEN", "parent")
    cfg = config(s=stdio_server(env={"OVERRIDDEN": "config", "ONLY_CONFIG": "c"}, cwd=str(tmp_path)))
    caplog.set_level(logging.DEBUG, logger="toolscript.gateway")
    with Gateway(cfg) as gateway:

        def env(name: str) -> str:
            return gateway.call("s__env", {"name": name})["content"][0]["text"]

        assert (env("FROM_PARENT"), env("OVERRIDDEN"), env("ONLY_CONFIG")) == ("parent-value", "config", "c")
        assert gateway.call("s__cwd")["content"][0]["text"] == str(tmp_path)
    wait_until(lambda: "starting on stdio" in caplog.text, what="the server's stderr in the log")
    assert "s (stderr): toolbox: starting on stdio" in caplog.text
    captured = capfd.readouterr()
    assert "starting on stdio" not in captured.out + captured.err


def test_killed_server_is_reconnected_on_next_call(good: Gateway) -> None:
    first = good.call("good__pid")["structuredContent"]["result"]
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: status(good, "good")["status"] == "failed", what="the gateway to notice the exit")
    assert status(good, "good")["error"] == "Server 'good' closed the connection; it is reconnected on the next call."
    second = good.call("good__pid")["structuredContent"]["result"]
    assert second != first
    assert status(good, "good")["status"] == "connected"


def test_call_in_flight_fails_fast_when_the_server_dies(good: Gateway) -> None:
    # Had the call waited for its timeout instead, it would raise CallTimeoutError.
    with pytest.raises(ConnectError) as caught:
        good.call("good__crash", {"delay": 0.2}, timeout=60)
    assert str(caught.value) == (
        "Server 'good' closed the connection during the call to 'crash'; it is reconnected on the next call."
    )
    assert good.call("good__echo", {"text": "back"})["content"][0]["text"] == "back"


def test_stop_ends_every_stdio_process() -> None:
    gateway = Gateway(config(a=stdio_server(), b=stdio_server(), c=stdio_server())).start()
    pids = [gateway.call(f"{name}__pid")["structuredContent"]["result"] for name in "abc"]
    assert all(process_exists(pid) for pid in pids)
    gateway.stop()
    assert not [pid for pid in pids if process_exists(pid)]
    gateway.stop()  # twice is fine
    with pytest.raises(ConnectError, match="The gateway is not running"):
        gateway.call("a__pid")


def test_list_changed_refreshes_the_tools(good: Gateway) -> None:
    assert "good__brand_new" not in [tool["name"] for tool in good.tools()]
    assert good.call("good__grow", {"name": "brand_new"})["content"][0]["text"] == "added brand_new"
    assert "good__brand_new" in [tool["name"] for tool in good.tools("good")]
    assert good.call("good__brand_new")["content"][0]["text"] == "I am brand_new"


# -- HTTP and SSE --------------------------------------------------------------------


def test_http_and_sse_with_static_headers(http_server: Any, sse_server: Any) -> None:
    headers = {"X-Api-Key": "key-4f9a1c", "Authorization": "Bearer tok-77e2b9", "X-Plain": "visible"}
    cfg = config(
        h={"url": http_server.url, "headers": headers}, s={"type": "sse", "url": sse_server.url, "headers": headers}
    )
    with Gateway(cfg) as gateway:
        for server in ("h", "s"):
            assert status(gateway, server)["status"] == "connected"
            seen = {name: gateway.call(f"{server}__header", {"name": name})["content"][0]["text"] for name in headers}
            assert seen == headers
    assert redact("key key-4f9a1c, token tok-77e2b9, plain visible") == (
        "key [REDACTED], token [REDACTED], plain visible"
    )


def test_list_changed_over_sse(sse_server: Any) -> None:
    with Gateway(config(s={"type": "sse", "url": sse_server.url})) as gateway:
        gateway.call("s__grow", {"name": "late"})
        wait_until(lambda: "s__late" in [tool["name"] for tool in gateway.tools()], what="the refreshed list")


def test_http_server_restart_expires_the_session_and_is_transparent(http_server: Any) -> None:
    from http_server import serving

    with Gateway(config(h={"url": http_server.url})) as gateway:
        assert gateway.call("h__echo", {"text": "one"})["isError"] is False
        http_server.stop()
        with pytest.raises(ConnectError, match=r"Server 'h' failed \(cannot reach .*\) during the call to 'echo'"):
            gateway.call("h__echo", {"text": "down"})
        with serving("http", port=http_server.port):  # a new server: the old session is gone
            assert gateway.call("h__echo", {"text": "two"})["content"][0]["text"] == "two"
        with serving("http", port=http_server.port):
            assert gateway.call("h__echo", {"text": "three"})["content"][0]["text"] == "three"


def test_auth_required_at_connect_and_mid_session(http_server: Any) -> None:
    allowances = {"h": [0], "late": [5, 100]}  # `late` fails after its handshake, then recovers

    def auth(server: Any) -> httpx2.Auth:
        allow = allowances[server.name]
        return DenyingAuth(server.name, allow.pop(0) if len(allow) > 1 else allow[0])

    with Gateway(config(h={"url": http_server.url}, late={"url": http_server.url}), auth=auth) as gateway:
        row = status(gateway, "h")
        assert row["status"] == "auth_required"
        assert row["error"] == "Server 'h' is not authenticated. Run: toolscript auth h"
        with pytest.raises(AuthRequiredError, match="Run: toolscript auth h"):
            gateway.call("h__echo", {"text": "x"})
        assert status(gateway, "late")["status"] == "connected"
        outcomes = []
        for _ in range(4):
            try:
                outcomes.append(gateway.call("late__echo", {"text": "x"})["content"][0]["text"])
            except AuthRequiredError as exc:
                outcomes.append(type(exc).__name__)
        assert "AuthRequiredError" in outcomes
        assert outcomes[-1] == "x"  # reconnected with a fresh provider


# -- threads -------------------------------------------------------------------------


def test_many_threads_get_their_own_results(http_server: Any) -> None:
    with Gateway(config(s=stdio_server(), h={"url": http_server.url})) as gateway:
        errors: list[str] = []

        def worker(n: int) -> None:
            for i in range(10):
                server = "s" if (n + i) % 2 else "h"
                text = f"thread {n} call {i}"
                try:
                    result = gateway.call(f"{server}__echo", {"text": text})
                except Exception as exc:
                    result = repr(exc)
                if result != {
                    "content": [{"type": "text", "text": text}],
                    "structuredContent": {"result": text},
                    "isError": False,
                }:
                    errors.append(f"{text!r} got {result!r}")

        run_threads(worker, 32)
        assert errors == []
