"""toolscript as an MCP server: the SDK's own client against `toolscript serve` over its stdio,
and against `toolscript gateway`'s `/mcp` over streamable HTTP (the tests marked with FRONTS run
against both; the rest are about serve's stdio and its process).

The upstream servers are real: `tests/servers/everything.py` over stdio and over streamable
HTTP, the OAuth-protected demo server (tests/oauth_server.py) with tokens from the real
`auth` flow, and the test toolbox. What the client sees is checked, and where it matters
what the upstream saw (its pid, its log level, a cancelled handler, a refresh at the
authorization server).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import httpx2
import mcp_types as types
import pytest
from browser import visit
from conftest import (
    INITIALIZE,
    ROOT,
    SERVERS,
    gateway_variables,
    lock_racer,
    process_exists,
    stdio_server,
    wait_until,
    write_config,
)
from everything import BLOB, serving_everything
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from oauth_server import OAuthTestServer
from pydantic import TypeAdapter

import auth
from config import load_config
from storage import Store

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")

EVERYTHING = str(SERVERS / "everything.py")
RAW = TypeAdapter(dict[str, Any])
TIMEOUT = 60.0  # any single wait; only a hang comes near it


def everything(name: str) -> dict[str, Any]:
    return {"command": sys.executable, "args": [EVERYTHING, name]}


class Client:
    """The test's MCP client: a `ClientSession` to `toolscript serve`, recording what came outside answers."""

    def __init__(self) -> None:
        self.session: ClientSession
        self.received: list[Any] = []  # notifications, in order
        self.errors: list[Exception] = []  # what the SDK could not read as MCP
        self._arrived = anyio.Event()
        self.elicitations: list[types.ElicitRequestParams] = []
        self.elicitation_cancelled = anyio.Event()
        self.samplings: list[types.CreateMessageRequestParams] = []

    async def on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            self.errors.append(message)
        else:
            self.received.append(message)
            self._arrived.set()
            self._arrived = anyio.Event()

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        pass  # also teed to on_message

    async def on_elicitation(self, ctx: ClientRequestContext, params: types.ElicitRequestParams) -> Any:
        self.elicitations.append(params)
        if params.message.endswith(": Wait for me"):  # everything's ask_then_give_up: it cancels this request
            try:
                Path(self.give_up_when).touch()
                await anyio.sleep_forever()
            finally:
                self.elicitation_cancelled.set()
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async def on_sampling(self, ctx: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
        self.samplings.append(params)
        token = (ctx.meta or {}).get("progress_token")
        if token is not None:
            await ctx.session.send_progress_notification(token, 0.5, 1.0, "thinking")
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled"), model="test-model"
        )

    def mark(self) -> int:
        """A position in `received`: `wait_for(..., since=mark)` looks only at what came after it."""
        return len(self.received)

    async def wait_for(self, accepts: Callable[[Any], bool], since: int = 0, what: str = "a notification") -> Any:
        with anyio.fail_after(TIMEOUT):
            while True:
                found = next((m for m in self.received[since:] if accepts(m)), None)
                if found is not None:
                    return found
                await self._arrived.wait()

    async def list_until(self, accepts: Callable[[set[str]], bool]) -> set[str]:
        """The tool names, once they are what `accepts` wants (listing again after each list_changed)."""
        with anyio.fail_after(TIMEOUT):
            while True:
                since = self.mark()
                names = {tool.name for tool in (await self.session.list_tools()).tools}
                if accepts(names):
                    return names
                await self.wait_for(lambda m: isinstance(m, types.ToolListChangedNotification), since)

    async def call_raw(self, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """tools/call without the SDK client's result checks (so a broken output schema gets through)."""
        request = types.CallToolRequest(params=types.CallToolRequestParams(name=name, arguments=arguments or {}))
        return await self.session.send_request(request, RAW)


FRONTS = ["serve", "mcp"]  # `toolscript serve` over stdio, `toolscript gateway`'s /mcp over streamable HTTP


@contextlib.asynccontextmanager
async def serve(
    config: Path, *options: str, home: Path, errlog: Any, client: Client | None = None, front: str = "serve"
) -> AsyncIterator[Client]:
    """Start a front over `config` and connect the SDK client to it: `toolscript serve OPTIONS` over stdio,
    or for front "mcp" `toolscript gateway` and its `/mcp` (`/mcp/NAME` for `--server NAME`)."""
    client = client or Client()
    env = {**os.environ, "TOOLSCRIPT_HOME": str(home)}
    try:
        async with contextlib.AsyncExitStack() as stack:
            if front == "serve":
                params = StdioServerParameters(
                    command=sys.executable,
                    args=[str(ROOT / "toolscript.py"), "-v", "--config", str(config), "serve", *options],
                    env=env,
                )
                read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
            else:
                read, write = await stack.enter_async_context(gateway_mcp(config, *options, env=env, errlog=errlog))
            client.session = await stack.enter_async_context(
                ClientSession(
                    read,
                    write,
                    message_handler=client.on_message,
                    logging_callback=client.on_log,
                    elicitation_callback=client.on_elicitation,
                    sampling_callback=client.on_sampling,
                )
            )
            with anyio.fail_after(TIMEOUT):
                await client.session.initialize()
            yield client
    except BaseException:
        print(f"--- stderr of toolscript {front}\n{stderr_of(errlog)}")  # shown with the failure
        raise


@contextlib.asynccontextmanager
async def gateway_mcp(config: Path, *options: str, env: dict[str, str], errlog: Any) -> AsyncIterator[Any]:
    """`toolscript gateway` (serve's options: `--server NAME` picks /mcp/NAME) and streams to its MCP endpoint."""
    path, passed = "/mcp", []
    for option, value in zip(options[::2], options[1::2], strict=True):
        if option == "--server":
            path = f"/mcp/{value}"
        else:
            passed += [option, value]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "toolscript.py"), "-v", "--config", str(config), "gateway", *passed],
        stdout=subprocess.PIPE,
        stderr=errlog,
        text=True,
        env=env,
    )
    try:
        with anyio.fail_after(TIMEOUT):
            lines = [await anyio.to_thread.run_sync(proc.stdout.readline) for _ in range(2)]  # type: ignore[union-attr]
        variables = gateway_variables(lines)
        headers = {"Authorization": f"Bearer {variables['TOOLSCRIPT_GATEWAY_TOKEN']}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(TIMEOUT, read=None)) as http,
            streamable_http_client(variables["TOOLSCRIPT_GATEWAY_URL"] + path, http_client=http) as (read, write),
        ):
            yield read, write
    finally:
        proc.terminate()
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def texts(result: Any) -> list[str]:
    content = result["content"] if isinstance(result, dict) else result.content
    return [item["text"] if isinstance(item, dict) else item.text for item in content]


