"""`toolscript search`: the ranker (search.py) on fixed catalogues, `Gateway.search` following a changed
tool list, `GET /search` and `RemoteGateway.search`, and the CLI command (`--json`, `--types`, escaping)."""

from __future__ import annotations

import http.client
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import SERVERS, cli, serving, stdio_server, write_config

from config import parse_config
from errors import ConfigError, UsageError
from gateway import Gateway
from gateway_http import TOKEN_VAR, URL_VAR, ApiServer, RemoteGateway
from search import IndexCache, ToolIndex, one_line, tokenize
from typegen import module_source

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tools"
EVERYTHING = str(SERVERS / "everything.py")


def tool(name: str, description: str = "", server: str = "demo", **extra: Any) -> dict[str, Any]:
    return {"name": f"{server}__{name}", "server": server, "tool": name, "description": description, **extra}


# A small fixed catalogue: names in snake_case, kebab-case and camelCase, one with a title only,
# one found only through its parameters.
CATALOGUE = [
    tool("create_issue", "Create a new issue in a repository", "github"),
    tool("list_issues", "List issues in a repository with filtering options", "github"),
    tool("add_issue_comment", "Add a comment to an existing issue", "github"),
    tool("mergePullRequest", "Merge a pull request", "github"),
    tool("read-text-file", "Read the complete contents of a file as text", "files"),
    tool("create_directory", "Create a new directory or ensure a directory exists", "files"),
    tool("delete_entities", "Delete multiple entities and their associated relations", "memory"),
    tool("create_entities", "Create multiple new entities in the knowledge graph", "memory"),
    tool("get_current_time", "Get current time in a specific timezone", "time"),
    tool("browser_take_screenshot", "", "web", title="Take a screenshot"),
    tool(
        "resolve",
        "Resolve a value.",
        "misc",
        inputSchema={"type": "object", "properties": {"hostname": {"type": "string", "description": "DNS name"}}},
    ),
]


def top(index: ToolIndex, query: str, **options: Any) -> str | None:
    hits = index.search(query, **options)
    return hits[0]["name"] if hits else None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("create issue", "github__create_issue"),  # the tool's own words
        ("open a bug", "github__create_issue"),  # synonyms for both words
        ("listing the issues", "github__list_issues"),  # other forms of the words
        ("merge pull request", "github__mergePullRequest"),  # camelCase split
        ("merge my PR", "github__mergePullRequest"),  # an abbreviation
        ("read a text file", "files__read-text-file"),  # kebab-case split
        ("make a folder", "files__create_directory"),
        ("mkdir", "files__create_directory"),  # shorthand for two words
        ("forget what you know about Bob", "memory__delete_entities"),
        ("remember that Alice works at Acme", "memory__create_entities"),
        ("what's the clock in Tokyo", "time__get_current_time"),
        ("screenshot", "web__browser_take_screenshot"),
        ("take a picture of the page", "web__browser_take_screenshot"),  # the title, and a synonym
        ("hostname", "misc__resolve"),  # a parameter's name
        ("creat isue", "github__create_issue"),  # typos
        ("screensot", "web__browser_take_screenshot"),
        ("forgett Bob", "memory__delete_entities"),  # a typo of a word only the synonym table knows
    ],
)
def test_ranking_on_a_small_fixed_catalogue(query: str, expected: str) -> None:
    assert top(ToolIndex(CATALOGUE), query) == expected


def test_hits_name_the_tool_and_its_server_with_a_one_line_description_and_a_score() -> None:
    index = ToolIndex([*CATALOGUE, tool("multi", "First line.\n\tSecond  line\n", "misc")])
    hits = index.search("issue", limit=2)
    assert [set(hit) for hit in hits] == [{"name", "server", "description", "score"}] * 2
    assert hits[0]["server"] == "github" and hits[0]["score"] >= hits[1]["score"] > 0
    assert index.search("multi")[0]["description"] == "First line."
    assert len(index.search("issue", limit=1)) == 1
    assert [hit["server"] for hit in index.search("create", limit=10, server="files")] == ["files"]
    assert index.search("zzzz qqqq") == []  # nothing fits: nothing, rather than noise
    assert index.search("the of a") == []  # stop words only
    assert index.search(" ".join(["zzzz"] * 64 + ["issue"])) == []  # only the first 64 words count
    assert index.search(" ".join(["zzzz"] * 63 + ["issue"]))


