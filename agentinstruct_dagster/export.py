"""Export the training set in the orca-agentinstruct-1M-v1 shape: one file per split, a `messages` column.

Messages are OpenAI chat turns: keys that do not apply to a turn (`tool_calls` off assistant tool calls,
`tool_call_id` off tool turns) are left out of JSONL. Splits with tool calls also get a `tools` column
(the OpenAI function declarations the calls refer to), as in OpenAI's fine-tuning format. With `lineage`,
every record also carries the columns that trace it back through the lake (`agentinstruct trace <id>`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import polars as pl

from agentinstruct_dagster.storage.delta import batches_in, read_all, read_batches, table_exists

ExportFormat = Literal["jsonl", "parquet"]
LINEAGE_COLUMNS = ["id", "doc_id", "seed_id", "parent_id", "batch", "skill"]


class ExportError(LookupError):
    """Nothing to export: no training set, or a requested batch has no training pairs."""


def chat_message(message: dict[str, Any]) -> dict[str, Any]:
    """A stored message without the keys that do not apply to it (content stays, null for tool calls)."""
    return {key: value for key, value in message.items() if value is not None or key == "content"}


def export_record(row: dict[str, Any], lineage: bool = False) -> dict[str, Any]:
    record: dict[str, Any] = {"messages": [chat_message(message) for message in row["messages"]]}
    if row["tools"]:
        record["tools"] = json.loads(row["tools"])
    if lineage:
        record.update({name: row[name] for name in LINEAGE_COLUMNS})
    return record


def training_rows(table: Path, batch_keys: list[str] | None) -> pl.DataFrame:
    """The training pairs of these batches (all by default); ExportError when there are none to export."""
    if not table_exists(table):
        raise ExportError(f"no training set at {table}: run a batch first (agentinstruct demo or backfill)")
    if not batch_keys:
        pairs = read_all(table)
        if not pairs.height:
            raise ExportError(f"the training set at {table} has no rows")
        return pairs
    pairs = read_batches(table, batch_keys)
    missing = sorted(set(batch_keys) - set(pairs["batch"].unique().to_list()))
    if missing:
        raise ExportError(f"no training pairs for batch(es) {missing}; batches with pairs: {batches_in(table)}")
    return pairs


def export_training_set(
    table: Path,
    out_dir: Path,
    fmt: ExportFormat = "jsonl",
    batch_keys: list[str] | None = None,
    lineage: bool = False,
) -> dict[str, Path]:
    """Write `<out_dir>/<split>.<fmt>` for each split; returns the files written by split."""
    pairs = training_rows(table, batch_keys)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = LINEAGE_COLUMNS if lineage else []
    written: dict[str, Path] = {}
    for split in sorted(pairs["split"].unique().to_list()):
        rows = pairs.filter(pl.col("split") == split).sort("batch", "id")
        columns = ["messages", "tools"] if rows["tools"].is_not_null().any() else ["messages"]
        path = out_dir / f"{split}.{fmt}"
        if fmt == "jsonl":
            with path.open("w", encoding="utf-8") as handle:
                for row in rows.select("messages", "tools", *extra).iter_rows(named=True):
                    handle.write(json.dumps(export_record(row, lineage), ensure_ascii=False) + "\n")
        else:
            rows.select(*columns, *extra).write_parquet(path)
        written[split] = path
    return written
