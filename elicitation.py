"""What a server asks the user in the middle of a call (MCP elicitation), and asking it on a terminal.

It stands apart from `gateway` because it needs no MCP SDK: the gateway turns each
`elicitation/create` request (or an input request inside an input-required result) into an
`InputRequest` and hands it to the caller's `InputHandler`; the CLI's handler is
`ask_on_terminal` over stdin and stderr. A call without a handler (scripts, CI, the HTTP
API) has every request declined at once, and the request is reported with the result.

Form mode asks field by field, showing each field's type, choices and default; Enter takes
the default (as SEP-1034 of the 2025-11-25 specification expects); every answer is checked
against the requested schema before it is sent. URL mode prints the URL and waits for the
person to say they are done there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

if __package__:
    from .redact import escape_controls
else:
    from redact import escape_controls

__all__ = [
    "ACCEPT",
    "CANCEL",
    "DECLINE",
    "DECLINED_KEY",
    "FormField",
    "InputAnswer",
    "InputHandler",
    "InputRequest",
    "ask_on_terminal",
    "describe_request",
    "form_fields",
    "prompt_for",
]

ACCEPT, DECLINE, CANCEL = "accept", "decline", "cancel"
# The key of a call's result (and of the HTTP API's answer) that lists the requests declined
# because the call had no way to ask anyone.
DECLINED_KEY = "declinedInputRequests"

_MISSING: Any = object()
_DECLINE_WORD, _CANCEL_WORD, _EMPTY_WORD = "!decline", "!cancel", "-"
_TRUE = {"y", "yes", "true", "1", "on"}
_FALSE = {"n", "no", "false", "0", "off"}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})?$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


@dataclass(frozen=True)
class InputRequest:
    """One request of a server for input from the user, made during the call of `tool`.

    `mode` is "form" (answer `requested_schema`, a flat JSON Schema object) or "url" (open
    `url`, outside toolscript, and say when done).
    """

    server: str
    tool: str  # SERVER__TOOL of the call the server was answering
    mode: str
    message: str
    requested_schema: dict[str, Any] | None = None
    url: str | None = None
    elicitation_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The request as reported in a result's `declinedInputRequests`."""
        data: dict[str, Any] = {"server": self.server, "tool": self.tool, "mode": self.mode, "message": self.message}
        if self.mode == "url":
            data["url"] = self.url
        else:
            data["requestedSchema"] = self.requested_schema or {}
        return data


@dataclass(frozen=True)
class InputAnswer:
    """The user's answer: `action` is accept, decline or cancel; `content` the form's values when accepted."""

    action: str
    content: dict[str, Any] | None = None


InputHandler = Callable[[InputRequest], InputAnswer]
"""Asks the user (blocking; the gateway runs it in a thread of its own) and returns the answer."""


