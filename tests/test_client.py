"""`import toolscript`: `connect()` and its client, through a running gateway and in-process, in every layout."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, SERVERS, explain, serving_api, stdio_server, write_config

import client
import errors
import toolscript
from config import load_config
from gateway import Gateway

CATALOG = {"command": sys.executable, "args": [str(SERVERS / "catalog.py"), "stdio"]}


@contextlib.contextmanager
def connected(way: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[client.Client, Gateway | None]]:
    """A client by `toolscript.connect()`: of a gateway served in this test ("gateway"), or of its own."""
    if way == "in-process":
        with toolscript.connect("toolscript.toml") as own:
            yield own, None
        return
    with Gateway(load_config(), announce=False) as gateway, serving_api(gateway) as api:
        monkeypatch.setenv("TOOLSCRIPT_GATEWAY_URL", api.url)
        with toolscript.connect() as remote:
            yield remote, gateway


@pytest.mark.parametrize("way", ["in-process", "gateway"])
def test_client_calls_tools_reads_resources_and_gets_prompts(way: str, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config({"box": stdio_server(), "catalog": CATALOG})
    with connected(way, monkeypatch) as (ts, gateway):
        if gateway is not None:  # the served gateway's own server process answers the client
            assert ts.call("box__pid")["content"] == gateway.call("box__pid")["content"]
        assert "box__echo" in [tool["name"] for tool in ts.tools("box")]
        assert {tool["server"] for tool in ts.tools()} == {"box"}
        assert ts.tool("box__add")["inputSchema"]["required"] == ["a", "b"]
        assert ts.call("box__echo", text="hi")["content"] == [{"type": "text", "text": "hi"}]
        # Arguments as a dict, as keywords, or both; `name` is a tool argument like any other.
        assert ts.call("box__add", {"a": 2}, b=3)["structuredContent"] == {"total": 5, "terms": [2, 3]}
        assert ts.call("box__env", name="PATH")["isError"] is False
        with pytest.raises(toolscript.ToolError) as failed:
            ts.call("box__fail", message="it broke here")
        assert failed.value.content == [{"type": "text", "text": "Error executing tool fail: it broke here"}]
        assert (failed.value.name, failed.value.server, failed.value.exit_code) == ("box__fail", "box", 1)
        assert isinstance(failed.value, toolscript.ToolscriptError)
        with pytest.raises(toolscript.UsageError) as unknown:
            ts.call("box__nope")
        assert unknown.value.exit_code == 2
        assert "catalog://readme" in [item.get("uri") for item in ts.resources("catalog")]
        assert ts.read("catalog", "catalog://readme")["contents"][0]["text"].startswith("The catalog server.")
        assert "catalog__greet" in [prompt["name"] for prompt in ts.prompts()]
        messages = ts.prompt("catalog__greet", {"name": "Ada"}, style="formal")["messages"]
        assert messages[0]["content"]["text"] == "Say hello to Ada in a formal style."


@pytest.mark.parametrize("way", ["in-process", "gateway"])
def test_a_server_that_failed_raises_its_error(way: str, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config({"broken": {"command": "/nonexistent/mcp-server"}})
    with connected(way, monkeypatch) as (ts, _):
        with pytest.raises(toolscript.ConnectError) as caught:
            ts.tools()
        assert caught.value.server == "broken"
        assert str(caught.value).startswith("Server 'broken' failed to connect: cannot run '/nonexistent/mcp-server'")
        with pytest.raises(toolscript.ConnectError):
            ts.call("broken__anything")


def test_connect_to_a_gateway_that_is_not_there(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket_closed() as url:
        monkeypatch.setenv("TOOLSCRIPT_GATEWAY_URL", url)
        with pytest.raises(toolscript.ConnectError) as caught:
            toolscript.connect()
    assert caught.value.exit_code == 4 and "toolscript gateway" in str(caught.value)


@contextlib.contextmanager
def socket_closed() -> Iterator[str]:
    """The URL of a loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield f"http://127.0.0.1:{port}"


def test_connect_limits_its_own_gateway_to_servers() -> None:
    write_config({"box": stdio_server(), "broken": {"command": "/nonexistent/mcp-server"}})
    with toolscript.connect(servers=["box"]) as ts:
        assert [row["name"] for row in ts.servers()] == ["box"]
        assert ts.tools()  # the broken server is not among them, so nothing fails
    with pytest.raises(toolscript.ConfigError):
        toolscript.connect(servers=["nope"])