def stderr_of(errlog: Any) -> str:
    errlog.flush()
    return Path(errlog.name).read_text(errors="replace")


# == several servers, one client: everything passes through ================================


@dataclass
class Tour:
    """One `toolscript serve` over three servers (stdio, HTTP, OAuth), shared by the tests below."""

    portal: Any
    client: Client
    oauth: OAuthTestServer
    errlog: Any
    tmp: Path
    calls: list[Any] = field(default_factory=list)

    def run(self, func: Callable[..., Any], *args: Any) -> Any:
        return self.portal.call(func, *args)


@pytest.fixture(scope="module", params=FRONTS)
def tour(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tour]:
    tmp = tmp_path_factory.mktemp(f"tour-{request.param}")
    home = tmp / "home"
    with contextlib.ExitStack() as stack:
        remote = stack.enter_context(serving_everything("remote"))
        oauth = stack.enter_context(OAuthTestServer())
        config = write_config(
            {"local": everything("local"), "remote": {"url": remote}, "demo": {"url": oauth.url}},
            tmp / "toolscript.toml",
        )
        record = auth.authenticate(
            load_config(str(config)).server("demo"),
            Store(home),
            open_browser=visit,
            show_url=lambda url: None,
            timeout=30,
        )
        assert record is not None
        errlog = stack.enter_context(open(tmp / "front.stderr", "w+"))
        portal = stack.enter_context(anyio.from_thread.start_blocking_portal())
        # --wait: the first listings wait for every server, however slowly the machine starts them.
        client = stack.enter_context(
            portal.wrap_async_context_manager(
                serve(config, "--wait", str(TIMEOUT), home=home, errlog=errlog, front=request.param)
            )
        )
        client.give_up_when = str(tmp / "client-waits")
        yield Tour(portal, client, oauth, errlog, tmp)


def test_tools_of_every_server_are_listed_as_server__tool_with_their_annotations(tour: Tour) -> None:
    tools = {tool.name: tool for tool in tour.run(tour.client.session.list_tools).tools}
    for server in ("local", "remote"):
        assert {f"{server}__echo", f"{server}__add", f"{server}__wrong_shape"} <= set(tools), sorted(tools)
    assert {"demo__echo", "demo__whoami"} <= set(tools)
    add = tools["remote__add"]
    assert add.title == "Add two numbers"
    assert add.description == "add of remote"
    assert add.annotations is not None and add.annotations.read_only_hint and add.annotations.idempotent_hint
    assert add.output_schema == {"type": "object", "properties": {"total": {"type": "integer"}}, "required": ["total"]}


