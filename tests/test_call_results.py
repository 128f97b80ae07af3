"""Tool results a person can use: `call -o DIR`, `tools SERVER__TOOL` and `call ... key=value`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SERVERS, cli, explain, run_cli, serving_api, stdio_server, write_config
from interactive import AUDIO, BLOB, PNG, serving

from config import load_config
from gateway import Gateway

INTERACTIVE = str(SERVERS / "interactive.py")
SUMMARIES = (
    "here you are\n"
    "[image: image/png, {png} bytes]{image}\n"
    "[audio: audio/wav, {audio} bytes]{audio_path}\n"
    "[resource: file:///report.pdf, application/pdf, {blob} bytes]{blob_path}\n"
    "[resource link: big.bin <file:///big.bin>]\n"
)


def summaries(saved_to: str | None = None) -> str:
    def where(name: str) -> str:
        return f" saved to {saved_to}/{name}" if saved_to else ""

    return SUMMARIES.format(
        png=len(PNG),
        audio=len(AUDIO),
        blob=len(BLOB),
        image=where("2-image.png"),
        audio_path=where("3-audio.wav"),
        blob_path=where("4-resource.pdf"),
    )


@pytest.fixture(params=["stdio", "http"])
def media_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """The interactive server as `i`, over stdio or streamable HTTP."""
    if request.param == "stdio":
        write_config({"i": {"command": sys.executable, "args": [INTERACTIVE]}})
        yield "i"
    else:
        with serving() as running:
            write_config({"i": {"url": running.url}})
            yield "i"


# -- call -o DIR -------------------------------------------------------------------------


def test_output_dir_saves_images_audio_and_blobs_named_by_position_and_type(
    media_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "call", "i__media") == (0, summaries(), "")  # without -o: the summaries, nothing saved
    assert not Path("out").exists()
    assert cli(capsys, "call", "i__media", "-o", "out") == (0, summaries("out"), "")
    assert sorted(path.name for path in Path("out").iterdir()) == ["2-image.png", "3-audio.wav", "4-resource.pdf"]
    assert Path("out/2-image.png").read_bytes() == PNG
    assert Path("out/3-audio.wav").read_bytes() == AUDIO
    assert Path("out/4-resource.pdf").read_bytes() == BLOB


def test_output_dir_with_json_prints_the_result_unchanged(
    media_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "call", "i__media", "--json", "--output", "saved")
    assert (code, err) == (0, "")
    assert [item["type"] for item in json.loads(out)["content"]] == [
        "text",
        "image",
        "audio",
        "resource",
        "resource_link",
    ]
    assert Path("saved/2-image.png").read_bytes() == PNG


def test_output_dir_that_cannot_be_written_is_a_one_line_error(
    media_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Path("file").write_text("not a directory")
    code, out, err = cli(capsys, "call", "i__media", "-o", "file")
    assert (code, out) == (2, "")
    assert err.startswith("error: Cannot save the image of the result to file/2-image.png: ") and err.count("\n") == 1


def test_output_dir_never_writes_through_a_planted_symbolic_link(
    media_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Path("out").mkdir()
    Path("victim").write_text("keep me")
    Path("out/2-image.png").symlink_to(Path("victim").resolve())
    code, out, err = cli(capsys, "call", "i__media", "-o", "out")
    assert (code, out) == (2, "")
    assert err.startswith("error: Cannot save the image of the result to out/2-image.png: ") and err.count("\n") == 1
    assert Path("victim").read_text() == "keep me"


def test_output_dir_through_an_oauth_protected_server(oauth_server: Any) -> None:
    from browser import visit
    from interactive import add_tools

    import auth
    from storage import Store

    server = oauth_server(extend=add_tools)
    write_config({"demo": {"url": server.url}})
    assert (
        auth.authenticate(
            load_config().server("demo"), Store(), open_browser=visit, show_url=lambda url: None, timeout=30
        )
        is not None
    )
    proc = run_cli("call", "demo__media", "-o", "out")
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout == summaries("out")
    assert Path("out/3-audio.wav").read_bytes() == AUDIO


# -- tools SERVER__TOOL --------------------------------------------------------------------


@pytest.fixture
def toolbox() -> Path:
    return write_config({"s": stdio_server(exclude_tools=["crash"])})


def test_one_tool_is_described_for_a_person(toolbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "tools", "s__slow") == (
        0,
        (
            "s__slow\n"
            "  Create `started_file` (if given), sleep `seconds` or until a file `until_file` exists, then answer.\n"
            "\n"
            "Arguments:\n"
            "  seconds (number, optional, default: 1.0)\n"
            '  text (string, optional, default: "done")\n'
            '  started_file (string, optional, default: "")\n'
            '  until_file (string, optional, default: "")\n'
            "\n"
            "Returns structured content; its schema: toolscript tools s__slow --json\n"
        ),
        "",
    )
    code, out, _ = cli(capsys, "tools", "s__echo")
    assert code == 0 and out.startswith(
        "s__echo\n  Echo the text back.\n  Second line of the description.\n\nArguments:\n  text (string, required)\n"
    )


def test_one_tool_as_json_gives_its_schema(toolbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "tools", "s__add", "--json")
    tool = json.loads(out)
    assert code == 0 and tool["name"] == "s__add"
    assert tool["inputSchema"]["required"] == ["a", "b"]
    assert tool["inputSchema"]["properties"]["a"]["type"] == "integer"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["s__nope"], "error: Unknown tool 'nope' on server 's'. Run: toolscript tools --server s\n"),
        (["s__crash"], "error: Tool 's__crash' is hidden by the include_tools/exclude_tools of server 's'.\n"),
        (["s__echo", "--server", "s"], "error: Give either SERVER__TOOL or --server: toolscript tools SERVER__TOOL\n"),
    ],
)
def test_describing_an_unknown_or_hidden_tool_exits_2(
    toolbox: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert cli(capsys, "tools", *args) == (2, "", message)


def test_arguments_described_from_the_schema() -> None:
    from tool_arguments import describe_arguments

    schema = {
        "properties": {
            "when": {"type": "string", "format": "date", "description": "the day"},
            "mode": {"$ref": "#/$defs/Mode", "default": "fast"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None, "title": "Limit"},
            "free": {},
        },
        "required": ["when"],
        "$defs": {"Mode": {"enum": ["fast", "slow"], "type": "string", "title": "Mode"}},
    }
    described = [
        (a.name, a.type, a.required, a.description, a.default if a.has_default else "-")
        for a in describe_arguments(schema)
    ]
    assert described == [
        ("when", "string (date)", True, "the day", "-"),
        ("mode", 'one of: "fast", "slow"', False, None, "fast"),
        ("tags", "array of string", False, None, "-"),
        ("limit", "integer or null", False, None, None),
        ("free", "any", False, None, "-"),
    ]


# -- call ... key=value --------------------------------------------------------------------


def test_key_value_arguments_are_typed_by_the_schema(toolbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "call", "s__add", "a=2", "b=40", "--json")
    assert code == 0 and json.loads(out)["structuredContent"] == {"total": 42, "terms": [2, 40]}
    assert cli(capsys, "call", "s__echo", "text=42") == (0, "42\n", "")  # a string stays a string
    code, out, _ = cli(capsys, "call", "s__mixed", "is_error=yes", "--json")
    assert code == 1 and json.loads(out)["isError"] is True
    code, out, _ = cli(capsys, "call", "s__add", "a:=1", "b:=2", "--json")
    assert json.loads(out)["structuredContent"]["total"] == 3
    assert cli(capsys, "call", "s__slow", "seconds=0", "text=a=b") == (0, "a=b\n", "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a=x", "b=1"], "error: Argument 'a' of 's__add' takes integer, not 'x'.\n"),
        (
            ["a:=[1", "b=1"],
            "error: The value of 'a' for 's__add' (a:=...) is not valid JSON: "
            "Expecting ',' delimiter: line 1 column 3 (char 2).\n",
        ),
        (["a=1", "a=2"], "error: Argument 'a' is given twice for 's__add'.\n"),
        (
            ["a=1", '{"b": 2}'],
            """error: '{"b": 2}' is not a key=value argument for 's__add'; give either key=value """
            "arguments or one JSON object (or @FILE, or - for stdin).\n",
        ),
        (["=1"], "error: '=1' has no name before '='; give arguments as name=value.\n"),
    ],
)
def test_key_value_mistakes_exit_2(
    toolbox: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert cli(capsys, "call", "s__add", *args) == (2, "", message)


def test_key_value_typing_of_each_json_type() -> None:
    from tool_arguments import parse_pairs, typed_arguments

    schema = {
        "properties": {
            "n": {"type": "number"},
            "i": {"type": "integer"},
            "b": {"type": "boolean"},
            "s": {"type": "string"},
            "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "l": {"type": "array"},
            "o": {"type": "object"},
            "e": {"enum": [1, "two", True]},
            "either": {"type": ["integer", "string"]},
        }
    }
    words = ["n=2.5", "i=-3", "b=false", "s=007", "maybe=null", 'l=["x"]', 'o={"k": 1}', "e=1", "either=x", "unknown=7"]
    assert typed_arguments(parse_pairs(words, "t"), schema, "t") == {
        "n": 2.5,
        "i": -3,
        "b": False,
        "s": "007",
        "maybe": None,
        "l": ["x"],
        "o": {"k": 1},
        "e": 1,
        "either": "x",
        "unknown": "7",
    }
    with pytest.raises(Exception, match=r"takes array, not 'x' \(for JSON, write l:='...'\)"):
        typed_arguments(parse_pairs(["l=x"], "t"), schema, "t")


def test_describe_and_key_value_through_a_running_gateway(toolbox: Path) -> None:
    with Gateway(load_config()) as gateway, serving_api(gateway) as api:
        env = {"TOOLSCRIPT_GATEWAY_URL": api.url}
        described = run_cli("tools", "s__add", env=env)
        called = run_cli("call", "s__add", "a=1", "b=2", env=env)
        unknown = run_cli("tools", "s__nope", env=env)
    assert described.returncode == 0 and described.stdout.startswith("s__add\n  Add two integers"), explain(described)
    assert called.returncode == 0 and '"total": 3' in called.stdout, explain(called)
    assert (unknown.returncode, unknown.stderr) == (
        2,
        "error: Unknown tool 'nope' on server 's'. Run: toolscript tools --server s\n",
    ), explain(unknown)


def test_a_result_that_breaks_the_mcp_schema_is_one_line_naming_the_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import requests

    write_config({"raw": {"command": sys.executable, "args": [str(SERVERS / "raw_stdio.py")]}})
    message = (
        "Server 'raw' sent an unusable result for the call to 'invalid': content.0.TextContent.text: Field required."
    )
    assert cli(capsys, "call", "raw__invalid") == (4, "", f"error: {message}\n")
    with Gateway(load_config()) as gateway, serving_api(gateway) as api:
        answer = requests.post(
            f"{api.url}/tools/raw__invalid", json={}, headers={"Authorization": f"Bearer {api.token}"}, timeout=60
        )
    assert (answer.status_code, answer.json()["error"]) == (502, message)
