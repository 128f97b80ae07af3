"""A tool's input schema, read for people: describe its arguments, and type `key=value` arguments by it.

It stands apart from the CLI because it is plain JSON Schema reading with no I/O, and
apart from `gateway` because the CLI uses it also through a running gateway, without the
MCP SDK.

`key=value` gives `value` the type the schema asks for (integer, number, boolean, null, or
JSON for arrays and objects; a string otherwise), and `key:=JSON` gives raw JSON, as httpie
does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

if __package__:
    from .errors import UsageError
else:
    from errors import UsageError

__all__ = [
    "MAX_DEPTH",
    "Argument",
    "describe_arguments",
    "is_pair",
    "loads_json",
    "parse_pairs",
    "type_text",
    "typed_arguments",
]

# Arrays and objects nested deeper than this are refused: no tool needs them, and the SDK
# (and Python's own parser, deeper still) fails on them with a traceback instead of an answer.
MAX_DEPTH = 64

_MISSING: Any = object()
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Argument:
    """One argument of a tool, as its input schema describes it."""

    name: str
    type: str
    required: bool
    description: str | None = None
    default: Any = _MISSING

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING


def describe_arguments(schema: dict[str, Any] | None) -> list[Argument]:
    """The arguments of a tool's input schema, in the schema's order."""
    schema = schema or {}
    defs = _defs(schema)
    required = set(schema.get("required") or [])
    arguments = []
    for name, prop in (schema.get("properties") or {}).items():
        prop = _resolve(prop if isinstance(prop, dict) else {}, defs)
        extra = {"default": prop["default"]} if "default" in prop else {}
        description = prop.get("description") or _own_title(str(name), prop.get("title"))
        arguments.append(
            Argument(
                str(name), type_text(prop, defs), name in required, str(description) if description else None, **extra
            )
        )
    return arguments


def type_text(prop: dict[str, Any], defs: dict[str, Any] | None = None) -> str:
    """A property's type in words: `integer`, `string (date)`, `one of: "a", "b"`, `array of string`, ..."""
    defs = defs or {}
    prop = _resolve(prop, defs)
    if "enum" in prop:
        return "one of: " + ", ".join(json.dumps(value) for value in prop["enum"])
    if "const" in prop:
        return f"exactly {json.dumps(prop['const'])}"
    alternatives = prop.get("anyOf") or prop.get("oneOf")
    if isinstance(alternatives, list) and alternatives:
        texts = [type_text(alt, defs) for alt in alternatives if isinstance(alt, dict)]
        return " or ".join(dict.fromkeys(texts))
    kind = prop.get("type")
    if isinstance(kind, list):
        return " or ".join(type_text({**prop, "type": one}, defs) for one in kind)
    if kind == "array":
        items = prop.get("items")
        return f"array of {type_text(items, defs)}" if isinstance(items, dict) and items else "array"
    if kind == "string" and prop.get("format"):
        return f"string ({prop['format']})"
    if kind == "object" and prop.get("title"):
        return f"object ({prop['title']})"
    return str(kind) if kind else "any"


def is_pair(word: str) -> bool:
    """Whether a word of `call`'s ARGS is `key=value` or `key:=JSON` (not a JSON object, @FILE or -)."""
    stripped = word.strip()
    return "=" in word and word != "-" and not word.startswith("@") and not stripped.startswith(("{", "["))


def parse_pairs(words: list[str], tool: str) -> list[tuple[str, bool, str]]:
    """Split `key=value` / `key:=JSON` words into (key, is_json, value)."""
    pairs = []
    seen = set()
    for word in words:
        if not is_pair(word):
            raise UsageError(
                f"'{word}' is not a key=value argument for '{tool}'; give either key=value arguments "
                "or one JSON object (or @FILE, or - for stdin)."
            )
        key, _, value = word.partition("=")
        is_json = key.endswith(":")
        key = key[:-1] if is_json else key
        if not key:
            raise UsageError(f"'{word}' has no name before '='; give arguments as name=value.")
        if key in seen:
            raise UsageError(f"Argument '{key}' is given twice for '{tool}'.")
        seen.add(key)
        pairs.append((key, is_json, value))
    return pairs