def test_tool_results_pass_through_as_sent(tour: Tour) -> None:
    client = tour.client
    added = tour.run(client.call_raw, "local__add", {"a": 2, "b": 3})
    assert added == {
        "content": [{"type": "text", "text": "5"}],
        "structuredContent": {"total": 5},
        "_meta": {"origin": "local"},
        "isError": False,
    }
    # serve does not check structured content against the output schema; the client decides.
    assert tour.run(client.call_raw, "remote__wrong_shape")["structuredContent"] == {"n": "not a number"}
    failed = tour.run(client.call_raw, "remote__fail")
    assert failed["isError"] is True and texts(failed) == ["it broke"]
    assert texts(tour.run(client.call_raw, "demo__echo", {"text": "through OAuth"})) == ["through OAuth"]
    with pytest.raises(MCPError) as unknown:
        tour.run(client.call_raw, "nowhere__echo", {"text": "x"})
    assert unknown.value.code == types.INVALID_PARAMS
    with pytest.raises(MCPError) as refused:  # the upstream's own error answer, as it sent it
        tour.run(client.call_raw, "local__no_such_tool")
    assert (refused.value.code, refused.value.message) == (types.INVALID_PARAMS, "Unknown tool: no_such_tool")


def test_progress_and_log_messages_reach_the_client(tour: Tour) -> None:
    client = tour.client
    progress: list[tuple[float, float | None, str | None]] = []

    async def scenario() -> tuple[Any, list[Any]]:
        since = client.mark()
        await client.session.set_logging_level("info")

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append((value, total, message))

        result = await client.session.call_tool("local__progress", {"steps": 3}, progress_callback=on_progress)
        await client.wait_for(
            lambda m: isinstance(m, types.LoggingMessageNotification) and m.params.data == "step 3", since
        )
        logs = [m.params for m in client.received[since:] if isinstance(m, types.LoggingMessageNotification)]
        return result, logs

    result, logs = tour.run(scenario)
    assert texts(result) == ["3 steps done"]
    assert progress == [(1, 3, "step 1 of 3"), (2, 3, "step 2 of 3"), (3, 3, "step 3 of 3")]
    assert [(log.level, log.logger, log.data) for log in logs] == [
        ("info", "local__local", f"step {n}") for n in (1, 2, 3)
    ]
    # The level was passed on to every server that offers logging.
    for server in ("local", "remote"):
        assert texts(tour.run(client.call_raw, f"{server}__log_level")) == ["info"]


def test_cancelling_a_call_cancels_it_at_the_server(tour: Tour) -> None:
    started, cancelled = tour.tmp / "slow-started", tour.tmp / "slow-cancelled"

    async def scenario() -> None:
        with anyio.CancelScope() as scope:

            async def cancel_once_started() -> None:
                with anyio.fail_after(TIMEOUT):
                    while not started.exists():
                        await anyio.sleep(0.01)
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_once_started)
                await tour.client.call_raw("remote__slow", {"started": str(started), "cancelled": str(cancelled)})
        assert scope.cancelled_caught

    tour.run(scenario)
    wait_until(cancelled.exists, TIMEOUT, "the upstream handler to be cancelled")


def test_elicitation_from_a_server_is_answered_by_the_client(tour: Tour) -> None:
    result = tour.run(tour.client.call_raw, "remote__ask", {"message": "What is your name?"})
    assert texts(result) == ["accept {'name': 'Ada'}"]
    asked = tour.client.elicitations[-1]
    assert asked.message == "Server 'remote' asks: What is your name?"  # the client shows it as toolscript's
    assert asked.requested_schema["properties"]["name"] == {"type": "string", "default": "nobody"}


def test_a_server_cancelling_its_elicitation_cancels_it_at_the_client(tour: Tour) -> None:
    result = tour.run(tour.client.call_raw, "local__ask_then_give_up", {"when": tour.client.give_up_when})
    assert texts(result) == ["gave up"]

    async def cancelled() -> None:
        with anyio.fail_after(TIMEOUT):
            await tour.client.elicitation_cancelled.wait()

    tour.run(cancelled)


def test_sampling_from_a_server_is_answered_by_the_client_with_progress_back(tour: Tour) -> None:
    result = tour.run(tour.client.call_raw, "remote__sample", {"prompt": "Say something"})
    assert texts(result) == ["sampled (model test-model, progress [0.5])"]
    asked = tour.client.samplings[-1]
    assert asked.messages[0].content.text == "Say something"  # type: ignore[union-attr]
    assert asked.system_prompt == "Server 'remote' asks (through toolscript) for this completion."