@dataclass(frozen=True)
class FormField:
    """One field of a form-mode request, read from its property in the requested schema."""

    name: str
    kind: str  # string, integer, number, boolean, choice, choices (several), json (anything else)
    required: bool
    title: str | None = None
    description: str | None = None
    default: Any = _MISSING
    choices: tuple[tuple[str, str], ...] = ()  # (value, label)
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None  # characters of a string, items of a multiple choice
    max_length: int | None = None
    string_format: str | None = None

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING

    def describe(self) -> str:
        """The field's type and limits, for a prompt: `integer, 1 to 20`, `one of: 1) a, 2) b`."""
        parts = []
        if self.kind == "choice":
            parts.append("one of: " + ", ".join(f"{n}) {label}" for n, (_, label) in enumerate(self.choices, 1)))
        elif self.kind == "choices":
            parts.append(
                "any of: "
                + ", ".join(f"{n}) {label}" for n, (_, label) in enumerate(self.choices, 1))
                + "; separate with commas"
            )
        elif self.kind == "boolean":
            parts.append("yes/no")
        elif self.kind == "string":
            parts.append(self.string_format or "text")
        else:
            parts.append(self.kind)
        numeric = self.kind in ("integer", "number")
        low, high = (self.minimum, self.maximum) if numeric else (self.min_length, self.max_length)
        unit = "" if numeric else ("choice" if self.kind == "choices" else "character")
        if low is not None and high is not None:
            parts.append(f"{_number(low)} to {_count(high, unit)}")
        elif low is not None:
            parts.append(f"at least {_count(low, unit)}")
        elif high is not None:
            parts.append(f"at most {_count(high, unit)}")
        if self.required:
            parts.append("required")
        return ", ".join(parts)

    def show(self, value: Any) -> str:
        """A value of this field as the user would type it."""
        if self.kind == "boolean":
            return "yes" if value else "no"
        if self.kind == "choices" and isinstance(value, list):
            return ", ".join(str(item) for item in value)
        if self.kind == "json":
            return json.dumps(value)
        return str(value)

    def convert(self, text: str) -> Any:
        """Turn what the user typed into the field's value; raise ValueError saying what is wrong."""
        if self.kind == "boolean":
            word = text.lower()
            if word in _TRUE or word in _FALSE:
                return word in _TRUE
            raise ValueError("answer yes or no")
        if self.kind in ("integer", "number"):
            try:
                value: Any = int(text) if self.kind == "integer" else float(text)
            except ValueError:
                raise ValueError(f"give {'a whole number' if self.kind == 'integer' else 'a number'}") from None
            if self.kind == "number" and value.is_integer() and "." not in text and "e" not in text.lower():
                value = int(value)
            self.check(value)
            return value
        if self.kind == "choice":
            return self._choice(text)
        if self.kind == "choices":
            values = [self._choice(part.strip()) for part in text.split(",") if part.strip()]
            self.check(values)
            return values
        if self.kind == "json":
            try:
                return json.loads(text)
            except ValueError:
                raise ValueError("give a JSON value") from None
        self.check(text)
        return text

    def check(self, value: Any) -> None:
        """Raise ValueError unless `value` meets the field's limits."""
        if self.kind in ("integer", "number"):
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"give at least {_number(self.minimum)}")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"give at most {_number(self.maximum)}")
        elif self.kind in ("string", "choices"):
            unit = "character" if self.kind == "string" else "choice"
            if self.min_length is not None and len(value) < self.min_length:
                raise ValueError(f"give at least {_count(self.min_length, unit)}")
            if self.max_length is not None and len(value) > self.max_length:
                raise ValueError(f"give at most {_count(self.max_length, unit)}")
            if self.kind == "string" and self.string_format:
                _check_format(self.string_format, value)

    def _choice(self, text: str) -> str:
        if text.isdigit() and 1 <= int(text) <= len(self.choices):
            return self.choices[int(text) - 1][0]
        for value, label in self.choices:
            if text in (value, label) or text.lower() in (value.lower(), label.lower()):
                return value
        raise ValueError(f"choose one of {', '.join(value for value, _ in self.choices)} (or its number)")


def form_fields(schema: dict[str, Any] | None) -> list[FormField]:
    """The fields of a form-mode requested schema, in the server's order."""
    schema = schema or {}
    required = set(schema.get("required") or [])
    fields = []
    for name, prop in (schema.get("properties") or {}).items():
        prop = prop if isinstance(prop, dict) else {}
        fields.append(_field(str(name), prop, name in required))
    return fields


def _field(name: str, prop: dict[str, Any], required: bool) -> FormField:
    common: dict[str, Any] = {
        "name": name,
        "required": required,
        "title": _text(prop.get("title")),
        "description": _text(prop.get("description")),
    }
    if "default" in prop:
        common["default"] = prop["default"]
    kind = prop.get("type")
    if kind == "string" and (prop.get("enum") or prop.get("oneOf")):
        return FormField(kind="choice", choices=_choices(prop), **common)
    if kind == "array" and isinstance(prop.get("items"), dict):
        items = prop["items"]
        if items.get("enum") or items.get("anyOf") or items.get("oneOf"):
            return FormField(
                kind="choices",
                choices=_choices(items),
                min_length=_int(prop.get("minItems")),
                max_length=_int(prop.get("maxItems")),
                **common,
            )
    if kind in ("integer", "number"):
        return FormField(kind=kind, minimum=_float(prop.get("minimum")), maximum=_float(prop.get("maximum")), **common)
    if kind == "boolean":
        return FormField(kind="boolean", **common)
    if kind == "string":
        return FormField(
            kind="string",
            min_length=_int(prop.get("minLength")),
            max_length=_int(prop.get("maxLength")),
            string_format=_text(prop.get("format")),
            **common,
        )
    return FormField(kind="json", **common)


