"""Deterministic instances of a JSON schema whose free strings are made of the request's own words."""

from __future__ import annotations

import hashlib
from typing import Any

LABEL = "[stand-in] "
MIN_WORDS, MAX_WORDS = 8, 40


def _number(seed: str, path: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\x1f{path}".encode()).digest()[:8], "big")


def words_text(words: list[str], seed: str, path: str, min_length: int = 0, max_length: int | None = None) -> str:
    """A labelled window of the request's words, chosen by a hash of (seed, path)."""
    pool = words or ["text"]
    number = _number(seed, path)
    count = MIN_WORDS + number % (MAX_WORDS - MIN_WORDS + 1)
    start = (number >> 16) % len(pool)
    text = LABEL + " ".join(pool[(start + index) % len(pool)] for index in range(count))
    while len(text) < min_length:
        text += " " + pool[len(text) % len(pool)]
    return text if max_length is None else text[:max_length]


class SchemaInstance:
    """Builds a value valid for a (pydantic-style) JSON schema: $defs/$ref, anyOf, enums, bounds."""

    def __init__(self, root: dict[str, Any], words: list[str], seed: str) -> None:
        self.root, self.words, self.seed = root, words, seed

    def build(self) -> Any:
        return self.value(self.root, "$")

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            node: Any = self.root
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = {**node, **{key: value for key, value in schema.items() if key != "$ref"}}
        return schema

    def value(self, schema: dict[str, Any], path: str) -> Any:
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return schema["enum"][_number(self.seed, path) % len(schema["enum"])]
        for combinator in ("anyOf", "oneOf"):
            if combinator in schema:
                options = [option for option in schema[combinator] if self.resolve(option).get("type") != "null"]
                return self.value(options[0] if options else schema[combinator][0], path)
        if "allOf" in schema:
            return self.value({k: v for part in schema["allOf"] for k, v in self.resolve(part).items()}, path)
        kind = schema.get("type", "object" if "properties" in schema else "string")
        if isinstance(kind, list):
            kind = next((option for option in kind if option != "null"), "null")
        return getattr(self, f"_{kind}")(schema, path)

    def _object(self, schema: dict[str, Any], path: str) -> dict[str, Any]:
        return {name: self.value(sub, f"{path}.{name}") for name, sub in schema.get("properties", {}).items()}

    def _array(self, schema: dict[str, Any], path: str) -> list[Any]:
        low = schema.get("minItems", 1)
        high = max(low, schema.get("maxItems", max(low, 3)))
        count = low + _number(self.seed, path) % (high - low + 1)
        return [self.value(schema.get("items", {}), f"{path}[{index}]") for index in range(count)]

    def _string(self, schema: dict[str, Any], path: str) -> str:
        return words_text(self.words, self.seed, path, schema.get("minLength", 0), schema.get("maxLength"))

    def _integer(self, schema: dict[str, Any], path: str) -> int:
        low = int(schema.get("minimum", 0))
        high = int(schema.get("maximum", low + 100))
        return low + _number(self.seed, path) % (high - low + 1)

    def _number(self, schema: dict[str, Any], path: str) -> float:
        return float(self._integer(schema, path))

    def _boolean(self, schema: dict[str, Any], path: str) -> bool:
        return _number(self.seed, path) % 2 == 0

    def _null(self, schema: dict[str, Any], path: str) -> None:
        return None