def test_resources_and_templates_are_read_from_the_server_that_listed_them(tour: Tour) -> None:
    session = tour.client.session
    uris = {str(resource.uri) for resource in tour.run(session.list_resources).resources}
    assert {"test://local/static", "test://local/blob", "test://remote/static", "test://remote/blob"} <= uris
    templates = {t.uri_template for t in tour.run(session.list_resource_templates).resource_templates}
    assert {"test://local/items/{id}", "test://remote/items/{id}"} <= templates
    assert tour.run(session.read_resource, "test://remote/static").contents[0].text == "static text of remote"
    blob = tour.run(session.read_resource, "test://local/blob").contents[0]
    assert (blob.blob, blob.mime_type) == (BLOB, "image/png")
    assert tour.run(session.read_resource, "test://remote/items/7").contents[0].text == "item 7 of remote"
    with pytest.raises(MCPError) as unknown:
        tour.run(session.read_resource, "test://elsewhere/static")
    assert unknown.value.code == types.INVALID_PARAMS


def test_prompts_and_completions_are_routed_by_name(tour: Tour) -> None:
    session = tour.client.session
    prompts = {prompt.name: prompt for prompt in tour.run(session.list_prompts).prompts}
    assert {"local__greet", "remote__greet"} <= set(prompts)
    assert prompts["remote__greet"].description == "A greeting from remote"
    got = tour.run(lambda: session.get_prompt("remote__greet", {"who": "Bo"}))
    assert got.messages[0].content.text == "Hello Bo from remote"  # type: ignore[union-attr]
    names = tour.run(
        lambda: session.complete(
            types.PromptReference(type="ref/prompt", name="local__greet"), {"name": "who", "value": "al"}
        )
    )
    assert names.completion.values == ["alice", "albert"]
    ids = tour.run(
        lambda: session.complete(
            types.ResourceTemplateReference(type="ref/resource", uri="test://remote/items/{id}"),
            {"name": "id", "value": "1"},
        )
    )
    assert ids.completion.values == ["1", "10"]


def test_resource_updates_reach_a_subscribed_client(tour: Tour) -> None:
    client = tour.client
    uri = "test://remote/static"

    async def scenario() -> tuple[list[str], list[str]]:
        since = client.mark()
        await client.session.subscribe_resource(uri)
        touched = texts(await client.call_raw("remote__touch", {"uri": uri}))
        await client.wait_for(lambda m: isinstance(m, types.ResourceUpdatedNotification) and m.params.uri == uri, since)
        await client.session.unsubscribe_resource(uri)
        return touched, texts(await client.call_raw("remote__touch", {"uri": uri}))

    assert tour.run(scenario) == (["subscribed: True"], ["subscribed: False"])


def test_a_changed_tool_list_reaches_the_client(tour: Tour) -> None:
    client = tour.client

    async def scenario() -> list[str]:
        since = client.mark()
        assert texts(await client.call_raw("local__grow", {"name": "sprout"})) == ["added sprout"]
        await client.wait_for(lambda m: isinstance(m, types.ToolListChangedNotification), since)
        names = [tool.name for tool in (await client.session.list_tools()).tools]
        assert "local__sprout" in names
        return texts(await client.call_raw("local__sprout"))

    assert tour.run(scenario) == ["I am sprout"]


def test_stdout_carries_only_mcp_and_logs_go_to_stderr(tour: Tour) -> None:
    # Every line serve wrote was an MCP message (else the SDK client would have reported it) and
    # the stdio upstream's stderr went to serve's log, which is on stderr (shown at -v only).
    assert tour.client.errors == []
    assert "Traceback" not in stderr_of(tour.errlog)


@pytest.mark.parametrize("front", FRONTS)
def test_a_server_cannot_take_over_reads_of_another_servers_resources(tmp_path: Path, front: str) -> None:
    hostile = {"command": sys.executable, "args": [EVERYTHING, "evil", "local"]}  # lists and links local's URIs
    config = write_config({"local": everything("local"), "evil": hostile})

    async def scenario() -> None:
        with tempfile.NamedTemporaryFile("w+") as errlog:
            async with serve(
                config, "--wait", str(TIMEOUT), home=tmp_path / "home", errlog=errlog, front=front
            ) as client:
                session = client.session
                # A link in evil's result names evil; the resource it points at is still read from local.
                linked = await client.call_raw("evil__link", {"uri": "test://local/blob"})
                blob = (await session.read_resource("test://local/blob")).contents[0]
                assert blob.blob == BLOB  # type: ignore[union-attr]
                assert [item["uri"] for item in linked["content"]] == ["toolscript:evil:test://local/blob"]
                told = (await session.read_resource("toolscript:evil:test://local/blob")).contents[0]
                assert told.text == "test://local/blob as evil tells it"  # type: ignore[union-attr]
                await client.call_raw("evil__link", {"uri": "test://local/items/7"})
                item = (await session.read_resource("test://local/items/7")).contents[0]
                assert item.text == "item 7 of local"  # type: ignore[union-attr]
                # Both list test://local/static: each is shown with its server, and a plain read is refused.
                uris = {str(resource.uri) for resource in (await session.list_resources()).resources}
                assert {"toolscript:local:test://local/static", "toolscript:evil:test://local/static"} <= uris
                assert {"test://local/blob", "test://evil/static"} <= uris and "test://local/static" not in uris
                with pytest.raises(MCPError) as ambiguous:
                    await session.read_resource("test://local/static")
                assert ambiguous.value.code == types.INVALID_PARAMS
                assert "toolscript:local:test://local/static" in ambiguous.value.message
                named = (await session.read_resource("toolscript:local:test://local/static")).contents[0]
                assert (named.uri, named.text) == ("toolscript:local:test://local/static", "static text of local")  # type: ignore[union-attr]

    anyio.run(scenario)


