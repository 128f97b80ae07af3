"""`toolscript.connect()`: MCP servers from a Python program, through one synchronous client.

It stands alone because it is the library's front door, apart from the CLI: it decides
which gateway a program uses (`running_gateway`, else one of its own) and turns answers
into return values and exceptions (`ToolError` for a tool's `isError` result), where the
CLI turns them into output and exit codes. It never prints. The MCP SDK and the HTTP
client are imported only by `connect()`, so the CLI can import this module at no cost.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if __package__:
    from .config import load_config, toolscript_home
    from .errors import ToolscriptError
else:
    from config import load_config, toolscript_home
    from errors import ToolscriptError

if TYPE_CHECKING:
    from config import Config
    from gateway_http import RemoteGateway, SyncGateway

__all__ = ["Client", "ToolError", "connect", "running_gateway"]

# A library does not print: toolscript's log records go nowhere unless the program configures logging.
logging.getLogger("toolscript").addHandler(logging.NullHandler())


class ToolError(ToolscriptError):
    """A tool answered with an error result (`isError`); `content` and `result` keep what it sent.

    `name` is the tool (`SERVER__TOOL`), `server` its server, `text` the text of its content.
    """

    exit_code = 1

    def __init__(self, name: str, result: dict[str, Any]) -> None:
        self.name = name
        self.result = result
        self.content: list[dict[str, Any]] = list(result.get("content") or [])
        self.structured_content: Any = result.get("structuredContent")
        self.text = result_text(result)
        what = self.text.strip() or "no text"
        super().__init__(f"Tool '{name}' reported an error: {what}", server=name.partition("__")[0] or None)


def result_text(result: dict[str, Any]) -> str:
    """Return the text items of a tool result's content, joined by newlines."""
    items = result.get("content") or []
    return "\n".join(item["text"] for item in items if isinstance(item, dict) and isinstance(item.get("text"), str))


def connect(config: str | os.PathLike[str] | None = None, *, servers: Iterable[str] | None = None) -> Client:
    """Return a client of the running gateway if there is one, else of a gateway started in this process.

    `config` is the config file (default: found as the CLI finds it); `servers` limits a
    gateway of our own to those servers (a running gateway serves what it serves).
    """
    explicit = None if config is None else os.fspath(config)
    loaded: list[Config] = []  # read once: for finding a running gateway, then for a gateway of our own

    def sources() -> tuple[Path, ...]:
        loaded.append(load_config(explicit))
        return loaded[0].sources

    remote = running_gateway(sources)
    if remote is not None:
        return Client(remote)
    if __package__:
        from . import gateway
    else:
        import gateway

    cfg = loaded[0] if loaded else load_config(explicit)
    own = gateway.Gateway(cfg, only=None if servers is None else list(servers), announce=False)
    # Not waiting: a call waits for its own server, a listing for every server it covers.
    own.start(wait=False)
    return Client(own, owns_gateway=True)


def running_gateway(
    sources: Sequence[str | os.PathLike[str]] | Callable[[], Sequence[Path]], *, discover: bool = True
) -> RemoteGateway | None:
    """Return the gateway a command or program should use instead of starting its own, or None.

    That is the one at $TOOLSCRIPT_GATEWAY_URL, else (with `discover`) a gateway of this
    user's serving the config read from `sources` (`Config.sources`, or a function that
    reads the config for them only when needed), as recorded under $TOOLSCRIPT_HOME
    (gateway_state; a stale record is ignored). Raises `ConnectError` when
    $TOOLSCRIPT_GATEWAY_URL is set but nothing answers there.
    """
    if __package__:
        from . import gateway_state
        from .gateway_http import URL_VAR, RemoteGateway
    else:
        import gateway_state
        from gateway_http import URL_VAR, RemoteGateway
    url = os.environ.get(URL_VAR)
    if not url and discover:
        paths = sources() if callable(sources) else sources
        running = gateway_state.find_running(gateway_state.record_path(toolscript_home(), paths))
        url = running.url if running is not None else None
    if not url:
        return None
    remote = RemoteGateway(url)
    remote.check()
    return remote


class Client:
    """The tools, resources and prompts of MCP servers, through one gateway; safe to use from several threads.

    Made by `connect()`. Use it as a context manager, or call `close()`: a gateway started
    for the client stops (with its stdio servers) then. Failures raise the exceptions the
    CLI maps to exit codes (`UsageError`, `AuthRequiredError`, `ConnectError`, ...), a tool's
    error result raises `ToolError`.
    """

    def __init__(self, gateway: SyncGateway, *, owns_gateway: bool = False) -> None:
        self._gateway = gateway
        self._owns_gateway = owns_gateway

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the gateway started for this client, if any; safe to call twice."""
        stop = getattr(self._gateway, "stop" if self._owns_gateway else "close", None)
        if stop is not None:
            stop()

    def servers(self) -> list[dict[str, Any]]:
        """Return each server's `name`, `type`, `status` (`connected`, `failed`, ...) and `error`."""
        return self._gateway.servers()

    def tools(self, server: str | None = None) -> list[dict[str, Any]]:
        """Return the tools of every server, or of `server`, as `toolscript tools --json` lists them.

        Raises the error of a server that could not be listed.
        """
        tools = self._gateway.tools(server)
        self._raise_for_failed(server)
        return tools

    def tool(self, name: str) -> dict[str, Any]:
        """Return the tool `SERVER__TOOL`, with its input schema."""
        return self._gateway.tool(name)

    def call(self, name: str, arguments: dict[str, Any] | None = None, /, **kwargs: Any) -> dict[str, Any]:
        """Call the tool `SERVER__TOOL` with `arguments` and/or keyword arguments; return its result.

        The result is the JSON object the server sent (`content`, `structuredContent`).
        Raises `ToolError` when the tool reports an error.
        """
        result = self._gateway.call(name, {**(arguments or {}), **kwargs})
        if result.get("isError"):
            raise ToolError(name, result)
        return result

    def resources(self, server: str | None = None) -> list[dict[str, Any]]:
        """Return the resources and resource templates of every server, or of `server`."""
        resources = self._gateway.resources(server)
        self._raise_for_failed(server)
        return resources

    def read(self, server: str, uri: str) -> dict[str, Any]:
        """Read the resource `uri` of `server`: `{"contents": [{uri, mimeType?, text | blob}]}`."""
        return self._gateway.read_resource(server, uri)

    def prompts(self, server: str | None = None) -> list[dict[str, Any]]:
        """Return the prompts of every server, or of `server`, as `SERVER__PROMPT`."""
        prompts = self._gateway.prompts(server)
        self._raise_for_failed(server)
        return prompts

    def prompt(self, name: str, arguments: dict[str, Any] | None = None, /, **kwargs: Any) -> dict[str, Any]:
        """Get the prompt `SERVER__PROMPT` filled in with `arguments` and/or keyword arguments."""
        return self._gateway.get_prompt(name, {**(arguments or {}), **kwargs})

    def search(self, query: str, limit: int = 5) -> list[dict[str, Any]]:
        """Return the `limit` tools that best match `query`, best first."""
        return self._gateway.search(query, limit=limit)

    def _raise_for_failed(self, server: str | None) -> None:
        """Raise the error of the first server a listing covered that is not connected."""
        if __package__:
            from .gateway_http import failed_server_error
        else:
            from gateway_http import failed_server_error
        failure = failed_server_error(self._gateway.servers(), [server] if server else [])
        if failure is not None:
            raise failure
