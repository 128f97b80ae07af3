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
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

if __package__:
    from . import config as _config
    from .errors import ToolscriptError, UsageError
    from .redact import RedactingFilter, escape_controls, redact
    from .storage import Store
else:
    import config as _config
    from errors import ToolscriptError, UsageError
    from redact import RedactingFilter, escape_controls, redact
    from storage import Store

if TYPE_CHECKING:
    from config import Config, ServerConfig
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
        # The demo brings its own config; a broken user config must not stop it.
        cfg = _config.load_config(args.config) if getattr(args, "needs_config", True) else None
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
    for add in (_add_servers, _add_auth, _add_tools, _add_call, _add_gateway, _add_demo):
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
    """Writes to whatever `sys.stderr` is now, so `main()` can run repeatedly in one process.

    Log lines carry text from servers (errors, a stdio server's stderr): terminal controls
    in them are shown escaped.
    """

    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(super().format(record))

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
        oauth = store.oauth_status_of(server)
        if oauth is not None:
            row["oauth_status"], reason = oauth
            if reason:
                row["oauth_error"] = reason
        rows.append(row)
    if args.json:
        _print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        where = cfg.path or "no config file found"
        _print(f"No servers configured ({where}). See config.toml.example.")
        return EXIT_OK
    width = max(len(str(r["name"])) for r in rows)
    for server, row in zip(cfg.servers.values(), rows):
        oauth = f"  [oauth: {row['oauth_status']}]" if "oauth_status" in row else ""
        reason = f" ({row['oauth_error']})" if "oauth_error" in row else ""
        _print(f"{server.name:<{width}}  {server.type:<5}  {server.target}{oauth}{reason}")
    return EXIT_OK


# -- auth ----------------------------------------------------------------------------


def _add_auth(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "auth", help="authenticate an OAuth-protected server, or list every server's state",
        description="Without SERVER: list every configured server's authentication state (no network). "
                    "With SERVER: run the OAuth authorization flow in the browser and store the tokens.",
    )
    p.add_argument("server", nargs="?", metavar="SERVER", help="a configured http or sse server")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--status", action="store_true", help="show what is stored for SERVER (no network)")
    action.add_argument("--logout", action="store_true", help="revoke and delete SERVER's tokens")
    p.add_argument("--forget-client", action="store_true", help="with --logout: also delete the client registration")
    p.add_argument("--no-browser", action="store_true",
                   help="do not open a browser; print the URL and also accept the redirected URL pasted on stdin")
    p.add_argument("--timeout", type=_positive_float, default=300.0, metavar="SECONDS",
                   help="how long to wait for the browser (default: 300)")
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
    if args.forget_client and not args.logout:
        raise UsageError("--forget-client goes with --logout: toolscript auth SERVER --logout --forget-client")
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
        if result.revoked:
            _print(f"Revoked the {' and the '.join(result.revoked)} at the server.")
        done = [what for what, did in (("tokens", result.deleted_tokens), ("client registration", result.deleted_client)) if did]
        _print(f"Deleted the {' and the '.join(done)} of '{server.name}'." if done
               else f"Server '{server.name}' had no stored tokens; nothing to log out.")
        return EXIT_OK
    if not server.is_remote:
        raise UsageError(f"Server '{server.name}' is a stdio server; only http and sse servers use OAuth.")
    return _auth_run(server, store, auth, no_browser=args.no_browser, timeout=args.timeout)


def _auth_list(cfg: Config, store: Store, auth: ModuleType) -> int:
    if not cfg.servers:
        _print(f"No servers configured ({cfg.path or 'no config file found'}).")
        return EXIT_OK
    width = max(len(name) for name in cfg.servers)
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
    if todo:
        _print()
        for name in todo:
            _print(f"Run: toolscript auth {name}")
    return EXIT_OK


def _auth_run(server: ServerConfig, store: Store, auth: ModuleType, *, no_browser: bool, timeout: float,
              open_browser: Callable[[str], object] | None = None) -> int:
    import webbrowser

    def show_url(url: str) -> None:
        _status(f"\nOpen this URL in a browser to authorize toolscript for '{server.name}':\n\n  {url}\n")
        if no_browser:
            _status("When the browser shows the toolscript page, you are done. If it cannot reach this machine "
                    "(SSH, container), paste the full address it ended on here and press Enter.\n")

    opener = None if no_browser else (open_browser or webbrowser.open)
    try:
        record = auth.authenticate(server, store, open_browser=opener, show_url=show_url,
                                   read_pasted=sys.stdin.readline if no_browser else None, timeout=timeout)
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
        _print(f"The server issued no refresh token: run toolscript auth {server.name} again {when}.")
    return EXIT_OK


# -- demo ----------------------------------------------------------------------------


