"""One run per batch at a time: a lease on the batch in the lake, held as an OS lock on a file.

The lease of a batch is `<lake root>/leases/<sha256 of the batch key>.json`, locked with `flock` for as long as
the batch runs and holding who runs it (batch, pid, host, start time, Dagster run id). A second process asking
for a held lease fails at once with `BatchBusyError`. The kernel drops the lock when its process ends however
it ends (kill -9 included), so a stale lease never blocks: the next process takes it over, and the holder it
finds still written in the file is one that died mid-run. The file itself is never deleted (deleting a locked
file would let two processes lock two different files of the same name). The lock serializes processes that
share the lake on one machine, or on a network file system with working `flock` (NFSv4).

An object store has no file locks, so the leases of a lake there live in a local folder (`lease_root`) under
`$DAGSTER_HOME`: they serialize the processes of one machine (one Dagster instance); across machines, Dagster's
run queue (at most one run per `dagster/partition`) is what keeps a batch to one run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from agentinstruct_dagster.project import project_dir
from agentinstruct_dagster.storage.location import as_location

LEASE_FOLDER = "leases"
OBJECT_STORE_LEASES = "lake_leases"
DEFAULT_DAGSTER_HOME = "data/dagster_home"  # as in runs.py, where the CLI sets DAGSTER_HOME to it when unset
# A sweep of abandoned leases locks each lease for an instant; a run asking for it then tries again meanwhile.
LOCK_PATIENCE_SECONDS = 0.5


class BatchBusyError(RuntimeError):
    """The batch is being run by another process (or has a run in progress in Dagster)."""


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds (or held) a batch's lease."""

    batch: str
    run_id: str
    pid: int
    host: str
    started: str

    @classmethod
    def this_process(cls, batch: str, run_id: str) -> LeaseHolder:
        started = datetime.now(UTC).isoformat(timespec="seconds")
        return cls(batch=batch, run_id=run_id, pid=os.getpid(), host=socket.gethostname(), started=started)


def lease_root(lake_root: str | Path) -> Path:
    """The local folder holding a lake's leases: a local lake itself; for a lake on an object store, a folder of
    `$DAGSTER_HOME` (the project's `data/dagster_home` when unset) named by a hash of the lake's URI."""
    location = as_location(lake_root)
    if isinstance(location, Path):
        return location
    home = Path(os.environ.get("DAGSTER_HOME") or project_dir() / DEFAULT_DAGSTER_HOME)
    return home / OBJECT_STORE_LEASES / hashlib.sha256(location.encode()).hexdigest()[:16]


def lease_path(root: str | Path, batch: str) -> Path:
    """The batch's lease file; hashed, so any batch key makes a safe file name."""
    return Path(root) / LEASE_FOLDER / f"{hashlib.sha256(batch.encode()).hexdigest()}.json"


@contextmanager
def batch_lease(root: str | Path, batch: str, run_id: str) -> Iterator[LeaseHolder | None]:
    """Hold the batch's lease for the block, or raise BatchBusyError at once if another process holds it.

    Yields the previous holder if it died without releasing the lease (its Dagster run was cut short), else None.
    """
    path = lease_path(root, batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _lock(descriptor, LOCK_PATIENCE_SECONDS):
            raise BatchBusyError(_busy_message(batch, path, _read_holder(descriptor)))
        abandoned = _read_holder(descriptor)
        _write_holder(descriptor, LeaseHolder.this_process(batch, run_id))
        try:
            yield abandoned
        finally:
            _write_holder(descriptor, None)
    finally:
        os.close(descriptor)  # releases the lock


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block, waiting for it if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def release_abandoned_leases(root: str | Path) -> list[LeaseHolder]:
    """Clear every lease whose holder died without releasing it, and return those holders."""
    abandoned = []
    for path in sorted((Path(root) / LEASE_FOLDER).glob("*.json")):
        descriptor = os.open(path, os.O_RDWR)
        try:
            if _lock(descriptor) and (holder := _read_holder(descriptor)) is not None:
                abandoned.append(holder)
                _write_holder(descriptor, None)
        finally:
            os.close(descriptor)
    return abandoned


def _lock(descriptor: int, patience_seconds: float = 0.0) -> bool:
    """Take the file's exclusive lock, trying for at most `patience_seconds`; False if another process has it."""
    deadline = time.monotonic() + patience_seconds
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        else:
            return True


def _read_holder(descriptor: int) -> LeaseHolder | None:
    """The holder written in the lease file; None if it is empty (released) or unreadable."""
    raw = os.pread(descriptor, os.fstat(descriptor).st_size, 0)
    try:
        return LeaseHolder(**json.loads(raw)) if raw.strip() else None
    except (ValueError, TypeError):
        return None


def _write_holder(descriptor: int, holder: LeaseHolder | None) -> None:
    os.ftruncate(descriptor, 0)
    if holder is not None:
        os.pwrite(descriptor, json.dumps(asdict(holder)).encode(), 0)


def _busy_message(batch: str, path: Path, holder: LeaseHolder | None) -> str:
    who = (
        f"pid {holder.pid} on {holder.host} since {holder.started} (Dagster run {holder.run_id})"
        if holder is not None
        else "another process"
    )
    return (
        f"batch {batch!r} is being run by {who}; wait for that run to end and start again "
        f"(only one run per batch at a time; the lease is {path}, released when that process ends)"
    )
