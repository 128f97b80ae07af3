"""A misbehaving MCP server over stdio, written by hand (no SDK, so it starts fast): `python raw_stdio.py [OPTIONS]`.

It answers `initialize`, `ping` and `tools/list`; its tools misbehave on purpose:

echo {text}                                 answer `text`
big {size}                                  answer with one line of about `size` bytes
endless                                     write one line that never ends
block {seconds, started_file, finished_file}
                                            create `started_file`, then sleep in a blocking call
                                            (SIGTERM ignored) for `seconds`, then create `finished_file`
invalid                                     answer a result that breaks the MCP schema (a text item without text)

--stubborn DIR      ignore SIGTERM, write its pid to DIR/pid; once stdin ends, create DIR/eof, wait
                    --outlive seconds, then create DIR/outlived and stay until killed: a server that
                    ignores end of input
--outlive SECONDS   (default 3)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

TOOLS = ["echo", "big", "endless", "block", "invalid"]


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def text_result(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": False}


def call(name: str, arguments: dict[str, Any]) -> dict[str, Any] | None:
    if name == "echo":
        return text_result(arguments.get("text", ""))
    if name == "big":
        return text_result("x" * int(arguments["size"]))
    if name == "endless":
        sys.stdout.write('{"jsonrpc": "2.0", "id": 2, "result": {"content": [{"type": "text", "text": "')
        chunk = "x" * 65536
        while True:
            sys.stdout.write(chunk)
    if name == "block":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        Path(arguments["started_file"]).touch()
        time.sleep(float(arguments["seconds"]))
        Path(arguments["finished_file"]).touch()
        return text_result("finished")
    if name == "invalid":
        return {"content": [{"type": "text"}]}
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stubborn", type=Path, default=None)
    parser.add_argument("--outlive", type=float, default=3.0)
    args = parser.parse_args()
    if args.stubborn is not None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        (args.stubborn / "pid").write_text(str(os.getpid()))
    for line in sys.stdin:
        request = json.loads(line)
        method, ident = request.get("method"), request.get("id")
        if ident is None:
            continue  # a notification
        if method == "initialize":
            result: Any = {
                "protocolVersion": request["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "raw", "version": "1"},
            }
        elif method == "tools/list":
            schema = {"type": "object"}
            result = {"tools": [{"name": name, "inputSchema": schema} for name in TOOLS]}
        elif method == "tools/call":
            result = call(request["params"]["name"], request["params"].get("arguments") or {})
        else:
            result = {} if method == "ping" else None
        if result is None:
            send({"jsonrpc": "2.0", "id": ident, "error": {"code": -32601, "message": f"no {method}"}})
        else:
            send({"jsonrpc": "2.0", "id": ident, "result": result})
    if args.stubborn is not None:
        (args.stubborn / "eof").touch()
        time.sleep(args.outlive)
        (args.stubborn / "outlived").touch()
        while True:
            signal.pause()


if __name__ == "__main__":
    main()
