"""Rank the tools of many servers by how well they fit a query (`toolscript search`).

It stands alone because ranking is a concern of its own, with no part in connecting to servers:
it reads tool rows (as `Gateway.tools()` returns them) and knows nothing of sessions, so the
gateway, the HTTP API, the CLI and the benchmark share one ranker, and it imports nothing
beyond the standard library.

The ranker is BM25F (one saturation over fields weighted by how much a word in them says:
the tool's name, split on `_`, `-`, `.` and camelCase, counts most, then its title, its
description, its parameters' names and descriptions, its server's name), over words lightly
stemmed, with a query's words widened by a small table of the words people use for the same
thing ("open a bug" finds `create_issue`) and, for a word no tool uses, by the tool words
within one or two typos of it. A tool matching more of the query's words ranks higher than one
matching a single word many times.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

__all__ = ["IndexCache", "ToolIndex", "one_line", "tokenize"]

# Fields: (weight, length normalisation b).
_FIELDS: dict[str, tuple[float, float]] = {
    "name": (3.0, 0.3),
    "title": (2.0, 0.3),
    "description": (1.0, 0.75),
    "parameters": (0.5, 0.5),
    "server": (1.0, 0.0),
}
_K1 = 1.2
_SYNONYM_WEIGHT = 0.7
_TYPO_WEIGHT = 0.75
_COMPOUND_WEIGHT = 0.6  # in each of the compound's two words' slots
_NAME_COVERAGE = 1.0
_COVERAGE_EXPONENT = 0.5
_DESCRIPTION_CHARS = 160
_MAX_QUERY_WORDS = 64  # the words after these do not count (a query's time grows with its words)

_STOPWORDS = frozenset(
    """a an the to of in on for with by from at as and or into onto via is are be been was were it its
    this that these those there here i me my mine we our you your yours he she they them their his her
    do does did can could should would will shall may might must please want need like just some any
    all every each what which who whom whose when where how why about up out over so than then too
    very also using use tool tools let lets s t d m ll re ve""".split()  # noqa: SIM905 (words read better as text)
)

# Words people use for the same thing. Each group lists words and two-word phrases; a query's word
# (or phrase) in a group also finds the group's other members, weighted below the word itself.
_GROUPS: tuple[tuple[str, ...], ...] = (
    ("create", "new", "add", "make", "open", "start", "generate", "provision", "spin", "launch", "post", "insert"),
    ("delete", "remove", "drop", "destroy", "erase", "forget", "purge", "unregister", "rm", "trash"),
    ("list", "show", "enumerate", "ls", "browse"),
    ("get", "read", "fetch", "retrieve", "open", "load", "view", "show", "see", "look", "cat", "detail", "describe"),
    ("search", "find", "query", "lookup", "look up", "locate", "grep", "seek", "discover", "filter"),
    ("update", "edit", "modify", "change", "patch", "set", "alter", "reconfigure", "configure", "upsert"),
    ("write", "save", "store", "put", "overwrite", "persist"),
    ("issue", "bug", "ticket", "problem", "defect", "bug report"),
    ("pull request", "pr", "merge request", "mr"),
    ("file", "document", "doc"),
    ("directory", "folder", "dir"),
    ("memory", "remember", "recall", "memorize", "knowledge", "graph", "entity", "observation", "fact"),
    ("time", "clock", "hour", "o'clock"),
    ("current", "now", "present", "today"),
    ("timezone", "time zone", "zone", "tz"),
    ("commit", "history", "log", "revision", "changeset"),
    ("repository", "repo"),
    ("user", "person", "people", "member", "account", "login", "identity"),
    ("comment", "reply", "remark", "feedback"),
    ("review", "approve", "approval"),
    ("merge", "land", "integrate"),
    ("navigate", "go", "visit", "url", "website", "site", "goto", "open"),
    ("screenshot", "picture", "image", "photo", "capture", "snapshot"),
    ("click", "press", "tap", "hit"),
    ("type", "enter", "input", "fill"),
    ("key", "keyboard", "keystroke"),
    ("run", "execute", "trigger", "invoke", "evaluate", "eval", "start"),
    ("javascript", "js", "script"),
    ("vm", "virtual machine", "server", "instance", "host", "computer", "machine"),
    ("kubernetes", "k8s", "aks"),
    ("database", "db", "sql"),
    ("secret", "password", "credential", "token", "passphrase"),
    ("email", "mail", "e-mail"),
    ("sms", "text message", "text"),
    ("send", "deliver", "notify", "publish"),
    ("price", "pricing", "cost", "billing", "expensive", "cheap"),
    ("speech", "voice", "audio", "speak", "tts", "transcribe", "spoken"),
    ("access", "permission", "role", "rbac", "allowed", "allow"),
    ("compress", "gzip", "zip", "archive"),
    ("environment", "env", "variable", "var"),
    ("sum", "total", "plus", "calculate", "arithmetic"),
    ("echo", "repeat", "parrot"),
    ("size", "big", "large", "bytes", "bigger"),
    ("info", "information", "metadata", "stat", "detail", "properties"),
    ("move", "rename", "relocate"),
    ("tree", "recursive", "structure", "hierarchy", "recursively"),
    ("stage", "index"),
    ("unstage", "reset", "undo"),
    ("switch", "checkout", "check out"),
    ("status", "state", "health", "healthy"),
    ("diff", "difference", "changes", "compare", "delta", "changed"),
    ("upload", "push"),
    ("download", "export"),
    ("log", "logs", "trace"),
    ("metric", "metrics", "cpu", "telemetry"),
    ("window", "viewport", "resize"),
    ("dialog", "alert", "popup", "pop-up", "confirm"),
    ("dropdown", "select", "option", "choose", "pick", "combobox"),
    ("tab", "tabs"),
    ("hover", "mouse over", "mouseover"),
    ("wait", "until", "appear", "sleep", "pause"),
    ("emulate", "dark mode", "dark", "theme", "color scheme"),
    ("console", "devtools"),
    ("network", "traffic"),
    ("ask", "elicit", "elicitation", "question", "prompt"),
    ("relation", "relationship", "link", "connect", "associate", "edge"),
    ("back", "previous"),
    ("close", "quit", "exit", "shut"),
    ("fork", "copy", "clone"),
    ("build", "ci", "pipeline", "checks"),
    ("artifact", "artifacts", "binary"),
    ("work item", "story", "user story", "task", "epic"),
    ("iteration", "sprint"),
    ("alert", "vulnerability", "security", "advisory"),
    ("storage", "blob", "bucket"),
    ("certificate", "cert", "pfx", "pem", "tls", "ssl"),
    ("firewall", "ip"),
    ("markdown", "md"),
    ("page", "webpage", "web page"),
    ("workspace", "tenant", "organization", "org"),
    ("subscription", "account"),
    ("speech", "text-to-speech", "speech-to-text", "recognize"),
)

# Single words that stand for two-word tool words ("mkdir" is "create directory").
_SHORTHANDS: dict[str, tuple[str, ...]] = {
    "mkdir": ("create", "directory"),
    "ls": ("list", "directory"),
    "cat": ("read", "file"),
    "stat": ("file", "info"),
    "pr": ("pull", "request"),
    "mr": ("pull", "request"),
    "vm": ("virtual", "machine"),
    "vms": ("virtual", "machine"),
    "tts": ("text", "speech"),
    "stt": ("speech", "recognize"),
    "k8s": ("kubernetes", "cluster"),
}

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_WORD = re.compile(r"[A-Za-z0-9]+")


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    """A light stemmer: plurals, -ing, -ed, -ation and a final -e, so that forms of one word meet."""
    if len(word) <= 3 or word.isdigit():
        return word
    for suffix, replacement in (("ies", "y"), ("sses", "ss"), ("xes", "x"), ("ches", "ch"), ("shes", "sh")):
        if word.endswith(suffix) and len(word) > len(suffix) + 1:
            word = word[: -len(suffix)] + replacement
            break
    else:
        if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
            word = word[:-1]
    for suffix in ("ations", "ation", "ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            stem = word[: -len(suffix)]
            if len(stem) >= 4 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
                stem = stem[:-1]  # running -> run, committed -> commit
            if suffix == "ed" and stem.endswith("i"):
                stem = stem[:-1] + "y"  # copied -> copy
            word = stem
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def _words(text: str) -> list[str]:
    """The lower-case words of `text`, names split on `_`, `-`, `.` and camelCase."""
    words = []
    for word in _WORD.findall(text):
        if word.islower() or word.isupper() or word[1:].islower() or word.isdigit():
            words.append(word.lower())  # most words: no camelCase to split (the split is slow on long text)
        else:
            words.extend(_CAMEL.sub(" ", word).lower().split())
    return words


def tokenize(text: str) -> list[str]:
    """The stemmed words of `text` (names split on `_`, `-`, `.` and camelCase), without stop words."""
    return [_stem(word) for word in _words(text) if word not in _STOPWORDS]


def one_line(text: str, limit: int = _DESCRIPTION_CHARS) -> str:
    """The first non-empty line of `text`, its whitespace collapsed, cut to `limit` characters."""
    for line in text.splitlines():
        line = " ".join(line.split())
        if line:
            return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"
    return ""


def _parameter_text(schema: Any) -> str:
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return ""
    parts = []
    for name, spec in schema["properties"].items():
        parts.append(str(name))
        if isinstance(spec, dict) and isinstance(spec.get("description"), str):
            parts.append(spec["description"][:300])
    return " ".join(parts)


def _osa_distance(a: str, b: str, limit: int) -> int:
    """Edit distance with adjacent transpositions, or `limit + 1` once it exceeds `limit`."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            value = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                value = min(value, previous2[j - 2] + 1)
            current[j] = value
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]


