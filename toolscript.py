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
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Self

if __package__:
    from . import config as _config
    from .errors import ConnectError, ToolscriptError, UsageError, auth_command, run_hint
    from .logs import OneLineFilter
    from .redact import RedactingFilter, escape_controls, redact
    from .storage import Store
    from .urls import is_loopback_host
else:
    import config as _config
    from errors import ConnectError, ToolscriptError, UsageError, auth_command, run_hint
    from logs import OneLineFilter
    from redact import RedactingFilter, escape_controls, redact
    from storage import Store
    from urls import is_loopback_host

# The library's API: `import toolscript` from a checkout or a vendored copy is this module
# (installed, the package's __init__.py offers the same names). Importing it costs nothing:
# client.py loads the gateway only when `connect()` is called.
if __package__:
    from .client import Client, ToolError, connect, running_gateway
    from .errors import AuthConnectError, AuthError, AuthRequiredError, CallTimeoutError, ConfigError, StorageError
else:
    from client import Client, ToolError, connect, running_gateway
    from errors import AuthConnectError, AuthError, AuthRequiredError, CallTimeoutError, ConfigError, StorageError

if TYPE_CHECKING:
    from config import Config, ServerConfig
    from gateway_http import SyncGateway

__all__ = [
    "AuthConnectError",
    "AuthError",
    "AuthRequiredError",
    "CallTimeoutError",
    "Client",
    "ConfigError",
    "ConnectError",
    "StorageError",
    "ToolError",
    "ToolscriptError",
    "UsageError",
    "connect",
    "main",
]
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
    args = _parse(parser, list(sys.argv[1:] if argv is None else argv))
    if args.verbose and args.quiet:  # one before the command, one after it
        parser.error("argument -q/--quiet: not allowed with argument -v/--verbose")
    configure_logging(args.verbose, args.quiet)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        # The demo brings its own config; a broken user config must not stop it.
        cfg = _config.load_config(args.config) if getattr(args, "needs_config", True) else None
        if cfg is not None and args.func not in (cmd_servers, cmd_auth):  # those two list them
            for name, problem in cfg.unusable.items():
                log.warning(
                    "warning: server '%s' is left out: environment variable %s is not set (toolscript servers "
                    "shows where %s uses it).",
                    name,
                    problem.variable,
                    cfg.path,
                )
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


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse `argv`; for `add`, everything after `--` is the server's command line, options included."""
    if "--" in argv:
        cut = argv.index("--")
        args = parser.parse_args(argv[:cut])
        if getattr(args, "func", None) is cmd_add and not args.command:
            args.command = argv[cut + 1 :]
            return args
    return parser.parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="toolscript",
        description="Use MCP servers, including OAuth2-protected ones, from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, after_command=False)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in (
        _add_servers,
        _add_auth,
        _add_tools,
        _add_search,
        _add_call,
        _add_resources,
        _add_read,
        _add_prompts,
        _add_prompt,
        _add_gateway,
        _add_serve,
        _add_demo,
        _add_config,
        _add_add,
        _add_remove,
        _add_import,
        _add_types,
    ):
        add(commands)
    for command in commands.choices.values():
        _add_global_options(command, after_command=True)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """Add --config, -v and -q, which go before or after the command (`toolscript servers --config x.toml`).

    After the command they default to "not given", so they never undo the same option given before it.
    """
    unset: dict[str, Any] = {"default": argparse.SUPPRESS} if after_command else {}
    parser.add_argument(
        "--config",
        metavar="PATH",
        **unset,
        help="config file (default: $TOOLSCRIPT_CONFIG, ./toolscript.toml, then $TOOLSCRIPT_HOME/config.toml)",
    )
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true", **unset, help="debug logging, tracebacks on errors")
    noise.add_argument("-q", "--quiet", action="store_true", **unset, help="only errors")


