"""Servers that ask the user: elicitation on a terminal (a real pseudo-terminal), without one, and per call.

The server is `tests/servers/interactive.py`, over stdio, streamable HTTP and behind OAuth;
its tools report what toolscript answered, so every assertion is about what the server got.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import ROOT, SERVERS, cli, explain, run_cli, run_threads, serving_api, write_config
from interactive import BOOKING_DEFAULTS, BOOKING_SCHEMA, BOOKING_URI, LINK_URL, PAGE_URL, serving

from config import load_config
from elicitation import ACCEPT, CANCEL, DECLINE, InputAnswer, InputRequest, ask_on_terminal, form_fields
from gateway import Gateway

INTERACTIVE = str(SERVERS / "interactive.py")
NOTE = (
    "note: Server 'i' asked for input during i__book_table: 'Book a table for tonight?' "
    "(fields: name, guests, budget, vegetarian, seating, time, extras); "
    "declined, as stdin or stderr is not a terminal.\n"
)
DECLINED = '{"action": "decline", "content": null}\n'  # the tool's isError result, printed on stderr


@pytest.fixture
def stdio_config() -> Path:
    return write_config({"i": {"command": sys.executable, "args": [INTERACTIVE]}})


@pytest.fixture
def http_config() -> Iterator[Path]:
    with serving() as running:
        yield write_config({"i": {"url": running.url}})


def reported(text: str) -> dict[str, Any]:
    """The answer the server reported (the tool's one JSON line) in a command's output."""
    line = next(line for line in text.splitlines() if line.startswith('{"action"'))
    return json.loads(line)


# -- the pseudo-terminal --------------------------------------------------------------


def on_terminal(args: list[str], answers: list[str], timeout: float = 60, columns: int = 200) -> tuple[int, str]:
    """Run `toolscript ARGS` on a pseudo-terminal `columns` wide, typing the next answer at each prompt; return
    (exit, output).

    A prompt is output that ends with ': ' and waits; every answer is one line (`\\x04`, Ctrl-D,
    ends the input).
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "toolscript.py"), *args], stdin=slave, stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    output, answered_at, pending = b"", -1, list(answers)
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no end within {timeout} s; output so far:\n{output.decode(errors='replace')}"
            ready, _, _ = select.select([master], [], [], remaining)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every holder of the terminal closed it
                break
            if not chunk:
                break
            output += chunk
            if output.endswith(b": ") and len(output) != answered_at:
                assert pending, f"an unexpected prompt:\n{output.decode(errors='replace')}"
                answer = pending.pop(0)
                os.write(master, answer.encode() if answer == "\x04" else answer.encode() + b"\n")
                answered_at = len(output)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    text = output.decode(errors="replace").replace("\r\n", "\n")
    assert not pending, f"prompts left unanswered {pending}:\n{text}"
    return code, text


def test_enter_for_every_field_sends_every_default(stdio_config: Path) -> None:
    code, output = on_terminal(["call", "i__book_table"], [""] * len(BOOKING_DEFAULTS))
    assert code == 0, output
    assert reported(output) == {"action": "accept", "content": BOOKING_DEFAULTS}
    assert "Server 'i' asks for input (during i__book_table):\n  Book a table for tonight?\n" in output
    # Each field shows its type, limits, choices and default.
    # Each prompt starts its line with the server's name.
    assert "\ni> Name (text, at least 1 character, required) - who the table is for [Ada]: " in output
    assert "\ni> guests (integer, 1 to 12, required) [2]: " in output
    assert "\ni> vegetarian (yes/no) [no]: " in output
    assert "\ni> seating (one of: 1) indoor, 2) outdoor, 3) bar) [outdoor]: " in output
    assert "\ni> time (one of: 1) Early, 2) Late) [20:00]: " in output
    assert "\ni> extras (any of: 1) cake, 2) candles, 3) flowers; separate with commas) [candles]: " in output


def test_without_a_terminal_the_server_gets_decline_and_stderr_a_note(stdio_config: Path) -> None:
    proc = run_cli("call", "i__book_table", input="")
    assert proc.returncode == 1, explain(proc)  # the tool's own isError result, as always
    assert (proc.stdout, proc.stderr) == ("", NOTE + DECLINED)


