"""Export the training set in the orca-agentinstruct-1M-v1 shape: one file per split, a `messages` column."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl

from agentinstruct_dagster.storage.delta import read_all, read_batches

ExportFormat = Literal["jsonl", "parquet"]


def export_training_set(
    table: Path, out_dir: Path, fmt: ExportFormat = "jsonl", batch_keys: list[str] | None = None
) -> dict[str, Path]:
    """Write `<out_dir>/<split>.<fmt>` for each split; returns the files written by split."""
    pairs = read_batches(table, batch_keys) if batch_keys else read_all(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for split in sorted(pairs["split"].unique().to_list()):
        rows = pairs.filter(pl.col("split") == split).sort("batch", "id").select("messages")
        path = out_dir / f"{split}.{fmt}"
        if fmt == "jsonl":
            rows.write_ndjson(path)
        else:
            rows.write_parquet(path)
        written[split] = path
    return written
