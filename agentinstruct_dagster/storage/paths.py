"""Where an asset's table (kept and quarantined rows) and the call ledger live under the storage root."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from agentinstruct_dagster.storage.location import Location, join

LEDGER_FOLDER = "llm_calls"


def _parts(key: dg.AssetKey | Sequence[str]) -> list[str]:
    return list(key.path if isinstance(key, dg.AssetKey) else key)


def table_path(root: str | Path, key: dg.AssetKey | Sequence[str]) -> Location:
    """The asset's table: a Path under a local root, a URI under an object-store root."""
    return join(root, *_parts(key))


def ledger_path(root: str | Path) -> Location:
    """The call ledger: every model call of every batch."""
    return join(root, LEDGER_FOLDER)
