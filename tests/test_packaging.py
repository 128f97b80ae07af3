"""The three forms of toolscript: a flat checkout, a vendored copy and the installed package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, explain

MODULES = sorted(path.name for path in ROOT.glob("*.py"))


def _run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, timeout=timeout)


def test_checkout_runs_the_cli_as_a_script_and_as_a_module(tmp_path: Path) -> None:
    proc = _run(sys.executable, str(ROOT / "toolscript.py"), "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "usage: toolscript" in proc.stdout, explain(proc)
    proc = _run(sys.executable, "-m", "toolscript", "--help", cwd=ROOT)
    assert proc.returncode == 0 and "usage: toolscript" in proc.stdout, explain(proc)


def test_vendored_copy_imports_its_siblings_relatively(tmp_path: Path) -> None:
    vend = tmp_path / "vend"
    vend.mkdir()
    for name in MODULES:
        if name not in ("__init__.py", "__main__.py"):  # a host repo brings its own
            shutil.copy(ROOT / name, vend / name)
    (vend / "__init__.py").write_text("")
    # Same-named modules at the top level must not be picked up instead of the vendored ones.
    (tmp_path / "config.py").write_text("raise ImportError('the top-level config was imported')\n")
    (tmp_path / "storage.py").write_text("raise ImportError('the top-level storage was imported')\n")
    proc = _run(sys.executable, "-m", "vend.toolscript", "servers", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert "No servers configured" in proc.stdout + proc.stderr, explain(proc)
    proc = _run(sys.executable, "-c", "import vend.gateway, vend.auth; print(vend.gateway.__name__)", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == "vend.gateway\n", explain(proc)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from a copy of the checkout's tracked and new files (building writes next to them)."""
    src = tmp_path_factory.mktemp("src")
    listed = _run("git", "ls-files", "-co", "--exclude-standard", cwd=ROOT)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    for name in listed.stdout.splitlines():
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    proc = _run(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(src), cwd=src, timeout=300
    )
    assert proc.returncode == 0, explain(proc)
    (built,) = out.glob("toolscript-*.whl")
    return built


def test_wheel_holds_one_toolscript_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    ours = [name for name in names if ".dist-info/" not in name]
    assert ours and all(name.startswith("toolscript/") for name in ours), ours
    assert sorted(name.removeprefix("toolscript/") for name in ours if name.endswith(".py")) == MODULES
    assert "toolscript/config.toml.example" in ours
    (top_level,) = [name for name in names if name.endswith(".dist-info/top_level.txt")]
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["toolscript"]
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert "toolscript = toolscript.toolscript:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


def test_installed_package_runs_and_leaves_no_generic_module(wheel: Path, tmp_path: Path) -> None:
    # Install without dependencies into a plain directory: the SDK is not needed for these commands.
    target = tmp_path / "site"
    proc = _run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--target",
        str(target),
        str(wheel),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, explain(proc)
    installed = {path.name for path in target.iterdir() if not path.name.endswith(".dist-info")}
    assert installed - {"bin"} == {"toolscript"}, installed  # bin/ holds the console script
    code = (
        "import sys, runpy; sys.path.insert(0, sys.argv[1]); sys.argv[1:] = ['servers'];"
        "runpy.run_module('toolscript', run_name='__main__')"
    )
    proc = _run(sys.executable, "-I", "-c", code, str(target), cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert "No servers configured" in proc.stdout + proc.stderr, explain(proc)
    # The example config ships as package data, and the installed CLI prints it.
    proc = _run(
        sys.executable, "-I", "-c", code.replace("['servers']", "['config', 'example']"), str(target), cwd=tmp_path
    )
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout == (ROOT / "config.toml.example").read_text(), explain(proc)
    # The library's API, loaded on first use (`import toolscript` imports nothing else).
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import toolscript; before = set(sys.modules);"
        "print(toolscript.connect.__module__, toolscript.ToolError.__module__, toolscript.UsageError.__module__,"
        " 'toolscript.client' in before)"
    )
    proc = _run(sys.executable, "-I", "-c", code, str(target), cwd=tmp_path)
    assert proc.stdout == "toolscript.client toolscript.client toolscript.errors False\n", explain(proc)
