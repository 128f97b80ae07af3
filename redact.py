"""Keep secrets out of log output, and terminal controls out of text shown to a person.

It stands alone because three modules feed it (`auth` and `gateway` register the
secret values they handle, the CLI installs the filter on its log handlers) and it
needs nothing from any of them.

Two layers: exact values registered with `register_secret` (tokens, codes, state,
PKCE verifiers, client secrets) are masked wherever they appear, and common secret
shapes (`Bearer ...`, `access_token=...`, `"refresh_token": "..."`) are masked even when
nobody registered the value.

Every text from a server shown on a terminal goes through `escape_controls`, by one of
three ways: `one_line` (a listing's cell, a form's field: newlines shown as `\\n`),
`escape_lines` (an error or log line: the lines after the first indented) or `wrap` of
an escaped line (cut to the terminal's width, each piece after a prefix). A line that
starts in the first column is then toolscript's own.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata

__all__ = [
    "MASK",
    "RedactingFilter",
    "escape_controls",
    "escape_lines",
    "one_line",
    "redact",
    "register_secret",
    "width_of",
    "wrap",
]

MASK = "[REDACTED]"
_MIN_SECRET_LEN = 4

_SECRET_KEYS = (
    "access_token",
    "refresh_token",
    "id_token",
    "code",
    "state",
    "client_secret",
    "code_verifier",
    "password",
    "token",
    "assertion",
    "client_assertion",
)
_KEYS = "|".join(_SECRET_KEYS)
_PATTERNS = [
    # Authorization: Bearer abc / Basic abc
    (re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + MASK),
    # form or query: access_token=abc&...   (not e.g. "response_type=code")
    (re.compile(rf"(?i)(?<![A-Za-z0-9_])({_KEYS})=([^&\s\"'<>]+)"), r"\1=" + MASK),
    # JSON or repr: "access_token": "abc"  /  'code': 'abc'
    (re.compile(rf"(?i)([\"'])({_KEYS})\1(\s*[:=]\s*)([\"'])(?:(?!\4).)*\4"), r"\1\2\1\3\4" + MASK + r"\4"),
    # keyword style: access_token='abc'
    (re.compile(rf"(?i)(?<![A-Za-z0-9_])({_KEYS})=([\"'])(?:(?!\2).)*\2"), r"\1=\2" + MASK + r"\2"),
]

_lock = threading.Lock()
_secrets: set[str] = set()
_secret_re: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Mask `value` in every log line from now on."""
    global _secret_re
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        # Longest first so a secret containing another is masked whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _secret_re = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str) -> str:
    """Return `text` with registered secrets and secret-shaped values masked."""
    pattern = _secret_re
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for regex, replacement in _PATTERNS:
        text = regex.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter that masks secrets in the message, arguments and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not hide the line, nor leak its args
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


# C0 controls but newline and tab, DEL, and C1 controls: what lets text move the cursor,
# clear the screen, retitle the window or write the clipboard (OSC 52) of a terminal. Then
# the invisible format characters (Unicode category Cf: bidi overrides, zero-width
# characters): they can make text, a URL say, read other than it is.
_CONTROLS = "\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f"
# Every Cf character of Unicode 14 (Python 3.11), as ranges; test_redact checks the list
# against the running Python's Unicode database.
FORMAT_CHARACTERS = (
    "\\u00ad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890-\\u0891\\u08e2\\u180e\\u200b-\\u200f\\u202a-\\u202e"
    "\\u2060-\\u2064\\u2066-\\u206f\\ufeff\\ufff9-\\ufffb\\U000110bd\\U000110cd\\U00013430-\\U00013438"
    "\\U0001bca0-\\U0001bca3\\U0001d173-\\U0001d17a\\U000e0001\\U000e0020-\\U000e007f"
)
_SUSPECTS = re.compile(f"[{_CONTROLS}{FORMAT_CHARACTERS}]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code <= 0x9F:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def escape_controls(text: str) -> str:
    """Return `text` with terminal controls shown as `\\xNN` and invisible format characters as `\\uNNNN`.

    Newline and tab are kept, and so is every other character.
    """
    return _SUSPECTS.sub(_shown, text)


def one_line(text: str) -> str:
    """Return `text` escaped (see `escape_controls`) on one line: newline and tab shown as `\\n` and `\\t`."""
    return escape_controls(text).replace("\n", "\\n").replace("\t", "\\t")


CONTINUED = "    "  # the indent of the lines after the first of an error or log line


def escape_lines(text: str, indent: str = CONTINUED) -> str:
    """Return `text` escaped (see `escape_controls`), every line after the first starting with `indent`.

    What begins a line is then toolscript's own: text that came from a server (an error
    answer, a log notification) can continue a line, never start one that reads as another
    error or prompt. A line already starting with `indent` keeps the indent it has.
    """
    first, *rest = escape_controls(text).split("\n")
    return "\n".join([first, *(line if line.startswith(indent) else indent + line for line in rest)])


def width_of(text: str) -> int:
    """The columns `text` (one line, escaped) takes on a terminal: wide characters two, combining ones none."""
    return sum(_columns(character) for character in text)


def _columns(character: str) -> int:
    if unicodedata.combining(character):
        return 0
    return 2 if unicodedata.east_asian_width(character) in ("W", "F") else 1


def wrap(text: str, prefix: str, width: int | None, next_prefix: str | None = None) -> list[str]:
    """Cut `text` (one line, escaped) into lines of at most `width` columns, the first after `prefix`,
    the others after `next_prefix` (default: `prefix`), so that no cut-off part starts a line of its own
    (a terminal would wrap it to the first column). Without a `width`, one line."""
    next_prefix = prefix if next_prefix is None else next_prefix
    if width is None:
        return [prefix + text]
    # Spaces at the end stay on the last line (the space after a prompt's colon): nothing follows them.
    stripped = text.rstrip(" ")
    lines, line, used = [], prefix, width_of(prefix)
    for character in stripped:
        columns = _columns(character)
        if used + columns > width and line not in (prefix, next_prefix):
            lines.append(line)
            line, used = next_prefix, width_of(next_prefix)
        line += character
        used += columns
    lines.append(line + text[len(stripped) :])
    return lines
