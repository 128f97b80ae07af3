"""`toolscript types` and typegen.py: typed modules from tool lists, hostile ones included."""

from __future__ import annotations

import ast
import json
import keyword
import os
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, SERVERS, cli, explain, serving_api, write_config

import toolscript  # noqa: F401  (imported with the rest at collection, before pytest puts the checkout's parent first)
import typegen

FIXTURES = ROOT / "tests" / "fixtures" / "tools"
TYPED_SERVER = {"command": sys.executable, "args": [str(SERVERS / "typed_server.py")]}

# Server text that must never become code: each is a tool name, a server name, a property
# name, a description, an enum value, a `$defs` name and a default somewhere below.
PAYLOAD = 'x"""\n__import__("os").system("touch PWNED")\n"""'
INJECTIONS = [
    PAYLOAD,
    "'''\nimport os\n'''",
    '"""',
    "back\\slash\\",
    "nul\x00byte",
    "line\nimport os",
    "cr\r\nimport os",
    "\\\nimport os",
    "r\u0435ad_file",  # a Cyrillic letter: looks like read_file
    "\uff49\uff4d\uff50\uff4f\uff52\uff54",  # fullwidth "import" (NFKC makes it the keyword)
    "rtl\u202e)(metsys.so",
    "esc\x1b[2J",
    "lone\ud800surrogate",
    "{0}%s${x}",
]
# Names that must each get their own identifier, none of them a keyword, a builtin the
# module's annotations use, or a name of the module's own.
CLASHING = ["get-item", "get.item", "get_item", "class", "None", "2fa", "str", "list", "Result", "_call", "__init__"]


def _rows(server: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": f"{server}__{tool['tool']}", "server": server, **tool} for tool in tools]


def hostile_rows() -> list[dict[str, Any]]:
    rows = []
    for text in INJECTIONS:
        schema = {
            "type": "object",
            "properties": {
                text: {"type": "string", "description": text, "enum": [text, PAYLOAD]},
                "ref": {"$ref": f"#/$defs/{text}"},
                "default": {"type": "string", "default": text},
            },
            "required": [text],
            "$defs": {text: {"type": "object", "properties": {text: {"type": "integer"}}}},
        }
        output = {"type": "object", "properties": {text: {"const": text}}, "required": [text]}
        tool = {"tool": text, "description": text, "inputSchema": schema, "outputSchema": output}
        rows += _rows(text, [tool, {"tool": "plain", "description": text, "inputSchema": schema}])
    rows += _rows("clash", [{"tool": name, "inputSchema": {"type": "object"}} for name in CLASHING])
    return rows


def typed_server_rows() -> list[dict[str, Any]]:
    """The tools of tests/servers/typed_server.py as `Gateway.tools()` lists them."""
    import typed_server

    tools = [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in typed_server.TOOLS]
    return _rows("typed", [{"tool": tool.pop("name"), "description": "", **tool} for tool in tools])


def _identifiers(tree: ast.AST) -> list[str]:
    """Every name the module's code uses: variables, functions, classes, arguments, attributes, imports."""
    names: list[str] = []
    for node in ast.walk(tree):
        for field in ("id", "name", "arg", "attr", "asname"):
            value = getattr(node, field, None)
            if isinstance(value, str):
                names.append(value)
        if isinstance(node, ast.Global):
            names += node.names
    return names


def test_server_text_appears_only_in_string_constants() -> None:
    source = typegen.module_source(hostile_rows())
    tree = ast.parse(source)
    constants = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and type(node.value) is str]
    identifiers = _identifiers(tree)
    for text in INJECTIONS:
        assert any(text in constant for constant in constants), f"{text!r} is not in the module at all"
        assert not any(text in name for name in identifiers), f"{text!r} is in an identifier"
    # Every identifier is plain ASCII (no look-alike letters, nothing NFKC would turn into a keyword).
    for name in identifiers:
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and not keyword.iskeyword(name), name
    # The code does nothing but what a module for no tools does, plus its fixed pattern per tool:
    # the same imports, and calls only of these.
    empty = ast.parse(typegen.module_source([]))
    calls = {ast.unparse(node.func) for node in ast.walk(empty) if isinstance(node, ast.Call)}
    calls |= {"_t.TypedDict", "_t.cast", "_structured", "_call", "Result", "staticmethod"}
    assert {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)} <= calls
    imports = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert imports == [ast.unparse(node) for node in ast.walk(empty) if isinstance(node, (ast.Import, ast.ImportFrom))]
    # The source itself holds no control character a terminal or an editor would act on.
    assert all(char.isprintable() or char in "\n\t" for char in source)


