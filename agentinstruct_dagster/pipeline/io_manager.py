"""A Dagster IO manager that stores each asset's batch as rows of a Delta table (polars frames in and out)."""

import json
from dataclasses import dataclass
from typing import Any

import dagster as dg
import polars as pl

from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.storage.location import location_uri
from agentinstruct_dagster.tables import COLUMN_DESCRIPTIONS


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


# Sample rows and previews show what a row says first and its hash ids last, shortened.
CONTENT_COLUMNS = (
    "instruction",
    "answer",
    "messages",
    "text",
    "title",
    "stage",
    "reason",
    "detail",
    "source",
    "score",
    "rationale",
)
ID_COLUMNS = ("id", "parent_id", "seed_id", "doc_id")
HIDDEN_COLUMNS = ("batch",)  # the partition: the same in every row of a materialization
SAMPLE_ROWS = 3
QUARANTINE_PREVIEW_ROWS = 20
CONTENT_CHARS = 200
CELL_CHARS = 60
ID_CHARS = 8
Cell = str | int | float | bool | None


def _column_type(dtype: pl.DataType) -> str:
    return str(dtype).lower() if dtype.is_numeric() or dtype == pl.Boolean else "string"


def column_schema(frame: pl.DataFrame) -> dg.TableSchema:
    """The frame's columns with their types and descriptions (`tables.COLUMN_DESCRIPTIONS`)."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, str(dtype), description=COLUMN_DESCRIPTIONS.get(name))
            for name, dtype in frame.schema.items()
        ]
    )


def preview_columns(columns: list[str]) -> list[str]:
    """Content columns first, then the others in table order, hash ids last; the batch column left out."""
    content = [name for name in CONTENT_COLUMNS if name in columns]
    ids = [name for name in ID_COLUMNS if name in columns]
    rest = [name for name in columns if name not in (*content, *ids, *HIDDEN_COLUMNS)]
    return [*content, *rest, *ids]


def shorten_text(text: str, max_chars: int) -> str:
    """`text` on one line, cut to at most `max_chars` characters."""
    line = " ".join(text.split())
    return line if len(line) <= max_chars else line[: max_chars - 1] + "…"


def preview_cell(name: str, value: Any, id_chars: int | None = ID_CHARS) -> Cell:
    """A value as a table cell: ids cut to `id_chars` (None: whole), chat turns as `role: content`, other text on
    one line, cut."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if name in ID_COLUMNS:
        return value if id_chars is None or len(value) <= id_chars else value[:id_chars] + "…"
    if name == "messages":
        value = " / ".join(f"{turn['role']}: {turn['content'] or '(tool calls)'}" for turn in value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return shorten_text(text, CONTENT_CHARS if name in CONTENT_COLUMNS else CELL_CHARS)


def table_preview(
    frame: pl.DataFrame,
    max_rows: int = SAMPLE_ROWS,
    *,
    id_chars: int | None = ID_CHARS,
    descriptions: dict[str, str] | None = None,
) -> dg.TableMetadataValue:
    """The first `max_rows` rows as a UI table: content first, ids last (cut to `id_chars`), cells cut; each
    column described from `descriptions`, else `tables.COLUMN_DESCRIPTIONS`."""
    described = {**COLUMN_DESCRIPTIONS, **(descriptions or {})}
    columns = preview_columns(frame.columns)
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(name, _column_type(frame.schema[name]), description=described.get(name)) for name in columns
        ]
    )
    records = [
        dg.TableRecord({name: preview_cell(name, row[name], id_chars) for name in columns})
        for row in frame.head(max_rows).iter_rows(named=True)
    ]
    return dg.MetadataValue.table(records, schema)


def quarantine_metadata(quarantined: pl.DataFrame) -> dict[str, Any]:
    """How many rows the stage quarantined and, if any, the first of them (reason, detail, source, whole ids for
    `agentinstruct trace`)."""
    metadata: dict[str, Any] = {"quarantined_rows": quarantined.height}
    if quarantined.height:
        shown = quarantined.select("reason", "detail", "source", "id", "parent_id")
        metadata["quarantine"] = table_preview(shown, QUARANTINE_PREVIEW_ROWS, id_chars=None)
    return metadata


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
            context.add_output_metadata(quarantine_metadata(obj.quarantined))
        elif isinstance(obj, pl.DataFrame):
            stored = self.lake.write(key, obj, batch)
        else:
            raise TypeError(f"{name}: DeltaIOManager stores polars DataFrames, got {type(obj).__name__}")
        context.add_output_metadata(
            {
                "dagster/row_count": stored.height,
                "dagster/column_schema": column_schema(stored),
                "dagster/uri": location_uri(self.lake.table_path(key)),
                "sample_rows": table_preview(stored),
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
