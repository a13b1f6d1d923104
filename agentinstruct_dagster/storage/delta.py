"""A thin layer over `deltalake`: replace exactly one batch of a table in one commit, read batches back.

Tables are not physically partitioned: a write's predicate `batch = '<key>'` (SQL-escaped) selects the
rows it replaces, so any batch key works (quotes, spaces, unicode) and other batches are never touched.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

BATCH = "batch"
COMMIT_ATTEMPTS = 8


def sql_string_literal(value: str) -> str:
    """`value` as a SQL string literal for a Delta predicate."""
    if any(ord(char) < 32 for char in value):
        raise ValueError(f"batch key {value!r} contains control characters")
    return "'" + value.replace("'", "''") + "'"


def table_exists(table_path: Path) -> bool:
    return DeltaTable.is_deltatable(str(table_path))


def write_partition(table_path: Path, frame: pl.DataFrame, batch: str) -> pl.DataFrame:
    """Replace the rows of `batch` with `frame` (an empty frame removes them), creating the table if needed.

    Returns the rows as stored (with the `batch` column set).
    """
    predicate = f"{BATCH} = {sql_string_literal(batch)}"
    stored = frame.with_columns(pl.lit(batch, dtype=pl.String).alias(BATCH))
    data = stored.to_arrow()

    def commit() -> None:
        if table_exists(table_path):
            write_deltalake(str(table_path), data, mode="overwrite", predicate=predicate, schema_mode="merge")
        else:
            write_deltalake(str(table_path), data, mode="append")

    _with_conflict_retries(table_path, commit)
    return stored


def append_rows(table_path: Path, frame: pl.DataFrame) -> None:
    """Append rows in one commit (creating the table if needed)."""
    data = frame.to_arrow()
    _with_conflict_retries(table_path, lambda: write_deltalake(str(table_path), data, mode="append"))


def _with_conflict_retries(table_path: Path, commit: Callable[[], None]) -> None:
    """Run a commit, retrying when a concurrent writer won the race for the same table version."""
    table_path.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            commit()
            return
        except (CommitFailedError, DeltaError) as error:
            if attempt == COMMIT_ATTEMPTS or not _is_conflict(error):
                raise
            time.sleep(random.uniform(0.05, 0.2) * attempt)


def _is_conflict(error: Exception) -> bool:
    text = str(error).lower()
    return isinstance(error, CommitFailedError) or "conflict" in text or ("version" in text and "exists" in text)


def _dataset(table_path: Path) -> DeltaTable:
    try:
        return DeltaTable(str(table_path))
    except TableNotFoundError:
        raise FileNotFoundError(f"no Delta table at {table_path}") from None


def read_batches(table_path: Path, batches: list[str]) -> pl.DataFrame:
    """Rows of the given batches (an empty frame with the table's schema when there are none)."""
    scan = pl.scan_delta(_dataset(table_path))
    return scan.filter(pl.col(BATCH).is_in(list(batches))).collect()


def read_partition(table_path: Path, batch: str) -> pl.DataFrame:
    return read_batches(table_path, [batch])


def read_all(table_path: Path) -> pl.DataFrame:
    return pl.scan_delta(_dataset(table_path)).collect()


def batches_in(table_path: Path) -> list[str]:
    return sorted(read_all(table_path)[BATCH].unique().to_list())
