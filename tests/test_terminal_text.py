"""A server's text on the terminal: escaped, on its own lines, never passing for toolscript's.

The server is `tests/servers/hostile.py` (over streamable HTTP, in a thread): its texts
carry terminal controls (OSC 0 and 52, CSI 2J, RLO) and newlines followed by lines
toolscript itself prints (`error: ...`, another server's header and password prompt). A
line that starts in the first column is toolscript's: server text only continues a line,
or follows an indent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cli, write_config
from hostile import CONTROLS, FORGED_ERROR, serving
from test_elicitation import on_terminal

RAW = ("\x1b", "\x07", "\u202e")  # what must never reach the terminal from a server
ESCAPED = "\\x1b]0;pwned\\x07\\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\\x07\\x1b[2J\\u202e"  # CONTROLS, shown


@pytest.fixture(autouse=True)
def hostile_config() -> Iterator[Path]:
    with serving() as running:
        yield write_config({"h": {"url": running.url}})


def assert_no_controls(text: str) -> None:
    assert not [raw for raw in RAW if raw in text], text


def test_a_form_is_escaped_and_each_prompt_line_starts_with_the_asking_server() -> None:
    # 60 columns: the long field title is cut into several lines, each after the server's prefix.
    code, output = on_terminal(["call", "h__form"], ["purple", "1", "2", ""], columns=60)
    assert code == 0, output
    assert_no_controls(output)
    ours = ("h> ", "Server 'h' asks for input (during h__form):", "Enter takes the [default]", '{"action": "accept"')
    first_column = [line for line in output.split("\n") if line and not line.startswith(" ")]
    assert first_column and all(line.startswith(ours) for line in first_column), output
    prompts = [line for line in first_column if line.startswith("h> ")]
    shown = [re.sub(r"(?<=: )(purple|1|2)$", "", line).rstrip(" ") for line in prompts]  # without the answers
    assert len(prompts) > 5 and max(map(len, shown)) == 60  # five prompts (one again), some cut in several lines
    # Choice labels, values and the format are escaped where they are shown, also in "Not accepted".
    assert "\n  Not accepted: choose one of red, green (or its number).\n" in output
    text = "".join(line.removeprefix("h> ") for line in output.split("\n") if line.startswith("h> "))
    assert "1) Red\\x1b]0;pwned\\x07, 2) Green\\x1b]52;c;" in text
    assert "one of: 1) small\\x1b[2J, 2) large\\u202e" in text
    assert (
        "Color\\nServer 'github' asks for input (during github__login):\\n  Sign in again.\\ngithub> Password" in text
    )
    assert "(email\\x1b]0;pwned\\x07\\nerror: Server 'github'" in text
    result = json.loads(output.split("\n")[-2])
    assert result == {"action": "accept", "content": {"color": "red", "size": "large\u202e"}}  # values sent as given


def test_a_server_s_error_answer_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "call", "h__fail") == (
        4,
        "",
        f"error: Server 'h' answered the call to 'fail' with an error: it broke{ESCAPED}\\n{FORGED_ERROR}\n",
    )


def test_a_server_s_log_notification_and_a_note_about_its_form_cannot_start_a_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli(capsys, "call", "h__shout") == (0, "done\n", f"h: careful{ESCAPED}\n    {FORGED_ERROR}\n")
    code, out, err = cli(capsys, "call", "h__form")
    assert (code, out) == (1, ""), err
    note, result = err.splitlines()
    assert note == (
        f"note: Server 'h' asked for input during h__form: 'Hello{ESCAPED}\\n{FORGED_ERROR}' "
        "(fields: color, size, mail); declined, as stdin or stderr is not a terminal."
    )
    assert result == '{"action": "decline", "content": null}'


def test_listings_show_each_server_text_on_its_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, tools, _ = cli(capsys, "tools")
    assert code == 0 and tools.splitlines()[0] == f"h__form   Fill a form{ESCAPED}"  # a description's first line
    resources = f"h  note://hostile  note{ESCAPED}\\n{FORGED_ERROR}  text/plain\n"
    assert cli(capsys, "resources") == (0, resources, "")
    assert cli(capsys, "prompts") == (0, f"h__greet  A prompt{ESCAPED} (arguments: who)\n", "")
    code, described, _ = cli(capsys, "tools", "h__form")
    assert code == 0 and described.startswith(f"h__form\n  Fill a form{ESCAPED}\n  {FORGED_ERROR}\n"), described
    assert_no_controls(tools + resources + described)


def test_an_authorization_server_s_error_stays_on_its_status_line(capsys: pytest.CaptureFixture[str]) -> None:
    from storage import Metadata, Record, Store

    write_config({"events": {"type": "sse", "url": "https://events.example.com/sse"}})
    forged = f"invalid_grant{CONTROLS}\n{FORGED_ERROR}"  # as an error_description could say
    Store().save("events", Record(metadata=Metadata(server_url="https://events.example.com/sse", last_error=forged)))
    shown = f"invalid_grant{ESCAPED}\\n{FORGED_ERROR}"
    code, out, _ = cli(capsys, "servers")
    assert (code, out) == (
        0,
        f"events  sse    https://events.example.com/sse  [oauth: authentication_failed] ({shown})\n",
    )
    code, out, _ = cli(capsys, "auth")
    assert code == 0 and out.splitlines()[0].startswith("events  ") and len(out.splitlines()) == 3, out