# == one server: names pass through ========================================================


@pytest.mark.parametrize("front", FRONTS)
def test_one_server_is_served_with_its_own_names(tmp_path: Path, front: str) -> None:
    config = write_config({"solo": everything("solo"), "other": stdio_server()})

    async def scenario() -> None:
        with tempfile.NamedTemporaryFile("w+") as errlog:
            async with serve(
                config, "--server", "solo", "--wait", str(TIMEOUT), home=tmp_path / "home", errlog=errlog, front=front
            ) as client:
                session = client.session
                names = {tool.name for tool in (await session.list_tools()).tools}
                assert {"echo", "add", "ask"} <= names and not any("__" in name for name in names)
                assert (await client.call_raw("add", {"a": 1, "b": 2}))["structuredContent"] == {"total": 3}
                assert [p.name for p in (await session.list_prompts()).prompts] == ["greet"]
                read = await session.read_resource("test://solo/items/4")
                assert read.contents[0].text == "item 4 of solo"  # type: ignore[union-attr]

    anyio.run(scenario)


# == servers that arrive late or need authorization =========================================


@pytest.mark.parametrize("front", FRONTS)
def test_a_late_server_appears_through_list_changed(tmp_path: Path, front: str) -> None:
    barrier = tmp_path / "barrier"
    # `late` can only finish starting once two processes have arrived at the barrier: itself and this test.
    config = write_config({"early": stdio_server(), "late": stdio_server("--arrive", str(barrier), "--wait-for", "2")})

    async def scenario() -> None:
        with tempfile.NamedTemporaryFile("w+") as errlog:
            async with serve(config, "--wait", "0", home=tmp_path / "home", errlog=errlog, front=front) as client:
                # initialize was answered, and `early` is served, while `late` cannot have connected
                names = await client.list_until(lambda names: "early__echo" in names)
                assert not any(name.startswith("late__") for name in names)
                barrier.mkdir(exist_ok=True)
                (barrier / "test").touch()
                await client.list_until(lambda names: "late__echo" in names)
                assert texts(await client.call_raw("late__echo", {"text": "made it"})) == ["made it"]

    anyio.run(scenario)


@pytest.mark.parametrize("front", FRONTS)
def test_servers_added_to_or_removed_from_the_config_appear_and_go_through_list_changed(
    tmp_path: Path, front: str
) -> None:
    config = write_config({"a": stdio_server()}, tmp_path / "toolscript.toml")

    async def scenario() -> None:
        with tempfile.NamedTemporaryFile("w+") as errlog:
            async with serve(
                config, "--wait", str(TIMEOUT), home=tmp_path / "home", errlog=errlog, front=front
            ) as client:
                assert "echo" in await client.list_until(lambda names: "echo" in names)  # one server: its own names
                a_pid = texts(await client.call_raw("pid"))
                write_config({"a": stdio_server(), "b": stdio_server()}, config)
                names = await client.list_until(lambda names: "b__echo" in names)
                assert "a__echo" in names  # two servers now: SERVER__TOOL
                assert texts(await client.call_raw("a__pid")) == a_pid  # unchanged: the same session
                b_pid = int(texts(await client.call_raw("b__pid"))[0])
                write_config({"b": stdio_server()}, config)
                names = await client.list_until(lambda names: "pid" in names)
                assert not any(name.startswith("a__") for name in names)
                assert texts(await client.call_raw("pid")) == [str(b_pid)]
                with anyio.fail_after(TIMEOUT):
                    while process_exists(int(a_pid[0])):  # the removed server's process ends
                        await anyio.sleep(0.05)

    anyio.run(scenario)


