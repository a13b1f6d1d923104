"""A Dagster IO manager that stores each asset's batch as rows of a Delta table (polars frames in and out)."""

import json
from dataclasses import dataclass
from typing import Any

import dagster as dg
import polars as pl

from agentinstruct_dagster.pipeline.lake import Lake


def _cell(value: Any, max_chars: int) -> str:
    """One value on one line: lists and structs as JSON, shortened; backslashes, pipes, newlines escaped."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")


def markdown_table(frame: pl.DataFrame, max_rows: int = 3, max_chars: int = 80) -> str:
    """The first `max_rows` rows as a markdown table, cells shortened to about `max_chars` characters."""
    if frame.is_empty():
        return "_no rows_"
    header = "| " + " | ".join(_cell(name, max_chars) for name in frame.columns) + " |"
    rule = "|" + "---|" * frame.width
    rows = ["| " + " | ".join(_cell(value, max_chars) for value in row) + " |" for row in frame.head(max_rows).rows()]
    return "\n".join([header, rule, *rows])


def column_schema(frame: pl.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name, str(dtype)) for name, dtype in frame.schema.items()])


@dataclass(frozen=True)
class Outcome:
    """A stage's result for one batch: the rows it keeps and the rows it quarantines (written together)."""

    kept: pl.DataFrame
    quarantined: pl.DataFrame


class DeltaIOManager(dg.ConfigurableIOManager):
    """Each asset is a Delta table at `<lake root>/<asset key path>` (a local folder or an object-store URI, with
    the lake's storage options); each partition key is a `batch`."""

    lake: Lake

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame | Outcome) -> None:
        """Replace the batch's rows (and, for an `Outcome`, its quarantined rows in the same commit)."""
        name = context.asset_key.to_user_string()
        if not context.has_asset_partitions:
            raise ValueError(f"{name}: DeltaIOManager stores partitioned assets only (no partition key)")
        key, batch = context.asset_key, context.asset_partition_key
        if isinstance(obj, Outcome):
            stored = self.lake.write_outcome(key, obj.kept, obj.quarantined, batch)
            context.add_output_metadata({"quarantined_rows": obj.quarantined.height})
        elif isinstance(obj, pl.DataFrame):
            stored = self.lake.write(key, obj, batch)
        else:
            raise TypeError(f"{name}: DeltaIOManager stores polars DataFrames, got {type(obj).__name__}")
        context.add_output_metadata(
            {
                "dagster/row_count": stored.height,
                "dagster/column_schema": column_schema(stored),
                "dagster/uri": str(self.lake.table_path(key)),
                "sample_rows": dg.MetadataValue.md(markdown_table(stored)),
            }
        )

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        key = context.asset_key
        try:
            return self.lake.read_batches(key, list(context.asset_partition_keys))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"asset {key.to_user_string()} has no Delta table at {self.lake.table_path(key)} yet: "
                "materialize it first"
            ) from None
