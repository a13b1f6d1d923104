"""A thin layer over `deltalake`: replace exactly one batch of a table in one commit, read batches back.

A stage's outcome for a batch, its kept rows and its quarantined rows, lives in one table and is replaced in
one commit (Delta has no transactions across tables): a quarantined row has its fields in the struct column
`quarantined` and nulls elsewhere; a kept row has `quarantined` null. Reads return kept rows unless they ask
for the quarantine.

Tables are not physically partitioned (a Hive folder per key breaks on long unicode keys): a write's
predicate `batch = '<key>'` (SQL-escaped) selects the rows it replaces, so any key without control
characters works and other batches are never touched. Reads filter on `batch` with file statistics.
"""

from __future__ import annotations

import random
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

BATCH = "batch"
QUARANTINED = "quarantined"
COMMIT_ATTEMPTS = 8


def sql_string_literal(value: str) -> str:
    """`value` as a SQL string literal (quotes doubled); control characters are refused."""
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError(f"{value!r} contains control characters: not allowed in a batch key")
    return "'" + value.replace("'", "''") + "'"


def table_exists(table_path: Path) -> bool:
    return DeltaTable.is_deltatable(str(table_path))


def write_partition(table_path: Path, frame: pl.DataFrame, batch: str) -> pl.DataFrame:
    """Replace the rows of `batch` with `frame` in one commit (an empty frame removes them).

    Creates the table if needed and adds new columns. Returns the rows as stored (`batch` set).
    """
    predicate = f"{BATCH} = {sql_string_literal(batch)}"
    stored = frame.with_columns(pl.lit(batch, dtype=pl.String).alias(BATCH))
    data = stored.to_arrow()
    _with_conflict_retries(
        lambda: write_deltalake(str(table_path), data, mode="overwrite", predicate=predicate, schema_mode="merge")
    )
    return stored


def write_outcome(table_path: Path, kept: pl.DataFrame, quarantined: pl.DataFrame, batch: str) -> pl.DataFrame:
    """Replace the batch's kept and quarantined rows together, in one commit. Returns the kept rows as stored."""
    flagged = quarantined.drop(BATCH, strict=False)
    struct = pl.Struct(flagged.schema)
    rows = pl.concat(
        [
            kept.with_columns(pl.lit(None, dtype=struct).alias(QUARANTINED)),
            flagged.select(pl.struct(pl.all()).alias(QUARANTINED)),
        ],
        how="diagonal_relaxed",
    )
    write_partition(table_path, rows, batch)
    return kept.with_columns(pl.lit(batch, dtype=pl.String).alias(BATCH))


def append_rows(table_path: Path, frame: pl.DataFrame) -> None:
    """Append rows in one commit (creating the table if needed)."""
    data = frame.to_arrow()
    _with_conflict_retries(lambda: write_deltalake(str(table_path), data, mode="append", schema_mode="merge"))


def _with_conflict_retries(commit: Callable[[], None]) -> None:
    """Run a commit, retrying (jittered back-off) while concurrent writers win the race for the table."""
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            commit()
            return
        except DeltaError as error:
            if attempt == COMMIT_ATTEMPTS or not _is_conflict(error):
                raise
            time.sleep(random.uniform(0.05, 0.15) * attempt)


def _is_conflict(error: DeltaError) -> bool:
    """Whether a concurrent writer won the race, so the same commit may succeed on a retry.

    deltalake raises conflicts ("Metadata changed", "a concurrent transaction added new data", too many
    attempts) as `CommitFailedError`, and a lost race for a version number as a plain `DeltaError`.
    """
    text = str(error)
    return isinstance(error, CommitFailedError) or ("version" in text and "already exists" in text)


def _dataset(table_path: Path) -> ds.Dataset:
    try:
        table = DeltaTable(str(table_path))
    except TableNotFoundError:
        raise FileNotFoundError(f"no Delta table at {table_path}") from None
    # pyarrow's own local filesystem: deltalake's default Python file handler can abort the interpreter at
    # exit, and polars' scan_delta cannot open tables under folders with spaces or non-ASCII names.
    files = pafs.SubTreeFileSystem(str(table_path.resolve()), pafs.LocalFileSystem())
    return table.to_pyarrow_dataset(filesystem=files)


def _kept(lazy: pl.LazyFrame) -> pl.LazyFrame:
    if QUARANTINED not in lazy.collect_schema().names():
        return lazy
    return lazy.filter(pl.col(QUARANTINED).is_null()).drop(QUARANTINED)


def _quarantine(lazy: pl.LazyFrame) -> pl.LazyFrame | None:
    if QUARANTINED not in lazy.collect_schema().names():
        return None
    flagged = lazy.filter(pl.col(QUARANTINED).is_not_null()).select(BATCH, QUARANTINED).unnest(QUARANTINED)
    return flagged.select(pl.exclude(BATCH), pl.col(BATCH))


def _scan_all(table_path: Path) -> pl.LazyFrame:
    return pl.scan_pyarrow_dataset(_dataset(table_path))


def scan(table_path: Path) -> pl.LazyFrame:
    """A lazy scan of the table's kept rows: filters and column selections are pushed down to its files."""
    return _kept(_scan_all(table_path))


def scan_quarantine(table_path: Path) -> pl.LazyFrame | None:
    """A lazy scan of the table's quarantined rows (their own columns); None when it never quarantined."""
    return _quarantine(_scan_all(table_path))


def read_batches(table_path: Path, batches: list[str]) -> pl.DataFrame:
    """Kept rows of the given batches (an empty frame with the table's schema when there are none)."""
    return _kept(_scan_all(table_path).filter(pl.col(BATCH).is_in(list(batches)))).collect()


def read_partition(table_path: Path, batch: str) -> pl.DataFrame:
    return read_batches(table_path, [batch])


def read_quarantine(table_path: Path, batch: str) -> pl.DataFrame:
    """The batch's quarantined rows (an empty frame when there are none)."""
    lazy = scan_quarantine(table_path)
    return pl.DataFrame() if lazy is None else lazy.filter(pl.col(BATCH) == batch).collect()


def read_all(table_path: Path) -> pl.DataFrame:
    return scan(table_path).collect()


def batches_in(table_path: Path) -> list[str]:
    """The distinct batch keys of the table (kept or quarantined rows), sorted."""
    keys = _scan_all(table_path).select(pl.col(BATCH).unique()).collect()[BATCH]
    return sorted(keys.to_list())