def _deletions(word: str) -> set[str]:
    """`word` with one letter left out, every way."""
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


def _concept(group: int) -> str:
    return f"#{group}"  # no word has a "#": a concept never meets a word


def _build_concepts() -> tuple[dict[str, list[str]], dict[tuple[str, str], list[str]]]:
    """Each stemmed word, and each stemmed two-word phrase, -> the concepts (groups) it belongs to."""
    words: dict[str, list[str]] = defaultdict(list)
    phrases: dict[tuple[str, str], list[str]] = defaultdict(list)
    for number, group in enumerate(_GROUPS):
        for member in group:
            stems = [_stem(word) for word in _words(member)]
            if len(stems) == 1:
                words[stems[0]].append(_concept(number))
            elif len(stems) == 2:
                phrases[(stems[0], stems[1])].append(_concept(number))
    return dict(words), dict(phrases)


_WORD_CONCEPTS, _PHRASE_CONCEPTS = _build_concepts()
_TABLE_WORDS = frozenset(word for group in _GROUPS for member in group for word in _words(member))
_SHORTHAND_STEMS = {word: tuple(_stem(part) for part in parts) for word, parts in _SHORTHANDS.items()}

Expansion = tuple[tuple[str, ...], float]


def _terms(words: list[str], *, concepts: bool = True) -> list[str]:
    """The index terms of a field's words: their stems (stop words left out) and the concepts they name."""
    stems = [_stem(word) for word in words]
    terms = [stem for word, stem in zip(words, stems, strict=True) if word not in _STOPWORDS]
    if not concepts:
        return terms
    for stem in stems:
        terms.extend(_WORD_CONCEPTS.get(stem, ()))
    for pair in itertools.pairwise(stems):
        terms.extend(_PHRASE_CONCEPTS.get(pair, ()))
    return terms


