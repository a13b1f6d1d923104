"""Deterministic instances of a JSON schema whose free strings are made of the request's own words.

Covers what pydantic v2's `model_json_schema()` emits: object/array/string/integer/number/boolean/null,
properties, required, additionalProperties, `$defs` + `$ref`, anyOf/oneOf/allOf, enum, const, string
formats, min/maxLength, min/maxItems, prefixItems, uniqueItems, (exclusive) minimum/maximum, multipleOf.
A string with `contentMediaType: text/x-python` is a small runnable Python script (a comment of the
request's words and a computation with a passing assert). `pattern` is not honoured. Every choice is a
hash of (seed, JSON path) or follows from the order of the fields, so one request always gets one answer.

Free strings are labelled windows of 8-40 of the request's words (fewer for short requests), read from its
words reordered as every other word, then the ones in between, then all backwards (so no answer copies five
consecutive words of its prompt); the free strings of one answer take consecutive windows (so an answer does
not repeat its instruction). A top-level `text` (a transformed or edited passage) has 25-35% of the request's
words, as long as a rewrite. With a junk mode (standin/junk.py) free strings are junk instead.

An object's `answer_key` (a multiple-choice key) is a hash of the item's `options`, or of the options the
prompt lists as `A. text` lines: the stand-in's author of an item and an independent checker shown its
options agree, by convention, not by reasoning.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import re
import uuid
from typing import Any

from agentinstruct_dagster.standin.junk import junk_text, restated

LABEL = "[stand-in] "
MIN_WORDS, MAX_WORDS = 8, 40
TEXT_PATH = "$.text"
TEXT_SHARE = (0.25, 0.35)  # words of a top-level `text` per request word
WINDOWS_PER_POOL = 12  # a window has at most 1/12 of the pool's words (unless that is below MIN_WORDS)
DEFAULT_ITEMS = (1, 3)
TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
# Below this depth optional parts are left out, so recursive schemas (trees, linked lists) end.
SHALLOW_DEPTH = 6
MAX_DEPTH = 64
EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
# A multiple-choice answer's key field, and its options as a prompt lists them ("A. text").
ANSWER_KEY = "answer_key"
LETTERED = re.compile(r"^([A-Z])\. (.+)$", re.MULTILINE)


class SchemaError(ValueError):
    """The schema has no instance the stand-in can build (unknown type, bad `$ref`, empty range, ...)."""


def _hash(seed: str, path: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\x1f{path}".encode()).digest()[:8], "big")


def window_size(seed: str, path: str) -> int:
    return MIN_WORDS + _hash(seed, path) % (MAX_WORDS - MIN_WORDS + 1)


def interleaved(words: list[str]) -> list[str]:
    """Every other word, then the words in between, then those backwards: what windows are read from."""
    pool = words or ["text"]
    order = pool[::2] + pool[1::2]
    return order + order[::-1]


def window(pool: list[str], start: int, count: int) -> str:
    """A label and `count` words of `pool` from `start`, wrapping around."""
    return LABEL + " ".join(pool[(start + index) % len(pool)] for index in range(count))


def fitted(text: str, length: tuple[int, int | None]) -> str:
    """`text` repeated up to the minimum and cut to the maximum number of characters."""
    min_length, max_length = length
    while len(text) < min_length:
        text += " " + text
    return text if max_length is None else text[:max_length]


def words_text(words: list[str], seed: str, path: str, length: tuple[int, int | None] = (0, None)) -> str:
    """A labelled window of 8–40 of the request's (interleaved) words, starting at an offset hashed from
    (seed, path), padded or cut to `length` (min, max) characters."""
    pool = interleaved(words)
    start = (_hash(seed, path) >> 16) % len(pool)
    return fitted(window(pool, start, window_size(seed, path)), length)


def python_text(words: list[str], seed: str, path: str) -> str:
    """A labelled, runnable Python script whose numbers are hashed from (seed, path)."""
    number = _hash(seed, path)
    values = [number % 97, (number >> 8) % 89, (number >> 16) % 83]
    comment = words_text(words, seed, path, (0, 100)).replace("\n", " ")
    return f"# {comment}\nvalues = {values}\ntotal = sum(values)\nassert total == {sum(values)}, total\n"


def _formatted(kind: str, number: int) -> str | None:
    """A valid string of a JSON-schema `format`, or None for formats without a fixed shape."""
    moment = EPOCH + datetime.timedelta(seconds=number % (30 * 365 * 86400))
    samples = {
        "date-time": moment.isoformat().replace("+00:00", "Z"),
        "date": moment.date().isoformat(),
        "time": moment.time().isoformat(),
        "duration": f"PT{number % 86400}S",
        "uuid": str(uuid.UUID(int=number % (1 << 128), version=4)),
        "email": f"standin{number % 10_000}@example.com",
        "uri": f"https://example.com/stand-in/{number % 10_000}",
        "hostname": f"stand-in-{number % 10_000}.example.com",
        "ipv4": f"192.0.2.{number % 256}",
        "ipv6": f"2001:db8::{number % 0xFFFF:x}",
    }
    return samples.get("uri" if kind in ("url", "uri-reference", "iri") else kind)


def lettered_options(message: str) -> list[str]:
    """The options of a multiple-choice item as a prompt shows them, one `A. text` line each."""
    return [match.group(2).strip() for match in LETTERED.finditer(message)]


def keyed_option(keys: list[Any], options: list[Any]) -> Any | None:
    """The stand-in's key for a multiple-choice item: a hash of its options' text, so whoever writes the item
    and whoever is shown its options later pick the same key (a convention of the stand-in, not reasoning)."""
    texts = [str(option).strip().lower() for option in options]
    if not texts or len(texts) > len(keys):
        return None
    return keys[_hash("\x1f".join(texts), "$options") % len(texts)]


class SchemaInstance:
    """Builds one value valid for a (pydantic-style) JSON schema.

    `junk` (a mode of standin/junk.py, with the `message` it may copy) replaces free strings; `scores` puts
    integers at their `high` or `low` bound instead of a `hashed` choice (the judge switch)."""

    def __init__(
        self,
        root: dict[str, Any],
        words: list[str],
        seed: str,
        *,
        junk: str = "none",
        message: str = "",
        scores: str = "hashed",
    ) -> None:
        self.root, self.words, self.seed = root, words, seed
        self.pool = interleaved(words)
        self.junk, self.message, self.scores = junk, message, scores
        self.cursor = _hash(seed, "$cursor") % len(self.pool)

    def build(self) -> Any:
        return self.value(self.root, "$", 0)

    def free_text(self, path: str, length: tuple[int, int | None] = (0, None)) -> str:
        """A free string: junk, or the next window of the request's words (a long one for a top-level text)."""
        junk = junk_text(self.junk, self.message, _hash(self.seed, path))
        if junk is not None:
            return fitted(junk, length)
        if path == TEXT_PATH:
            low, high = TEXT_SHARE
            share = low + (high - low) * self.pick(path, 101) / 100
            count = max(MIN_WORDS, round(share * len(self.pool) / 2))  # the pool has every word twice
        else:  # shorter windows for short requests, so the strings of one answer rarely come round again
            limit = len(self.pool) // WINDOWS_PER_POOL
            count = min(window_size(self.seed, path), limit) if limit >= MIN_WORDS else window_size(self.seed, path)
        text = window(self.pool, self.cursor, count)
        self.cursor += count
        return fitted(text, length)

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        seen: set[str] = set()
        while "$ref" in schema:
            ref = schema["$ref"]
            if ref in seen or not isinstance(ref, str) or not ref.startswith("#"):
                raise SchemaError(f"cannot resolve $ref {ref!r}")
            seen.add(ref)
            node: Any = self.root
            for part in filter(None, ref.removeprefix("#").split("/")):
                if not isinstance(node, dict) or part not in node:
                    raise SchemaError(f"cannot resolve $ref {ref!r}")
                node = node[part]
            schema = {**node, **{key: value for key, value in schema.items() if key != "$ref"}}
        return schema

    def pick(self, path: str, count: int) -> int:
        return _hash(self.seed, path) % count

    def value(self, schema: Any, path: str, depth: int) -> Any:
        if schema is True or schema == {}:
            schema = {"type": "string"}
        if not isinstance(schema, dict):
            raise SchemaError(f"schema at {path} is not an object")
        if depth > MAX_DEPTH:
            raise SchemaError(f"deeper than {MAX_DEPTH} levels at {path}: recursion with no way out?")
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return schema["enum"][self.pick(path, len(schema["enum"]))]
        for combinator in ("anyOf", "oneOf"):
            if combinator in schema:
                return self.value(self.option(schema[combinator], path, depth), path, depth)
        if "allOf" in schema:
            merged = {key: value for part in schema["allOf"] for key, value in self.resolve(part).items()}
            rest = {key: value for key, value in schema.items() if key != "allOf"}
            return self.value({**merged, **rest}, path, depth)
        kind = schema.get("type")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        if isinstance(kind, list):
            kind = next((option for option in kind if option != "null"), "null")
        if kind not in TYPES:
            raise SchemaError(f"unsupported type {kind!r} at {path}")
        return getattr(self, f"_{kind}")(schema, path, depth)

    def option(self, options: list[Any], path: str, depth: int) -> Any:
        """A non-null option chosen by hash; the null one when deep, so recursion ends."""
        if not options:
            raise SchemaError(f"empty anyOf/oneOf at {path}")
        nulls = [option for option in options if self.resolve(option).get("type") == "null"]
        if nulls and depth >= SHALLOW_DEPTH:
            return nulls[0]
        others = [option for option in options if option not in nulls] or nulls
        return others[self.pick(path + "|", len(others))]

    def _object(self, schema: dict[str, Any], path: str, depth: int) -> dict[str, Any]:
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        names = [name for name in properties if depth < SHALLOW_DEPTH or name in required]
        item = {name: self.value(properties[name], f"{path}.{name}", depth + 1) for name in names}
        keys = self.resolve(properties.get(ANSWER_KEY, {})).get("enum")
        if keys and ANSWER_KEY in item:
            options = item.get("options") if isinstance(item.get("options"), list) else lettered_options(self.message)
            item[ANSWER_KEY] = keyed_option(keys, options) or item[ANSWER_KEY]
        return restated(item) if self.junk == "answer_equals_question" else item

    def _array(self, schema: dict[str, Any], path: str, depth: int) -> list[Any]:
        prefix, items = schema.get("prefixItems", []), schema.get("items", {})
        shallow = depth < SHALLOW_DEPTH
        high = schema.get("maxItems", len(prefix) if prefix and items is False else None)
        low = schema.get("minItems", len(prefix) or (DEFAULT_ITEMS[0] if shallow else 0))
        if "minItems" not in schema and high is not None:
            low = min(low, high)
        if high is None:
            high = max(low, DEFAULT_ITEMS[1] if shallow else low)
        if low > high:
            raise SchemaError(f"minItems {low} > maxItems {high} at {path}")
        count = low + self.pick(path, high - low + 1)
        values = [
            self.value(prefix[index] if index < len(prefix) else items, f"{path}[{index}]", depth + 1)
            for index in range(count)
        ]
        if not schema.get("uniqueItems"):
            return values
        return [value for index, value in enumerate(values) if value not in values[:index]]

    def _string(self, schema: dict[str, Any], path: str, depth: int) -> str:
        if schema.get("contentMediaType") == "text/x-python":
            return python_text(self.words, self.seed, path)
        formatted = _formatted(schema.get("format", ""), _hash(self.seed, path))
        if formatted is not None:
            return formatted
        return self.free_text(path, (schema.get("minLength", 0), schema.get("maxLength")))

    def _bounds(self, schema: dict[str, Any], path: str) -> tuple[float, float, bool, bool]:
        """(low, high, low exclusive, high exclusive); a missing side is the other one -/+ 100 (or 0..100)."""
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        if low is None:
            low = 0 if high is None or high > 0 else high - 100
        if high is None:
            high = low + 100
        open_low = "minimum" not in schema and "exclusiveMinimum" in schema
        open_high = "maximum" not in schema and "exclusiveMaximum" in schema
        if low > high or (low == high and (open_low or open_high)):
            raise SchemaError(f"empty numeric range at {path}")
        return low, high, open_low, open_high

    def _multiple(self, schema: dict[str, Any], path: str, step: float, choice: str = "hashed") -> float:
        """A multiple of `step` within the bounds: the `low`est, the `high`est or a `hashed` one."""
        low, high, open_low, open_high = self._bounds(schema, path)
        first = math.floor(low / step) + 1 if open_low else math.ceil(low / step)
        last = math.ceil(high / step) - 1 if open_high else math.floor(high / step)
        if first > last:
            raise SchemaError(f"no multiple of {step} within the bounds at {path}")
        chosen = {"low": first, "high": last}.get(choice, first + self.pick(path, last - first + 1))
        return chosen * step

    def _integer(self, schema: dict[str, Any], path: str, depth: int) -> int:
        return int(self._multiple(schema, path, schema.get("multipleOf", 1), self.scores))

    def _number(self, schema: dict[str, Any], path: str, depth: int) -> float:
        if "multipleOf" in schema:
            return float(self._multiple(schema, path, schema["multipleOf"]))
        low, high, _, _ = self._bounds(schema, path)
        return low + (high - low) * (1 + self.pick(path, 999)) / 1000

    def _boolean(self, schema: dict[str, Any], path: str, depth: int) -> bool:
        return self.pick(path, 2) == 0

    def _null(self, schema: dict[str, Any], path: str, depth: int) -> None:
        return None