def test_typed_answers_are_checked_against_the_schema_and_converted(stdio_config: Path) -> None:
    answers = ["Grace", "0", "many", "7", "12.75", "maybe", "y", "3", "early", "cake, 3"]
    code, output = on_terminal(["call", "i__book_table"], answers)
    assert code == 0, output
    assert reported(output)["content"] == {
        "name": "Grace",
        "guests": 7,
        "budget": 12.75,
        "vegetarian": True,
        "seating": "bar",
        "time": "18:00",
        "extras": ["cake", "flowers"],
    }
    assert "  Not accepted: give at least 1.\n" in output
    assert "  Not accepted: give a whole number.\n" in output
    assert "  Not accepted: answer yes or no.\n" in output


@pytest.mark.parametrize(("answer", "action"), [("!decline", DECLINE), ("!cancel", CANCEL), ("\x04", CANCEL)])
def test_the_person_can_decline_or_cancel(stdio_config: Path, answer: str, action: str) -> None:
    code, output = on_terminal(["call", "i__book_table"], ["Grace", answer])
    assert code == 1, output
    assert reported(output) == {"action": action, "content": None}


def test_url_mode_prints_the_url_and_waits_for_the_person(stdio_config: Path) -> None:
    code, output = on_terminal(["call", "i__open_page"], [""])
    assert code == 0, output
    assert reported(output) == {"action": ACCEPT}
    assert f"Open this URL in a browser to continue there:\n\n  {PAGE_URL}\n\ni> Press Enter when" in output
    code, output = on_terminal(["call", "i__open_page"], ["n"])
    assert (code, reported(output)) == (1, {"action": DECLINE}), output


def test_url_mode_without_a_terminal_names_the_url(stdio_config: Path) -> None:
    proc = run_cli("call", "i__open_page", input="")
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr == (
        "note: Server 'i' asked for input during i__open_page: 'Sign the form on our site.', "
        f"to be given at {PAGE_URL}; declined, as stdin or stderr is not a terminal.\n"
        '{"action": "decline"}\n'
    )


def test_a_url_required_error_is_asked_like_url_mode_then_the_call_is_sent_again(stdio_config: Path) -> None:
    code, output = on_terminal(["call", "i__visit_first"], [""])
    assert code == 0, output
    assert f"  Link your account first.\nOpen this URL in a browser to continue there:\n\n  {LINK_URL}\n" in output
    assert output.endswith("welcome back\n")
    proc = run_cli("call", "i__visit_first", input="")
    assert (proc.returncode, proc.stdout) == (1, ""), explain(proc)
    assert proc.stderr == (
        f"error: Server 'i' needs you to open {LINK_URL} before 'visit_first' can run; "
        "call it from a terminal, or open that first and call again.\n"
    )


def test_terminal_over_streamable_http(http_config: Path) -> None:
    code, output = on_terminal(["call", "i__pick_pizza"], ["", "3"])
    assert code == 0, output
    assert reported(output) == {"action": "accept", "content": {"size": "large", "slices": 3}}


def test_through_a_running_gateway_the_request_is_declined_and_reported(stdio_config: Path) -> None:
    with Gateway(load_config()) as gateway, serving_api(gateway) as api:
        proc = run_cli("call", "i__book_table", input="", env={"TOOLSCRIPT_GATEWAY_URL": api.url})
    assert proc.returncode == 1, explain(proc)
    assert (proc.stdout, proc.stderr) == ("", NOTE + DECLINED)


# -- answers without a terminal: --accept-defaults, --answer -------------------------------

ASKED = (
    "note: Server 'i' asked for input during {during}: 'Book a table for tonight?' "
    "(fields: name, guests, budget, vegetarian, seating, time, extras); "
)


def test_accept_defaults_accepts_a_form_whose_every_required_field_has_a_default(stdio_config: Path) -> None:
    proc = run_cli("call", "i__book_table", "--accept-defaults", input="")
    assert proc.returncode == 0, explain(proc)
    assert json.loads(proc.stdout) == {"action": "accept", "content": BOOKING_DEFAULTS}
    sent = json.dumps(BOOKING_DEFAULTS)
    assert proc.stderr == ASKED.format(during="i__book_table") + f"accepted with {sent}.\n"


