"""Where an asset's table (kept and quarantined rows) and the call ledger live under the storage root."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dagster as dg

LEDGER_FOLDER = "llm_calls"


def _parts(key: dg.AssetKey | Sequence[str]) -> list[str]:
    return list(key.path if isinstance(key, dg.AssetKey) else key)


def table_path(root: str | Path, key: dg.AssetKey | Sequence[str]) -> Path:
    return Path(root).joinpath(*_parts(key))


def ledger_path(root: str | Path) -> Path:
    """The call ledger: every model call of every batch."""
    return Path(root) / LEDGER_FOLDER
