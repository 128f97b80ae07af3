"""toolscript: use MCP servers, including OAuth-protected ones, from one command line.

This is the CLI: a thin layer that parses arguments, configures logging, calls the
library modules and turns their errors into one line on stderr and an exit code.
Only this module prints to the terminal or exits the process. Heavy modules (the MCP
SDK, pydantic, anyio) are imported inside the commands that need them, so `--help`,
`servers` and `auth` status stay fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING, Callable, Sequence

if __package__:
    from . import config as _config
    from .errors import ToolscriptError
    from .redact import RedactingFilter, redact
    from .storage import Store
else:
    import config as _config
    from errors import ToolscriptError
    from redact import RedactingFilter, redact
    from storage import Store

if TYPE_CHECKING:
    from config import Config

__all__ = ["main"]
__version__ = "0.1.0"

log = logging.getLogger("toolscript")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Command = Callable[[argparse.Namespace, "Config"], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with `argv` (default: `sys.argv[1:]`) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        cfg = _config.load_config(args.config)
        return args.func(args, cfg)
    except ToolscriptError as exc:
        log.debug("command failed", exc_info=True)
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toolscript",
        description="Use MCP servers, including OAuth2-protected ones, from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", metavar="PATH", help="config file (default: $TOOLSCRIPT_CONFIG, "
                        "./toolscript.toml, then $TOOLSCRIPT_HOME/config.toml)")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks on errors")
    noise.add_argument("-q", "--quiet", action="store_true", help="only errors")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in (_add_servers,):
        add(commands)
    return parser


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Send logs to stderr: toolscript at INFO, libraries at WARNING; every line redacted."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    if verbose:
        root.setLevel(logging.DEBUG)
        log.setLevel(logging.DEBUG)
    elif quiet:
        root.setLevel(logging.ERROR)
        log.setLevel(logging.ERROR)
    else:
        root.setLevel(logging.WARNING)
        log.setLevel(logging.INFO)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is now, so `main()` can run repeatedly in one process."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


# -- servers -------------------------------------------------------------------------


def _add_servers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("servers", help="list configured servers (no network)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_servers)


def cmd_servers(args: argparse.Namespace, cfg: Config) -> int:
    store = Store()
    rows = []
    for server in cfg.servers.values():
        row: dict[str, object] = {"name": server.name, "type": server.type}
        if server.url is not None:
            row["url"] = server.url
        else:
            row["command"] = [server.command, *server.args]
        row["oauth_record"] = server.is_remote and store.exists(server.name)
        rows.append(row)
    if args.json:
        _print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        where = cfg.path or "no config file found"
        _print(f"No servers configured ({where}). See config.toml.example.")
        return EXIT_OK
    width = max(len(r["name"]) for r in rows)  # type: ignore[arg-type]
    for server in cfg.servers.values():
        oauth = "  [oauth record]" if server.is_remote and store.exists(server.name) else ""
        _print(f"{server.name:<{width}}  {server.type:<5}  {server.target}{oauth}")
    return EXIT_OK


# -- output helpers ------------------------------------------------------------------


def _print(text: str = "") -> None:
    print(text, flush=True)


def _error(message: str) -> None:
    print(f"error: {redact(message)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
