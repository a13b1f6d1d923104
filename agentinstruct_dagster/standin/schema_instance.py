"""Deterministic instances of a JSON schema whose free strings are made of the request's own words.

Covers what pydantic v2's `model_json_schema()` emits: object/array/string/integer/number/boolean/null,
properties, required, additionalProperties, `$defs` + `$ref`, anyOf/oneOf/allOf, enum, const, string
formats, min/maxLength, min/maxItems, prefixItems, uniqueItems, (exclusive) minimum/maximum, multipleOf.
A string with `contentMediaType: text/x-python` is a small runnable Python script (a comment of the
request's words and a computation with a passing assert). `pattern` is not honoured. Every choice is a
hash of (seed, JSON path), so one request always gets one answer.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import uuid
from typing import Any

LABEL = "[stand-in] "
MIN_WORDS, MAX_WORDS = 8, 40
DEFAULT_ITEMS = (1, 3)
TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
# Below this depth optional parts are left out, so recursive schemas (trees, linked lists) end.
SHALLOW_DEPTH = 6
MAX_DEPTH = 64
EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)


class SchemaError(ValueError):
    """The schema has no instance the stand-in can build (unknown type, bad `$ref`, empty range, ...)."""


def _hash(seed: str, path: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\x1f{path}".encode()).digest()[:8], "big")


def words_text(words: list[str], seed: str, path: str, length: tuple[int, int | None] = (0, None)) -> str:
    """A labelled window of 8–40 of the request's words, starting at an offset hashed from (seed, path),
    padded or cut to `length` (min, max) characters."""
    pool = words or ["text"]
    number = _hash(seed, path)
    count = MIN_WORDS + number % (MAX_WORDS - MIN_WORDS + 1)
    start = (number >> 16) % len(pool)
    text = LABEL + " ".join(pool[(start + index) % len(pool)] for index in range(count))
    min_length, max_length = length
    while len(text) < min_length:
        text += " " + pool[len(text) % len(pool)]
    return text if max_length is None else text[:max_length]


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


class SchemaInstance:
    """Builds one value valid for a (pydantic-style) JSON schema."""

    def __init__(self, root: dict[str, Any], words: list[str], seed: str) -> None:
        self.root, self.words, self.seed = root, words, seed

    def build(self) -> Any:
        return self.value(self.root, "$", 0)

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
        return {name: self.value(properties[name], f"{path}.{name}", depth + 1) for name in names}

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
        return words_text(self.words, self.seed, path, (schema.get("minLength", 0), schema.get("maxLength")))

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

    def _multiple(self, schema: dict[str, Any], path: str, step: float) -> float:
        """A multiple of `step` within the bounds."""
        low, high, open_low, open_high = self._bounds(schema, path)
        first = math.floor(low / step) + 1 if open_low else math.ceil(low / step)
        last = math.ceil(high / step) - 1 if open_high else math.floor(high / step)
        if first > last:
            raise SchemaError(f"no multiple of {step} within the bounds at {path}")
        return (first + self.pick(path, last - first + 1)) * step

    def _integer(self, schema: dict[str, Any], path: str, depth: int) -> int:
        return int(self._multiple(schema, path, schema.get("multipleOf", 1)))

    def _number(self, schema: dict[str, Any], path: str, depth: int) -> float:
        if "multipleOf" in schema:
            return float(self._multiple(schema, path, schema["multipleOf"]))
        low, high, _, _ = self._bounds(schema, path)
        return low + (high - low) * (1 + self.pick(path, 999)) / 1000

    def _boolean(self, schema: dict[str, Any], path: str, depth: int) -> bool:
        return self.pick(path, 2) == 0

    def _null(self, schema: dict[str, Any], path: str, depth: int) -> None:
        return None
