"""One synchronous front to many MCP servers.

Filled in by the gateway issue.
"""

from __future__ import annotations

__all__: list[str] = []
