"""The agent skill (`toolscript skill`) and the prompt hook (`toolscript suggest`): code mode for coding agents.

It stands alone because it speaks to agents rather than to people or servers: a skill file
in the Agent Skills format that teaches an agent the search → types → exec loop, where
each agent looks for it, and the Claude Code `UserPromptSubmit` hook answer that names the
few tools fitting a prompt. It needs only the standard library; the CLI does the rest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["SKILL", "hook_answer", "install", "skill_path"]

SKILL = """\
---
name: toolscript
description: Use MCP tools (GitHub, files, databases, browsers, any configured MCP server) by writing a short \
Python script instead of calling tools one by one. Use when a task needs several tool calls, filtering or \
combining their results, or a tool you have not been given directly.
---

# Tools as code with toolscript

toolscript connects the MCP servers the user configured. Rather than calling tools one at a
time and reading every result, find the few tools a task needs, read their typed signatures,
and run one Python script that chains them. Only what the script prints comes back to you.

## 1. Find the tools

```sh
toolscript search "list the files in a folder" --limit 3
```

Each line is `SERVER__TOOL`, a one-line description and a score. Search with the words of the
task; try other words if nothing fits. `toolscript tools --server NAME` lists one server's tools.

## 2. See how to call them

```sh
toolscript search "read a text file" --limit 2 --types
```

`--types` prints, after the ranking, a typed Python function for each hit: its keyword
arguments, their types, and what it returns. Tools are grouped by server: `filesystem__read_text_file`
is `filesystem.read_text_file(...)` in a script.

## 3. Run a script

```sh
toolscript exec --tools 'filesystem__*' summarize.py
```

with `summarize.py`:

```python
from tools import filesystem

listing = filesystem.list_directory(path="/srv/notes")["content"]
names = [line.split(" ", 1)[1] for line in listing.splitlines() if line.startswith("[FILE]")]
sizes = {name: len(filesystem.read_text_file(path=f"/srv/notes/{name}")["content"]) for name in names}
with open("summary.txt", "w") as out:
    for name, size in sorted(sizes.items()):
        out.write(f"{name}: {size} characters\\n")
print(f"{len(sizes)} files; the longest is {max(sizes, key=sizes.get)}")
```

- `from tools import SERVER` gives the server's tools as functions; call them with keyword arguments.
- A tool without an output schema returns a result with `.text`, `.content` and `.json()`; one
  with an output schema returns its structured content (a dict).
- A tool that fails raises `toolscript.ToolError`; let it end the script or catch it.
- The script runs in a sandbox: it reaches only the allowed tools (`--tools PATTERN`, default
  all), writes only its working directory (gone afterwards unless `--keep`), has no network
  but the tools, and stops after `--timeout` seconds (default 300). `exec -c CODE` and
  `exec -` (the script on stdin) work too. Its exit code is the script's.
- Print only what you need to see: a count, a summary, the few lines that matter.

## When something fails

- `Unknown server` or no hits: `toolscript servers` lists what is configured.
- `not authenticated ... Run: toolscript auth NAME`: ask the user to run it; it opens a browser.
- `Cannot sandbox the script`: the machine has no Landlock; tell the user, who may choose
  `toolscript exec --no-sandbox`.
"""

_CLIENT_DIRS = {"claude": (".claude", "skills"), "codex": (".agents", "skills")}


def skill_path(target: str, home: Path | None = None) -> Path:
    """Where `target` (`claude`, `codex`, or a directory) reads this skill: `.../toolscript/SKILL.md`."""
    base = home if home is not None else Path.home()
    directory = base.joinpath(*_CLIENT_DIRS[target]) if target in _CLIENT_DIRS else Path(target).expanduser()
    return directory / "toolscript" / "SKILL.md"


def install(target: str, *, force: bool = False, home: Path | None = None) -> tuple[Path, bool]:
    """Write the skill where `target` looks for it; return its path and whether it was written.

    An existing file with the same text is left alone; one with other text (edited by the
    user, or an older toolscript's) is replaced only with `force`, else `FileExistsError`.
    """
    path = skill_path(target, home)
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    if current == SKILL:
        return path, False
    if current is not None and not force:
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(SKILL, encoding="utf-8")
    os.replace(temporary, path)
    return path, True


def hook_answer(hits: list[dict[str, Any]]) -> str:
    """The `UserPromptSubmit` hook answer naming `hits` (search rows) for the agent; "" for none."""
    if not hits:
        return ""
    lines = [
        "toolscript: MCP tools that may fit this prompt (see them with `toolscript search QUERY --types`, "
        "use them with `toolscript exec`):"
    ]
    for hit in hits:
        summary = " ".join(str(hit.get("description") or "").split())[:160]
        lines.append(f"- {json.dumps(str(hit['name']))}: {json.dumps(summary)}")
    context = "\n".join(lines)
    return json.dumps({"hookSpecificOutput": {"hookEventName": "UserPromptSubmit", "additionalContext": context}})