def test_answers_fill_their_fields_and_are_checked_like_typed_ones(
    http_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "call", "i__book_table", "--answer", "guests=3", "--answer", "name=Grace")
    # Every required field answered: accepted with the answers only (no --accept-defaults, no defaults sent).
    assert (code, json.loads(out)) == (0, {"action": "accept", "content": {"guests": 3, "name": "Grace"}}), err
    code, out, err = cli(
        capsys, "call", "i__book_table", "--answer", "guests=13", "--accept-defaults", "--answer", "extras=cake,3"
    )
    assert (code, out) == (1, "")
    assert err == (
        ASKED.format(during="i__book_table") + "declined, as the answer guests=13 does not fit: give at most 12.\n"
        '{"action": "decline", "content": null}\n'
    )
    code, out, err = cli(capsys, "call", "i__book_table", "--answer", "guests=4")  # name has a default, not taken
    assert code == 1
    assert (
        "declined, as field 'name' is required: answer it with --answer name=VALUE, or give --accept-defaults.\n" in err
    )
    code, out, err = cli(
        capsys, "call", "i__book_table", "--answer", "guests=4", "--accept-defaults", "--answer", "extras=cake,3"
    )
    assert (code, json.loads(out)["content"]) == (0, {**BOOKING_DEFAULTS, "guests": 4, "extras": ["cake", "flowers"]})


def test_a_required_field_without_default_declines_and_urls_are_declined() -> None:
    from elicitation import PresetAnswers, describe_answer

    schema = {"properties": {"email": {"type": "string", "format": "email"}}, "required": ["email"]}
    form = InputRequest("s", "s__t", "form", "Who?", schema)
    preset = PresetAnswers(accept_defaults=True)
    assert preset(form) == InputAnswer(DECLINE)
    assert preset(InputRequest("s", "s__t", "url", "Go", url="https://example.com")) == InputAnswer(DECLINE)
    assert [describe_answer(record) for record in preset.records] == [
        "declined, as field 'email' is required and has no default: answer it with --answer email=VALUE",
        "declined, as a URL cannot be opened without a terminal",
    ]
    assert PresetAnswers({"email": "ada@example.org"})(form) == InputAnswer(ACCEPT, {"email": "ada@example.org"})


def test_a_malformed_answer_is_a_usage_error(stdio_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "call", "i__book_table", "--answer", "guests") == (
        2,
        "",
        "error: --answer: an answer is NAME=VALUE, not 'guests'.\n",
    )


def test_prompt_and_read_answer_as_call_does(http_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "prompt", "i__booking", "--accept-defaults", "--answer", "guests=5")
    assert (code, reported(out)) == (0, {"action": "accept", "content": {**BOOKING_DEFAULTS, "guests": 5}}), err
    assert err.startswith(ASKED.format(during="i__booking") + "accepted with {")
    code, out, err = cli(capsys, "read", "i", BOOKING_URI, "--accept-defaults")
    assert (code, json.loads(out)) == (0, {"action": "accept", "content": BOOKING_DEFAULTS}), err
    assert err.startswith(ASKED.format(during=f"the read of {BOOKING_URI}") + "accepted with {")
    # Without answers nor a terminal, declined and said so, as for a call.
    code, out, err = cli(capsys, "read", "i", BOOKING_URI)
    assert (code, json.loads(out)) == (0, {"action": "decline", "content": None}), err
    assert (
        err == ASKED.format(during=f"the read of {BOOKING_URI}") + "declined, as stdin or stderr is not a terminal.\n"
    )


def test_answers_go_through_a_running_gateway_and_its_http_api(http_config: Path) -> None:
    with Gateway(load_config()) as gateway, serving_api(gateway) as api:
        proc = run_cli(
            "call",
            "i__book_table",
            "--accept-defaults",
            "--answer",
            "guests=6",
            env={"TOOLSCRIPT_GATEWAY_URL": api.url},
        )
        headers = {"Authorization": f"Bearer {api.token}"}
        answer = httpx2.post(
            api.url + "/tools/i__book_table?accept_defaults=1&answer=name%3DGrace",
            json={},
            timeout=30,
            headers=headers,
        ).json()
        read = httpx2.get(
            api.url + "/resources/read",
            params={"server": "i", "uri": BOOKING_URI, "answer": ["name=Lin", "guests=2"]},
            timeout=30,
            headers=headers,
        ).json()
        malformed = httpx2.post(api.url + "/prompts/i__booking?answer=name", json={}, timeout=30, headers=headers)
    assert proc.returncode == 0, explain(proc)
    assert json.loads(proc.stdout)["content"] == {**BOOKING_DEFAULTS, "guests": 6}
    assert proc.stderr.startswith(ASKED.format(during="i__book_table") + "accepted with {")
    assert answer["structuredContent"] == {"action": "accept", "content": {**BOOKING_DEFAULTS, "name": "Grace"}}
    assert answer["answeredInputRequests"] == [
        {
            "server": "i",
            "tool": "i__book_table",
            "mode": "form",
            "message": "Book a table for tonight?",
            "requestedSchema": BOOKING_SCHEMA,
            "action": "accept",
            "content": {**BOOKING_DEFAULTS, "name": "Grace"},
        }
    ]
    assert json.loads(read["contents"][0]["text"]) == {"action": "accept", "content": {"name": "Lin", "guests": 2}}
    assert (malformed.status_code, malformed.json()) == (
        400,
        {"error": "Malformed answer: an answer is NAME=VALUE, not 'name'.", "kind": "usage"},
    )


