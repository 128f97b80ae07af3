"""toolscript: use MCP servers, including OAuth-protected ones, from one command line.

This is the CLI: a thin layer that parses arguments, configures logging, calls the
library modules and turns their errors into one line on stderr and an exit code.
Only this module prints to the terminal or exits the process. Heavy modules (the MCP
SDK, pydantic, anyio) are imported inside the commands that need them, so `--help`,
`servers` and `auth` status stay fast.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

if __package__:
    from . import config as _config
    from .errors import ToolscriptError, UsageError
    from .redact import RedactingFilter, redact
    from .storage import Store
else:
    import config as _config
    from errors import ToolscriptError, UsageError
    from redact import RedactingFilter, redact
    from storage import Store

if TYPE_CHECKING:
    from config import Config
    from gateway_http import SyncGateway

__all__ = ["main"]
__version__ = "0.1.0"

log = logging.getLogger("toolscript")

EXIT_OK = 0
EXIT_TOOL_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH_REQUIRED = 3
EXIT_UNREACHABLE = 4
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
    for add in (_add_servers, _add_tools, _add_call, _add_gateway):
        add(commands)
    return parser


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Send logs to stderr: toolscript at INFO, libraries at WARNING; every line redacted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
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


# -- tools, call, gateway --------------------------------------------------------------

GATEWAY_URL_VAR = "TOOLSCRIPT_GATEWAY_URL"


def _add_tools(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("tools", help="list the tools of the servers (connects to them)")
    p.add_argument("--server", metavar="NAME", help="only this server")
    p.add_argument("--json", action="store_true", help="print the full list, with input schemas, as JSON")
    p.set_defaults(func=cmd_tools)


def cmd_tools(args: argparse.Namespace, cfg: Config) -> int:
    with _open_gateway(cfg, server=args.server) as gateway:
        tools = gateway.tools(args.server)
        rows = [row for row in gateway.servers() if args.server in (None, row["name"])]
    if args.json:
        _print(json.dumps(tools, indent=2))
    else:
        width = max((len(tool["name"]) for tool in tools), default=0)
        for tool in tools:
            summary = (tool.get("description") or "").strip().split("\n")[0]
            _print(f"{tool['name']:<{width}}  {summary}".rstrip())
    failed = [row for row in rows if row["status"] != "connected"]
    for row in failed:
        _error(row.get("error") or f"Server '{row['name']}' is {row['status']}.")
    if not rows:
        where = cfg.path or "no config file found"
        _error(f"No servers configured ({where}). See config.toml.example.")
    # One broken server among several is reported but does not fail the listing.
    if failed and len(failed) == len(rows):
        return EXIT_AUTH_REQUIRED if all(row["status"] == "auth_required" for row in failed) else EXIT_UNREACHABLE
    return EXIT_OK


def _add_call(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("call", help="call a tool: toolscript call SERVER__TOOL '{\"name\": \"value\"}'")
    p.add_argument("tool", metavar="SERVER__TOOL", help="the tool, as listed by `toolscript tools`")
    p.add_argument("arguments", nargs="?", metavar="ARGS",
                   help="a JSON object, @FILE to read it from a file, or - to read stdin (default: {})")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("--timeout", type=_positive_float, metavar="SECONDS", help="give up on the call after this long")
    p.set_defaults(func=cmd_call)


def cmd_call(args: argparse.Namespace, cfg: Config) -> int:
    arguments = _read_arguments(args.arguments, args.tool)
    with _open_gateway(cfg, for_tool=args.tool) as gateway:
        result = gateway.call(args.tool, arguments, timeout=args.timeout)
    failed = bool(result.get("isError"))
    if args.json:
        _print(json.dumps(result, indent=2))
    else:
        text = render_result(result)
        if failed:
            print(text, file=sys.stderr, flush=True)
        elif text:
            _print(text)
    return EXIT_TOOL_ERROR if failed else EXIT_OK


def _add_gateway(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("gateway", help="serve every configured server through a local HTTP API")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to listen on (default: 0, any free port)")
    p.set_defaults(func=cmd_gateway)


def cmd_gateway(args: argparse.Namespace, cfg: Config) -> int:
    gateway_module = _gateway_module()
    if __package__:
        from .gateway_http import ApiServer
    else:
        from gateway_http import ApiServer
    if not _config.is_loopback_host(args.host):
        log.warning("warning: --host %s is not a loopback address: other machines can use your servers, "
                    "and the credentials they hold, through this gateway.", args.host)
    gateway = gateway_module.Gateway(cfg)
    try:
        api = ApiServer(gateway, args.host, args.port)
    except OSError as exc:
        raise UsageError(f"Cannot listen on {args.host}:{args.port}: {exc.strerror or exc}.") from None
    try:
        with _sigterm_interrupts():
            try:
                with gateway:
                    for row in gateway.servers():
                        if row["status"] == "connected":
                            log.info("Server '%s': connected, %d tools", row["name"], row["tools"])
                        else:
                            log.warning("%s", row.get("error"))
                    _print(f"{GATEWAY_URL_VAR}={api.url}")
                    api.serve_forever()
            except KeyboardInterrupt:
                log.info("Gateway stopped.")
    finally:
        api.server_close()
    return EXIT_OK


@contextlib.contextmanager
def _open_gateway(cfg: Config, *, server: str | None = None, for_tool: str | None = None) -> Iterator[SyncGateway]:
    """Yield the running gateway at $TOOLSCRIPT_GATEWAY_URL, else a gateway of our own.

    Our own connects only `server`, or the server of the tool `for_tool`, or else all.
    """
    url = os.environ.get(GATEWAY_URL_VAR)
    if url:
        if __package__:
            from .gateway_http import RemoteGateway
        else:
            from gateway_http import RemoteGateway
        remote = RemoteGateway(url)
        remote.check()
        yield remote
        return
    gateway_module = _gateway_module()
    if for_tool is not None:
        server = gateway_module.split_tool_name(for_tool)[0]
    with _sigterm_interrupts(), gateway_module.Gateway(cfg, only=[server] if server else None) as gateway:
        yield gateway


def _gateway_module() -> ModuleType:
    """Import `gateway`, and with it the MCP SDK, only when a command needs it."""
    if __package__:
        from . import gateway
    else:
        import gateway
    return gateway


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so that stdio servers are shut down on either."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one shutdown at a time
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _read_arguments(source: str | None, tool: str) -> dict[str, Any]:
    """Parse ARGS of `call`: inline JSON, `@file`, `-` for stdin, or nothing for `{}`."""
    if source is None:
        return {}
    where = "ARGS"
    if source == "-":
        text, where = sys.stdin.read(), "stdin"
    elif source.startswith("@"):
        path = source[1:]
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except OSError as exc:
            raise UsageError(f"Cannot read the arguments for '{tool}' from {path}: {exc.strerror or exc}.") from None
        where = path
    else:
        text = source
    try:
        arguments = json.loads(text)
    except ValueError as exc:
        raise UsageError(
            f"The arguments for '{tool}' ({where}) are not valid JSON: {exc}. "
            """Give a JSON object such as '{"path": "README.md"}'."""
        ) from None
    if not isinstance(arguments, dict):
        raise UsageError(f"The arguments for '{tool}' ({where}) must be a JSON object, not {type(arguments).__name__}.")
    return arguments


def render_result(result: dict[str, Any]) -> str:
    """Return a tool result for reading: text as text, other content as one-line summaries."""
    parts = [_render_content(item) for item in result.get("content") or []]
    if not parts and result.get("structuredContent") is not None:
        parts.append(json.dumps(result["structuredContent"], indent=2))
    return "\n".join(parts)


def _render_content(item: dict[str, Any]) -> str:
    kind = item.get("type")
    if kind == "text":
        return str(item.get("text", ""))
    if kind in ("image", "audio"):
        return f"[{kind}: {item.get('mimeType', 'unknown type')}, {_decoded_size(item.get('data'))} bytes]"
    if kind == "resource_link":
        return f"[resource link: {item.get('name') or item.get('uri')} <{item.get('uri')}>]"
    if kind == "resource":
        resource = item.get("resource") or {}
        if "text" in resource:
            return f"[resource: {resource.get('uri')}]\n{resource['text']}"
        mime = resource.get("mimeType", "unknown type")
        return f"[resource: {resource.get('uri')}, {mime}, {_decoded_size(resource.get('blob'))} bytes]"
    return json.dumps(item, indent=2)


def _decoded_size(data: Any) -> int:
    try:
        return len(base64.b64decode(data or "", validate=False))
    except (ValueError, TypeError):
        return len(data or "")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


# -- output helpers ------------------------------------------------------------------


def _print(text: str = "") -> None:
    print(text, flush=True)


def _error(message: str) -> None:
    print(f"error: {redact(message)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
