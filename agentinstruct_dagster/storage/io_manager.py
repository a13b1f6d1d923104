"""A Dagster IO manager that stores each asset's batch as rows of a Delta table (polars frames in and out)."""

import json
from typing import Any

import dagster as dg
import polars as pl

from agentinstruct_dagster.storage.delta import read_batches, write_partition
from agentinstruct_dagster.storage.paths import table_path


def _cell(value: Any, max_chars: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def markdown_table(frame: pl.DataFrame, max_rows: int = 3, max_chars: int = 80) -> str:
    """The first rows as a markdown table, long cells shortened, pipes escaped."""
    if frame.is_empty():
        return "_no rows_"
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(_cell(value, max_chars) for value in row) + " |" for row in frame.head(max_rows).rows()]
    return "\n".join([header, rule, *rows])


def column_schema(frame: pl.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name, str(dtype)) for name, dtype in frame.schema.items()])


class DeltaIOManager(dg.ConfigurableIOManager):
    """Each asset is a Delta table at `<root>/<asset key path>`; each partition key is a `batch`."""

    root: str

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        if not context.has_asset_partitions:
            raise ValueError(f"{context.asset_key.to_user_string()}: DeltaIOManager stores partitioned assets only")
        path = table_path(self.root, context.asset_key)
        stored = write_partition(path, obj, context.asset_partition_key)
        context.add_output_metadata(
            {
                "dagster/row_count": stored.height,
                "dagster/column_schema": column_schema(stored),
                "dagster/uri": str(path),
                "sample_rows": dg.MetadataValue.md(markdown_table(stored)),
            }
        )

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        key = context.asset_key
        path = table_path(self.root, key)
        try:
            return read_batches(path, list(context.asset_partition_keys))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"asset {key.to_user_string()} has no table at {path} yet: materialize it first"
            ) from None