class _Parser(argparse.ArgumentParser):
    """Lets a command's options and positional arguments come in any order (`call X --json ARGS`).

    Plain argparse assigns a command's positionals in one go, so `call X --json ARGS` leaves
    ARGS unrecognized; the intermixed parse does not. A parser with subcommands parses as usual.
    """

    _intermixing = False  # parse_known_intermixed_args calls parse_known_args itself

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._subparsers is not None or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Send logs to stderr: toolscript at INFO, libraries at WARNING; every line redacted.

    Without `verbose` every record is one line, tracebacks included (see `logs.OneLineFilter`).
    """
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(OneLineFilter())
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
    """Writes to whatever `sys.stderr` is now, so `main()` can run repeatedly in one process.

    A live progress line on the terminal is taken away for each record and drawn again after it.
    Log lines carry text from servers (errors, a stdio server's stderr): terminal controls
    in them are shown escaped.
    """

    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(super().format(record))

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        with _ProgressLine.lock:
            line = _ProgressLine.shown
            if line is not None:
                line.erase()
            super().emit(record)
            if line is not None:
                line.draw()


class _ProgressLine:
    """The progress of one tool call: a live line on stderr if it is a terminal, else INFO log lines.

    Called by the gateway (on its own thread) with each progress notification of the call.
    """

    lock = threading.RLock()
    shown: _ProgressLine | None = None  # the line on the terminal now, if any

    def __init__(self, tool: str) -> None:
        self.tool = tool
        self.live = sys.stderr.isatty() and log.isEnabledFor(logging.INFO)  # not with -q
        self.text = ""
        self.done = False  # a late notification must not draw the line again

    def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        count = f"{progress:g}/{total:g}" if total is not None else f"{progress:g}"
        if message:  # server text on one line: its newlines and tabs shown escaped too
            message = escape_controls(message).replace("\n", "\\n").replace("\t", "\\t")
        text = f"{self.tool}: {message} ({count})" if message else f"{self.tool}: {count}"
        if not self.live:
            log.info("%s", text)
            return
        with self.lock:
            if self.done:
                return
            self.text = text
            _ProgressLine.shown = self
            self.draw()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self.lock:
            self.done = True
            if _ProgressLine.shown is self:
                self.erase()
                _ProgressLine.shown = None

    def draw(self) -> None:
        sys.stderr.write("\r\x1b[K" + redact(self.text))
        sys.stderr.flush()

    def erase(self) -> None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


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
        oauth = store.oauth_status_of(server)
        if oauth is not None:
            row.update(oauth.row())
        rows.append(row)
    unusable = [
        {"name": name, "status": "unusable", "error": problem.message} for name, problem in cfg.unusable.items()
    ]
    if args.json:
        _print(json.dumps(rows + unusable, indent=2))
        return EXIT_OK
    if not rows and not unusable:
        _print(_no_servers(cfg))
        return EXIT_OK
    width = max(len(str(r["name"])) for r in rows + unusable)
    for server, row in zip(cfg.servers.values(), rows, strict=True):
        oauth = f"  [oauth: {row['oauth_status']}]" if "oauth_status" in row else ""
        reason = f" ({row['oauth_error']})" if "oauth_error" in row else ""
        _print(f"{server.name:<{width}}  {server.type:<5}  {server.target}{oauth}{reason}")
    for row in unusable:
        _print(f"{row['name']:<{width}}  {'-':<5}  unusable: {row['error']}")
    return EXIT_OK


def _no_servers(cfg: Config) -> str:
    if cfg.unusable:
        return f"No usable servers in {cfg.path}: every one uses a variable that is not set; run: toolscript servers"
    return (
        f"No servers configured ({cfg.path or 'no config file found'}). "
        "For an example with every key, run: toolscript config example"
    )


# -- auth ----------------------------------------------------------------------------


def _add_auth(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "auth",
        help="authenticate an OAuth-protected server, or list every server's state",
        description="Without SERVER: list every configured server's authentication state (no network). "
        "With SERVER: run the OAuth authorization flow in the browser and store the tokens.",
    )
    p.add_argument("server", nargs="?", metavar="SERVER", help="a configured http or sse server")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--status", action="store_true", help="show what is stored for SERVER (no network)")
    action.add_argument("--logout", action="store_true", help="revoke and delete SERVER's tokens")
    p.add_argument(
        "--forget-client",
        action="store_true",
        help="with --logout: also delete the client registration; without: register toolscript anew "
        "(when the authorization server forgot the stored registration)",
    )
    p.add_argument(
        "--no-browser",
        action="store_true",
        help="do not open a browser; print the URL and also accept the redirected URL pasted on stdin",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for the browser (default: 300)",
    )
    p.set_defaults(func=cmd_auth)


def cmd_auth(args: argparse.Namespace, cfg: Config) -> int:
    if __package__:
        from . import auth
    else:
        import auth

    store = Store()
    if args.server is None:
        if args.status or args.logout or args.forget_client:
            raise UsageError("--status, --logout and --forget-client need a SERVER: toolscript auth SERVER --status")
        return _auth_list(cfg, store, auth)
    if args.forget_client and args.status:
        raise UsageError("--forget-client goes with --logout, or alone: toolscript auth SERVER --forget-client")
    server = cfg.server(args.server)
    if args.status:
        lines = auth.status_report(server, store)
        width = max(len(label) for label, _ in lines) + 1
        for label, value in lines:
            _print(f"{label + ':' if label else '':<{width}} {value}")
        return EXIT_OK
    if args.logout:
        result = auth.logout(server, store, forget_client=args.forget_client)
        for failure in result.failures:
            log.warning("%s; deleting it locally anyway.", failure)
        if result.not_revocable:
            expiry = result.access_token_expires_at
            left = None if expiry is None else auth.describe_duration(expiry - time.time())
            when = "" if left is None else f"; the access token expires in {left}"
            log.warning(
                "Server '%s' offers no token revocation: the deleted tokens stay valid at the server until "
                "they expire%s.",
                server.name,
                when,
            )
        if result.revoked:
            _print(f"Revoked the {' and the '.join(result.revoked)} at the server.")
        done = [
            what
            for what, did in (("tokens", result.deleted_tokens), ("client registration", result.deleted_client))
            if did
        ]
        _print(
            f"Deleted the {' and the '.join(done)} of '{server.name}'."
            if done
            else f"Server '{server.name}' had no stored tokens; nothing to log out."
        )
        return EXIT_OK
    if not server.is_remote:
        raise UsageError(f"Server '{server.name}' is a stdio server; only http and sse servers use OAuth.")
    return _auth_run(
        server, store, auth, no_browser=args.no_browser, timeout=args.timeout, forget_client=args.forget_client
    )


def _auth_list(cfg: Config, store: Store, auth: ModuleType) -> int:
    if not cfg.servers and not cfg.unusable:
        _print(_no_servers(cfg))
        return EXIT_OK
    width = max(len(name) for name in [*cfg.servers, *cfg.unusable])
    todo = []
    for server in cfg.servers.values():
        try:
            state = auth.auth_state(server, store.load(server.name) if server.is_remote else None)
            text = str(state)
        except ToolscriptError as exc:
            state, text = None, f"unreadable record: {exc}"
        if state is None or state.needs_auth:
            todo.append(server.name)
        _print(f"{server.name:<{width}}  {text}")
    for name, problem in cfg.unusable.items():
        _print(f"{name:<{width}}  unusable: environment variable {problem.variable} is not set")
    if todo:
        _print()
        for name in todo:
            _print(run_hint(auth_command(name)))
    return EXIT_OK


def _auth_run(
    server: ServerConfig,
    store: Store,
    auth: ModuleType,
    *,
    no_browser: bool,
    timeout: float,
    open_browser: Callable[[str], object] | None = None,
    forget_client: bool = False,
) -> int:
    import webbrowser

    def show_url(url: str) -> None:
        _status(f"\nOpen this URL in a browser to authorize toolscript for '{server.name}':\n\n  {url}\n")
        if no_browser:
            _status(
                "When the browser shows the toolscript page, you are done. If it cannot reach this machine "
                "(SSH, container), paste the full address it ended on here and press Enter.\n"
            )

    opener = None if no_browser else (open_browser or webbrowser.open)
    try:
        record = auth.authenticate(
            server,
            store,
            open_browser=opener,
            show_url=show_url,
            read_pasted=sys.stdin.readline if no_browser else None,
            timeout=timeout,
            forget_client=forget_client,
        )
    except KeyboardInterrupt:
        _error(f"Authorization of '{server.name}' cancelled; stored data unchanged.")
        return EXIT_INTERRUPTED
    if record is None:
        _print(f"Server '{server.name}' does not require authentication.")
        return EXIT_OK
    tokens = record.tokens
    _print(f"✓ Authenticated '{server.name}' ({auth.describe_tokens(tokens)})")
    if not tokens.refresh_token:
        when = "when the access token expires" if tokens.expires_at is not None else "if the access token stops working"
        _print(f"The server issued no refresh token: authorize again {when}. {run_hint(auth_command(server.name))}")
    return EXIT_OK


# -- demo ----------------------------------------------------------------------------


def _add_demo(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "demo",
        help="try toolscript against a bundled local OAuth-protected MCP server",
        description="Start a local OAuth-protected MCP server (its consent step approves by itself), authenticate "
        "against it with the same flow as 'toolscript auth', list its tools and call two through the "
        "gateway, then stop it and remove its temporary files. toolscript follows the authorization "
        "URL itself, as a browser would, so no browser tab opens unless you ask for one with --browser. "
        "Needs no network, browser or account; your config and stored tokens are not touched.",
    )
    p.add_argument(
        "--browser",
        action="store_true",
        help="open the authorization URL in your browser ($BROWSER or the system's) instead",
    )
    p.set_defaults(func=cmd_demo, needs_config=False)


def cmd_demo(args: argparse.Namespace, cfg: Config | None) -> int:
    import os
    import tempfile

    if __package__:
        from . import auth, demo_server
    else:
        import auth
        import demo_server

    _print("toolscript demo: a local OAuth-protected MCP server; no network, browser or account needed.")
    saved_home = os.environ.get("TOOLSCRIPT_HOME")
    with tempfile.TemporaryDirectory(prefix="toolscript-demo-") as tmp, demo_server.DemoServer() as server:
        _print(f"1. Started the demo MCP server at {server.url} (its consent step approves automatically).")
        config_path = os.path.join(tmp, "toolscript.toml")
        with open(config_path, "w", encoding="utf-8") as handle:
            handle.write(f'[servers.demo]\nurl = "{server.url}"\n')
        os.environ["TOOLSCRIPT_HOME"] = os.path.join(tmp, "home")
        try:
            demo_cfg = _config.load_config(config_path)
            store = Store()
            _print(f"2. Using a temporary config {config_path} and TOOLSCRIPT_HOME {os.environ['TOOLSCRIPT_HOME']}.")
            _print("3. Authenticating, as 'toolscript auth demo' does:")
            code = _auth_run(
                demo_cfg.server("demo"),
                store,
                auth,
                no_browser=False,
                timeout=120,
                open_browser=None if args.browser else _follow_authorization,
            )
            if code != EXIT_OK:
                return code
            _demo_use_server(demo_cfg, store)
        finally:
            if saved_home is None:
                os.environ.pop("TOOLSCRIPT_HOME", None)
            else:
                os.environ["TOOLSCRIPT_HOME"] = saved_home
    _print("Done: the demo server is stopped and its temporary files are removed.")
    return EXIT_OK


def _follow_authorization(url: str) -> bool:
    """Play the browser for the demo: request the authorization URL, then its loopback redirect."""
    import requests

    _status("   (toolscript follows the authorization URL itself, as a browser would; --browser opens yours)")
    response = requests.get(url, allow_redirects=False, timeout=30)
    location = response.headers.get("Location", "")
    if response.status_code not in (302, 303) or not location.startswith("http://127.0.0.1:"):
        raise ToolscriptError(
            f"The demo server answered the authorization request with {response.status_code}, "
            "not a redirect to the loopback callback."
        )
    requests.get(location, timeout=30).close()
    return True


def _demo_use_server(cfg: Config, store: Store) -> None:
    """List the demo server's tools and call two through a `Gateway`, as `toolscript call` does."""
    with _gateway_module().Gateway(cfg, store=store, announce=False) as gateway:
        tools = gateway.tools("demo")
        _print(f"4. The server's tools: {', '.join(tool['tool'] for tool in tools)}")
        result = gateway.call("demo__add", {"a": 2, "b": 3})
        _print(f"5. Called demo__add(a=2, b=3): {render_result(result)}")
        result = gateway.call("demo__whoami")
        _print(f"6. Called demo__whoami(): {render_result(result)}")


# -- config --------------------------------------------------------------------------

# Shipped beside the modules: at the checkout's root, and as package data when installed.
EXAMPLE_CONFIG = Path(__file__).with_name("config.toml.example")


def _add_config(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "config",
        help="show an example configuration: toolscript config example",
        description="Help with the configuration file.",
    )
    actions = p.add_subparsers(title="actions", metavar="ACTION")
    example = actions.add_parser(
        "example",
        help="print an example config with every key (toolscript config example > toolscript.toml)",
        description=f"Print {EXAMPLE_CONFIG.name}, an example config with every key, to start from: "
        "toolscript config example > toolscript.toml",
    )
    _add_global_options(example, after_command=True)
    example.set_defaults(func=cmd_config_example, needs_config=False)
    p.set_defaults(func=lambda args, cfg: _usage(p), needs_config=False)


def cmd_config_example(args: argparse.Namespace, cfg: Config | None) -> int:
    try:
        text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    except OSError as exc:
        raise ToolscriptError(f"Cannot read the example config {EXAMPLE_CONFIG}: {exc.strerror or exc}.") from None
    sys.stdout.write(text)
    sys.stdout.flush()
    return EXIT_OK


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


# -- tools, call, gateway --------------------------------------------------------------


def _add_tools(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("tools", help="list the tools of the servers, or describe one (connects to them)")
    p.add_argument("tool", nargs="?", metavar="SERVER__TOOL", help="describe this tool: its arguments and their types")
    p.add_argument("--server", metavar="NAME", help="only this server")
    p.add_argument("--json", action="store_true", help="print the full list (or the tool), with input schemas, as JSON")
    p.set_defaults(func=cmd_tools)


def cmd_tools(args: argparse.Namespace, cfg: Config) -> int:
    if args.tool is not None:
        if args.server is not None:
            raise UsageError("Give either SERVER__TOOL or --server: toolscript tools SERVER__TOOL")
        return _describe_tool(args, cfg)
    tools, rows = _listing(cfg, args.server, lambda gateway: gateway.tools(args.server))
    if args.json:
        _print(json.dumps(tools, indent=2))
    else:
        names = [escape_controls(tool["name"]) for tool in tools]  # aligned as shown
        width = max(map(len, names), default=0)
        for name, tool in zip(names, tools, strict=True):
            summary = (tool.get("description") or "").strip().split("\n")[0]
            unsupported = f"  [cannot be called: it {tool['unsupported']}]" if tool.get("unsupported") else ""
            _print(f"{name:<{width}}  {summary}{unsupported}".rstrip())
    return _report_failed_servers(cfg, rows)


def _add_search(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "search",
        help="find the tools that fit a task, best first: toolscript search open a bug",
        description="Rank the tools of every server (or of --server) by how well they fit the query: "
        "their names, titles, descriptions and parameters, words people use instead of the tools' own, "
        "and typos.",
    )
    p.add_argument("query", nargs="+", metavar="WORDS", help="what you want to do, in your own words")
    p.add_argument("--limit", type=_positive_int, default=5, metavar="N", help="show the N best tools (default: 5)")
    p.add_argument("--server", metavar="NAME", help="only this server's tools")
    p.add_argument("--json", action="store_true", help="print the ranking as JSON")
    p.add_argument(
        "--types", action="store_true", help="after the ranking, print the tools found as typed Python functions"
    )
    p.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace, cfg: Config) -> int:
    query = " ".join(args.query)
    found: list[dict[str, Any]] = []  # the hits' full tool rows, for --types

    def search(gateway: SyncGateway) -> list[dict[str, Any]]:
        hits = gateway.search(query, limit=args.limit, server=args.server)
        if args.types:
            found.extend(gateway.tool(hit["name"]) for hit in hits)
        return hits

    hits, rows = _listing(cfg, args.server, search)
    source = _typed_functions(found) if args.types and found else ""
    if args.json:
        _print(json.dumps({"results": hits, "types": source} if args.types else hits, indent=2))
    else:
        names = [escape_controls(hit["name"]) for hit in hits]  # aligned as shown
        width = max(map(len, names), default=0)
        for name, hit in zip(names, hits, strict=True):
            _print(f"{name:<{width}}  {hit['score']:>6.2f}  {hit['description']}".rstrip())
        if source:
            _print()
            _print(source.rstrip("\n"))
    if not hits and rows:  # (with no servers, _report_failed_servers says so)
        _status(f"No tool fits {query!r}; try other words, or list them all: toolscript tools")
    return _report_failed_servers(cfg, rows)


def _typed_functions(tools: list[dict[str, Any]]) -> str:
    """The typed Python functions of `tools` (`toolscript types`' module for them)."""
    if __package__:
        from . import typegen
    else:
        import typegen
    return typegen.module_source(tools)


def _add_call(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "call",
        help='call a tool: toolscript call SERVER__TOOL \'{"name": "value"}\'',
        description="Call a tool. When the server asks for input during the call, toolscript "
        "asks you if stdin and stderr are a terminal, and declines otherwise.",
    )
    p.add_argument("tool", metavar="SERVER__TOOL", help="the tool, as listed by `toolscript tools`")
    p.add_argument(
        "arguments",
        nargs="*",
        metavar="ARGS",
        help="a JSON object, @FILE to read it from a file, - to read stdin, or name=value arguments "
        "typed by the tool's schema (name:=JSON for raw JSON) (default: {})",
    )
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="save images, audio and binary resources of the result into DIR, as POSITION-TYPE.EXT",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="give up on the call after this long without an answer or progress",
    )
    p.set_defaults(func=cmd_call)