def test_hostile_module_imports_without_running_server_text(tmp_path: Path) -> None:
    (tmp_path / "hostile.py").write_text(typegen.module_source(hostile_rows()), encoding="utf-8")
    code = (
        "import inspect, sys, hostile; doc = inspect.getdoc(getattr(hostile, sys.argv[1]).plain);"
        "print(repr(doc.split(chr(10) + chr(10))[0]))"
    )
    namespace = typegen.identifier(PAYLOAD, "server")
    proc = subprocess.run(
        [sys.executable, "-c", code, namespace], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert proc.returncode == 0, explain(proc)
    assert not (tmp_path / "PWNED").exists()
    assert proc.stdout == repr(PAYLOAD.strip()) + "\n"  # the description, kept exactly as the docstring


def test_names_become_distinct_identifiers_and_calls_send_the_servers_names() -> None:
    tree = ast.parse(typegen.module_source(_rows("s", [{"tool": n, "inputSchema": {}} for n in CLASHING])))
    (namespace,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "s"]
    members = [statement.targets[0].id for statement in namespace.body if isinstance(statement, ast.Assign)]
    # In the namespace class only `staticmethod` is taken: its names are looked up in no annotation.
    assert members == [
        *["get_item", "get_item_", "get_item_2", "class_", "None_", "tool_2fa"],
        *["str", "list", "Result", "call", "init"],
    ]
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    sent = [ast.unparse(functions[f"_s__{member}"].body[-1]) for member in members]
    assert [re.search(r"_call\('([^']*)'", line).group(1) for line in sent] == [f"s__{n}" for n in CLASHING]
    unsupported = _rows("s", [{"tool": "task", "inputSchema": {}, "unsupported": "needs tasks"}])
    assert "task" not in typegen.module_source(unsupported)  # a tool toolscript cannot call gets no function
    assert typegen.identifier("naïve café", "tool") == "naive_cafe"
    assert typegen.identifier("r\u0435ad", "tool") == "r_ad"
    assert typegen.identifier("\uff49\uff4d\uff50\uff4f\uff52\uff54", "tool") == "import_"
    assert typegen.identifier("日本", "tool") == "tool"


def _function(source: str, name: str) -> str:
    (node,) = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == name]
    return f"({ast.unparse(node.args)}) -> {ast.unparse(node.returns)}"


def _typed_dicts(source: str) -> dict[str, str]:
    tree = ast.parse(source)
    return {
        node.targets[0].id: ast.unparse(node.value.args[1])
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call)
        and ast.unparse(node.value.func) == "_t.TypedDict"
    }


