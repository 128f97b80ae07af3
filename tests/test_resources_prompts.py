"""Resources, prompts and completions: the `Gateway` API, the HTTP API, `RemoteGateway` and the CLI.

The peer is the real catalog server (`tests/servers/catalog.py`) over stdio and streamable
HTTP, next to a bare server that declares no resources, prompts or completions, a server
that cannot start, and (at the end) the OAuth-protected demo server carrying the catalog.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from browser import visit
from catalog import LOGO, README, add_catalog, serving
from conftest import BROKEN, ROOT, SERVERS, cli, explain, run_cli, serving_api, write_config
from test_gateway_http import post, request

import auth
from config import load_config, parse_config
from errors import AuthRequiredError, ConfigError, ConnectError, UsageError
from gateway import Gateway
from gateway_http import ApiServer, RemoteGateway
from storage import Store

CATALOG = str(SERVERS / "catalog.py")
TRANSPORTS = ["c", "h"]  # the catalog over stdio and over streamable HTTP


def catalog_stdio(*flags: str, **extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [CATALOG, "stdio", *flags], **extra}


@pytest.fixture(scope="module")
def catalog_http() -> Iterator[Any]:
    with serving("http") as running:
        yield running


@pytest.fixture(scope="module")
def gateway(catalog_http: Any) -> Iterator[Gateway]:
    cfg = parse_config(
        {
            "servers": {
                "c": catalog_stdio(),
                "h": {"url": catalog_http.url, "include_tools": ["no-such-tool"]},  # tool filters leave resources alone
                "bare": catalog_stdio("--bare"),
                "broken": {"command": "/nonexistent/mcp-server"},
            }
        }
    )
    with Gateway(cfg) as running:
        yield running


@pytest.fixture(scope="module")
def api(gateway: Gateway) -> Iterator[ApiServer]:
    server = ApiServer(gateway)  # module-wide: no token file (TOOLSCRIPT_HOME is each test's own)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def resource_rows(server: str) -> list[dict[str, Any]]:
    """What `resources` answers for a catalog configured as `server` (all four pages' worth)."""
    return [
        {
            "server": server,
            "name": "readme",
            "uri": "catalog://readme",
            "description": "What this server is.",
            "mimeType": "text/plain",
            "size": len(README.encode()),
        },
        {
            "server": server,
            "name": "logo",
            "uri": "catalog://logo.png",
            "description": "A small binary image.",
            "mimeType": "image/png",
            "size": len(LOGO),
        },
        {
            "server": server,
            "name": "settings",
            "uri": "catalog://settings.json",
            "description": "",
            "mimeType": "application/json",
        },
        {
            "server": server,
            "name": "broken",
            "uri": "catalog://broken",
            "description": "Always fails to read.",
            "mimeType": "text/plain",
        },
        {
            "server": server,
            "name": "note",
            "uriTemplate": "catalog://notes/{topic}",
            "description": "Notes about a topic.",
            "mimeType": "text/markdown",
        },
        {
            "server": server,
            "name": "blob",
            "uriTemplate": "catalog://blobs/{name}",
            "description": "",
            "mimeType": "application/octet-stream",
        },
    ]


def prompt_names(server: str) -> list[str]:
    return [f"{server}__greet", f"{server}__review", f"{server}__hello"]


REVIEW = {
    "description": "Review a topic with its notes and a picture.",
    "messages": [
        {"role": "user", "content": {"type": "text", "text": "Please review apples."}},
        {
            "role": "user",
            "content": {
                "type": "resource",
                "resource": {
                    "uri": "catalog://notes/apples",
                    "mimeType": "text/markdown",
                    "text": "Notes about apples.",
                },
            },
        },
        {
            "role": "user",
            "content": {"type": "image", "data": base64.b64encode(LOGO).decode(), "mimeType": "image/png"},
        },
        {"role": "assistant", "content": {"type": "text", "text": "I will review it."}},
    ],
}


# == the Gateway API ====================================================================


def test_resources_of_every_server_all_pages_in_config_order(gateway: Gateway) -> None:
    # The bare server declares no resources: it simply has none; the broken one is left out.
    assert gateway.resources() == resource_rows("c") + resource_rows("h")


@pytest.mark.parametrize("server", TRANSPORTS)
def test_resources_of_one_server(gateway: Gateway, server: str) -> None:
    assert gateway.resources(server) == resource_rows(server)


def test_a_server_without_resources_or_prompts_lists_none(gateway: Gateway) -> None:
    assert gateway.resources("bare") == []
    assert gateway.prompts("bare") == []
    assert gateway.call("bare__ping")["content"] == [{"type": "text", "text": "pong"}]


@pytest.mark.parametrize("server", TRANSPORTS)
def test_read_text_binary_and_templated_resources(gateway: Gateway, server: str) -> None:
    assert gateway.read_resource(server, "catalog://readme") == {
        "contents": [{"uri": "catalog://readme", "mimeType": "text/plain", "text": README}]
    }
    [logo] = gateway.read_resource(server, "catalog://logo.png")["contents"]
    assert (logo["mimeType"], base64.b64decode(logo["blob"])) == ("image/png", LOGO)
    assert gateway.read_resource(server, "catalog://notes/pears", timeout=30)["contents"][0]["text"] == (
        "# pears\nNotes about pears.\n"
    )


@pytest.mark.parametrize("server", TRANSPORTS)
def test_prompts_all_pages_and_get_with_arguments(gateway: Gateway, server: str) -> None:
    prompts = gateway.prompts(server)
    assert [prompt["name"] for prompt in prompts] == prompt_names(server)
    assert prompts[0] == {
        "name": f"{server}__greet",
        "server": server,
        "prompt": "greet",
        "description": "Greet someone.",
        "arguments": [{"name": "name", "required": True}, {"name": "style", "required": False}],
    }
    assert gateway.get_prompt(f"{server}__greet", {"name": "Ada", "style": "formal"}) == {
        "description": "Greet someone.",
        "messages": [{"role": "user", "content": {"type": "text", "text": "Say hello to Ada in a formal style."}}],
    }
    assert gateway.get_prompt(f"{server}__review", {"topic": "apples"}) == REVIEW
    assert gateway.get_prompt(f"{server}__hello")["messages"][0]["content"]["text"] == "Hello!"


def test_prompt_arguments_that_are_not_strings_are_sent_as_json_text(gateway: Gateway) -> None:
    text = gateway.get_prompt("c__greet", {"name": 42, "style": True})["messages"][0]["content"]["text"]
    assert text == "Say hello to 42 in a true style."


@pytest.mark.parametrize("server", TRANSPORTS)
def test_completion_of_prompt_and_template_arguments(gateway: Gateway, server: str) -> None:
    assert gateway.complete(server, "style", "f", prompt="greet") == {
        "values": ["formal", "friendly"],
        "total": 2,
        "hasMore": False,
    }
    assert gateway.complete(server, "style", "", prompt="greet", context={"name": "Captain"})["values"] == [
        "pirate",
        "plain",
        "formal",
        "friendly",
    ]
    assert gateway.complete(server, "topic", "ap", uri_template="catalog://notes/{topic}")["values"] == [
        "apples",
        "apricots",
    ]


def test_a_server_without_the_capability_refuses_in_one_line(gateway: Gateway) -> None:
    with pytest.raises(UsageError) as caught:
        gateway.read_resource("bare", "catalog://readme")
    assert str(caught.value) == "Server 'bare' offers no resources (it does not declare the resources capability)."
    with pytest.raises(UsageError, match=r"^Server 'bare' offers no prompts \(it does not declare"):
        gateway.get_prompt("bare__greet", {"name": "x"})
    with pytest.raises(UsageError, match=r"^Server 'bare' offers no completions \(it does not declare"):
        gateway.complete("bare", "style", prompt="greet")


def test_request_errors(gateway: Gateway) -> None:
    with pytest.raises(UsageError) as caught:
        gateway.read_resource("c", "catalog://nope")
    assert str(caught.value) == (
        "Server 'c' refused the read of 'catalog://nope': Unknown resource: catalog://nope. "
        "Run: toolscript resources --server c"
    )
    with pytest.raises(ConnectError) as failed:
        gateway.read_resource("h", "catalog://broken")
    assert str(failed.value) == "Server 'h' answered the read of 'catalog://broken' with an error: the disk is on fire"
    with pytest.raises(ConnectError, match="Unknown prompt: nope"):
        gateway.get_prompt("c__nope")
    with pytest.raises(UsageError, match=r"^'greet' is not a SERVER__PROMPT name \(such as code__review\)"):
        gateway.get_prompt("greet")
    with pytest.raises(UsageError, match="must be a JSON object, not list"):
        gateway.get_prompt("c__greet", ["Ada"])  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="either a prompt or a resource template"):
        gateway.complete("c", "style", prompt="greet", uri_template="catalog://notes/{topic}")
    with pytest.raises(ConfigError, match="Unknown server 'nope'"):
        gateway.resources("nope")
    with pytest.raises(ConnectError, match="cannot run '/nonexistent/mcp-server'"):
        gateway.prompts("broken")