@pytest.mark.parametrize("front", FRONTS)
def test_progress_restarts_a_calls_timeout_even_when_the_client_did_not_ask_for_progress(
    tmp_path: Path, front: str
) -> None:
    # 12 steps of 0.25 s: longer than the 2 s timeout in all, but never 2 s without progress.
    progress = {"command": sys.executable, "args": [str(SERVERS / "progress_server.py")], "timeout": 2}
    config = write_config({"progress": progress})

    async def scenario() -> dict[str, Any]:
        with tempfile.NamedTemporaryFile("w+") as errlog:
            async with serve(
                config, "--wait", str(TIMEOUT), home=tmp_path / "home", errlog=errlog, front=front
            ) as client:
                return await client.call_raw("work", {"steps": 12, "interval": 0.25})

    result = anyio.run(scenario)
    assert texts(result) == ["worked 12 steps"], result


class SlowToAnswer(Client):
    """A client whose user takes longer to answer than the server's timeout allows a call."""

    async def on_elicitation(self, ctx: ClientRequestContext, params: types.ElicitRequestParams) -> Any:
        await anyio.sleep(3)  # a person thinking, not synchronisation: longer than the 2 s timeout
        return types.ElicitResult(action="accept", content={"name": "Slow"})


@pytest.mark.parametrize("front", FRONTS)
def test_a_calls_timeout_stops_while_the_client_answers_the_server(tmp_path: Path, front: str) -> None:
    config = write_config({"solo": {**everything("solo"), "timeout": 2}})

    async def scenario() -> dict[str, Any]:
        with tempfile.NamedTemporaryFile("w+") as errlog:
            async with serve(
                config,
                "--wait",
                str(TIMEOUT),
                home=tmp_path / "home",
                errlog=errlog,
                front=front,
                client=SlowToAnswer(),
            ) as client:
                return await client.call_raw("ask", {"message": "Name?"})

    assert texts(anyio.run(scenario)) == ["accept {'name': 'Slow'}"]


@pytest.mark.parametrize("front", FRONTS)
def test_a_server_that_exits_is_reconnected_and_its_list_announced_again(tmp_path: Path, front: str) -> None:
    config = write_config({"tools": stdio_server()})

    async def scenario() -> None:
        with tempfile.NamedTemporaryFile("w+") as errlog:
            async with serve(
                config, "--wait", str(TIMEOUT), home=tmp_path / "home", errlog=errlog, front=front
            ) as client:
                first = texts(await client.call_raw("pid"))
                crashed = await client.call_raw("crash")
                assert crashed["isError"] is True
                assert texts(crashed)[0].startswith("Server 'tools' ")
                assert texts(crashed)[0].endswith(" during the call to 'crash'; it is reconnected on the next call.")
                since = client.mark()
                second = texts(await client.call_raw("pid"))
                assert second != first  # a new server process
                await client.wait_for(lambda m: isinstance(m, types.ToolListChangedNotification), since)

    anyio.run(scenario)


@pytest.mark.parametrize("front", FRONTS)
def test_a_server_needing_authorization_answers_with_the_command_and_appears_after_auth(
    tmp_path: Path, oauth_server: Any, front: str
) -> None:
    server = oauth_server()
    config = write_config({"demo": {"url": server.url}, "tools": stdio_server()})
    home = tmp_path / "home"

    async def scenario() -> None:
        with tempfile.NamedTemporaryFile("w+") as errlog:
            async with serve(config, "--wait", str(TIMEOUT), home=home, errlog=errlog, front=front) as client:
                names = {tool.name for tool in (await client.session.list_tools()).tools}
                assert "tools__echo" in names and not any(name.startswith("demo__") for name in names)
                result = await client.call_raw("demo__echo", {"text": "x"})
                assert result["isError"] is True
                assert texts(result) == ["Server 'demo' requires OAuth2 authorization. Run: toolscript auth demo"]
                assert texts(await client.call_raw("tools__echo", {"text": "still here"})) == ["still here"]
                warning = await client.wait_for(lambda m: isinstance(m, types.LoggingMessageNotification))
                assert warning.params.level == "warning" and "Run: toolscript auth demo" in warning.params.data

                since = client.mark()
                await anyio.to_thread.run_sync(
                    lambda: auth.authenticate(
                        load_config(str(config)).server("demo"),
                        Store(home),
                        open_browser=visit,
                        show_url=lambda url: None,
                        timeout=30,
                    )
                )
                await client.wait_for(lambda m: isinstance(m, types.ToolListChangedNotification), since)
                names = {tool.name for tool in (await client.session.list_tools()).tools}
                assert "demo__echo" in names
                assert texts(await client.call_raw("demo__echo", {"text": "now"})) == ["now"]

    anyio.run(scenario)


# == shutdown ================================================================================


def _start_raw(config: Path, home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "toolscript.py"), "--config", str(config), "serve", "--wait", str(TIMEOUT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TOOLSCRIPT_HOME": str(home)},
    )


