"""`toolscript skill` (the agent skill file) and `toolscript suggest` (the prompt hook)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import explain, run_cli

import skill


def front_matter(text: str) -> dict[str, str]:
    """The `---` block of an Agent Skills file, as its keys and values."""
    assert text.startswith("---\n")
    block = text[4 : text.index("\n---\n", 4)]
    return dict(line.split(": ", 1) for line in block.splitlines())


def test_the_skill_is_an_agent_skill_file() -> None:
    proc = run_cli("skill")
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout == skill.SKILL
    meta = front_matter(proc.stdout)
    assert meta["name"] == "toolscript"
    assert 50 < len(meta["description"]) <= 1024  # the Agent Skills limit
    for command in ("toolscript search", "--types", "toolscript exec"):
        assert command in proc.stdout


@pytest.mark.parametrize(
    ("target", "where"),
    [("claude", ".claude/skills/toolscript/SKILL.md"), ("codex", ".agents/skills/toolscript/SKILL.md")],
)
def test_install_writes_where_the_agent_looks_and_keeps_a_changed_file(tmp_path: Path, target: str, where: str) -> None:
    env = {"HOME": str(tmp_path)}
    first = run_cli("skill", "--install", target, env=env)
    assert first.returncode == 0, explain(first)
    path = tmp_path / where
    assert path.read_text() == skill.SKILL
    assert run_cli("skill", "--install", target, env=env).returncode == 0  # the same text: nothing to do
    path.write_text(skill.SKILL + "\nmy own notes\n")
    refused = run_cli("skill", "--install", target, env=env)
    assert refused.returncode == 2
    hint = f"replace it with: toolscript skill --install {target} --force"
    assert refused.stderr == f"error: {path} differs from this toolscript's skill; {hint}\n"
    assert path.read_text().endswith("my own notes\n")
    forced = run_cli("skill", "--install", target, "--force", env=env)
    assert forced.returncode == 0 and path.read_text() == skill.SKILL


def test_install_into_a_directory(tmp_path: Path) -> None:
    proc = run_cli("skill", "--install", str(tmp_path / "skills"))
    assert proc.returncode == 0, explain(proc)
    assert (tmp_path / "skills" / "toolscript" / "SKILL.md").read_text() == skill.SKILL


def test_suggest_names_the_tools_that_fit_the_prompt(api_env: dict[str, str]) -> None:
    payload = {"session_id": "s", "hook_event_name": "UserPromptSubmit", "prompt": "add two numbers together"}
    proc = run_cli("suggest", input=json.dumps(payload), env=api_env)
    assert proc.returncode == 0, explain(proc)
    answer = json.loads(proc.stdout)["hookSpecificOutput"]
    assert answer["hookEventName"] == "UserPromptSubmit"
    assert '"box__add"' in answer["additionalContext"]


@pytest.mark.parametrize("stdin", ['{"prompt": "bake a chocolate cake for grandma"}', "not json", '{"prompt": 3}', ""])
def test_suggest_says_nothing_when_nothing_fits_or_the_payload_is_bad(api_env: dict[str, str], stdin: str) -> None:
    proc = run_cli("suggest", input=stdin, env=api_env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_suggest_without_a_gateway_says_nothing(tmp_path: Path) -> None:
    proc = run_cli(
        "suggest", input='{"prompt": "add two numbers"}', env={"TOOLSCRIPT_GATEWAY_URL": "http://127.0.0.1:9"}
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