def cmd_call(args: argparse.Namespace, cfg: Config) -> int:
    if __package__:
        from . import elicitation, tool_arguments
    else:
        import elicitation
        import tool_arguments

    pairs, arguments = _arguments_or_pairs(args.arguments, args.tool)
    input_handler = _terminal_input_handler(elicitation)
    with _open_gateway(cfg, for_tool=args.tool) as gateway, _ProgressLine(args.tool) as progress:
        if pairs is not None:
            arguments = tool_arguments.typed_arguments(pairs, gateway.tool(args.tool).get("inputSchema"), args.tool)
        result = gateway.call(
            args.tool, arguments, timeout=args.timeout, input_handler=input_handler, on_progress=progress
        )
    why = "nobody could be asked through the gateway" if input_handler else "stdin or stderr is not a terminal"
    for request in result.get(elicitation.DECLINED_KEY) or []:
        log.warning("note: %s; declined, as %s.", elicitation.describe_request(request), why)
    saved = save_content(result, args.output) if args.output else {}
    failed = bool(result.get("isError"))
    if args.json:
        _print(json.dumps(result, indent=2))
    else:
        text = render_result(result, saved)
        if failed:
            _status(text)
        elif text:
            _print(text)
    return EXIT_TOOL_ERROR if failed else EXIT_OK