NOTHING_PRINTED = """
import toolscript
with toolscript.connect() as ts:
    ts.call("box__echo", text="hi")
    ts.prompts("box")
    # prompts(): the listing of one server fails, which is logged (a log record is not printed).
    for call in (ts.prompts, lambda: ts.call("box__fail"), ts.tools, lambda: ts.call("box__nope")):
        try:
            call()
        except toolscript.ToolscriptError as exc:
            pass
"""


def test_nothing_prints(tmp_path: Path) -> None:
    # A server whose prompt listing fails, one that cannot start, a tool error and a usage error: all quiet.
    partial = {"command": sys.executable, "args": [str(SERVERS / "catalog.py"), "stdio", "--partial"]}
    write_config({"box": stdio_server(), "partial": partial, "broken": {"command": "/nonexistent/mcp-server"}})
    proc = subprocess.run(
        [sys.executable, "-c", NOTHING_PRINTED],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), explain(proc)


# The library's names: connect(), its client and every error a program may catch.
API = ["connect", "Client", "ToolError", *(name for name in errors.__all__ if name.endswith("Error"))]

LAYOUT_CHECK = """
import sys
import toolscript
names = sys.argv[1].split(",")
missing = [name for name in names if not hasattr(toolscript, name)]
assert not missing, missing
assert issubclass(toolscript.ToolError, toolscript.ToolscriptError)
assert toolscript.ToolError.__module__.rsplit(".", 1)[-1] == "client"
assert toolscript.UsageError.__module__.rsplit(".", 1)[-1] == "errors"
print("ok")
"""


def test_the_api_in_a_checkout() -> None:
    assert sorted(API) == sorted(name for name in toolscript.__all__ if name != "main")
    assert toolscript.ToolError is client.ToolError and toolscript.UsageError is errors.UsageError
    proc = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + LAYOUT_CHECK, ",".join(API)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout == "ok\n", explain(proc)


def test_the_api_in_a_package_loads_on_first_use(tmp_path: Path) -> None:
    """Installed or vendored as a `toolscript` package: the same names, and `import toolscript.storage` stays cheap."""
    package = tmp_path / "toolscript"
    package.mkdir()
    for path in ROOT.glob("*.py"):
        shutil.copy(path, package / path.name)
    code = "import sys; sys.path.insert(0, sys.argv.pop(1))\n" + LAYOUT_CHECK
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code, str(tmp_path), ",".join(API)], capture_output=True, text=True, timeout=60
    )
    assert proc.stdout == "ok\n", explain(proc)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import toolscript.storage, toolscript;"
        "print(sorted(name for name in sys.modules if name.startswith('toolscript')));"
        "toolscript.connect; print('toolscript.client' in sys.modules, 'toolscript.gateway' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and "'toolscript.client'" not in lines[0], explain(proc)
    assert lines[1] == "True False", explain(proc)  # connect() is there, the SDK is not loaded until it runs


def test_the_api_in_a_vendored_copy(tmp_path: Path) -> None:
    vend = tmp_path / "vend"
    vend.mkdir()
    for path in ROOT.glob("*.py"):
        if path.name not in ("__init__.py", "__main__.py"):  # a host repo brings its own
            shutil.copy(path, vend / path.name)
    (vend / "__init__.py").write_text("")
    code = "import sys; sys.path.insert(0, '.')\n" + LAYOUT_CHECK.replace(
        "import toolscript\n", "from vend import toolscript\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code, ",".join(API)], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert proc.stdout == "ok\n", explain(proc)


def test_readme_example_runs(tmp_path: Path) -> None:
    """The "Use from Python" example of the README, run as a user would with the package installed."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Use from Python", 1)[1].split("\n### ", 1)[0]
    example = re.search(r"```python\n(.*?)```", section, re.S)
    assert example is not None
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "toolscript").symlink_to(ROOT, target_is_directory=True)  # the installed layout
    (tmp_path / "example.py").write_text(example.group(1))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    proc = subprocess.run(
        [sys.executable, "example.py"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout == "['demo__echo', 'demo__add', 'demo__whoami']\n5\nTool 'demo__add' failed: 1 content item(s)\n"
