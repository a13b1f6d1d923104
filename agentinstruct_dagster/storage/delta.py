"""A thin layer over `deltalake`: replace exactly one batch of a table in one commit, read batches back.

A stage's outcome for a batch, its kept rows and its quarantined rows, lives in one table and is replaced in
one commit (Delta has no transactions across tables): a quarantined row has its fields in the struct column
`quarantined` and nulls elsewhere; a kept row has `quarantined` null. Reads return kept rows unless they ask
for the quarantine.

Tables are not physically partitioned (a Hive folder per key breaks on long unicode keys): a write's
predicate `batch = '<key>'` (SQL-escaped) selects the rows it replaces, so any key without control
characters works and other batches are never touched. Reads filter on `batch` with file statistics.

A table is a local folder or an object-store URI (`storage/location.py`); `storage_options` reach the object
store (credentials otherwise come from the environment).
"""

from __future__ import annotations

import random
import time
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path

import polars as pl
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from agentinstruct_dagster.storage.location import Location, as_location

BATCH = "batch"
QUARANTINED = "quarantined"
COMMIT_ATTEMPTS = 8
Options = Mapping[str, str] | None


def sql_string_literal(value: str) -> str:
    """`value` as a SQL string literal (quotes doubled); control characters are refused."""
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError(f"{value!r} contains control characters: not allowed in a batch key")
    return "'" + value.replace("'", "''") + "'"


def _uri(table_path: Location) -> str:
    return str(as_location(table_path))


def _options(storage_options: Options) -> dict[str, str] | None:
    return dict(storage_options) if storage_options else None


def table_exists(table_path: Location, storage_options: Options = None) -> bool:
    return DeltaTable.is_deltatable(_uri(table_path), storage_options=_options(storage_options))


def write_partition(
    table_path: Location, frame: pl.DataFrame, batch: str, storage_options: Options = None
) -> pl.DataFrame:
    """Replace the rows of `batch` with `frame` in one commit (an empty frame removes them).

    Creates the table if needed and adds new columns. Returns the rows as stored (`batch` set).
    """
    predicate = f"{BATCH} = {sql_string_literal(batch)}"
    stored = frame.with_columns(pl.lit(batch, dtype=pl.String).alias(BATCH))
    data = stored.to_arrow()
    _with_conflict_retries(
        lambda: write_deltalake(
            _uri(table_path),
            data,
            mode="overwrite",
            predicate=predicate,
            schema_mode="merge",
            storage_options=_options(storage_options),
        )
    )
    return stored


def write_outcome(
    table_path: Location, kept: pl.DataFrame, quarantined: pl.DataFrame, batch: str, storage_options: Options = None
) -> pl.DataFrame:
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
    write_partition(table_path, rows, batch, storage_options)
    return kept.with_columns(pl.lit(batch, dtype=pl.String).alias(BATCH))


def append_rows(table_path: Location, frame: pl.DataFrame, storage_options: Options = None) -> None:
    """Append rows in one commit (creating the table if needed)."""
    data = frame.to_arrow()
    options = _options(storage_options)
    _with_conflict_retries(
        lambda: write_deltalake(_uri(table_path), data, mode="append", schema_mode="merge", storage_options=options)
    )


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


def _dataset(table_path: Location, storage_options: Options) -> ds.Dataset:
    location = as_location(table_path)
    try:
        table = DeltaTable(str(location), storage_options=_options(storage_options))
    except TableNotFoundError:
        raise FileNotFoundError(f"no Delta table at {location}") from None
    if not isinstance(location, Path):  # an object store: deltalake's own, with the table's options
        return table.to_pyarrow_dataset()
    # pyarrow's own local filesystem: deltalake's default Python file handler can abort the interpreter at
    # exit, and polars' scan_delta cannot open tables under folders with spaces or non-ASCII names.
    files = pafs.SubTreeFileSystem(str(location.resolve()), pafs.LocalFileSystem())
    return table.to_pyarrow_dataset(filesystem=files)


def _kept(lazy: pl.LazyFrame) -> pl.LazyFrame:
    if QUARANTINED not in lazy.collect_schema().names():
        return lazy
    # Not `quarantined IS NULL`: pushed down to deltalake's file statistics, that skips every file written
    # before the table had the column (older batches would vanish from reads). A struct field is not pushed down.
    return lazy.filter(pl.col(QUARANTINED).struct.field("reason").is_null()).drop(QUARANTINED)


def _quarantine(lazy: pl.LazyFrame) -> pl.LazyFrame | None:
    if QUARANTINED not in lazy.collect_schema().names():
        return None
    flagged = lazy.filter(pl.col(QUARANTINED).is_not_null()).select(BATCH, QUARANTINED).unnest(QUARANTINED)
    return flagged.select(pl.exclude(BATCH), pl.col(BATCH))


def _scan_all(table_path: Location, storage_options: Options) -> pl.LazyFrame:
    return pl.scan_pyarrow_dataset(_dataset(table_path, storage_options))


def scan(table_path: Location, storage_options: Options = None) -> pl.LazyFrame:
    """A lazy scan of the table's kept rows: filters and column selections are pushed down to its files."""
    return _kept(_scan_all(table_path, storage_options))


def scan_quarantine(table_path: Location, storage_options: Options = None) -> pl.LazyFrame | None:
    """A lazy scan of the table's quarantined rows (their own columns); None when it never quarantined."""
    return _quarantine(_scan_all(table_path, storage_options))


def read_batches(table_path: Location, batches: list[str], storage_options: Options = None) -> pl.DataFrame:
    """Kept rows of the given batches (an empty frame with the table's schema when there are none)."""
    return _kept(_scan_all(table_path, storage_options).filter(pl.col(BATCH).is_in(list(batches)))).collect()


def read_partition(table_path: Location, batch: str, storage_options: Options = None) -> pl.DataFrame:
    return read_batches(table_path, [batch], storage_options)


def read_quarantine(table_path: Location, batch: str, storage_options: Options = None) -> pl.DataFrame:
    """The batch's quarantined rows (an empty frame when there are none)."""
    lazy = scan_quarantine(table_path, storage_options)
    return pl.DataFrame() if lazy is None else lazy.filter(pl.col(BATCH) == batch).collect()


def read_all(table_path: Location, storage_options: Options = None) -> pl.DataFrame:
    return scan(table_path, storage_options).collect()


def batches_in(table_path: Location, storage_options: Options = None) -> list[str]:
    """The distinct batch keys of the table (kept or quarantined rows), sorted."""
    keys = _scan_all(table_path, storage_options).select(pl.col(BATCH).unique()).collect()[BATCH]
    return sorted(keys.to_list())