def _arguments_or_pairs(words: list[str], name: str) -> tuple[list[tuple[str, bool, str]] | None, dict[str, Any]]:
    """ARGS of `call` or `prompt`: `name=value` pairs (to be typed by the caller), or one JSON object, @FILE or -."""
    if __package__:
        from . import tool_arguments
    else:
        import tool_arguments

    if len(words) > 1 or (words and tool_arguments.is_pair(words[0])):
        return tool_arguments.parse_pairs(words, name), {}
    return None, _read_arguments(words[0] if words else None, name)


# -- types ---------------------------------------------------------------------------


def _add_types(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "types",
        help="write a typed Python module for the tools (connects to the servers)",
        description="Write Python source with one namespace per server and one function per tool, its keyword "
        "arguments typed from the tool's input schema and its result from the output schema, which calls the "
        "tools through toolscript.connect(): from generated import SERVER; SERVER.TOOL(name=value).",
    )
    p.add_argument("--server", action="append", default=[], metavar="NAME", help="the tools of NAME (repeatable)")
    p.add_argument("--tool", action="append", default=[], metavar="SERVER__TOOL", help="this tool (repeatable)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the module to FILE (default: stdout)")
    p.set_defaults(func=cmd_types)


def cmd_types(args: argparse.Namespace, cfg: Config) -> int:
    if __package__:
        from . import typegen
    else:
        import typegen

    servers = list(dict.fromkeys(args.server))
    if args.tool:
        servers += [_gateway_module().split_tool_name(name)[0] for name in args.tool]
    with _open_gateway(cfg, servers=list(dict.fromkeys(servers))) as gateway:
        tools = typegen.select_tools(gateway, args.server, args.tool)
        rows = [row for row in gateway.servers() if not servers or row["name"] in servers]
    source = typegen.module_source(tools)
    if args.output is None:
        sys.stdout.write(source)
        sys.stdout.flush()
    else:
        try:
            Path(args.output).write_text(source, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"Cannot write the typed module to {args.output}: {exc.strerror or exc}.") from None
        log.info("Wrote %s (%d tools).", args.output, len(tools))
    return _report_failed_servers(cfg, rows)