# -- the Python and HTTP APIs -----------------------------------------------------------


def test_each_concurrent_call_is_answered_by_its_own_handler(http_config: Path) -> None:
    asked: dict[int, list[InputRequest]] = {0: [], 1: []}
    both_asked = threading.Barrier(2, timeout=30)  # both calls wait for input at the same time

    def handler_of(n: int) -> Callable[[InputRequest], InputAnswer]:
        def handler(request: InputRequest) -> InputAnswer:
            asked[n].append(request)
            both_asked.wait()
            return InputAnswer(ACCEPT, {"size": "small", "slices": 10 + n})

        return handler

    results: dict[int, dict[str, Any]] = {}
    with Gateway(load_config()) as gateway:

        def call(n: int) -> None:
            results[n] = gateway.call("i__pick_pizza", input_handler=handler_of(n))

        run_threads(call, 2)
    assert {n: r["structuredContent"] for n, r in results.items()} == {
        n: {"action": "accept", "content": {"size": "small", "slices": 10 + n}} for n in (0, 1)
    }
    assert [len(asked[n]) for n in (0, 1)] == [1, 1]
    assert asked[0][0].tool == "i__pick_pizza" and asked[0][0].message == "Which pizza?"


def test_time_spent_asking_does_not_count_against_the_timeout(stdio_config: Path) -> None:
    never = threading.Event()

    def slow_person(request: InputRequest) -> InputAnswer:
        never.wait(4.0)  # a person thinking for longer than the call may take
        return InputAnswer(ACCEPT, {"size": "small", "slices": 1})

    with Gateway(load_config()) as gateway:
        result = gateway.call("i__pick_pizza", timeout=3.0, input_handler=slow_person)
    assert result["structuredContent"] == {"action": "accept", "content": {"size": "small", "slices": 1}}


def test_http_api_declines_and_says_what_was_asked(http_config: Path) -> None:
    with Gateway(load_config()) as gateway, serving_api(gateway) as api:
        answer = httpx2.post(
            api.url + "/tools/i__book_table", json={}, timeout=30, headers={"Authorization": f"Bearer {api.token}"}
        ).json()
    assert answer["isError"] is True and answer["structuredContent"] == {"action": "decline", "content": None}
    assert answer["declinedInputRequests"] == [
        {
            "server": "i",
            "tool": "i__book_table",
            "mode": "form",
            "message": "Book a table for tonight?",
            "requestedSchema": BOOKING_SCHEMA,
        }
    ]


def test_input_required_results_are_answered_by_the_same_handler(stdio_config: Path) -> None:
    # At protocol 2026-07-28 the SDK server asks through an input-required result, not a request.
    asked: list[InputRequest] = []

    def handler(request: InputRequest) -> InputAnswer:
        asked.append(request)
        return InputAnswer(ACCEPT, {"size": "small", "slices": 6})

    with Gateway(load_config(), negotiation="auto") as gateway:
        accepted = gateway.call("i__pick_pizza", input_handler=handler)
        declined = gateway.call("i__pick_pizza")
    assert accepted["resultType"] == "complete"  # proof that 2026-07-28 was spoken
    assert accepted["structuredContent"] == {"action": "accept", "content": {"size": "small", "slices": 6}}
    assert [(r.mode, r.message) for r in asked] == [("form", "Which pizza?")]
    assert declined["structuredContent"] == {"action": "decline", "content": None}
    assert [r["message"] for r in declined["declinedInputRequests"]] == ["Which pizza?"]


