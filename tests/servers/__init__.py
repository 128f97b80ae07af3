"""MCP servers built with the SDK, used by the tests as real peers (no mocks)."""
