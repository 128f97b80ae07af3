"""Log records as a person at the terminal reads them: no tracebacks, and a library's record in one line.

It stands alone because both the CLI (which installs `OneLineFilter` on its handler) and
the gateway (which sets `SERVER` in each connection's tasks) use it, and neither may
import the other; it needs only the standard library and `redact`.

Libraries log what went wrong with a traceback (the MCP SDK when an SSE stream breaks, or
when a stdio server writes a line to stdout that is not JSON-RPC). At default verbosity
that becomes one line: the record's first line, the server it is about and, instead of
the traceback, the exception's type and first line. `-v` shows the whole record.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

if __package__:
    from .redact import redact
else:
    from redact import redact

__all__ = ["SERVER", "OneLineFilter", "describe_exception"]

# The configured server the current task works for. The gateway sets it in the tasks that
# serve one server; the SDK's tasks for that connection inherit it.
SERVER: ContextVar[str | None] = ContextVar("toolscript_server", default=None)

_MAX_INPUT = 80


class OneLineFilter(logging.Filter):
    """A handler filter: no record carries a traceback, and another library's record is one line.

    Records of other libraries logged on behalf of a server get `Server 'NAME': ` in front;
    toolscript's own messages name their server themselves, and keep the lines they have
    (the end of a stdio server's stderr, say); the CLI's handler shows every line after the
    first indented (`redact.escape_lines`), so none reads as a line of its own.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string must not hide the line
            message = str(record.msg)
        ours = record.name == "toolscript" or record.name.startswith("toolscript.")
        if not ours:
            lines = message.strip().splitlines()
            message = lines[0] if lines else ""
        if record.exc_info and record.exc_info[1] is not None:
            failure = describe_exception(record.exc_info[1])
            message = f"{message}: {failure}" if message else failure
        server = SERVER.get()
        if server and not ours:
            message = f"Server '{server}': {message}"
        record.msg, record.args = message, None
        record.exc_info = record.exc_text = record.stack_info = None
        return True


def describe_exception(exc: BaseException) -> str:
    """One line for an exception: the first failure inside a group, its type and first line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    errors = getattr(exc, "errors", None)
    if callable(errors):  # pydantic's ValidationError: its first line only names the model
        try:
            first = errors()[0]
            # Masked before it is cut: a secret cut in two would no longer be recognised. (Cut to
            # 4096 first only to bound the work: what is cut there lies past the 80 kept.)
            text = f"{first['msg']} (input: {redact(str(first.get('input'))[:4096])[:_MAX_INPUT]!r})"
        except (LookupError, TypeError, ValueError):
            text = ""
        if text:
            return text
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