def test_odd_rows_and_queries_do_not_break_the_index() -> None:
    rows: list[dict[str, Any]] = [
        {"name": "s__a", "server": "s", "tool": "a", "description": None, "inputSchema": []},
        {"name": "s__b", "server": "s", "tool": "b", "description": 42, "inputSchema": {"properties": {"x": 1}}},
        {"name": "s__c\x1b[2J", "server": "s", "tool": "c\x1b[2J", "description": "Clear\u202escreen " * 5000},
        {},
    ]
    index = ToolIndex(rows)
    assert len(index) == 4
    assert index.search("clear screen")[0]["name"] == "s__c\x1b[2J"  # escaping is the printer's job
    assert index.search("créer un ticket 🎫 ß") == [] and index.search("") == [] and index.search("x", limit=0) == []
    assert ToolIndex([]).search("anything") == []


def test_words_and_descriptions() -> None:
    assert tokenize("getPullRequest_files-v2.json") == ["get", "pull", "request", "fil", "v2", "json"]
    assert tokenize("creating created creates") == ["creat"] * 3
    assert one_line("\n\n  Lists   things\nmore") == "Lists things"
    assert one_line("x" * 500).endswith("…") and len(one_line("x" * 500)) == 160


def test_the_recorded_servers_answer_plain_requests() -> None:
    tools = [row for path in sorted(FIXTURES.glob("*.json")) for row in json.loads(path.read_text())]
    assert len(tools) > 400
    index = ToolIndex(tools)
    assert top(index, "open a bug") == "github__create_issue"
    assert top(index, "spin up a new vm") == "azure__compute_vm_create"
    assert top(index, "current time in Tokyo") == "time__get_current_time"
    assert top(index, "get a secret from the key vault", server="azure") == "azure__keyvault_secret_get"


def test_an_index_is_kept_until_a_list_it_was_built_from_is_replaced() -> None:
    cache = IndexCache()
    first, second = {"a": 1}, {"b": 2}
    assert cache.get(None, [first, second]) is None
    index = ToolIndex(CATALOGUE)
    cache.put(None, [first, second], index)
    assert cache.get(None, [first, second]) is index
    assert cache.get(None, [first, dict(second)]) is None  # equal, but a new list: its owner replaced it
    assert cache.get(None, [first]) is None and cache.get("files", [first, second]) is None


# -- through a gateway -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    cfg = parse_config(
        {
            "servers": {
                "s": stdio_server(),
                "ev": {"command": sys.executable, "args": [EVERYTHING, "ev"]},
                "hostile": stdio_server("--hostile"),
            }
        }
    )
    with Gateway(cfg) as running:
        yield running


@pytest.fixture(scope="module")
def api(gateway: Gateway) -> Iterator[ApiServer]:
    with serving(ApiServer(gateway)) as server:
        yield server


def test_a_tool_row_has_the_tool_title(gateway: Gateway) -> None:
    assert gateway.tool("ev__add")["title"] == "Add two numbers"
    assert "title" not in gateway.tool("ev__echo")


def test_gateway_search_follows_a_changed_tool_list(gateway: Gateway) -> None:
    assert [hit["name"] for hit in gateway.search("add two numbers", limit=1)] == ["ev__add"]  # by its title
    assert "s__zebra_crossing" not in [hit["name"] for hit in gateway.search("zebra crossing", server="s")]
    gateway.call("s__grow", {"name": "zebra_crossing"})  # the server says its tool list changed
    hits = gateway.search("zebra crossing", limit=1)
    assert hits[0]["name"] == "s__zebra_crossing" and hits[0]["description"].startswith("Added at ")


def test_gateway_search_refuses_bad_input(gateway: Gateway) -> None:
    with pytest.raises(UsageError, match="Give the search some words"):
        gateway.search("  ")
    with pytest.raises(UsageError, match="at least 1, not 0"):
        gateway.search("echo", limit=0)
    with pytest.raises(ConfigError):
        gateway.search("echo", server="nope")


