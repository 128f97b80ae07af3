"""Who answers a server's question that no request is tied to (askers.py), with a server built with the
TypeScript SDK (`tests/servers/typescript_asker.mjs`) that asks the way such servers often do: without a
related request id, so that over streamable HTTP the question comes on the standalone GET stream.

Through `call` on a terminal, through `toolscript serve` and `toolscript gateway`'s `/mcp`, over stdio and
streamable HTTP: the question goes to the only request in flight or, with several, to the one client they
all come from; with requests of different callers in flight it is declined and the log says why, and never
is one caller (an MCP client) asked on another's (an API call's, another client's) behalf.

Node 22 and the SDK are the conformance suite's install (the `conformance_cli` fixture): without npm these
tests are skipped, unless TOOLSCRIPT_REQUIRE_CONFORMANCE=1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import mcp_types as types
import pytest
from conftest import SERVERS, finish_within, wait_until, write_config
from test_elicitation import on_terminal
from test_gateway_mcp import gateway_in_process, mcp_client
from test_serve import FRONTS, TIMEOUT, Client, serve, texts

from gateway_http import RemoteGateway

ASKER = str(SERVERS / "typescript_asker.mjs")
TRANSPORTS = ["stdio", "http"]
ANSWERED = '{"action":"accept","content":{"name":"Ada"}}'  # what the server got: Client.on_elicitation's answer
DECLINED = '{"action":"decline","content":null}'


@pytest.fixture(scope="session")
def node(conformance_cli: list[str]) -> str:
    return conformance_cli[0]  # the suite's own Node 22, beside the TypeScript SDK


@contextlib.contextmanager
def typescript_server(node: str, transport: str) -> Iterator[dict[str, Any]]:
    """The `[servers.NAME]` table of the TypeScript server: over stdio, or over HTTP (running until exit)."""
    if transport == "stdio":
        yield {"command": node, "args": [ASKER, "stdio"]}
        return
    proc = subprocess.Popen([node, ASKER, "http"], stdout=subprocess.PIPE, text=True)
    try:
        line = finish_within(TIMEOUT, proc.stdout.readline)  # type: ignore[union-attr]
        assert line.startswith("URL="), f"the TypeScript server did not start: {line!r}"
        yield {"url": line.strip().removeprefix("URL=")}
    finally:
        proc.kill()
        proc.wait(TIMEOUT)


def declined_because_of_different_callers(server: str, kind: str = "input") -> str:
    return (
        f"Server '{server}' asked for {kind} outside its requests while 2 requests of different callers were "
        "in flight, so it is not known whom to ask; declined."
    )


# -- `call` on a terminal -----------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_on_a_terminal_answers_a_question_outside_the_call(node: str, transport: str) -> None:
    with typescript_server(node, transport) as table:
        write_config({"ts": table})
        code, output = on_terminal(["call", "ts__ask_name"], ["Ada"])
    assert code == 0, output
    assert "Server 'ts' asks for input (during ts__ask_name):\n  What is your name?\n" in output
    assert output.rstrip().endswith(ANSWERED), output


# -- `serve` and /mcp -------------------------------------------------------------------------


@dataclass
class Front:
    """One front (`serve` or /mcp) over the TypeScript server on stdio (`tss`) and over HTTP (`tsh`)."""

    portal: Any
    client: Client

    def call(self, name: str, arguments: dict[str, Any] | None = None) -> list[str]:
        return texts(self.portal.call(self.client.call_raw, name, arguments))


@pytest.fixture(scope="module", params=FRONTS)
def front(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, node: str) -> Iterator[Front]:
    tmp = tmp_path_factory.mktemp(f"askers-{request.param}")
    with contextlib.ExitStack() as stack:
        servers = {"tss": typescript_server(node, "stdio"), "tsh": typescript_server(node, "http")}
        config = write_config(
            {name: stack.enter_context(server) for name, server in servers.items()}, tmp / "toolscript.toml"
        )
        errlog = stack.enter_context(open(tmp / "front.stderr", "w+"))
        portal = stack.enter_context(anyio.from_thread.start_blocking_portal())
        client = stack.enter_context(
            portal.wrap_async_context_manager(
                serve(config, "--wait", str(TIMEOUT), home=tmp / "home", errlog=errlog, front=request.param)
            )
        )
        yield Front(portal, client)


@pytest.mark.parametrize("server", ["tss", "tsh"])
def test_a_question_outside_the_call_goes_to_the_client_that_called(front: Front, server: str) -> None:
    asked = len(front.client.elicitations)
    assert front.call(f"{server}__ask_name") == [ANSWERED]
    assert [params.message for params in front.client.elicitations[asked:]] == ["What is your name?"]


@pytest.mark.parametrize("server", ["tss", "tsh"])
def test_sampling_outside_the_call_goes_to_the_client_that_called(front: Front, server: str) -> None:
    asked = len(front.client.samplings)
    assert front.call(f"{server}__sample", {"prompt": "Say something"}) == ["sampled (model test-model)"]
    assert [params.messages[0].content.text for params in front.client.samplings[asked:]] == ["Say something"]  # type: ignore[union-attr]


@pytest.mark.parametrize("server", ["tss", "tsh"])
@pytest.mark.parametrize(
    ("tool", "arguments", "answer"),
    [("ask_name", {}, ANSWERED), ("sample", {"prompt": "Hi"}, "sampled (model test-model)")],
)
def test_with_several_calls_of_one_client_in_flight_its_question_goes_to_that_client(
    front: Front, server: str, tool: str, arguments: dict[str, Any], answer: str
) -> None:
    async def hold_and_ask(client: Client) -> tuple[list[str], list[str]]:
        held: list[str] = []

        async def hold() -> None:
            held.extend(texts(await client.call_raw(f"{server}__hold")))

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold)
                asked = texts(await client.call_raw(f"{server}__{tool}", {**arguments, "after_hold": True}))
        return held, asked

    assert front.portal.call(hold_and_ask, front.client) == (["held"], [answer])


# -- different callers: the HTTP API and an MCP client at /mcp -----------------------------------------


async def _mcp_holds_while_api_asks(
    api: Any, asked: list[str], before: Any = None, while_held: Any = None
) -> tuple[dict[str, Any], list[str]]:
    """An MCP client's `hold` in flight while an API caller's `ask_name` asks outside it.

    `before(session)` runs first; `while_held()`, in a thread, once the hold is sent and before the API asks.
    """
    remote = RemoteGateway(api.url, token=api.token)
    held: list[str] = []

    async def on_elicitation(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "not the API caller"})

    async with mcp_client(api, "/mcp/ts", elicitation_callback=on_elicitation) as session:
        if before is not None:
            await before(session)

        async def hold() -> None:
            held.extend(texts(await session.call_tool("hold")))

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold)
                if while_held is not None:
                    await anyio.to_thread.run_sync(while_held)
                through_api = await anyio.to_thread.run_sync(lambda: remote.call("ts__ask_name", {"after_hold": True}))
    return through_api, held


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_question_outside_requests_of_different_callers_is_declined_and_says_why(
    node: str, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    asked: list[str] = []
    with typescript_server(node, transport) as table, caplog.at_level(logging.WARNING, "toolscript.gateway"):
        write_config({"ts": table})
        with gateway_in_process() as (_, api):
            through_api, held = anyio.run(_mcp_holds_while_api_asks, api, asked)
    assert asked == []  # the MCP client is never asked on the API caller's behalf
    assert through_api["content"][0]["text"] == DECLINED and held == ["held"]
    assert "declinedInputRequests" not in through_api  # declined before anyone was asked
    assert declined_because_of_different_callers("ts") in caplog.messages


def test_a_connection_reopened_for_an_mcp_client_does_not_hand_it_an_api_caller_s_question(
    node: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The stdio server is restarted for the MCP client's call: what it sends later still belongs to no request."""
    asked: list[str] = []
    with typescript_server(node, "stdio") as table, caplog.at_level(logging.WARNING, "toolscript.gateway"):
        write_config({"ts": table})
        with gateway_in_process() as (gateway, api):

            async def kill_the_server(session: Any) -> None:
                os.kill(int(texts(await session.call_tool("pid"))[0]), signal.SIGKILL)
                await anyio.to_thread.run_sync(
                    lambda: wait_until(lambda: gateway.status("ts") != "connected", TIMEOUT, "the server to be gone")
                )

            def reconnected_for_the_hold() -> None:
                wait_until(lambda: gateway.status("ts") == "connected", TIMEOUT, "the hold to reconnect the server")

            through_api, held = anyio.run(
                _mcp_holds_while_api_asks, api, asked, kill_the_server, reconnected_for_the_hold
            )
    assert asked == []
    assert through_api["content"][0]["text"] == DECLINED and held == ["held"]
    assert declined_because_of_different_callers("ts") in caplog.messages


def test_with_calls_of_two_mcp_clients_in_flight_sampling_outside_them_is_declined(
    node: str, caplog: pytest.LogCaptureFixture
) -> None:
    sampled: list[str] = []

    async def on_sampling(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        sampled.append(params.messages[0].content.text)  # type: ignore[union-attr]
        return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="no"), model="m")

    async def scenario(api: Any) -> tuple[list[str], list[str]]:
        async with (
            mcp_client(api, "/mcp/ts", sampling_callback=on_sampling) as first,
            mcp_client(api, "/mcp/ts", sampling_callback=on_sampling) as second,
        ):
            held: list[str] = []

            async def hold() -> None:
                held.extend(texts(await first.call_tool("hold")))

            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(hold)
                    answer = texts(await second.call_tool("sample", {"prompt": "Whose?", "after_hold": True}))
        return held, answer

    with typescript_server(node, "http") as table, caplog.at_level(logging.WARNING, "toolscript.gateway"):
        write_config({"ts": table})
        with gateway_in_process() as (_, api):
            held, answer = anyio.run(scenario, api)
    assert sampled == [] and held == ["held"]
    assert answer == ["refused: MCP error -32600: Sampling not supported"]
    assert declined_because_of_different_callers("ts", "sampling") in caplog.messages