# -- resources, read, prompts, prompt -------------------------------------------------


def _add_resources(commands: argparse._SubParsersAction) -> None:
    _add_listing_command(
        commands,
        "resources",
        cmd_resources,
        "list the resources and resource templates of the servers",
        "print the full list as JSON",
    )


def cmd_resources(args: argparse.Namespace, cfg: Config) -> int:
    resources, rows = _listing(cfg, args.server, lambda gateway: gateway.resources(args.server))
    if args.json:
        _print(json.dumps(resources, indent=2))
    else:
        table = [
            (
                item["server"],
                item.get("uri") or item.get("uriTemplate", ""),
                item.get("name", ""),
                _resource_details(item),
            )
            for item in resources
        ]
        widths = [max((len(line[column]) for line in table), default=0) for column in range(3)]
        for line in table:
            _print(
                (
                    "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + f"  {line[3]}"
                ).rstrip()
            )
    return _report_failed_servers(cfg, rows)


def _resource_details(item: dict[str, Any]) -> str:
    details = ["template"] if "uriTemplate" in item else []
    if item.get("mimeType"):
        details.append(str(item["mimeType"]))
    if item.get("size") is not None:
        details.append(f"{item['size']} bytes")
    return ", ".join(details)


def _add_read(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("read", help="read a resource: toolscript read SERVER URI")
    p.add_argument("server", metavar="SERVER", help="the server, as listed by `toolscript resources`")
    p.add_argument("uri", metavar="URI", help="the resource's URI (or a URI made from a template)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the whole result as JSON (binary content in base64)")
    output.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the content to FILE (needed for binary content when stdout is a terminal)",
    )
    p.set_defaults(func=cmd_read)


def cmd_read(args: argparse.Namespace, cfg: Config) -> int:
    with _open_gateway(cfg, server=args.server) as gateway:
        result = gateway.read_resource(args.server, args.uri)
    contents = result.get("contents") or []
    if args.json:
        _print(json.dumps(result, indent=2))
        return EXIT_OK
    if args.output is not None:
        if len(contents) != 1:
            raise UsageError(
                f"Resource '{args.uri}' of server '{args.server}' has {len(contents)} parts; -o FILE "
                "takes one. Use --json to see them all."
            )
        data = _content_bytes(contents[0])
        try:
            with open(args.output, "wb") as file:
                file.write(data)
        except OSError as exc:
            raise UsageError(f"Cannot write {args.output}: {exc.strerror or exc}.") from None
        log.info("Wrote %d bytes to %s.", len(data), args.output)
        return EXIT_OK
    binary = [item for item in contents if "text" not in item]
    if binary and sys.stdout.isatty():
        item = binary[0]
        raise UsageError(
            f"Resource '{args.uri}' of server '{args.server}' is binary ({item.get('mimeType', 'unknown type')}, "
            f"{len(_content_bytes(item))} bytes); not printing it to a terminal. "
            f"Run: toolscript read {args.server} {args.uri} -o FILE"
        )
    for item in contents:
        if "text" in item:
            text = str(item["text"])
            if sys.stdout.isatty():  # for a person: terminal controls shown escaped; else the exact content
                text = escape_controls(text if text.endswith("\n") else text + "\n")
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            sys.stdout.buffer.write(_content_bytes(item))
            sys.stdout.buffer.flush()
    return EXIT_OK


def _content_bytes(item: dict[str, Any]) -> bytes:
    """The bytes of one resource content: its text in UTF-8, or its base64 blob decoded."""
    if "text" in item:
        return str(item["text"]).encode()
    try:
        return base64.b64decode(item.get("blob") or "", validate=True)
    except (ValueError, TypeError):
        raise ConnectError(f"The server sent resource '{item.get('uri')}' as invalid base64.") from None


def _add_prompts(commands: argparse._SubParsersAction) -> None:
    _add_listing_command(
        commands,
        "prompts",
        cmd_prompts,
        "list the prompts of the servers",
        "print the full list, with arguments, as JSON",
    )


def _add_listing_command(
    commands: argparse._SubParsersAction, name: str, func: Command, help: str, json_help: str
) -> None:
    p = commands.add_parser(name, help=help)
    p.add_argument("--server", metavar="NAME", help="only this server")
    p.add_argument("--json", action="store_true", help=json_help)
    p.set_defaults(func=func)


def cmd_prompts(args: argparse.Namespace, cfg: Config) -> int:
    prompts, rows = _listing(cfg, args.server, lambda gateway: gateway.prompts(args.server))
    if args.json:
        _print(json.dumps(prompts, indent=2))
    else:
        width = max((len(prompt["name"]) for prompt in prompts), default=0)
        for prompt in prompts:
            summary = (prompt.get("description") or "").strip().split("\n")[0]
            arguments = [
                f"{argument['name']}{'' if argument.get('required') else '?'}"
                for argument in prompt.get("arguments") or []
            ]
            if arguments:
                summary = f"{summary} (arguments: {', '.join(arguments)})".strip()
            _print(f"{prompt['name']:<{width}}  {summary}".rstrip())
    return _report_failed_servers(cfg, rows)