def _exchange(proc: subprocess.Popen[str], message: dict[str, Any]) -> dict[str, Any]:
    """Send one request as a JSON line and read lines until its answer (every line must be JSON-RPC)."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(message) + "\n")
    proc.stdin.flush()
    while True:
        line = proc.stdout.readline()
        assert line, f"serve closed stdout; stderr:\n{proc.stderr.read() if proc.stderr else ''}"
        answer = json.loads(line)
        assert answer["jsonrpc"] == "2.0"
        if answer.get("id") == message.get("id"):
            return answer


def _children_of_serve(tmp_path: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """Start serve over two stdio servers by hand (JSON lines) and return it with the servers' pids."""
    config = write_config({"a": stdio_server(), "b": stdio_server()})
    proc = _start_raw(config, tmp_path / "home")
    _exchange(proc, INITIALIZE)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
    pids = []
    for n, server in enumerate(("a", "b"), start=2):
        answer = _exchange(
            proc,
            {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": f"{server}__pid", "arguments": {}}},
        )
        pids.append(int(answer["result"]["content"][0]["text"]))
    assert all(process_exists(pid) for pid in pids)
    return proc, pids


def test_end_of_input_stops_serve_and_its_stdio_servers(tmp_path: Path) -> None:
    proc, pids = _children_of_serve(tmp_path)
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(TIMEOUT) == 0, proc.stderr.read() if proc.stderr else ""
    wait_until(lambda: not any(process_exists(pid) for pid in pids), TIMEOUT, "the stdio servers to exit")
    assert proc.stdout is not None
    assert all(json.loads(line)["jsonrpc"] == "2.0" for line in proc.stdout.read().splitlines())  # notifications


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_stops_serve_and_its_stdio_servers(tmp_path: Path, signum: int) -> None:
    proc, pids = _children_of_serve(tmp_path)  # stdin stays open: the signal alone must do it
    proc.send_signal(signum)
    code = proc.wait(TIMEOUT)
    assert code == (130 if signum == signal.SIGINT else 0), proc.stderr.read() if proc.stderr else ""
    wait_until(lambda: not any(process_exists(pid) for pid in pids), TIMEOUT, "the stdio servers to exit")
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGHUP, signal.SIGTERM), (signal.SIGINT, signal.SIGINT)],
    ids=["HUP-TERM", "INT-INT"],
)
def test_a_second_signal_while_stopping_neither_orphans_a_stdio_server_nor_hangs(
    tmp_path: Path, signals: tuple[int, int]
) -> None:
    # The server ignores SIGTERM and the end of its input, so ending it takes serve's whole grace
    # (4 s); the second signal comes in that time, once the server saw its input end.
    # Before, a second SIGTERM or SIGHUP killed serve and left the server running; a second SIGINT
    # broke serve's shutdown.
    raw = [str(SERVERS / "raw_stdio.py"), "--stubborn", str(tmp_path), "--outlive", "60"]
    config = write_config({"stubborn": {"command": sys.executable, "args": raw}})
    with open(tmp_path / "stderr", "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "toolscript.py"), "--config", str(config), "serve", "--wait", "60"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "TOOLSCRIPT_HOME": str(tmp_path / "home")},
        )
    child = None
    try:
        _exchange(proc, INITIALIZE)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
        call = {"name": "echo", "arguments": {"text": "up"}}
        answer = _exchange(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
        assert answer["result"]["content"][0]["text"] == "up"
        child = int((tmp_path / "pid").read_text())
        proc.send_signal(signals[0])
        wait_until((tmp_path / "eof").exists, TIMEOUT, "serve to end the server's input")
        proc.send_signal(signals[1])
        code = proc.wait(TIMEOUT / 2)
        err = (tmp_path / "stderr").read_text()
        assert code == (130 if signals[0] == signal.SIGINT else 0), err
        assert err.splitlines() == ["Server 'stubborn': connected, 5 tools"], err
        wait_until(lambda: _gone(child), timeout=10, what=f"the stdio server {child} to be gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if child is not None and not _gone(child):
            os.killpg(child, signal.SIGKILL)  # the old code leaves it running: do not leak it


def _gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie waiting for a parent that never reaps it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


# == one refresh for many serve processes ===================================================

RACER = lock_racer('["-v", "--config", sys.argv[3], "serve", "--wait", "60"]')


def test_two_serve_processes_with_an_expired_token_refresh_it_once(tmp_path: Path, oauth_server: Any) -> None:
    server = oauth_server()
    config = write_config({"demo": {"url": server.url}})
    home = tmp_path / "home"
    store = Store(home)
    auth.authenticate(
        load_config(str(config)).server("demo"), store, open_browser=visit, show_url=lambda url: None, timeout=30
    )
    record = store.load("demo")
    assert record is not None and record.tokens is not None
    record.tokens.expires_at = 0  # long expired
    store.save("demo", record)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    errlogs = [open(tmp_path / f"racer{n}.stderr", "w+") for n in range(2)]  # noqa: SIM115

    async def racer(errlog: Any, results: list[str]) -> None:
        params = StdioServerParameters(
            command=sys.executable,
            args=["-c", RACER, str(ROOT), str(barrier), str(config)],
            env={**os.environ, "TOOLSCRIPT_HOME": str(home)},
        )
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            with anyio.fail_after(TIMEOUT):
                await session.initialize()
                result = await session.call_tool("echo", {"text": "racer"})
            results.append(result.content[0].text)  # type: ignore[union-attr]

    async def race() -> list[str]:
        results: list[str] = []
        async with anyio.create_task_group() as tg:
            for errlog in errlogs:
                tg.start_soon(racer, errlog, results)
        return results

    try:
        assert anyio.run(race) == ["racer", "racer"]
        logs = [stderr_of(errlog) for errlog in errlogs]
    finally:
        for errlog in errlogs:
            errlog.close()
    assert len(list(barrier.iterdir())) == 2
    refreshes = [
        seen for seen in server.requests_to("/token", "POST") if seen.form.get("grant_type") == "refresh_token"
    ]
    assert len(refreshes) == 1, "\n---\n".join(logs)
    # They overlapped: the one that took the lock second had read the expired token too, and
    # found under the lock the tokens the other had just refreshed.
    assert sorted("refreshing the access token" in log for log in logs) == [False, True], "\n---\n".join(logs)
    assert sorted("using tokens refreshed by another process" in log for log in logs) == [False, True]


def test_serve_names_an_unknown_server(tmp_path: Path) -> None:
    from conftest import explain, run_cli

    write_config({"tools": stdio_server()})
    proc = run_cli("serve", "--server", "nope")
    assert proc.returncode == 2, explain(proc)
    assert proc.stdout == ""
    assert "nope" in proc.stderr and "tools" in proc.stderr


# == the stdio wire =========================================================================


def test_what_the_pipe_does_not_take_at_once_goes_out_whole_and_in_order_even_if_its_sender_is_cancelled() -> None:
    import front

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    big = "x" * (1 << 20)  # far more than a pipe holds: most of it waits in the backlog
    received: list[bytes] = []

    def read_all() -> None:
        with open(read_end, "rb") as pipe:
            received.extend(pipe.read().splitlines())

    async def main() -> None:
        wire = front._WireOut(write_end)
        async with anyio.create_task_group() as tg:
            tg.start_soon(wire.write_backlog)
            with anyio.CancelScope() as sender:
                sender.cancel()  # its sender gives up while it waits; the message still goes out whole
                await wire.send(_answer(1, {"text": big}))
            reader.start()
            with anyio.fail_after(TIMEOUT):
                await wire.send(_answer(2))  # after the big one, never inside it
            tg.cancel_scope.cancel()
        wire.close()
        os.close(write_end)

    reader = threading.Thread(target=read_all, daemon=True)
    anyio.run(main)
    reader.join(TIMEOUT)  # it reads until the write end is closed
    assert [json.loads(line)["id"] for line in received] == [1, 2]
    assert json.loads(received[0])["result"]["text"] == big


def test_notifications_a_client_does_not_read_are_bounded_then_it_counts_as_gone() -> None:
    import front

    read_end, write_end = os.pipe()  # nobody reads: the pipe fills, then the backlog
    os.set_blocking(write_end, False)
    text = "x" * (1 << 16)

    async def main() -> int:
        wire = front._WireOut(write_end)
        sent = 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(wire.write_backlog)
            with anyio.fail_after(TIMEOUT), pytest.raises(anyio.BrokenResourceError):
                while True:  # a sender of notifications is not held up by a client that does not read
                    await wire.send(_notification("notifications/message", {"level": "info", "data": text}))
                    sent += 1
            assert wire.gone.is_set()
            with pytest.raises(anyio.BrokenResourceError):  # an answer too: the client is gone
                await wire.send(_answer(1))
            tg.cancel_scope.cancel()
        wire.close()
        return sent

    try:
        sent = anyio.run(main)
    finally:
        os.close(read_end)
        os.close(write_end)
    held = front.MAX_UNSENT_BYTES // len(text)
    assert held - 2 <= sent <= held + 2, sent  # what the backlog holds, and what the pipe took


def _notification(method: str, params: dict[str, Any] | None = None) -> SessionMessage:
    return SessionMessage(types.JSONRPCNotification(jsonrpc="2.0", method=method, params=params))


def _answer(request_id: int, result: dict[str, Any] | None = None) -> SessionMessage:
    return SessionMessage(types.JSONRPCResponse(jsonrpc="2.0", id=request_id, result=result or {}))