def _choices(prop: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    if prop.get("enum"):
        names = prop.get("enumNames") or []
        return tuple(
            (str(value), str(names[n]) if n < len(names) else str(value)) for n, value in enumerate(prop["enum"])
        )
    options = prop.get("oneOf") or prop.get("anyOf") or []
    return tuple(
        (str(option.get("const")), str(option.get("title") or option.get("const")))
        for option in options
        if isinstance(option, dict) and "const" in option
    )


def ask_on_terminal(request: InputRequest, read_line: Callable[[], str], write: Callable[[str], object]) -> InputAnswer:
    """Ask the person at a terminal: `read_line` reads one line (empty at end of input), `write` shows text.

    End of input (Ctrl-D) cancels; `!decline` or `!cancel` at any prompt refuses.
    """
    write(f"\nServer '{request.server}' asks for input (during {request.tool}):\n")
    for line in escape_controls(str(request.message)).splitlines() or [""]:
        write(f"  {line}\n")
    if request.mode == "url":
        return _ask_url(request, read_line, write)
    fields = form_fields(request.requested_schema)
    write(
        f"Enter takes the [default]; {_EMPTY_WORD} leaves an optional field empty; "
        f"{_DECLINE_WORD} or {_CANCEL_WORD} refuses.\n"
    )
    content: dict[str, Any] = {}
    for form_field in fields:
        while True:
            write(prompt_for(form_field))
            line = read_line()
            if not line:  # end of input
                write("\n")
                return InputAnswer(CANCEL)
            text = line.strip()
            if text in (_DECLINE_WORD, _CANCEL_WORD):
                return InputAnswer(DECLINE if text == _DECLINE_WORD else CANCEL)
            if not text and form_field.has_default:
                content[form_field.name] = form_field.default
                break
            if (not text or text == _EMPTY_WORD) and not form_field.required:
                break
            if not text:
                write("  A value is required.\n")
                continue
            try:
                content[form_field.name] = form_field.convert(text)
            except ValueError as exc:
                write(f"  Not accepted: {exc}.\n")
                continue
            break
    return InputAnswer(ACCEPT, content)


def _ask_url(request: InputRequest, read_line: Callable[[], str], write: Callable[[str], object]) -> InputAnswer:
    write(f"Open this URL in a browser to continue there:\n\n  {escape_controls(request.url or '')}\n\n")
    write("Press Enter when you are done there, or type n to decline: ")
    line = read_line()
    if not line:
        write("\n")
        return InputAnswer(CANCEL)
    word = line.strip().lower()
    if word in ("", "y", "yes", "done"):
        return InputAnswer(ACCEPT)
    return InputAnswer(CANCEL if word in ("c", "cancel", _CANCEL_WORD) else DECLINE)


def prompt_for(form_field: FormField) -> str:
    """The prompt line of one field: its name, what it is and its default."""
    label = escape_controls(str(form_field.title or form_field.name))
    about = f" - {escape_controls(str(form_field.description))}" if form_field.description else ""
    default = f" [{escape_controls(str(form_field.show(form_field.default)))}]" if form_field.has_default else ""
    return f"  {label} ({form_field.describe()}){about}{default}: "


def describe_request(request: InputRequest | dict[str, Any]) -> str:
    """One line saying what a server asked, for a note on stderr (accepts `InputRequest.to_dict()` too)."""
    data = request.to_dict() if isinstance(request, InputRequest) else request
    message = escape_controls(str(data.get("message", ""))).replace("\n", " ")
    what = f"Server '{data.get('server')}' asked for input during {data.get('tool')}"
    if data.get("mode") == "url":
        return f"{what}: {message!r}, to be given at {escape_controls(str(data.get('url')))}"
    names = [f.name for f in form_fields(data.get("requestedSchema"))]
    return f"{what}: {message!r} (fields: {', '.join(names) or 'none'})"


def _check_format(string_format: str, value: str) -> None:
    pattern = {"email": _EMAIL, "date": _DATE, "date-time": _DATE_TIME, "uri": _URI}.get(string_format)
    if pattern is not None and not pattern.match(value):
        raise ValueError(f"give a valid {string_format}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _count(value: float, unit: str) -> str:
    """`value` with its unit, if any: `1 character`, `3 choices`, `2.5`."""
    if not unit:
        return _number(value)
    return f"{_number(value)} {unit}{'' if value == 1 else 's'}"


def _text(value: Any) -> str | None:
    return str(value) if value is not None else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
