"""Row-level quality rules: a failing row goes to quarantine with the rule's name, before the write."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agentinstruct_dagster.ids import content_id

REFUSAL_PHRASES = (
    "as an ai language model",
    "as a large language model",
    "as an ai developed by",
    "i'm sorry, but i can't",
    "i am sorry, but i cannot",
    "i cannot assist with",
    "i can't assist with",
    "i'm unable to help with",
    "i am unable to comply",
)
PAYLOAD_MAX_CHARS = 4000

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Rule:
    """A named check: returns a failure detail, or None when the row passes."""

    name: str
    check: Callable[[Row], str | None]


def required(*fields: str) -> Rule:
    def check(row: Row) -> str | None:
        missing = [field for field in fields if row.get(field) in (None, "", [])]
        return f"missing or empty: {', '.join(missing)}" if missing else None

    return Rule("required_fields", check)


def length_between(field: str, low: int, high: int) -> Rule:
    def check(row: Row) -> str | None:
        length = len(str(row.get(field) or "").strip())
        return None if low <= length <= high else f"{field} has {length} characters, allowed {low}..{high}"

    return Rule(f"{field}_length", check)


def no_refusal(*fields: str) -> Rule:
    def check(row: Row) -> str | None:
        for field in fields:
            text = str(row.get(field) or "").lower()
            phrase = next((phrase for phrase in REFUSAL_PHRASES if phrase in text), None)
            if phrase:
                return f"{field} contains the refusal phrase {phrase!r}"
        return None

    return Rule("refusal_phrase", check)


def first_failure(row: Row, rules: Iterable[Rule]) -> tuple[str, str] | None:
    """(rule name, detail) of the first rule the row fails, or None."""
    for rule in rules:
        detail = rule.check(row)
        if detail:
            return rule.name, detail
    return None


def quarantine_row(
    *, stage: str, batch: str, reason: str, detail: str, parent_id: str | None, source: str | None, payload: Any
) -> dict[str, Any]:
    """A row of a quarantine table; `payload` keeps what was rejected (raw output or the row)."""
    text = (
        payload if isinstance(payload, str) or payload is None else json.dumps(payload, ensure_ascii=False, default=str)
    )
    return {
        "id": content_id("quarantine", stage, batch, reason, parent_id, source, text),
        "batch": batch,
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "parent_id": parent_id,
        "source": source,
        "payload": text[:PAYLOAD_MAX_CHARS] if text else None,
    }
