"""Errors that say what happened and what to do: connection failures in terms of HTTP or of
the server's own stderr, library tracebacks as one line, and `/servers` after a call failed
for lack of authorization."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SERVERS, explain, finish_within, run_cli, wait_until, write_config

import toolscript
from config import load_config
from errors import AuthRequiredError
from gateway import Gateway

# -- a server that cannot connect ------------------------------------------------------


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_an_http_error_names_status_and_url(
    transport: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    running = request.getfixturevalue(f"{transport}_server")
    wrong = running.url.rsplit("/", 1)[0] + "/nope"
    write_config({"x": {"type": transport, "url": wrong}})
    assert toolscript.main(["tools", "--server", "x"]) == 4
    assert capsys.readouterr().err == (
        f"error: Server 'x' failed to connect: HTTP 404 from {wrong}: is this the server's MCP endpoint?\n"
    )


def test_a_stdio_server_exiting_at_start_shows_the_end_of_its_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    script = (
        "import sys\n"
        "for n in range(15): print(f'loading {n}', file=sys.stderr)\n"
        "print(file=sys.stderr)\n"
        "print(\"Error: Cannot find module 'left-pad'\", file=sys.stderr)\n"
        "sys.exit(1)\n"
    )
    write_config({"dies": {"command": sys.executable, "args": ["-c", script]}})
    assert toolscript.main(["call", "dies__echo"]) == 4
    tail = "".join(f"\\nloading {n}" for n in range(6, 15))
    assert capsys.readouterr().err == (
        "error: Server 'dies' failed to connect: the server process closed the connection; its stderr ended with:"
        f"{tail}\\nError: Cannot find module 'left-pad'\n"
    )


# -- no traceback from a library at default verbosity --------------------------------------


def test_a_banner_on_stdout_is_one_line_and_a_traceback_only_with_v() -> None:
    banner = (
        "import runpy, sys; print('Banner: toolbox v1 ready', flush=True); sys.argv = ['stdio_server.py']; "
        f"runpy.run_path({str(SERVERS / 'stdio_server.py')!r}, run_name='__main__')"
    )
    write_config({"b": {"command": sys.executable, "args": ["-c", banner]}})
    proc = run_cli("call", "b__echo", '{"text": "still works"}')
    assert (proc.returncode, proc.stdout) == (0, "still works\n"), explain(proc)
    assert proc.stderr == (
        "Server 'b': Failed to parse JSONRPC message from server: Invalid JSON: expected value at "
        "line 1 column 1 (input: 'Banner: toolbox v1 ready')\n"
    ), explain(proc)
    proc = run_cli("-v", "call", "b__echo", '{"text": "still works"}')
    assert proc.returncode == 0 and "Traceback (most recent call last)" in proc.stderr, explain(proc)


@contextlib.contextmanager
def server_process(transport: str, port: int = 0) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The test toolbox over `transport` in a process of its own (so its logs are not ours); yields it and its URL."""
    code = (
        "import asyncio, sys, uvicorn\n"
        f"sys.path.insert(0, {str(SERVERS)!r})\n"
        "from http_server import bind_loopback, make_app\n"
        f"sock = bind_loopback({port})\n"
        "print(sock.getsockname()[1], flush=True)\n"
        f"config = uvicorn.Config(make_app({transport!r}), log_level='critical')\n"
        "asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())  # printed once listening; EOF (a failure) if it died
        yield proc, f"http://127.0.0.1:{port}/{'sse' if transport == 'sse' else 'mcp'}"
    finally:
        proc.kill()
        proc.wait(10)


def test_an_sse_server_going_away_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    toolscript.configure_logging()
    with server_process("sse") as (proc, url):
        write_config({"s": {"type": "sse", "url": url}})
        with Gateway(load_config(), announce=False) as gateway:
            assert gateway.servers()[0]["status"] == "connected"
            proc.kill()
            wait_until(lambda: gateway.servers()[0]["status"] == "failed", timeout=30, what="the lost connection")
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("Server 's': "), err
    assert "Traceback" not in err


def test_a_404_on_session_termination_is_not_reported(capsys: pytest.CaptureFixture[str]) -> None:
    toolscript.configure_logging()
    with server_process("http") as (_, url):
        write_config({"h": {"type": "http", "url": url}})
        gateway = Gateway(load_config(), announce=False).start()
        assert gateway.servers()[0]["status"] == "connected"
    try:
        # Another server on the same port knows nothing of the session: it answers the DELETE with 404.
        with server_process("http", port=int(url.split(":")[2].split("/")[0])):
            gateway.stop()
    finally:
        gateway.stop()
    assert capsys.readouterr().err == ""  # the session is over either way


def test_a_streamable_http_server_dying_mid_call_fails_the_call_at_once_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with server_process("http") as (_, url):
        write_config({"h": {"url": url}})
        # Before, the call waited out the gateway's stop timeout (10 s) for the connection to end,
        # and the SDK warned that it could not end the session at the dead server first.
        code = finish_within(8, lambda: toolscript.main(["call", "h__crash"]))
    assert (code, capsys.readouterr().err) == (
        4,
        f"error: Server 'h' failed (the connection to {url} broke off and nothing answers there any more) "
        "during the call to 'crash'; it is reconnected on the next call.\n",
    )


def test_an_sse_endpoint_configured_as_http_gets_the_hint_to_set_its_type(
    sse_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config({"x": {"url": sse_server.url}})  # ends in /sse, which answers a POST with 405
    assert toolscript.main(["tools", "--server", "x"]) == 4
    assert capsys.readouterr().err == (
        f"error: Server 'x' failed to connect: HTTP 405 from {sse_server.url}: it looks like an SSE endpoint; "
        'set type = "sse" in [servers.x]\n'
    )


def test_an_sse_endpoint_that_answers_400_gets_the_hint_to_set_its_type(capsys: pytest.CaptureFixture[str]) -> None:
    from http_server import serving_app
    from toolbox import build

    inner = build().sse_app()  # GET /sse opens the stream, POST /messages/?session_id=... carries messages

    async def app(scope: Any, receive: Any, send: Any) -> None:
        # An SSE server at one path: a GET opens the stream, a POST is a message, and wants a session id (else 400).
        if scope["type"] == "http" and scope["path"] == "/events":
            scope = {**scope, "path": "/messages/" if scope["method"] == "POST" else "/sse"}
        await inner(scope, receive, send)

    with serving_app(app, "/events") as running:
        write_config({"x": {"url": running.url}, "right": {"type": "sse", "url": running.url}})
        assert toolscript.main(["tools", "--server", "right"]) == 0  # it is an SSE endpoint
        capsys.readouterr()
        assert toolscript.main(["tools", "--server", "x"]) == 4
    # Only our error lines: the server, in this process, logs to the same stderr.
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: Server 'x' failed to connect: HTTP 400 from {running.url}: it looks like an SSE endpoint; "
        'set type = "sse" in [servers.x]'
    ]


# -- OAuth ------------------------------------------------------------------------------


def _config(server: Any) -> None:
    write_config(f'[servers.demo]\ntype = "{server.transport}"\nurl = "{server.url}"\n')


def test_servers_stop_saying_authenticated_after_a_call_fails_for_authentication(oauth_server: Any) -> None:
    from test_gateway_oauth import authenticate

    server = oauth_server(extra_scopes=("extra",))
    _config(server)
    authenticate()
    server.tap.step_up["echo"] = "extra"
    with Gateway(load_config()) as gateway:
        assert gateway.servers()[0]["oauth_status"] == "authenticated"
        with pytest.raises(AuthRequiredError) as refused:
            gateway.call("demo__echo", {"text": "x"})
        [row] = gateway.servers()
        assert (row["oauth_status"], row["oauth_error"]) == ("authentication_failed", refused.value.message)
        assert gateway.call("demo__add", {"a": 1, "b": 2})["isError"] is False
        assert gateway.servers()[0]["oauth_status"] == "authenticated"  # the token works again