def test_schemas_become_annotations() -> None:
    schema = {
        "type": "object",
        "properties": {
            "page": {"type": "integer", "default": 1, "description": "Which page."},
            "query": {"type": "string"},
            "order": {"enum": ["asc", "desc"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "either": {"anyOf": [{"type": "string"}, {"type": "number"}]},
            "one": {"oneOf": [{"type": "boolean"}, {"type": "null"}]},
            "nullable": {"type": ["integer", "null"]},
            "filter": {
                "type": "object",
                "properties": {"field-name": {"type": "string"}, "deep": {"$ref": "#/$defs/Deep"}},
                "required": ["field-name"],
            },
            "tree": {"$ref": "#/$defs/Node"},
            "map": {"type": "object", "additionalProperties": {"type": "integer"}},
            "anything": {},
            "bad_default": {"type": "integer", "default": "ten"},
        },
        "required": ["query", "tree"],
        "$defs": {
            "Deep": {"type": "object", "properties": {"x": {"const": 3}}},
            "Node": {
                "type": "object",
                "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
            },
        },
    }
    source = typegen.module_source(_rows("srv", [{"tool": "find", "description": "Find.", "inputSchema": schema}]))
    assert _function(source, "_srv__find") == (
        "(*, query: str, tree: 'SrvFindNode', page: int=1, order: _t.Literal['asc', 'desc'] | None=None, "
        "tags: list[str] | None=None, either: str | float | None=None, one: bool | None=None, "
        "nullable: int | None=None, filter: _t.Union['SrvFindFilter', None]=None, map: dict[str, int] | None=None, "
        "anything: _t.Any=None, bad_default: int | None=None) -> Result"
    )
    assert _typed_dicts(source) == {
        "SrvFindFilter": "{'field-name': str, 'deep': _t.NotRequired['SrvFindDeep']}",
        "SrvFindDeep": "{'x': _t.NotRequired[_t.Literal[3]]}",
        "SrvFindNode": "{'children': _t.NotRequired[list['SrvFindNode']]}",
    }
    # A root that is itself a `$ref`: its arguments, and their `$ref`s resolved in the same document.
    schema = {
        "$ref": "#/$defs/Arguments",
        "$defs": {
            "Arguments": {"type": "object", "properties": {"x": {"$ref": "#/$defs/X"}}, "required": ["x"]},
            "X": {"enum": ["a", "b"]},
        },
    }
    referring = typegen.module_source(_rows("srv", [{"tool": "ref", "inputSchema": schema}]))
    assert _function(referring, "_srv__ref") == "(*, x: _t.Literal['a', 'b']) -> Result"
    doc = ast.get_docstring(next(n for n in ast.parse(source).body if getattr(n, "name", "") == "_srv__find"))
    assert doc == "Find.\n\nArgs:\n    page: Which page."  # only the arguments that have a description


def test_a_forward_reference_in_a_union_stays_valid_at_run_time(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]}},
        "$defs": {"A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}},
    }
    source = typegen.module_source(_rows("s", [{"tool": "t", "inputSchema": schema, "outputSchema": schema}]))
    namespace: dict[str, Any] = {}
    exec(compile(source, "generated.py", "exec"), namespace)  # the module's own code, no server text in it
    hints = typing.get_type_hints(namespace["STOutput"], namespace)  # the forward references resolve too
    referenced = namespace["STA"]
    assert hints == {"a": referenced | None}


def test_a_schema_made_to_blow_up_stays_small() -> None:
    # Each level refers to the next four times through `allOf`s: typed naively, 4**60 TypedDicts.
    def both(level: int) -> dict[str, Any]:
        return {"allOf": [{"$ref": f"#/$defs/D{level + 1}"}, {"$ref": f"#/$defs/D{level + 1}"}]}

    definitions = {
        f"D{level}": {"type": "object", "properties": {"a": both(level), "b": both(level)}} for level in range(60)
    }
    chain = {f"C{level}": {"anyOf": [{"$ref": f"#/$defs/C{level + 1}"}] * 2} for level in range(60)}
    schema = {"type": "object", "properties": {"d": {"$ref": "#/$defs/D0"}, "c": {"$ref": "#/$defs/C0"}}}
    schema["$defs"] = definitions | chain
    source = typegen.module_source(_rows("s", [{"tool": "t", "inputSchema": schema}]))
    assert len(source) < 50_000
    ast.parse(source)


MYPY_GOOD = """
from gen_everything import everything
from gen_memory import memory
from gen_time import time
from gen_typed import typed

echoed: str = everything.echo(message="hi").text
now = time.get_current_time(timezone="Europe/Paris")
dst: bool = now["is_dst"]
graph = memory.create_entities(entities=[{"name": "a", "entityType": "b", "observations": ["c"]}])
names: list[str] = [entity["name"] for entity in graph["entities"]]
typed.get_item(item_id="1", class_=2, format="json")
tree = typed.tree(root={"name": "a", "children": [{"name": "b"}]})
child: str = tree["root"]["children"][0]["name"]
"""

# Each line calls a tool wrongly; the number is what mypy must say about it.
MYPY_WRONG = [
    ("everything.echo(mesage='hi')", "call-arg"),  # unknown argument
    ("everything.echo(message=1)", "arg-type"),  # wrong type
    ("everything.echo()", "call-arg"),  # missing required argument
    ("typed.get_item(item_id='1', format='xml')", "arg-type"),  # not in the enum
    ("time.get_current_time(timezone='UTC')['no_such_key']", "misc"),  # not a key of the output
]