def loads_json(text: str) -> Any:
    """Parse JSON given on the command line; raise ValueError (saying why) for bad or too deeply nested JSON."""
    try:
        value = json.loads(text)
    except RecursionError:
        value = _MISSING
    if value is _MISSING or _deeper_than(value, MAX_DEPTH):
        raise ValueError(f"arrays and objects are nested deeper than {MAX_DEPTH} levels")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def typed_arguments(pairs: list[tuple[str, bool, str]], schema: dict[str, Any] | None, tool: str) -> dict[str, Any]:
    """The arguments object of `pairs`, each value typed by the tool's input `schema`."""
    schema = schema or {}
    defs = _defs(schema)
    properties = schema.get("properties") or {}
    arguments: dict[str, Any] = {}
    for key, is_json, text in pairs:
        if is_json:
            try:
                arguments[key] = loads_json(text)
            except ValueError as exc:
                raise UsageError(f"The value of '{key}' for '{tool}' ({key}:=...) is not valid JSON: {exc}.") from None
            continue
        prop = properties.get(key)
        arguments[key] = _typed(key, text, _resolve(prop, defs) if isinstance(prop, dict) else {}, defs, tool)
    return arguments


def _typed(key: str, text: str, prop: dict[str, Any], defs: dict[str, Any], tool: str) -> Any:
    if "enum" in prop:
        for value in prop["enum"]:
            if text == (value if isinstance(value, str) else json.dumps(value)):
                return value
        raise UsageError(f"Argument '{key}' of '{tool}' takes {type_text(prop, defs)}, not {text!r}.")
    kinds = _kinds(prop, defs)
    if not kinds or kinds == {"string"}:
        return text
    for kind in ("integer", "number", "boolean", "null", "array", "object"):
        if kind in kinds:
            value = _convert(kind, text)
            if value is not _MISSING:
                return value
    if "string" in kinds:
        return text
    hint = f" (for JSON, write {key}:='...')" if kinds & {"array", "object"} else ""
    raise UsageError(f"Argument '{key}' of '{tool}' takes {type_text(prop, defs)}, not {text!r}{hint}.")


def _convert(kind: str, text: str) -> Any:
    word = text.strip().lower()
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            return _MISSING
    if kind == "number":
        try:
            number = float(text)
        except ValueError:
            return _MISSING
        return int(number) if number.is_integer() and word.lstrip("+-").isdigit() else number
    if kind == "boolean":
        return True if word in _TRUE else False if word in _FALSE else _MISSING
    if kind == "null":
        return None if word == "null" else _MISSING
    try:
        value = loads_json(text)
    except ValueError:
        return _MISSING
    return value if isinstance(value, list if kind == "array" else dict) else _MISSING


def _own_title(name: str, title: Any) -> str | None:
    """A title that says more than the name (pydantic titles every property after its name)."""
    if not isinstance(title, str) or title.lower().replace(" ", "_") == name.lower():
        return None
    return title


def _kinds(prop: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    """The JSON types a property admits (empty: anything)."""
    prop = _resolve(prop, defs)
    kind = prop.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {str(one) for one in kind}
    kinds: set[str] = set()
    for alternative in prop.get("anyOf") or prop.get("oneOf") or []:
        if isinstance(alternative, dict):
            more = _kinds(alternative, defs)
            if not more:
                return set()
            kinds |= more
    return kinds


def _defs(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.get("$defs") or schema.get("definitions") or {}
    return defs if isinstance(defs, dict) else {}


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` (`#/$defs/Name`), keeping the referring property's own keys."""
    for _ in range(10):  # a cycle of references ends here
        ref = prop.get("$ref")
        if not isinstance(ref, str) or not ref.startswith(("#/$defs/", "#/definitions/")):
            return prop
        target = defs.get(ref.rsplit("/", 1)[-1])
        if not isinstance(target, dict):
            return prop
        prop = {**target, **{k: v for k, v in prop.items() if k != "$ref"}}
    return prop
