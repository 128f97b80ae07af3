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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

if __package__:
    from .redact import one_line, wrap
else:
    from redact import one_line, wrap

__all__ = [
    "ACCEPT",
    "ANSWERED_KEY",
    "CANCEL",
    "DECLINE",
    "DECLINED_KEY",
    "FormField",
    "InputAnswer",
    "InputHandler",
    "InputRequest",
    "PresetAnswers",
    "ask_on_terminal",
    "describe_answer",
    "describe_request",
    "form_fields",
    "preset_answers",
    "prompt_for",
]

ACCEPT, DECLINE, CANCEL = "accept", "decline", "cancel"
# The key of a call's result (and of the HTTP API's answer) that lists the requests declined
# because the call had no way to ask anyone.
DECLINED_KEY = "declinedInputRequests"
# The key that lists the requests answered by `PresetAnswers`, each with what was sent (or why not).
ANSWERED_KEY = "answeredInputRequests"

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
    tool: str  # the request the server was answering: SERVER__TOOL, SERVER__PROMPT or "the read of URI"
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
            parts.append("one of: " + ", ".join(f"{n}) {one_line(label)}" for n, (_, label) in self._numbered()))
        elif self.kind == "choices":
            parts.append(
                "any of: "
                + ", ".join(f"{n}) {one_line(label)}" for n, (_, label) in self._numbered())
                + "; separate with commas"
            )
        elif self.kind == "boolean":
            parts.append("yes/no")
        elif self.kind == "string":
            parts.append(one_line(self.string_format) if self.string_format else "text")
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

    def _numbered(self) -> Iterator[tuple[int, tuple[str, str]]]:
        return enumerate(self.choices, 1)

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


def ask_on_terminal(
    request: InputRequest,
    read_line: Callable[[], str],
    write: Callable[[str], object],
    width: int | None = None,
) -> InputAnswer:
    """Ask the person at a terminal: `read_line` reads one line (empty at end of input), `write` shows text.

    End of input (Ctrl-D) cancels; `!decline` or `!cancel` at any prompt refuses. Every
    line toolscript draws starts in the first column; the server's text is escaped, shown
    on lines of its own under an indent (the message) or after a prefix naming the server
    (each field), and cut to the terminal's `width`, so no line it makes starts in the first
    column: a prompt that does (`SERVER> `) is toolscript's, and names the server that asks.
    """
    prefix = f"{one_line(request.server)}> "

    def show(text: str, first: str, end: str = "\n", cut: bool = True) -> None:
        write("\n".join(wrap(text, first, width if cut else None)) + end)

    write(f"\nServer '{one_line(request.server)}' asks for input (during {one_line(request.tool)}):\n")
    for line in str(request.message).splitlines() or [""]:
        show(one_line(line), _QUOTED)
    if request.mode == "url":
        return _ask_url(request, read_line, show, prefix)
    fields = form_fields(request.requested_schema)
    write(
        f"Enter takes the [default]; {_EMPTY_WORD} leaves an optional field empty; "
        f"{_DECLINE_WORD} or {_CANCEL_WORD} refuses.\n"
    )
    content: dict[str, Any] = {}
    for form_field in fields:
        while True:
            show(prompt_for(form_field), prefix, end="")
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
                write(f"{_QUOTED}A value is required.\n")
                continue
            try:
                content[form_field.name] = form_field.convert(text)
            except ValueError as exc:
                show(f"Not accepted: {one_line(str(exc))}.", _QUOTED)
                continue
            break
    return InputAnswer(ACCEPT, content)


_QUOTED = "  "  # the indent of the server's message, and of what toolscript says about an answer


def _ask_url(
    request: InputRequest, read_line: Callable[[], str], show: Callable[..., None], prefix: str
) -> InputAnswer:
    show("Open this URL in a browser to continue there:\n", "", cut=False)
    url = one_line(request.url or "")
    # Whole, to be copied, unless it has spaces: only then could a piece the terminal wraps read as a line.
    show(url, _QUOTED, end="\n\n", cut=any(character.isspace() for character in url))
    show("Press Enter when you are done there, or type n to decline: ", prefix, end="")
    line = read_line()
    if not line:
        show("", "")
        return InputAnswer(CANCEL)
    word = line.strip().lower()
    if word in ("", "y", "yes", "done"):
        return InputAnswer(ACCEPT)
    return InputAnswer(CANCEL if word in ("c", "cancel", _CANCEL_WORD) else DECLINE)


