"""Export the training set in the orca-agentinstruct-1M-v1 shape: one file per split, a `messages` column.

Messages are OpenAI chat turns: keys that do not apply to a turn (`tool_calls` off assistant tool calls,
`tool_call_id` off tool turns) are left out of JSONL. Splits with tool calls also get a `tools` column
(the OpenAI function declarations the calls refer to), as in OpenAI's fine-tuning format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import polars as pl

from agentinstruct_dagster.storage.delta import read_all, read_batches

ExportFormat = Literal["jsonl", "parquet"]


def chat_message(message: dict[str, Any]) -> dict[str, Any]:
    """A stored message without the keys that do not apply to it (content stays, null for tool calls)."""
    return {key: value for key, value in message.items() if value is not None or key == "content"}


def export_record(row: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"messages": [chat_message(message) for message in row["messages"]]}
    if row["tools"]:
        record["tools"] = json.loads(row["tools"])
    return record


def export_training_set(
    table: Path, out_dir: Path, fmt: ExportFormat = "jsonl", batch_keys: list[str] | None = None
) -> dict[str, Path]:
    """Write `<out_dir>/<split>.<fmt>` for each split; returns the files written by split."""
    pairs = read_batches(table, batch_keys) if batch_keys else read_all(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for split in sorted(pairs["split"].unique().to_list()):
        rows = pairs.filter(pl.col("split") == split).sort("batch", "id")
        columns = ["messages", "tools"] if rows["tools"].is_not_null().any() else ["messages"]
        path = out_dir / f"{split}.{fmt}"
        if fmt == "jsonl":
            with path.open("w", encoding="utf-8") as handle:
                for row in rows.select("messages", "tools").iter_rows(named=True):
                    handle.write(json.dumps(export_record(row), ensure_ascii=False) + "\n")
        else:
            rows.select(columns).write_parquet(path)
        written[split] = path
    return written