def get(api: ApiServer, path: str, token: str | None = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token or api.token}"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_the_search_endpoint(api: ApiServer, gateway: Gateway) -> None:
    code, hits = get(api, "/search?q=" + quote("sum of two numbers") + "&limit=2")
    assert code == 200 and len(hits) == 2 and hits[0]["name"] == "ev__add"
    assert hits == gateway.search("sum of two numbers", limit=2)
    code, hits = get(api, "/search?q=echo&server=s")
    assert code == 200 and hits and {hit["server"] for hit in hits} == {"s"}
    limit_error = {"error": "limit must be a whole number of tools above 0: GET /search?q=QUERY&limit=5."}
    assert get(api, "/search?q=echo&limit=two") == (400, limit_error)
    assert get(api, "/search?q=echo&limit=0") == (400, limit_error)
    assert get(api, "/search?q=echo&limit=" + "9" * 5000) == (400, limit_error)
    assert get(api, "/search?q=+&limit=1") == (400, {"error": "Say what to search for: GET /search?q=QUERY."})
    assert get(api, "/search?q=echo&server=nope")[0] == 404
    assert get(api, "/search?q=echo", token="wrong")[0] == 403
    remote = RemoteGateway(api.url, token=api.token)
    assert remote.search("sum of two numbers", limit=2) == gateway.search("sum of two numbers", limit=2)
    hits = remote.search("echo", server="ev")
    assert hits and {hit["server"] for hit in hits} == {"ev"}
    with pytest.raises(UsageError, match="limit must be a whole number of tools above 0"):
        remote.search("echo", limit=0)


def test_the_cli_through_a_running_gateway(
    api: ApiServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(URL_VAR, api.url)
    monkeypatch.setenv(TOKEN_VAR, api.token)
    code, out, err = cli(capsys, "search", "add", "numbers", "or", "echo", "--limit", "2", "--server", "ev")
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["ev__add", "ev__echo"] and lines[0].endswith("  add of ev")
    code, out, _ = cli(capsys, "search", "add two numbers", "--json", "--limit", "1")
    assert code == 0 and json.loads(out) == [{**json.loads(out)[0], "name": "ev__add", "server": "ev"}]
    code, out, err = cli(capsys, "search", "zzzz", "--server", "ev")
    assert (code, out) == (0, "") and "No tool fits 'zzzz'" in err


def test_the_cli_escapes_server_text(
    api: ApiServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(URL_VAR, api.url)
    monkeypatch.setenv(TOKEN_VAR, api.token)
    code, out, _ = cli(capsys, "search", "clears the screen", "--server", "hostile")
    assert code == 0 and "hostile__echo" in out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b" in out


def test_the_cli_with_its_own_gateway(capsys: pytest.CaptureFixture[str]) -> None:
    write_config(
        {
            "ev": {"command": sys.executable, "args": [EVERYTHING, "ev"]},
            "broken": {"command": "/nonexistent/mcp-server"},
        }
    )
    code, out, err = cli(capsys, "search", "add", "numbers", "--limit", "1")
    assert out.split()[0] == "ev__add"
    assert code == 4 and "Server 'broken' failed to connect" in err  # the ranking, and which servers were left out
    with pytest.raises(SystemExit) as exit_:
        cli(capsys, "search", "x", "--limit", "0")
    assert exit_.value.code == 2 and "must be a whole number above 0, not '0'" in capsys.readouterr().err


def test_types_follow_the_ranking(
    api: ApiServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(URL_VAR, api.url)
    monkeypatch.setenv(TOKEN_VAR, api.token)
    code, out, err = cli(capsys, "search", "add two numbers", "--limit", "1", "--types")
    assert code == 0, err
    ranking, source = out.split("\n\n", 1)
    assert ranking.split()[0] == "ev__add"
    expected = module_source([RemoteGateway(api.url, token=api.token).tool("ev__add")])
    assert source.rstrip("\n") == expected.rstrip("\n")
    compile(source, "<types>", "exec")
    code, out, _ = cli(capsys, "search", "add two numbers", "--limit", "1", "--types", "--json")
    answer = json.loads(out)
    assert [hit["name"] for hit in answer["results"]] == ["ev__add"] and "def " in answer["types"]


def test_the_cli_without_servers(capsys: pytest.CaptureFixture[str]) -> None:
    write_config("")
    code, out, err = cli(capsys, "search", "open", "a", "bug")
    assert (code, out) == (0, "") and "No servers" in err and "No tool fits" not in err