def _add_demo(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "demo", help="try toolscript against a bundled local OAuth-protected MCP server",
        description="Start a local OAuth-protected MCP server, authenticate against it with the same flow as "
                    "'toolscript auth', list its tools and call one. Needs no network, browser or account, "
                    "and leaves nothing behind.",
    )
    p.add_argument("--no-browser", action="store_true",
                   help="never open a browser; toolscript follows the authorization URL itself")
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
            use_browser = not args.no_browser and _browser_available()
            code = _auth_run(demo_cfg.server("demo"), store, auth, no_browser=False, timeout=120,
                             open_browser=None if use_browser else _follow_authorization)
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


def _browser_available() -> bool:
    import os

    if os.environ.get("BROWSER"):
        return True
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _follow_authorization(url: str) -> bool:
    """Play the browser for the demo: request the authorization URL, then its loopback redirect."""
    import requests

    _status("   (no browser: toolscript follows the authorization URL itself)")
    response = requests.get(url, allow_redirects=False, timeout=30)
    location = response.headers.get("Location", "")
    if response.status_code not in (302, 303) or not location.startswith("http://127.0.0.1:"):
        raise ToolscriptError(f"The demo server answered the authorization request with {response.status_code}, "
                              "not a redirect to the loopback callback.")
    requests.get(location, timeout=30).close()
    return True


def _demo_use_server(cfg: Config, store: Store) -> None:
    """List the demo server's tools and call two through a `Gateway`, as `toolscript call` does."""
    with _gateway_module().Gateway(cfg, store=store) as gateway:
        tools = gateway.tools("demo")
        _print(f"4. The server's tools: {', '.join(tool['tool'] for tool in tools)}")
        result = gateway.call("demo__add", {"a": 2, "b": 3})
        _print(f"5. Called demo__add(a=2, b=3): {render_result(result)}")
        result = gateway.call("demo__whoami")
        _print(f"6. Called demo__whoami(): {render_result(result)}")


# -- tools, call, gateway --------------------------------------------------------------


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
        names = [escape_controls(tool["name"]) for tool in tools]  # aligned as shown
        width = max(map(len, names), default=0)
        for name, tool in zip(names, tools):
            summary = (tool.get("description") or "").strip().split("\n")[0]
            _print(f"{name:<{width}}  {summary}".rstrip())
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
            _status(text)
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
        from .gateway_http import TOKEN_VAR, URL_VAR, ApiServer, remove_token_file, write_token_file
    else:
        from gateway_http import TOKEN_VAR, URL_VAR, ApiServer, remove_token_file, write_token_file
    if not _config.is_loopback_host(args.host):
        log.warning("warning: --host %s is not a loopback address: other machines can use your servers, "
                    "and the credentials they hold, through this gateway.", args.host)
    gateway = gateway_module.Gateway(cfg)
    try:
        api = ApiServer(gateway, args.host, args.port)
    except OSError as exc:
        raise UsageError(f"Cannot listen on {args.host}:{args.port}: {exc.strerror or exc}.") from None
    token_path = None
    try:
        with _signals_interrupt():
            try:
                with gateway:
                    for row in gateway.servers():
                        if row["status"] == "connected":
                            log.info("Server '%s': connected, %d tools", row["name"], row["tools"])
                        elif row["status"] != "auth_required":  # the gateway has warned of those
                            log.warning("%s", row.get("error"))
                    try:
                        token_path = write_token_file(api.url, api.token)
                    except UsageError as exc:  # the token still works; only the same-user shortcut is lost
                        log.warning("warning: %s Clients need %s.", exc, TOKEN_VAR)
                    _print(f"{URL_VAR}={api.url}")
                    _print(f"{TOKEN_VAR}={api.token}")
                    api.serve_forever()
            except KeyboardInterrupt:
                log.info("Gateway stopped.")
            finally:
                if token_path is not None:
                    remove_token_file(token_path)
    finally:
        api.server_close()
    return EXIT_OK


@contextlib.contextmanager
def _open_gateway(cfg: Config, *, server: str | None = None, for_tool: str | None = None) -> Iterator[SyncGateway]:
    """Yield the running gateway at $TOOLSCRIPT_GATEWAY_URL, else a gateway of our own.

    Our own connects only `server`, or the server of the tool `for_tool`, or else all.
    """
    if __package__:
        from .gateway_http import URL_VAR, RemoteGateway
    else:
        from gateway_http import URL_VAR, RemoteGateway
    url = os.environ.get(URL_VAR)
    if url:
        remote = RemoteGateway(url)
        remote.check()
        yield remote
        return
    gateway_module = _gateway_module()
    if for_tool is not None:
        server = gateway_module.split_tool_name(for_tool)[0]
    only = [server] if server else None
    with _signals_interrupt(), gateway_module.Gateway(cfg, only=only, announce=False) as gateway:
        yield gateway


def _gateway_module() -> ModuleType:
    """Import `gateway`, and with it the MCP SDK, only when a command needs it."""
    if __package__:
        from . import gateway
    else:
        import gateway
    return gateway


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
        raise KeyboardInterrupt

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
    if not 0 < value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
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