def prompt_for(form_field: FormField) -> str:
    """The prompt of one field, on one line: its name, what it is and its default (the server's text escaped)."""
    label = one_line(str(form_field.title or form_field.name))
    about = f" - {one_line(str(form_field.description))}" if form_field.description else ""
    default = f" [{one_line(form_field.show(form_field.default))}]" if form_field.has_default else ""
    return f"{label} ({form_field.describe()}){about}{default}: "


def describe_request(request: InputRequest | dict[str, Any]) -> str:
    """One line saying what a server asked, for a note on stderr (accepts `InputRequest.to_dict()` too)."""
    data = request.to_dict() if isinstance(request, InputRequest) else request
    message = one_line(str(data.get("message", "")))
    what = f"Server '{one_line(str(data.get('server')))}' asked for input during {one_line(str(data.get('tool')))}"
    if data.get("mode") == "url":
        return f"{what}: '{message}', to be given at {one_line(str(data.get('url')))}"
    names = [one_line(f.name) for f in form_fields(data.get("requestedSchema"))]
    return f"{what}: '{message}' (fields: {', '.join(names) or 'none'})"


def describe_answer(record: dict[str, Any]) -> str:
    """What was sent for one request answered by `PresetAnswers` (one of its `records`), on one line."""
    if record.get("action") == ACCEPT:
        content = record.get("content")
        sent = f" with {one_line(json.dumps(content, ensure_ascii=False))}" if content is not None else ""
        return f"accepted{sent}"
    return f"declined, as {one_line(str(record.get('reason')))}"


class PresetAnswers:
    """An `InputHandler` for scripts: answers given before the call (`--accept-defaults`, `--answer NAME=VALUE`).

    A form is accepted when each of its required fields is answered, or has a default and
    `accept_defaults` is set; then its answered fields are sent, and with `accept_defaults`
    the defaults of the others. An answer is checked against the field's schema as a typed
    one is; an answer that does not fit, or a required field left unanswered, declines the
    form. URL mode is declined: nobody is there to open the URL. Each request and what was
    sent is kept in `records`, the form `add_to(result)` reports under `ANSWERED_KEY`.
    """

    def __init__(self, answers: dict[str, str] | None = None, *, accept_defaults: bool = False) -> None:
        self.answers = dict(answers or {})
        self.accept_defaults = accept_defaults
        self.records: list[dict[str, Any]] = []

    def __call__(self, request: InputRequest) -> InputAnswer:
        answer, reason = self._decide(request)
        record = {**request.to_dict(), "action": answer.action}
        if answer.action == ACCEPT and request.mode == "form":
            record["content"] = answer.content
        if reason:
            record["reason"] = reason
        self.records.append(record)  # list.append is atomic: concurrent requests may each add theirs
        return answer

    def add_to(self, result: dict[str, Any]) -> dict[str, Any]:
        """`result` with the requests answered so far listed under `ANSWERED_KEY` (if there were any)."""
        if self.records:
            result[ANSWERED_KEY] = list(self.records)
        return result

    def _decide(self, request: InputRequest) -> tuple[InputAnswer, str]:
        if request.mode == "url":
            return InputAnswer(DECLINE), "a URL cannot be opened without a terminal"
        content: dict[str, Any] = {}
        for form_field in form_fields(request.requested_schema):
            if form_field.name in self.answers:
                text = self.answers[form_field.name]
                try:
                    content[form_field.name] = form_field.convert(text.strip())
                except ValueError as exc:
                    return InputAnswer(DECLINE), f"the answer {form_field.name}={text} does not fit: {exc}"
            elif self.accept_defaults and form_field.has_default:
                content[form_field.name] = form_field.default
            elif form_field.required:
                answer_it = f"answer it with --answer {form_field.name}=VALUE"
                if form_field.has_default:  # and no --accept-defaults
                    return InputAnswer(
                        DECLINE
                    ), f"field '{form_field.name}' is required: {answer_it}, or give --accept-defaults"
                return InputAnswer(DECLINE), f"field '{form_field.name}' is required and has no default: {answer_it}"
        return InputAnswer(ACCEPT, content), ""


def preset_answers(pairs: list[str], *, accept_defaults: bool) -> PresetAnswers | None:
    """The `PresetAnswers` of `--answer NAME=VALUE` (repeatable) and `--accept-defaults`; None with neither.

    Raises ValueError, saying which, for a pair without `=` or without a NAME.
    """
    answers: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"an answer is NAME=VALUE, not {pair!r}")
        answers[name] = value
    if not answers and not accept_defaults:
        return None
    return PresetAnswers(answers, accept_defaults=accept_defaults)


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
