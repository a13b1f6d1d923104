"""Dagster backfills of batches: registered, queued and run by the Dagster daemon (one run process per batch,
several at once), visible in the UI's Backfills tab, and waited for with progress lines.

The backfill is the one the UI launches (an asset backfill of the chosen batches), built with Dagster's own
`PartitionBackfill`; the daemon's queue applies the instance's limits (one run per batch at a time, the
`llm` pool for model stages), so whatever else runs at the same time shares one provider budget.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, PartitionBackfill
from dagster._core.utils import make_new_backfill_id
from dagster._daemon.controller import all_daemons_live

from agentinstruct_dagster.pipeline.llm_resource import FRESH_CALLS_TAG
from agentinstruct_dagster.project import project_dir

BACKFILL_TAG = "dagster/backfill"
DEFINITIONS_MODULE = "agentinstruct_dagster.definitions"
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
DAEMON_START_SECONDS = 120
# A daemon counts as running if it beat within this (it beats every 30 s; Dagster's own tolerance is 30 min).
HEARTBEAT_TOLERANCE_SECONDS = 75


def launch_backfill(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    batch_keys: list[str],
    selection: list[dg.AssetKey],
    *,
    fresh_calls: bool = False,
) -> str:
    """Add an asset backfill of these (registered) batches for the daemon to run; returns its id."""
    backfill_id = make_new_backfill_id()
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id,
        asset_graph=defs.resolve_asset_graph(),
        partition_names=batch_keys,
        asset_selection=selection,
        backfill_timestamp=time.time(),
        tags={FRESH_CALLS_TAG: "true"} if fresh_calls else {},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=f"agentinstruct backfill of {len(batch_keys)} batch(es)",
        description=", ".join(batch_keys),
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill_id


@contextmanager
def daemon_running(instance: dg.DagsterInstance, log_path: Path) -> Iterator[None]:
    """A Dagster daemon for the instance: the one already running, or one started here (and stopped after)
    with its output in `log_path`."""
    if _daemon_live(instance):
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    workspace = project_dir() / "workspace.yaml"  # the UI's code location; an installed package loads the module
    target = ["-w", str(workspace)] if workspace.is_file() else ["-m", DEFINITIONS_MODULE]
    command = [str(Path(sys.executable).parent / "dagster-daemon"), "run", *target]
    with log_path.open("ab") as log:
        daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=project_dir())
    try:
        deadline = time.monotonic() + DAEMON_START_SECONDS
        while not _daemon_live(instance):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Dagster daemon did not start; its log: {log_path}")
            time.sleep(1)
        yield
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        instance.wipe_daemon_heartbeats()  # its last beats would otherwise pass for a running daemon


def _daemon_live(instance: dg.DagsterInstance) -> bool:
    return all_daemons_live(instance, heartbeat_tolerance_seconds=HEARTBEAT_TOLERANCE_SECONDS)


@dataclass
class BackfillProgress:
    """Where a backfill stands: its status and its runs' statuses by batch."""

    status: str
    runs: dict[str, dg.DagsterRun] = field(default_factory=dict)
    finished: bool = False

    def line(self, backfill_id: str, batches: int) -> str:
        counts: dict[str, int] = {}
        for run in self.runs.values():
            counts[run.status.value.lower()] = counts.get(run.status.value.lower(), 0) + 1
        waiting = batches - len(self.runs)
        parts = [f"{count} {status}" for status, count in sorted(counts.items())]
        parts += [f"{waiting} not launched yet"] if waiting else []
        return f"backfill {backfill_id} ({self.status.lower()}): " + ", ".join(parts)


def backfill_progress(instance: dg.DagsterInstance, backfill_id: str) -> BackfillProgress:
    backfill = instance.get_backfill(backfill_id)
    if backfill is None:
        raise LookupError(f"no backfill {backfill_id} in the instance")
    records = instance.get_run_records(dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}))
    runs: dict[str, dg.DagsterRun] = {}
    for record in sorted(records, key=lambda item: item.create_timestamp):  # a batch's latest run counts
        run = record.dagster_run
        runs[run.tags.get("dagster/partition", "")] = run
    finished = backfill.status in BULK_ACTION_TERMINAL_STATUSES and all(run.status in FINISHED for run in runs.values())
    return BackfillProgress(backfill.status.value, runs, finished)


def wait_for_backfill(
    instance: dg.DagsterInstance,
    backfill_id: str,
    batches: int,
    report: Callable[[str], Any],
    poll_seconds: float = 2.0,
) -> dict[str, dg.DagsterRun]:
    """Poll until the backfill and all its runs have ended, reporting a progress line whenever it changes;
    returns each batch's run."""
    last = ""
    while True:
        progress = backfill_progress(instance, backfill_id)
        line = progress.line(backfill_id, batches)
        if line != last:
            report(line)
            last = line
        if progress.finished:
            return progress.runs
        time.sleep(poll_seconds)


@dataclass(frozen=True)
class StoredRun:
    """A finished run read back from the instance, with what the run summary asks of an in-process result."""

    run: dg.DagsterRun
    all_events: list[dg.DagsterEvent]
    seconds: float

    @classmethod
    def load(cls, instance: dg.DagsterInstance, run: dg.DagsterRun) -> StoredRun:
        events = [entry.dagster_event for entry in instance.all_logs(run.run_id) if entry.dagster_event is not None]
        record = instance.get_run_record_by_id(run.run_id)
        started, ended = (record.start_time, record.end_time) if record else (None, None)
        return cls(run, events, (ended - started) if started and ended else 0.0)

    @property
    def success(self) -> bool:
        return self.run.status == dg.DagsterRunStatus.SUCCESS

    def get_asset_check_evaluations(self) -> list[Any]:
        evaluations = [event for event in self.all_events if event.event_type_value == "ASSET_CHECK_EVALUATION"]
        return [event.event_specific_data for event in evaluations]

    def get_asset_materialization_events(self) -> list[dg.DagsterEvent]:
        return [event for event in self.all_events if event.is_step_materialization]