def test_a_failing_listing_leaves_out_only_its_server(catalog_http: Any, caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_config({"servers": {"partial": catalog_stdio("--partial"), "h": {"url": catalog_http.url}}})
    with Gateway(cfg) as gateway:
        # resources/templates/list is missing (METHOD_NOT_FOUND): resources without templates
        assert gateway.resources("partial") == [{"server": "partial", "name": "only", "uri": "partial://only"}]
        with pytest.raises(ConnectError) as caught:
            gateway.prompts("partial")
        assert str(caught.value) == (
            "Server 'partial' answered the prompt list with an error: the prompt shelf collapsed"
        )
        with caplog.at_level("WARNING", logger="toolscript.gateway"):
            assert [prompt["name"] for prompt in gateway.prompts()] == prompt_names("h")
        assert [record.getMessage() for record in caplog.records if record.name == "toolscript.gateway"] == [
            str(caught.value)
        ]


# == the HTTP API and RemoteGateway =====================================================


def test_http_listings_reads_and_prompts(api: ApiServer) -> None:
    assert request(api, "GET", "/resources") == (200, resource_rows("c") + resource_rows("h"))
    assert request(api, "GET", "/resources?server=bare") == (200, [])
    uri = "catalog://notes/a%20b%26c"  # percent signs and all, it must arrive as it is
    code, result = request(api, "GET", "/resources/read?server=h&uri=" + quote(uri, safe=""))
    assert (code, result["contents"]) == (
        200,
        [{"uri": uri, "mimeType": "text/markdown", "text": "# a b&c\nNotes about a b&c.\n"}],
    )
    code, prompts = request(api, "GET", "/prompts?server=c")
    assert code == 200 and [prompt["name"] for prompt in prompts] == prompt_names("c")
    assert post_prompt(api, "c__review", {"topic": "apples"}) == (200, REVIEW)
    code, result = request(api, "POST", "/prompts/h__hello", "")  # an empty body means no arguments
    assert code == 200 and result["messages"][0]["content"]["text"] == "Hello!"


def test_http_completion(api: ApiServer) -> None:
    body = {"server": "c", "prompt": "greet", "argument": "style", "value": "f"}
    assert request(api, "POST", "/complete", json.dumps(body)) == (
        200,
        {"values": ["formal", "friendly"], "total": 2, "hasMore": False},
    )
    body = {"server": "h", "uriTemplate": "catalog://notes/{topic}", "argument": "topic", "value": "b"}
    assert request(api, "POST", "/complete?timeout=30", json.dumps(body))[1]["values"] == ["bananas"]
    code, payload = request(api, "POST", "/complete", json.dumps({"server": "c", "argument": "x", "bogus": 1}))
    assert code == 400 and payload["error"].endswith("; unknown key 'bogus'.")
    assert request(api, "POST", "/complete", json.dumps({"prompt": "greet"}))[0] == 400


def test_http_errors_as_for_tools(api: ApiServer) -> None:
    assert request(api, "GET", "/resources/read?server=c") == (
        400,
        {"error": "Name the resource: GET /resources/read?server=NAME&uri=URI."},
    )
    assert request(api, "GET", "/resources/read?server=c&uri=catalog://readme&timeout=0")[0] == 400
    assert request(api, "GET", "/resources/read?server=c&uri=catalog://nope")[0] == 404
    assert request(api, "GET", "/resources/read?server=bare&uri=catalog://readme") == (
        404,
        {
            "error": "Server 'bare' offers no resources (it does not declare the resources capability).",
            "kind": "usage",
            "server": "bare",
        },
    )
    code, payload = request(api, "GET", "/resources/read?server=c&uri=catalog://broken")
    assert code == 502 and payload["error"].endswith("with an error: the disk is on fire")
    assert request(api, "GET", "/resources?server=nope")[0] == 404
    assert request(api, "GET", "/prompts?server=broken")[0] == 502
    assert post_prompt(api, "nosep", {})[0] == 404
    assert request(api, "POST", "/prompts/c__greet", "[1]")[0] == 400
    assert request(api, "POST", "/prompts/", "{}")[0] == 404


def test_http_guards_as_for_tools(api: ApiServer) -> None:
    for path in ("/resources", "/resources/read?server=c&uri=catalog://readme", "/prompts"):
        assert request(api, "GET", path, headers={"Host": "evil.example"})[0] == 403
        assert request(api, "GET", path, headers={"Origin": "http://evil.example"})[0] == 403
    for path in ("/prompts/c__hello", "/complete"):
        assert request(api, "POST", path, "{}", headers={"Origin": "http://evil.example"})[0] == 403
        assert request(api, "POST", path, "{}", headers={"Content-Type": "text/plain"})[0] == 415


def post_prompt(api: ApiServer, name: str, arguments: dict[str, Any]) -> tuple[int, Any]:
    return request(api, "POST", f"/prompts/{name}", json.dumps(arguments))


def test_remote_gateway_answers_as_the_gateway(api: ApiServer, gateway: Gateway) -> None:
    remote = RemoteGateway(api.url, api.token)
    assert remote.resources() == gateway.resources()
    assert remote.resources("h") == resource_rows("h")
    assert remote.read_resource("c", "catalog://logo.png") == gateway.read_resource("c", "catalog://logo.png")
    assert remote.read_resource("c", "catalog://readme", timeout=30)["contents"][0]["text"] == README
    assert remote.read_resource("h", "catalog://notes/x%26y")["contents"][0]["text"] == "# x&y\nNotes about x&y.\n"
    assert remote.prompts() == gateway.prompts()
    assert remote.get_prompt("h__review", {"topic": "apples"}, timeout=30) == REVIEW
    assert remote.complete("c", "topic", "ch", uri_template="catalog://notes/{topic}")["values"] == ["cherries"]
    assert remote.complete("c", "style", "", prompt="greet", context={"name": "Captain"}, timeout=30)["values"][0] == (
        "pirate"
    )
    with pytest.raises(UsageError, match="offers no resources"):
        remote.read_resource("bare", "catalog://readme")
    with pytest.raises(UsageError, match="Unknown resource: catalog://nope"):
        remote.read_resource("h", "catalog://nope")
    with pytest.raises(ConnectError, match="the disk is on fire"):
        remote.read_resource("h", "catalog://broken")
    remote.close()
    assert post(api, "bare__ping")[1]["content"][0]["text"] == "pong"  # tools keep working alongside


# == the CLI ============================================================================


@pytest.fixture
def servers() -> Path:
    return write_config(
        {"c": catalog_stdio(), "bare": catalog_stdio("--bare"), "broken": {"command": "/nonexistent/mcp-server"}}
    )


RESOURCE_LINES = (
    "c  catalog://readme         readme    text/plain, 50 bytes\n"
    "c  catalog://logo.png       logo      image/png, 30 bytes\n"
    "c  catalog://settings.json  settings  application/json\n"
    "c  catalog://broken         broken    text/plain\n"
    "c  catalog://notes/{topic}  note      template, text/markdown\n"
    "c  catalog://blobs/{name}   blob      template, application/octet-stream\n"
)
PROMPT_LINES = (
    "c__greet   Greet someone. (arguments: name, style?)\n"
    "c__review  Review a topic with its notes and a picture. (arguments: topic)\n"
    "c__hello   A prompt without arguments.\n"
)


def test_cli_resources_and_prompts_list_one_per_line(servers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A configured server that could not be listed fails the listing (after what could be listed).
    assert cli(capsys, "resources") == (4, RESOURCE_LINES, BROKEN)
    assert cli(capsys, "prompts") == (4, PROMPT_LINES, BROKEN)
    assert cli(capsys, "resources", "--server", "bare") == (0, "", "")
    assert cli(capsys, "prompts", "--server", "bare") == (0, "", "")
    code, out, err = cli(capsys, "resources", "--server", "c", "--json")
    assert (code, json.loads(out), err) == (0, resource_rows("c"), "")
    code, out, _ = cli(capsys, "prompts", "--server", "c", "--json")
    assert [prompt["name"] for prompt in json.loads(out)] == prompt_names("c")


def test_cli_listing_failures(servers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "resources", "--server", "broken") == (4, "", BROKEN)
    assert cli(capsys, "prompts", "--server", "broken") == (4, "", BROKEN)
    code, _, err = cli(capsys, "resources", "--server", "nope")
    assert code == 2 and "Unknown server 'nope'" in err


def test_cli_listing_of_a_partial_server(capsys: pytest.CaptureFixture[str]) -> None:
    write_config({"partial": catalog_stdio("--partial")})
    assert cli(capsys, "resources") == (0, "partial  partial://only  only\n", "")
    assert cli(capsys, "prompts", "--server", "partial") == (
        4,
        "",
        "error: Server 'partial' answered the prompt list with an error: the prompt shelf collapsed\n",
    )
    code, out, err = cli(capsys, "prompts")  # all servers: the failure is reported, not fatal
    assert (code, out) == (0, "")
    assert err == "Server 'partial' answered the prompt list with an error: the prompt shelf collapsed\n"


def test_cli_read_prints_text_and_writes_files(
    servers: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli(capsys, "read", "c", "catalog://readme") == (0, README, "")
    assert cli(capsys, "read", "c", "catalog://notes/figs") == (0, "# figs\nNotes about figs.\n", "")
    target = tmp_path / "logo.png"
    assert cli(capsys, "read", "c", "catalog://logo.png", "-o", str(target)) == (
        0,
        "",
        f"Wrote {len(LOGO)} bytes to {target}.\n",
    )
    assert target.read_bytes() == LOGO
    assert cli(capsys, "-q", "read", "c", "catalog://readme", "--output", str(target)) == (0, "", "")
    assert target.read_text() == README
    code, out, _ = cli(capsys, "read", "c", "catalog://logo.png", "--json")
    assert json.loads(out)["contents"][0]["blob"] == base64.b64encode(LOGO).decode()
    with pytest.raises(SystemExit) as usage:
        cli(capsys, "read", "c", "catalog://readme", "-o", str(target), "--json")
    assert usage.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    code, _, err = cli(capsys, "read", "c", "catalog://readme", "-o", str(tmp_path / "no" / "such" / "dir"))
    assert (code, err) == (2, f"error: Cannot write {tmp_path / 'no' / 'such' / 'dir'}: No such file or directory.\n")


def test_cli_read_never_writes_through_a_planted_symbolic_link(
    servers: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "out.png").symlink_to(victim)
    assert cli(capsys, "read", "c", "catalog://logo.png", "-o", str(tmp_path / "out.png")) == (
        2,
        "",
        f"error: Cannot write {tmp_path / 'out.png'}: it is a symbolic link; refusing to write through it "
        "(remove it, or give another path).\n",
    )
    assert victim.read_text() == "keep me"


def test_cli_read_errors(servers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "read", "bare", "catalog://readme") == (
        2,
        "",
        "error: Server 'bare' offers no resources (it does not declare the resources capability).\n",
    )
    assert cli(capsys, "read", "c", "catalog://nope") == (
        2,
        "",
        (
            "error: Server 'c' refused the read of 'catalog://nope': Unknown resource: catalog://nope. "
            "Run: toolscript resources --server c\n"
        ),
    )
    assert cli(capsys, "read", "c", "catalog://broken") == (
        4,
        "",
        "error: Server 'c' answered the read of 'catalog://broken' with an error: the disk is on fire\n",
    )
    assert cli(capsys, "read", "broken", "catalog://readme")[0] == 4


def test_cli_prompt_renders_messages(servers: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli(capsys, "prompt", "c__greet", '{"name": "Ada"}') == (
        0,
        "[user]\nSay hello to Ada in a plain style.\n",
        "",
    )
    assert cli(capsys, "prompt", "c__review", '{"topic": "apples"}') == (
        0,
        (
            "[user]\nPlease review apples.\n"
            "[user]\n[resource: catalog://notes/apples]\nNotes about apples.\n"
            f"[user]\n[image: image/png, {len(LOGO)} bytes]\n"
            "[assistant]\nI will review it.\n"
        ),
        "",
    )
    arguments = tmp_path / "args.json"
    arguments.write_text('{"topic": "apples"}')
    code, out, _ = cli(capsys, "prompt", "c__review", f"@{arguments}", "--json")
    assert (code, json.loads(out)) == (0, REVIEW)
    assert cli(capsys, "prompt", "c__hello") == (0, "[user]\nHello!\n", "")


def test_cli_prompt_takes_name_value_pairs_as_call_does(servers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "prompt", "c__greet", "name=Ada") == (0, "[user]\nSay hello to Ada in a plain style.\n", "")
    assert cli(capsys, "prompt", "c__greet", "name=Ada", "name=Bob")[0] == 2  # given twice


def test_cli_prompt_errors(servers: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "prompt", "greet") == (
        2,
        "",
        "error: 'greet' is not a SERVER__PROMPT name (such as code__review). Run: toolscript prompts\n",
    )
    code, _, err = cli(capsys, "prompt", "c__greet", "{not json")
    assert code == 2 and err.startswith("error: The arguments for 'c__greet' (ARGS) are not valid JSON")
    assert cli(capsys, "prompt", "bare__greet")[0] == 2
    code, _, err = cli(capsys, "prompt", "c__greet")  # a required argument is missing: the server says so
    assert code == 4 and "Missing required arguments" in err


def read_binary(*args: str, stdout: int | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(ROOT / "toolscript.py"), "read", *args],
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=60,
    )


def read_on_a_terminal(*args: str) -> tuple[subprocess.CompletedProcess[bytes], bytes]:
    """Run `toolscript read ARGS` with stdout on a pseudo-terminal; return it and what the terminal got."""
    controller, terminal = pty.openpty()
    try:
        proc = read_binary(*args, stdout=terminal)
        os.set_blocking(controller, False)  # the child has exited: take what is there, never wait
        try:
            shown = os.read(controller, 65536)
        except (BlockingIOError, OSError):
            shown = b""
    finally:
        os.close(terminal)
        os.close(controller)
    return proc, shown


def test_binary_content_goes_raw_to_a_pipe(servers: Path) -> None:
    proc = read_binary("c", "catalog://logo.png")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, LOGO, b"")


def test_binary_content_is_refused_on_a_terminal(servers: Path) -> None:
    proc, shown = read_on_a_terminal("c", "catalog://logo.png")
    assert proc.returncode == 2
    assert shown == b""  # neither the bytes nor base64 reached the terminal
    assert proc.stderr.decode() == (
        f"error: Resource 'catalog://logo.png' of server 'c' is binary (image/png, {len(LOGO)} bytes); not printing "
        "it to a terminal. Run: toolscript read c catalog://logo.png -o FILE\n"
    )


def test_text_on_a_terminal_ends_with_a_newline(servers: Path) -> None:
    proc, shown = read_on_a_terminal("c", "catalog://settings.json")
    assert proc.returncode == 0, proc.stderr
    assert shown == b'{"theme": "dark"}\r\n'  # the terminal turns \n into \r\n


# -- through a running gateway (TOOLSCRIPT_GATEWAY_URL) -------------------------------


@pytest.fixture
def running_gateway(servers: Path) -> Iterator[str]:
    gateway = Gateway(load_config()).start()
    try:
        with serving_api(gateway) as api:
            yield api.url
    finally:
        gateway.stop()


def test_cli_through_the_gateway_matches_direct_use(
    running_gateway: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    commands = [
        ["resources"],
        ["resources", "--server", "c", "--json"],
        ["resources", "--server", "bare"],
        ["resources", "--server", "broken"],
        ["read", "c", "catalog://readme"],
        ["read", "c", "catalog://logo.png", "--json"],
        ["read", "c", "catalog://nope"],
        ["read", "bare", "catalog://readme"],
        ["read", "c", "catalog://broken"],
        ["prompts"],
        ["prompts", "--server", "c", "--json"],
        ["prompt", "c__review", '{"topic": "apples"}'],
        ["prompt", "c__greet", '{"name": "Ada"}', "--json"],
        ["prompt", "c__nope"],
        ["prompt", "bare__greet"],
        ["prompt", "nosep"],
    ]
    direct = [cli(capsys, *command) for command in commands]
    monkeypatch.setenv("TOOLSCRIPT_GATEWAY_URL", running_gateway)
    through = [cli(capsys, *command) for command in commands]
    assert [result[0] for result in direct] == [4, 0, 0, 4, 0, 0, 2, 2, 4, 4, 0, 0, 0, 4, 2, 2]
    assert through == direct
    target = tmp_path / "through.png"
    assert cli(capsys, "-q", "read", "c", "catalog://logo.png", "-o", str(target)) == (0, "", "")
    assert target.read_bytes() == LOGO


# == OAuth: the same token path for every request kind ==================================

NAME = "demo"


@pytest.fixture
def protected(oauth_server: Any) -> Any:
    server = oauth_server(extend=add_catalog)
    write_config(f'[servers.{NAME}]\nurl = "{server.url}"\n')
    return server


def authenticate() -> None:
    record = auth.authenticate(
        load_config().server(NAME), Store(), open_browser=visit, show_url=lambda url: None, timeout=30
    )
    assert record is not None and record.tokens is not None


def test_oauth_protected_resources_prompts_and_completions(protected: Any) -> None:
    authenticate()
    store = Store()
    record = store.load(NAME)
    record.tokens.expires_at = time.time() - 60  # expired: the first request refreshes it
    store.save(NAME, record)
    first = len(protected.tap.seen)
    with Gateway(load_config()) as gateway:
        rows = gateway.resources(NAME)  # unpaged, without sizes: the demo server's own listing
        assert {row.get("uri") or row["uriTemplate"] for row in rows} == {
            "catalog://readme",
            "catalog://logo.png",
            "catalog://settings.json",
            "catalog://broken",
            "catalog://notes/{topic}",
            "catalog://blobs/{name}",
        }
        assert gateway.read_resource(NAME, "catalog://readme")["contents"][0]["text"] == README
        assert [prompt["prompt"] for prompt in gateway.prompts(NAME)] == ["greet", "review", "hello"]
        assert gateway.get_prompt(f"{NAME}__review", {"topic": "apples"}) == REVIEW
        assert gateway.complete(NAME, "style", "pl", prompt="greet")["values"] == ["plain"]
    refreshes = [
        seen for seen in protected.requests_to("/token", "POST") if seen.form.get("grant_type") == "refresh_token"
    ]
    assert len(refreshes) == 1
    token = store.load(NAME).tokens.access_token
    methods = set()
    for seen in protected.tap.seen[first:]:
        if seen.path == "/mcp" and seen.method == "POST":
            assert seen.headers.get("authorization") == f"Bearer {token}"
            methods.add(json.loads(seen.body).get("method"))
    assert {
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "prompts/list",
        "prompts/get",
        "completion/complete",
    } <= methods


def test_oauth_not_authenticated_exits_3_with_the_command_to_run(protected: Any) -> None:
    expected = f"Run: toolscript auth {NAME}"
    for command in (
        ["resources"],
        ["read", NAME, "catalog://readme"],
        ["prompts", "--server", NAME],
        ["prompt", f"{NAME}__hello"],
    ):
        proc = run_cli(*command)
        assert proc.returncode == 3, explain(proc)
        assert proc.stdout == "" and expected in proc.stderr, explain(proc)
        assert len(proc.stderr.strip().splitlines()) == 1, explain(proc)
    with Gateway(load_config(), announce=False) as gateway:
        assert gateway.resources() == []  # an unauthenticated server is not connected: it has none to list
        with pytest.raises(AuthRequiredError, match=expected):
            gateway.read_resource(NAME, "catalog://readme")
