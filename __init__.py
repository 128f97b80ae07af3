"""toolscript, installed as one package: the checkout's flat modules, under one name.

The CLI is `toolscript.toolscript`; `python -m toolscript` runs it. The library's API
(`toolscript.connect`, `toolscript.ToolError` and the errors the CLI maps to exit codes)
is offered here as in the checkout's `toolscript.py`, but loaded on first use: importing
the package imports nothing, so `import toolscript.storage` (or running the CLI) loads
only what it uses.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each name of the API, and the module that defines it.
_API = {
    "connect": "client",
    "Client": "client",
    "ToolError": "client",
    "ToolscriptError": "errors",
    "UsageError": "errors",
    "ConfigError": "errors",
    "StorageError": "errors",
    "AuthError": "errors",
    "AuthRequiredError": "errors",
    "AuthConnectError": "errors",
    "ConnectError": "errors",
    "CallTimeoutError": "errors",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
