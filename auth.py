"""OAuth2 for MCP servers: discovery, client registration and the Authorization Code flow.

Filled in by the `toolscript auth` issue.
"""

from __future__ import annotations

__all__: list[str] = []
