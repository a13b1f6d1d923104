"""Stable row ids: content hashes, so re-running never duplicates a row."""

from __future__ import annotations

import hashlib
import json
from typing import Any

ID_HEX_CHARS = 32


def content_id(*parts: Any) -> str:
    """A stable hex id of the given parts (strings, numbers, or JSON-serialisable values)."""
    digest = hashlib.sha256()
    for part in parts:
        encoded = part if isinstance(part, str) else json.dumps(part, sort_keys=True, ensure_ascii=False)
        digest.update(encoded.encode("utf-8"))
        digest.update(b"\x1f")
    return digest.hexdigest()[:ID_HEX_CHARS]


def seeded_choice(key: str, options: list[str], count: int, seed: int = 0) -> list[str]:
    """Pick `count` distinct options deterministically from `key` and `seed`, in a stable order."""
    ranked = sorted(options, key=lambda option: content_id(seed, key, option))
    return ranked[: max(0, min(count, len(ranked)))]
