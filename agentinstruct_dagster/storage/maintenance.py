"""Keeping Delta tables small in files and log: compaction, vacuum and checkpoints, with deltalake's own commands.

Every stage write is a commit per batch and the call ledger appends a commit every few seconds, so tables collect
many small files and log entries. `maintain_table` compacts a table's small files, vacuums the files no version
within the retention needs, then writes a checkpoint and deletes the log entries older than the table's log
retention (`delta.logRetentionDuration`, 30 days by default).

The vacuum runs before the checkpoint and in deltalake's "full" mode: a checkpoint drops expired tombstones, so
the files they named would escape a tombstone-only ("lite") vacuum; a full vacuum also finds files no commit
references (left by a writer killed mid-commit), and deletes them too once older than the retention.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
from deltalake import DeltaTable

from agentinstruct_dagster.storage.location import Location, as_location, join, object_store

DELTA_LOG = "_delta_log"
# Delta's default `delta.deletedFileRetentionDuration`: the time travel window a reader may rely on.
DEFAULT_RETENTION_HOURS = 168
DEFAULT_TARGET_FILE_MB = 64
MB = 1024 * 1024


@dataclass(frozen=True)
class TableMaintenance:
    """What maintenance did to one table."""

    location: str
    version_before: int
    version_after: int
    files_compacted: int  # small files compaction replaced
    files_written: int  # files compaction wrote in their place
    files_vacuumed: int  # files vacuum deleted (see `maintain_table`)


def maintain_table(
    location: str,
    *,
    retention_hours: int = DEFAULT_RETENTION_HOURS,
    target_file_mb: int = DEFAULT_TARGET_FILE_MB,
    enforce_retention: bool = True,
    storage_options: dict[str, str] | None = None,
) -> TableMaintenance:
    """Compact, vacuum and checkpoint the Delta table at `location` (a path or an object-store URI).

    Vacuum deletes unreferenced files older than `retention_hours`. With `enforce_retention` (the default)
    deltalake refuses a retention below the table's `delta.deletedFileRetentionDuration` (168 h unless set),
    so a reader still running on an older version never loses a file; turn it off only for tests.
    `files_vacuumed` is deltalake's count: with a retention below the table's, a later run counts again the
    files an earlier run deleted, until their tombstones expire.
    """
    if retention_hours < 0 or target_file_mb <= 0:
        raise ValueError(f"need retention_hours >= 0 and target_file_mb > 0, got {retention_hours}, {target_file_mb}")
    table = DeltaTable(location, storage_options=storage_options)
    version_before = table.version()
    compaction = table.optimize.compact(target_size=target_file_mb * MB)
    vacuumed = table.vacuum(
        retention_hours=retention_hours,
        dry_run=False,
        enforce_retention_duration=enforce_retention,
        full=True,
    )
    table.create_checkpoint()
    table.cleanup_metadata()
    return TableMaintenance(
        location=location,
        version_before=version_before,
        version_after=table.version(),
        files_compacted=compaction["numFilesRemoved"],
        files_written=compaction["numFilesAdded"],
        files_vacuumed=len(vacuumed),
    )


def find_delta_tables(root: str | Path, storage_options: Mapping[str, str] | None = None) -> list[Location]:
    """Every Delta table under `root` (a folder holding a `_delta_log` folder), sorted; links are not followed.

    FileNotFoundError if `root` is not a folder (on an object store: holds no object).
    """
    location = as_location(root)
    if not isinstance(location, Path):
        return _find_stored_tables(location, storage_options)
    root = location
    if not root.is_dir():
        raise FileNotFoundError(f"no lake folder at {root}")
    tables = []
    for folder, subfolders, _files in os.walk(root):
        if DELTA_LOG in subfolders and not os.path.islink(os.path.join(folder, DELTA_LOG)):
            tables.append(Path(folder))
            subfolders.clear()  # a table's own folders hold its files, not other tables
    return sorted(tables)


def _find_stored_tables(root: str, storage_options: Mapping[str, str] | None) -> list[Location]:
    """`find_delta_tables` on an object store: the folders whose objects include `_delta_log/...`, outermost."""
    objects = object_store(root, storage_options).get_file_info(pafs.FileSelector("", recursive=True))
    if not objects:
        raise FileNotFoundError(f"no lake at {root}: nothing is stored there")
    folders = {
        tuple(parts[:index])
        for parts in (info.path.split("/") for info in objects if info.type == pafs.FileType.File)
        for index, part in enumerate(parts[:-1])
        if part == DELTA_LOG
    }
    outermost = [folder for folder in folders if not any(folder[:size] in folders for size in range(len(folder)))]
    return sorted(join(root, *folder) for folder in outermost)
