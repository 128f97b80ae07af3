"""Run the test toolbox over stdio: `python stdio_server.py [OPTIONS]`.

--paged         tools/list answers in pages of two
--hang          read stdin but never answer (a server that never finishes connecting)
--exit CODE     exit at once with CODE (a server that dies before the handshake)
--stubborn      ignore SIGTERM, and keep running after stdin closes (only SIGKILL ends it)
--hostile       serve `toolbox.hostile()` instead, whose names, texts and stderr hold terminal controls
--arrive DIR    first leave a file named after this process in DIR (a barrier shared by several servers)
--wait-for N    then, before anything else, wait until DIR holds N such files (at most 60 s, then exit 1):
                the server can only connect if all N servers were started before it finished connecting
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BARRIER_TIMEOUT = 60.0


def arrive(folder: Path, wait_for: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while len(list(folder.iterdir())) < wait_for:
        if time.monotonic() > deadline:
            sys.exit(f"barrier: fewer than {wait_for} servers arrived in {folder} within {BARRIER_TIMEOUT:g} s")
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--paged", action="store_true")
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--exit", type=int, default=None)
    parser.add_argument("--stubborn", action="store_true")
    parser.add_argument("--hostile", action="store_true")
    parser.add_argument("--name", default="toolbox")
    parser.add_argument("--arrive", type=Path, default=None)
    parser.add_argument("--wait-for", type=int, default=0)
    args = parser.parse_args()
    if args.stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.hostile:
        from toolbox import TITLE, hostile

        print(f"{args.name}{TITLE}: starting on stdio", file=sys.stderr, flush=True)
        hostile().run("stdio")
        return
    print(f"{args.name}: starting on stdio (this line goes to stderr)", file=sys.stderr, flush=True)
    if args.arrive is not None:
        arrive(args.arrive, args.wait_for)
    if args.exit is not None:
        sys.exit(args.exit)
    if args.hang:
        for _ in sys.stdin:
            pass
        return
    from toolbox import build  # only now: --hang and --exit servers start fast

    build(args.name, page_size=2 if args.paged else None).run("stdio")
    while args.stubborn:  # stdin is closed: stay, as a server that ignores it would
        signal.pause()


if __name__ == "__main__":
    main()