def test_generated_modules_pass_mypy_strict_and_wrong_calls_fail(tmp_path: Path) -> None:
    """One mypy run: every recorded real server, the typed test server and the hostile tools."""
    pytest.importorskip("mypy")
    modules = {path.stem: json.loads(path.read_text()) for path in sorted(FIXTURES.glob("*.json"))}
    assert {"everything", "filesystem", "memory", "time", "git"} <= set(modules)
    assert max(len(tools) for tools in modules.values()) > 50
    modules |= {"typed": typed_server_rows(), "hostile": hostile_rows()}
    for name, tools in modules.items():
        (tmp_path / f"gen_{name}.py").write_text(typegen.module_source(tools), encoding="utf-8")
    (tmp_path / "good.py").write_text(MYPY_GOOD)
    header = "from gen_everything import everything\nfrom gen_time import time\nfrom gen_typed import typed\n"
    (tmp_path / "wrong.py").write_text(header + "\n".join(line for line, _ in MYPY_WRONG) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-color-output", "--cache-dir", str(tmp_path / ".mypy_cache")]
        + [path.name for path in sorted(tmp_path.glob("*.py"))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert all(line.startswith("wrong.py:") for line in errors), explain(proc)
    found = {(int(line.split(":")[1]), line.rsplit("[", 1)[-1].rstrip("]")) for line in errors}
    expected = {(number, code) for number, (_, code) in enumerate(MYPY_WRONG, header.count("\n") + 1)}
    assert expected <= found and {number for number, _ in found} == {number for number, _ in expected}, explain(proc)


# -- toolscript types and GET /types, against the typed test server ------------------------------------


SCRIPT = """
import json
from generated import typed

print(json.dumps(typed.get_item(item_id="x", class_=5).json(), sort_keys=True))
print(json.dumps(typed.class_(import_=True).json(), sort_keys=True))
print(json.dumps(typed.tool_2fa().json(), sort_keys=True))
print(json.dumps(typed.tree(root={"name": "a", "children": [{"name": "b"}]}), sort_keys=True))
"""


def test_types_writes_a_module_that_a_script_just_uses(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    write_config({"typed": TYPED_SERVER})
    code, out, err = cli(capsys, "types", "--server", "typed", "-o", "generated.py")
    assert (code, out) == (0, ""), err
    Path("script.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # `import toolscript`, as from a checkout
    proc = subprocess.run([sys.executable, "script.py"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, explain(proc)
    assert [json.loads(line) for line in proc.stdout.splitlines()] == [
        {"tool": "get-item", "arguments": {"item-id": "x", "class": 5}},  # the server's own names
        {"tool": "class", "arguments": {"import": True}},
        {"tool": "2fa", "arguments": {}},
        {"root": {"name": "a", "children": [{"name": "b"}]}},  # structured content, as the TypedDict
    ]
    assert proc.stderr == ""


def test_types_selects_tools_and_servers(capsys: pytest.CaptureFixture[str]) -> None:
    write_config({"typed": TYPED_SERVER, "broken": {"command": "/nonexistent/mcp-server"}})
    code, out, err = cli(capsys, "types", "--tool", "typed__tree", "--tool", "typed__2fa")
    assert code == 0, err
    tree = ast.parse(out)
    (namespace,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "typed"]
    assert [statement.targets[0].id for statement in namespace.body[1:]] == ["tree", "tool_2fa"]
    code, out, err = cli(capsys, "types", "--tool", "typed__nope")
    assert code == 2 and out == "", err
    # Like `tools`: what can be listed is written, the server that failed is named, and the exit code says so.
    code, out, err = cli(capsys, "types")
    assert code == 4 and "class typed:" in out and "broken" not in out
    assert "Server 'broken' failed to connect" in err


def test_types_route_serves_the_same_module(capsys: pytest.CaptureFixture[str]) -> None:
    import requests

    from config import load_config
    from gateway import Gateway
    from gateway_http import find_token

    write_config({"typed": TYPED_SERVER, "broken": {"command": "/nonexistent/mcp-server"}})
    code, expected, err = cli(capsys, "types", "--server", "typed")
    assert code == 0, err
    with Gateway(load_config(), announce=False) as gateway, serving_api(gateway) as api:
        headers = {"Authorization": f"Bearer {find_token(api.url)}"}
        answer = requests.get(f"{api.url}/types?server=typed", headers=headers, timeout=60)
        assert answer.status_code == 200 and answer.headers["Content-Type"] == "text/x-python; charset=utf-8"
        assert answer.text == expected
        answer = requests.get(f"{api.url}/types?server=broken", headers=headers, timeout=60)
        assert answer.status_code == 502 and answer.json()["server"] == "broken"
        assert requests.get(f"{api.url}/types", timeout=60).status_code == 403  # the token, as everywhere