class ToolIndex:
    """An index of tool rows, built once, answering `search` without touching the rows again."""

    def __init__(self, tools: Iterable[dict[str, Any]]) -> None:
        self._rows: list[dict[str, Any]] = []
        # Each tool's name words, each with the concepts it names: how much of its name a query covers.
        self._names: list[list[frozenset[str]]] = []
        field_lengths: dict[str, list[int]] = {field: [] for field in _FIELDS}
        field_counts: list[dict[str, Counter[str]]] = []
        surface: set[str] = set()
        for tool in tools:
            texts = {
                "name": str(tool.get("tool") or tool.get("name") or ""),
                "title": str(tool.get("title") or ""),
                "description": str(tool.get("description") or ""),
                "parameters": _parameter_text(tool.get("inputSchema")),
                "server": str(tool.get("server") or ""),
            }
            counts: dict[str, Counter[str]] = {}
            for field, text in texts.items():
                # Parameters are mostly the same few options on every tool of a server: words, not concepts.
                words = _words(text)
                terms = _terms(words, concepts=field != "parameters")
                surface.update(words)
                field_lengths[field].append(sum(not term.startswith("#") for term in terms))
                counts[field] = Counter(terms)
            field_counts.append(counts)
            self._names.append([frozenset([stem, *_WORD_CONCEPTS.get(stem, ())]) for stem in tokenize(texts["name"])])
            self._rows.append(
                {
                    "name": str(tool.get("name") or ""),
                    "server": texts["server"],
                    "description": one_line(texts["description"] or texts["title"]),
                }
            )
        averages = {
            field: (sum(lengths) / len(lengths) or 1.0) if lengths else 1.0 for field, lengths in field_lengths.items()
        }
        # term -> doc -> BM25F score of that term in that doc (idf included): a query only adds these up.
        weighted: dict[str, dict[int, float]] = defaultdict(dict)
        for doc, counts in enumerate(field_counts):
            for field, per_term in counts.items():
                weight, b = _FIELDS[field]
                norm = 1 - b + b * field_lengths[field][doc] / averages[field]
                for term, count in per_term.items():
                    postings = weighted[term]
                    postings[doc] = postings.get(doc, 0.0) + weight * count / norm
        total = len(self._rows)
        self._postings: dict[str, dict[int, float]] = {}
        for term, postings in weighted.items():
            idf = math.log(1 + (total - len(postings) + 0.5) / (len(postings) + 0.5))
            self._postings[term] = {doc: idf * tf * (_K1 + 1) / (tf + _K1) for doc, tf in postings.items()}
        # Typo tolerance works on the words as written (a stem can hide a typo: "isue" -> "isu"): each
        # word, and each word with one letter left out, leads to the word.
        self._by_deletion: dict[str, list[str]] = defaultdict(list)
        self._surface = frozenset(surface)
        for word in surface | _TABLE_WORDS:
            if len(word) >= 3 and word.isalpha():
                for key in {word, *_deletions(word)}:
                    self._by_deletion[key].append(word)

    def __len__(self) -> int:
        return len(self._rows)

    def search(self, query: str, limit: int = 5, *, server: str | None = None) -> list[dict[str, Any]]:
        """The `limit` tools that fit `query` best, best first: `{name, server, description, score}`.

        Tools that match none of the query's words are left out; with `server`, only its tools. Only
        the query's first 64 words (stop words aside) count.
        """
        slots = self._slots(query)[:_MAX_QUERY_WORDS]
        if not slots or limit <= 0:
            return []
        scores: dict[int, float] = defaultdict(float)
        matched: dict[int, int] = defaultdict(int)
        for expansions in slots:
            best: dict[int, float] = {}
            for terms, weight in expansions:
                for doc, score in self._phrase_scores(terms).items():
                    score *= weight
                    if score > best.get(doc, 0.0):
                        best[doc] = score
            for doc, score in best.items():
                scores[doc] += score
                matched[doc] += 1
        wanted = {term for expansions in slots for terms, _ in expansions for term in terms}
        ranked: list[tuple[float, int]] = []
        # Best sum first; the factors below at most double it, so once a sum doubled cannot reach
        # the `limit`-th final score, no later one can.
        for doc, score in sorted(scores.items(), key=lambda item: (-item[1], item[0])):
            if len(ranked) >= limit and score * (1 + _NAME_COVERAGE) < ranked[limit - 1][0]:
                break
            if server is not None and self._rows[doc]["server"] != server:
                continue
            name = self._names[doc]
            # How much of the query the tool matches, and how much of the tool's name the query names.
            coverage = (matched[doc] / len(slots)) ** _COVERAGE_EXPONENT
            covered = sum(not word.isdisjoint(wanted) for word in name) / len(name) if name else 0.0
            ranked.append((score * coverage * (1 + _NAME_COVERAGE * covered), doc))
            ranked.sort(key=lambda item: (-item[0], item[1]))
            del ranked[limit:]
        return [{**self._rows[doc], "score": round(score, 3)} for score, doc in ranked]

    def _phrase_scores(self, terms: tuple[str, ...]) -> dict[int, float]:
        """Per doc, the mean score of `terms` (all of them must occur in it for a phrase)."""
        if len(terms) == 1:
            return self._postings.get(terms[0], {})
        postings = [self._postings.get(term, {}) for term in terms]
        docs = set(postings[0]).intersection(*postings[1:])
        return {doc: sum(p[doc] for p in postings) / len(terms) for doc in docs}

    def _slots(self, query: str) -> list[list[Expansion]]:
        """One slot per query word: the terms it may match, each with its weight."""
        words = _words(query)
        stems = [_stem(word) for word in words]
        slots: list[list[Expansion]] = []
        for i, (word, stem) in enumerate(zip(words, stems, strict=True)):
            if word in _STOPWORDS or word.isdigit():  # a number is a value for the tool, not what it does
                continue
            expansions: list[Expansion] = [((stem,), 1.0)]
            if word in _SHORTHAND_STEMS:
                expansions.append((_SHORTHAND_STEMS[word], 1.0))
            concepts = list(_WORD_CONCEPTS.get(stem, ()))
            for pair in ((stems[i - 1], stem), (stem, stems[i + 1] if i + 1 < len(stems) else "")):
                concepts.extend(_PHRASE_CONCEPTS.get(pair, ()))
            expansions.extend(((concept,), _SYNONYM_WEIGHT) for concept in dict.fromkeys(concepts))
            pairs = (words[i - 1] + word if i else "", word + words[i + 1] if i + 1 < len(words) else "")
            for compound in (_stem(pair) for pair in pairs if pair):
                if compound in self._postings:
                    expansions.append(((compound,), _COMPOUND_WEIGHT))  # "key vault" finds "keyvault"
            if stem not in self._postings and not concepts and word not in _SHORTHAND_STEMS:
                for near in self._near_words(word):  # a tool's word, or a word of the table ("remembr")
                    expansions.append(((near,), _TYPO_WEIGHT))
                    concepts = () if near in self._postings else _WORD_CONCEPTS.get(near, ())
                    expansions.extend(((concept,), _TYPO_WEIGHT * _SYNONYM_WEIGHT) for concept in concepts)
            slots.append(expansions)
        return slots

    def _near_words(self, word: str) -> list[str]:
        """The stems of the indexed words within one typo (two for long words) of `word`.

        Candidates share a key with `word` (each with at most one letter left out, `word` with two
        when it is long): every word one edit away, and most two edits away, then checked exactly.
        """
        if len(word) < 4 or not word.isalpha():
            return []
        limit = 1 if len(word) <= 5 else 2
        keys = {word, *_deletions(word)}
        if limit == 2:
            keys.update(shorter for key in list(keys) for shorter in _deletions(key))
        candidates = {candidate for key in keys for candidate in self._by_deletion.get(key, ())}
        found: list[tuple[float, str]] = []
        for candidate in candidates:
            distance = _osa_distance(word, candidate, limit)
            if distance <= limit:
                # Typos rarely hit the first letter; a word the tools use is likelier meant than one of the table.
                penalty = 0.5 * (candidate[0] != word[0]) + 0.25 * (candidate not in self._surface)
                found.append((distance + penalty, candidate))
        if not found:
            return []
        closest = min(distance for distance, _ in found)
        return sorted({_stem(candidate) for distance, candidate in found if distance == closest})


class IndexCache:
    """The `ToolIndex` of each tool list, kept until one of the lists it was built from is replaced.

    `versions` are the objects a tool list is made from (e.g. each server's tool dict), which their
    owner replaces, never changes in place, when the list changes: an index is good while every
    one of them is the very object it was built from.
    """

    def __init__(self) -> None:
        self._entries: dict[Any, tuple[tuple[object, ...], ToolIndex]] = {}

    def get(self, key: Any, versions: Sequence[object]) -> ToolIndex | None:
        """The index stored for `key` if it was built from `versions`, else None."""
        entry = self._entries.get(key)
        if entry is None or len(entry[0]) != len(versions):
            return None
        return entry[1] if all(a is b for a, b in zip(entry[0], versions, strict=True)) else None

    def put(self, key: Any, versions: Sequence[object], index: ToolIndex) -> None:
        """Keep `index`, built from `versions`, for `key` (in place of the one before)."""
        self._entries[key] = (tuple(versions), index)
