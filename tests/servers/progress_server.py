"""A stdio server whose one tool reports progress and logs: `python progress_server.py`.

`work(steps, interval, label)` sends a log notification at debug, info and warning level,
then `steps` progress notifications `interval` seconds apart (the work it simulates), their
messages "LABEL N", and answers "worked N steps".
"""

from __future__ import annotations

import warnings

import anyio
from mcp.server.mcpserver import Context, MCPServer


def build() -> MCPServer:
    server = MCPServer("progress", log_level="WARNING")

    @server.tool(description="Report progress `steps` times, `interval` seconds apart, logging on the way.")
    async def work(ctx: Context, steps: int = 3, interval: float = 0.0, label: str = "step") -> str:
        await ctx.debug("debug detail")
        await ctx.info("starting the work")
        await ctx.warning({"disk": "almost full"}, logger_name="storage")
        for step in range(1, steps + 1):
            await anyio.sleep(interval)
            await ctx.report_progress(step, steps, f"{label} {step}")
        return f"worked {steps} steps"

    return server


if __name__ == "__main__":
    warnings.simplefilter("ignore", DeprecationWarning)  # the SDK's note that logging is deprecated in 2026-07-28
    build().run("stdio")