def test_sampling_and_roots_are_not_declared_and_are_refused(stdio_config: Path) -> None:
    with Gateway(load_config()) as gateway:
        assert gateway.call("i__client_capabilities")["structuredContent"] == {"elicitation": {"form": {}, "url": {}}}
        assert gateway.call("i__sample")["content"][0]["text"] == "refused: Sampling not supported"
        assert gateway.call("i__roots")["content"][0]["text"] == "refused: List roots not supported"


def test_a_tool_requiring_tasks_is_marked_and_refused_in_one_line(stdio_config: Path) -> None:
    listed = run_cli("tools")
    assert listed.returncode == 0, explain(listed)
    reason = "requires task-augmented execution (MCP tasks), which toolscript does not support"
    assert (
        f"i__long_job             A long job that must run as an MCP task.  [cannot be called: it {reason}]\n"
    ) in listed.stdout
    called = run_cli("call", "i__long_job")
    assert (called.returncode, called.stdout) == (2, ""), explain(called)
    assert called.stderr == f"error: Tool 'i__long_job' cannot be called: it {reason}.\n"
    as_json = json.loads(run_cli("tools", "i__long_job", "--json").stdout)
    assert as_json["execution"] == {"taskSupport": "required"} and as_json["unsupported"] == reason


# -- behind OAuth ------------------------------------------------------------------------


def test_terminal_and_api_through_an_oauth_protected_server(oauth_server: Any) -> None:
    from browser import visit
    from interactive import add_tools

    import auth
    from storage import Store

    NAME = "demo"
    server = oauth_server(extend=add_tools)
    write_config({NAME: {"url": server.url}})
    assert (
        auth.authenticate(
            load_config().server(NAME), Store(), open_browser=visit, show_url=lambda url: None, timeout=30
        )
        is not None
    )
    authenticated = len(server.tap.seen)
    code, output = on_terminal(["call", f"{NAME}__book_table"], [""] * len(BOOKING_DEFAULTS))
    assert code == 0, output
    assert reported(output) == {"action": "accept", "content": BOOKING_DEFAULTS}
    proc = run_cli("call", f"{NAME}__book_table", input="")
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr == NOTE.replace("'i'", f"'{NAME}'").replace("i__", f"{NAME}__") + DECLINED
    tokens = {seen.headers.get("authorization", "") for seen in server.tap.seen[authenticated:] if seen.path == "/mcp"}
    assert tokens and all(token.startswith("Bearer ") for token in tokens)  # every request was authorized


# -- the form, field by field (no server) ------------------------------------------------


def test_form_fields_read_the_spec_s_primitive_schemas() -> None:
    fields = {f.name: f for f in form_fields(BOOKING_SCHEMA)}
    assert [f.kind for f in fields.values()] == [
        "string",
        "integer",
        "number",
        "boolean",
        "choice",
        "choice",
        "choices",
    ]
    assert fields["guests"].convert("12") == 12
    assert fields["budget"].convert("3") == 3 and fields["budget"].convert("0.5") == 0.5
    assert fields["time"].convert("Late") == "20:00" and fields["time"].convert("1") == "18:00"
    problems = [
        ("guests", "13", "give at most 12"),
        ("name", "", "give at least 1 character"),
        ("seating", "roof", "choose one of indoor, outdoor, bar (or its number)"),
    ]
    for name, text, problem in problems:
        with pytest.raises(ValueError, match=re.escape(problem)):
            fields[name].convert(text)
    legacy = form_fields({"properties": {"c": {"type": "string", "enum": ["r", "g"], "enumNames": ["Red", "Green"]}}})
    assert legacy[0].choices == (("r", "Red"), ("g", "Green")) and not legacy[0].required


def test_a_required_field_without_default_is_asked_again_and_control_characters_are_escaped() -> None:
    request = InputRequest(
        "s",
        "s__t",
        "form",
        "Hello\x1b[2J there",
        {"properties": {"email": {"type": "string", "format": "email"}}, "required": ["email"]},
    )
    lines = iter(["\n", "not-an-address\n", "ada@example.org\n"])
    shown: list[str] = []
    answer = ask_on_terminal(request, lambda: next(lines), shown.append)
    assert answer == InputAnswer(ACCEPT, {"email": "ada@example.org"})
    text = "".join(shown)
    assert "Hello\\x1b[2J there" in text and "\x1b" not in text
    assert "  A value is required.\n" in text and "  Not accepted: give a valid email.\n" in text