def _add_prompt(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("prompt", help='get a prompt: toolscript prompt SERVER__PROMPT \'{"name": "value"}\'')
    p.add_argument("prompt", metavar="SERVER__PROMPT", help="the prompt, as listed by `toolscript prompts`")
    p.add_argument(
        "arguments",
        nargs="*",
        metavar="ARGS",
        help="a JSON object, @FILE to read it from a file, - to read stdin, or name=value pairs (default: {})",
    )
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.set_defaults(func=cmd_prompt)


def cmd_prompt(args: argparse.Namespace, cfg: Config) -> int:
    if __package__:
        from . import tool_arguments
    else:
        import tool_arguments

    pairs, arguments = _arguments_or_pairs(args.arguments, args.prompt)
    if pairs is not None:  # prompt arguments are strings: no schema to type them by
        arguments = tool_arguments.typed_arguments(pairs, None, args.prompt)
    with _open_gateway(cfg, for_prompt=args.prompt) as gateway:
        result = gateway.get_prompt(args.prompt, arguments)
    if args.json:
        _print(json.dumps(result, indent=2))
    else:
        for message in result.get("messages") or []:
            _print(f"[{message.get('role')}]")
            _print(_render_content(message.get("content") or {}))
    return EXIT_OK


def _listing(
    cfg: Config, server: str | None, list_items: Callable[[SyncGateway], list[dict[str, Any]]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What `list_items` lists, and the `/servers` rows of the servers it covers (for `_report_failed_servers`)."""
    with _open_gateway(cfg, server=server) as gateway:
        items = list_items(gateway)
        rows = [row for row in gateway.servers() if server in (None, row["name"])]
    return items, rows


def _report_failed_servers(cfg: Config, rows: list[dict[str, Any]]) -> int:
    """Report the servers of a listing that are not connected; return the listing's exit code."""
    failed = [row for row in rows if row["status"] != "connected"]
    for row in failed:
        _error(row.get("error") or f"Server '{row['name']}' is {row['status']}.")
    if not rows:
        _status(_no_servers(cfg))  # not an error: there is nothing to list (stdout stays clean for --json)
    # The listing is printed as far as it goes; any server missing from it fails the command.
    if failed:
        return EXIT_AUTH_REQUIRED if all(row["status"] == "auth_required" for row in failed) else EXIT_UNREACHABLE
    return EXIT_OK


def _describe_tool(args: argparse.Namespace, cfg: Config) -> int:
    """`tools SERVER__TOOL`: the tool's description and arguments, for a person (or as JSON)."""
    if __package__:
        from . import tool_arguments
    else:
        import tool_arguments

    with _open_gateway(cfg, for_tool=args.tool) as gateway:
        tool = gateway.tool(args.tool)
    if args.json:
        _print(json.dumps(tool, indent=2))
        return EXIT_OK
    _print(tool["name"])
    for line in (tool.get("description") or "").strip().splitlines():
        _print(f"  {line}".rstrip())
    if tool.get("unsupported"):
        _print(f"  Cannot be called: it {tool['unsupported']}.")
    arguments = tool_arguments.describe_arguments(tool.get("inputSchema"))
    _print()
    _print("Arguments:" if arguments else "Arguments: none")
    for argument in arguments:
        facts = [argument.type, "required" if argument.required else "optional"]
        if argument.has_default:
            facts.append(f"default: {json.dumps(argument.default)}")
        _print(f"  {argument.name} ({', '.join(facts)})")
        for line in (argument.description or "").strip().splitlines():
            _print(f"      {line}".rstrip())
    if tool.get("outputSchema"):
        _print()
        _print(f"Returns structured content; its schema: toolscript tools {tool['name']} --json")
    return EXIT_OK


def _terminal_input_handler(elicitation: ModuleType) -> Callable[[Any], Any] | None:
    """Ask the person at the terminal when a server asks for input; None unless stdin and stderr are a terminal."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    one_at_a_time = threading.Lock()

    def write(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    def ask(request: Any) -> Any:
        with one_at_a_time:
            return elicitation.ask_on_terminal(request, sys.stdin.readline, write)

    return ask


def _add_gateway(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "gateway",
        help="serve every configured server through a local HTTP API, and as MCP at /mcp",
        description="Serve every configured server through a local HTTP API (/servers, /tools, ...) and as "
        "MCP over streamable HTTP: /mcp is every server (tools and prompts named SERVER__NAME, as 'serve'), "
        "/mcp/SERVER one server with its own names. Every request but GET /health needs the token it prints.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=_port, default=0, help="port to listen on (default: 0, any free port)")
    _add_list_wait(p, "MCP listings (/mcp)")
    p.set_defaults(func=cmd_gateway)


def _add_list_wait(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--wait",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help=f"how long {what} just after start wait for servers still connecting (default: 5)",
    )


def cmd_gateway(args: argparse.Namespace, cfg: Config) -> int:
    gateway_module = _gateway_module()
    if __package__:
        from .gateway_http import TOKEN_VAR, URL_VAR, ApiServer, remove_token_file, write_token_file
    else:
        from gateway_http import TOKEN_VAR, URL_VAR, ApiServer, remove_token_file, write_token_file
    if not is_loopback_host(args.host):
        log.warning(
            "warning: --host %s is not a loopback address: other machines can use your servers, "
            "and the credentials they hold, through this gateway.",
            args.host,
        )
    if __package__:
        from .front import HttpFront
    else:
        from front import HttpFront
    hooks = gateway_module.SessionHooks()
    gateway = gateway_module.Gateway(cfg, hooks=hooks)  # announces each server as it connects or fails
    mcp = HttpFront(gateway, hooks, version=__version__, list_wait=max(0.0, args.wait))  # /mcp and /mcp/SERVER
    try:
        api = ApiServer(gateway, args.host, args.port, mcp=mcp)
    except OSError as exc:
        raise UsageError(f"Cannot listen on {args.host}:{args.port}: {exc.strerror or exc}.") from None
    token_path = None
    try:
        with _signals_interrupt():
            try:
                try:
                    token_path = write_token_file(api.url, api.token)
                except UsageError as exc:  # the token still works; only the same-user shortcut is lost
                    log.warning("warning: %s Clients need %s.", exc, TOKEN_VAR)
                # The API listens already (requests wait in its queue): say where, then connect
                # the servers in the background while it serves.
                _print_gateway_url(f"{URL_VAR}={api.url}", f"{TOKEN_VAR}={api.token}")
                log.info(
                    "MCP over streamable HTTP: %s/mcp (every server) and %s/mcp/SERVER (one), "
                    "with the header 'Authorization: Bearer <%s>'.",
                    api.url,
                    api.url,
                    TOKEN_VAR,
                )
                gateway.start(wait=False, alongside=mcp.running)
                try:
                    api.serve_forever()
                finally:
                    api.stopping.set()  # calls still in flight are answered 503
                    gateway.stop()
                    api.wait_idle(_ANSWER_GRACE)
            except KeyboardInterrupt as stop:
                log.info("Gateway stopped.")
                # SIGTERM and SIGHUP are how a service is told to stop; Ctrl-C exits 130, as for every command.
                return EXIT_OK if isinstance(stop, _Terminated) else EXIT_INTERRUPTED
            finally:
                if token_path is not None:
                    remove_token_file(token_path)
    finally:
        api.server_close()
    return EXIT_OK


_ANSWER_GRACE = 5.0  # seconds for the last answers to go out once the gateway has stopped


def _print_gateway_url(url_line: str, token_line: str) -> None:
    """Print the gateway's first two stdout lines, which a script reads to find and use the gateway."""
    _print(url_line)
    _print(token_line)


def _add_serve(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "serve",
        help="serve the configured servers as one MCP server on stdin/stdout, for MCP clients",
        description="Speak MCP on stdin/stdout for an MCP client (Claude Code, Codex, Cursor...), passing every "
        "request on to the configured servers, with toolscript's stored OAuth tokens. With one server "
        "its names pass through unchanged; with several, tools and prompts are SERVER__NAME.",
    )
    p.add_argument("--server", action="append", default=[], metavar="NAME", help="serve only NAME (repeatable)")
    _add_list_wait(p, "listings")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace, cfg: Config) -> int:
    if __package__:
        from . import front
    else:
        import front
    names = list(dict.fromkeys(cfg.server(name).name for name in args.server)) or list(cfg.servers)
    if not names:
        raise UsageError(_no_servers(cfg))
    ended_by = front.serve_stdio(cfg, names, version=__version__, list_wait=max(0.0, args.wait))
    return EXIT_INTERRUPTED if ended_by == signal.SIGINT else EXIT_OK


@contextlib.contextmanager
def _open_gateway(
    cfg: Config,
    *,
    server: str | None = None,
    for_tool: str | None = None,
    for_prompt: str | None = None,
    servers: Sequence[str] = (),
) -> Iterator[SyncGateway]:
    """Yield the running gateway at $TOOLSCRIPT_GATEWAY_URL, else a gateway of our own.

    Our own connects only `server` (or `servers`), or the server of the tool `for_tool` or prompt `for_prompt`,
    or else all.
    """
    remote = running_gateway(cfg.path)
    if remote is not None:
        yield remote
        return
    gateway_module = _gateway_module()
    if for_tool is not None:
        server = gateway_module.split_tool_name(for_tool)[0]
    elif for_prompt is not None:
        server = gateway_module.split_prompt_name(for_prompt)[0]
    gateway = gateway_module.Gateway(cfg, only=[server] if server else (list(servers) or None), announce=False)
    with _signals_interrupt():
        # Not waiting here: a call waits for its server within its own timeout, a listing as long as it must.
        gateway.start(wait=False)
        try:
            yield gateway
        finally:
            gateway.stop()


def _gateway_module() -> ModuleType:
    """Import `gateway`, and with it the MCP SDK, only when a command needs it."""
    if __package__:
        from . import gateway
    else:
        import gateway
    return gateway


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C; the gateway tells them apart for its exit code."""


_SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Treat SIGTERM and SIGHUP (the terminal closed) like Ctrl-C, so that stdio servers are shut down on any.

    After the first of them, all are ignored until the block ends: the shutdown it starts
    (bounded by the gateway's stop timeout) must not be cut short and leave servers running.
    A signal ignored when we started (`nohup`, a background job) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        for number in previous:
            signal.signal(number, signal.SIG_IGN)
        raise KeyboardInterrupt if signum == signal.SIGINT else _Terminated

    previous = {number: signal.getsignal(number) for number in _SHUTDOWN_SIGNALS}
    previous = {number: handler for number, handler in previous.items() if handler != signal.SIG_IGN}
    for number in previous:
        signal.signal(number, interrupt)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


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


def render_result(result: dict[str, Any], saved: dict[int, str] | None = None) -> str:
    """Return a tool result for reading: text as text, other content as one-line summaries.

    `saved` maps the position of content saved to a file (see `save_content`) to its path.
    """
    saved = saved or {}
    parts = []
    for position, item in enumerate(result.get("content") or [], 1):
        text = _render_content(item)
        parts.append(f"{text} saved to {saved[position]}" if position in saved else text)
    if not parts and result.get("structuredContent") is not None:
        parts.append(json.dumps(result["structuredContent"], indent=2))
    return "\n".join(parts)


def save_content(result: dict[str, Any], directory: str) -> dict[int, str]:
    """Write each image, audio and binary resource of a result to DIRECTORY/POSITION-TYPE.EXT; return the paths.

    POSITION counts the result's content from 1; EXT follows the MIME type (`.bin` when unknown).
    """
    import mimetypes

    saved: dict[int, str] = {}
    for position, item in enumerate(result.get("content") or [], 1):
        kind = item.get("type")
        source = (item.get("resource") or {}) if kind == "resource" else item
        data = source.get("blob") if kind == "resource" else source.get("data")
        if kind not in ("image", "audio", "resource") or data is None:
            continue
        try:
            content = base64.b64decode(data, validate=True)
        except (ValueError, TypeError):
            log.warning("warning: the %s at position %d of the result is not valid base64; not saved.", kind, position)
            continue
        mime = str(source.get("mimeType") or "").split(";")[0].strip().lower()
        extension = mimetypes.guess_extension(mime) or _EXTENSIONS.get(mime, ".bin")
        path = os.path.join(directory, f"{position}-{kind}{extension}")
        try:
            os.makedirs(directory, exist_ok=True)
            # Never through a symbolic link planted in DIR (a shared directory, say).
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "wb") as file:
                file.write(content)
        except OSError as exc:
            raise UsageError(f"Cannot save the {kind} of the result to {path}: {exc.strerror or exc}.") from None
        saved[position] = path
    return saved


# MIME types servers send that Python's table does not know (it has audio/x-wav, not audio/wav).
_EXTENSIONS = {
    "audio/wav": ".wav",
    "audio/wave": ".wav",
    "audio/ogg": ".ogg",
    "audio/webm": ".weba",
    "audio/flac": ".flac",
    "audio/aac": ".aac",
    "image/webp": ".webp",
    "image/avif": ".avif",
}


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


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 0 < len(text) <= 6) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, not {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


# -- add, remove, import: edit the config file ---------------------------------------------


def _add_add(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "add",
        help="add a server to the config file",
        description="Add a stdio server (toolscript add NAME [--env K=V] -- COMMAND ARGS...) or an http/sse server "
        "(toolscript add NAME --url URL [--type sse] [--header K=V]) to the config file in use (else "
        "$TOOLSCRIPT_HOME/config.toml), keeping the rest of the file as it is. Values may use ${VAR}.",
    )
    p.add_argument("name", metavar="NAME", help="the new server's name (letters, digits, '_', '-')")
    p.add_argument("command", nargs="*", metavar="COMMAND", help="after --: the stdio server's command and arguments")
    p.add_argument("--url", help="the http or sse server's URL")
    p.add_argument("--type", choices=("http", "sse"), help="with --url: the transport (default: http)")
    p.add_argument("--header", action="append", default=[], metavar="K=V", help="with --url: a request header")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="with a command: an environment variable")
    p.add_argument("--cwd", metavar="DIR", help="with a command: its working directory")
    p.add_argument("--timeout", type=_positive_float, metavar="SECONDS", help="seconds allowed per request")
    p.set_defaults(func=cmd_add, needs_config=False)


def cmd_add(args: argparse.Namespace, cfg: Config | None) -> int:
    config_edit = _config_edit()
    table: dict[str, object] = {}
    if args.url and args.command:
        raise UsageError("Give either --url URL or -- COMMAND ARGS..., not both.")
    if args.url:
        if args.env or args.cwd:
            raise UsageError("--env and --cwd are for stdio servers (toolscript add NAME -- COMMAND ARGS...).")
        table = {"type": args.type or "http", "url": args.url}
        if args.header:
            table["headers"] = _pairs(args.header, "--header")
    elif args.command:
        if args.type or args.header:
            raise UsageError("--type and --header are for http/sse servers (toolscript add NAME --url URL).")
        table = {"command": args.command[0]}
        if args.command[1:]:
            table["args"] = args.command[1:]
        if args.env:
            table["env"] = _pairs(args.env, "--env")
        if args.cwd:
            table["cwd"] = args.cwd
    else:
        raise UsageError(
            f"Say what to run: toolscript add {args.name} -- COMMAND ARGS..., or toolscript add {args.name} --url URL"
        )
    if args.timeout:
        table["timeout"] = args.timeout
    path = config_edit.writable_config_path(args.config)
    config_edit.add_servers(path, {args.name: table})
    _print(f"Added server '{args.name}' to {path}.")
    for variable in config_edit.unset_variables(table):
        log.warning("Set %s in the environment before using '%s'.", variable, args.name)
    return EXIT_OK


def _pairs(items: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} takes KEY=VALUE, not {item!r}.")
        pairs[key] = value
    return pairs


def _add_remove(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "remove",
        help="remove a server from the config file",
        description="Remove [servers.NAME] from the config file in use, keeping the rest as it "
        "is. Stored OAuth tokens are kept (toolscript auth NAME --logout first to "
        "revoke them).",
    )
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_remove, needs_config=False)


def cmd_remove(args: argparse.Namespace, cfg: Config | None) -> int:
    config_edit = _config_edit()
    path = _config.find_config(args.config)
    if path is None:
        raise UsageError(f"No config file to remove '{args.name}' from.")
    config_edit.remove_server(path, args.name)
    _print(f"Removed server '{args.name}' from {path}.")
    if Store().exists(args.name):
        _print(f"Its OAuth record {Store().path(args.name)} was kept; delete it if you no longer need it.")
    return EXIT_OK


def _add_import(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "import",
        help="add the servers of another MCP client's config",
        description="Read a Claude Desktop or Claude Code (.mcp.json), VS Code or Cursor (mcp.json) JSON file, or a "
        "Codex config.toml, and add its servers to the config file in use (else "
        "$TOOLSCRIPT_HOME/config.toml). Says what it skipped and why.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--dry-run", action="store_true", help="print the TOML it would add, change nothing")
    p.set_defaults(func=cmd_import, needs_config=False)


def cmd_import(args: argparse.Namespace, cfg: Config | None) -> int:
    config_edit = _config_edit()
    from pathlib import Path

    path = config_edit.writable_config_path(args.config)
    configured = config_edit.configured_servers(path)
    plan = config_edit.plan_import(Path(args.file).expanduser(), configured)
    for name, reason in plan.skipped:
        log.warning("Skipped '%s': %s.", name, reason)
    for note in plan.notes:
        log.warning("Note: %s.", note)
    if args.dry_run:
        if plan.servers:
            _print(config_edit.servers_toml(plan.servers).rstrip("\n"))
        _status(f"Would add {len(plan.servers)} server(s) from {plan.source} to {path}.")
        return EXIT_OK
    if plan.servers:
        config_edit.add_servers(path, plan.servers)
    names = ", ".join(plan.servers) or "none"
    _print(f"Added {len(plan.servers)} server(s) from {plan.source} to {path}: {names}.")
    return EXIT_OK


def _config_edit() -> ModuleType:
    if __package__:
        from . import config_edit
    else:
        import config_edit
    return config_edit


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 (any free port) to 65535, not {text!r}")
    return value


# -- output helpers ------------------------------------------------------------------


# Everything printed may hold text from a server (tool names, descriptions, results, errors):
# terminal controls in it are shown escaped, so a server cannot drive the terminal. JSON
# output is unchanged by this, as json.dumps escapes them itself.


def _print(text: str = "") -> None:
    print(escape_controls(text), flush=True)


def _status(text: str) -> None:
    """Progress meant for the person at the terminal (stderr), shown even with --quiet."""
    print(escape_controls(text), file=sys.stderr, flush=True)


def _error(message: str) -> None:
    print(f"error: {escape_controls(redact(message))}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
