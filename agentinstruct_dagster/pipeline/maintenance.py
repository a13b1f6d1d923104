"""The `lake_maintenance` job and its weekly schedule: compact, vacuum and checkpoint every Delta table of the lake.

Maintenance touches no table while another run is in progress: the schedule skips its tick when a run is
in progress (STARTING, STARTED or CANCELING), and the op checks again before each table and fails, naming the
runs, if one has started. A run that starts while a table is being maintained is still safe: Delta's
optimistic concurrency fails the later of two conflicting commits (a stage writer retries its own; a compaction
that lost is reported as that table's failure), and vacuum deletes nothing younger than the retention (168 h by
default). Runs of the job carry the tag `agentinstruct/maintenance`, to find them or to limit them.
"""

from dataclasses import fields

import dagster as dg
from deltalake.exceptions import DeltaError
from pydantic import Field

from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.runs import ACTIVE_RUN_STATUSES
from agentinstruct_dagster.storage.location import relative_name
from agentinstruct_dagster.storage.maintenance import (
    DEFAULT_RETENTION_HOURS,
    DEFAULT_TARGET_FILE_MB,
    TableMaintenance,
    find_delta_tables,
    maintain_table,
)

JOB_NAME = "lake_maintenance"
MAINTENANCE_TAG = "agentinstruct/maintenance"
WEEKLY = "0 4 * * 0"  # Sundays 04:00 UTC, after the nightly catch-up schedule
TOTALS = [field.name for field in fields(TableMaintenance) if field.name.startswith("files_")]


class MaintenanceConfig(dg.Config):
    retention_hours: int = Field(
        default=DEFAULT_RETENTION_HOURS, ge=0, description="Vacuum deletes unreferenced files older than this."
    )
    target_file_mb: int = Field(default=DEFAULT_TARGET_FILE_MB, gt=0, description="Compaction's target file size.")
    enforce_retention: bool = Field(
        default=True,
        description=f"Refuse a retention below {DEFAULT_RETENTION_HOURS} h, which readers still running may need; "
        "turn off only for tests.",
    )


def runs_in_progress(instance: dg.DagsterInstance, excluding: str | None = None) -> list[dg.DagsterRun]:
    """The runs in progress on the instance, but the run `excluding`."""
    records = instance.get_run_records(dg.RunsFilter(statuses=ACTIVE_RUN_STATUSES))
    return [record.dagster_run for record in records if record.dagster_run.run_id != excluding]


def _describe(runs: list[dg.DagsterRun]) -> str:
    return ", ".join(f"{run.job_name} {run.run_id} ({run.status.value})" for run in runs)


def _refuse_if_runs_in_progress(context: dg.OpExecutionContext) -> None:
    if busy := runs_in_progress(context.instance, excluding=context.run_id):
        raise dg.Failure(f"runs in progress: {_describe(busy)}; maintenance starts no table while another run is")


def _check_retention(config: MaintenanceConfig) -> None:
    if config.enforce_retention and config.retention_hours < DEFAULT_RETENTION_HOURS:
        raise dg.Failure(
            f"retention_hours={config.retention_hours} is below {DEFAULT_RETENTION_HOURS} h: vacuum could delete "
            "files a reader still running needs; set enforce_retention: false to allow it"
        )


@dg.op(out=dg.Out(dg.Nothing), description="Compacts, vacuums and checkpoints every Delta table of the lake.")
def maintain_lake(context: dg.OpExecutionContext, config: MaintenanceConfig, lake: Lake) -> dg.Output:
    _check_retention(config)
    done: list[TableMaintenance] = []
    failed: dict[str, str] = {}
    for table in find_delta_tables(lake.location, lake.options):
        _refuse_if_runs_in_progress(context)
        name = relative_name(lake.location, table)
        try:
            result = maintain_table(
                str(table),
                retention_hours=config.retention_hours,
                target_file_mb=config.target_file_mb,
                enforce_retention=config.enforce_retention,
                storage_options=lake.options or None,
            )
        except (DeltaError, OSError) as error:
            failed[name] = str(error)
            context.log.error(f"{name}: maintenance failed: {error}")
            continue
        done.append(result)
        context.log.info(
            f"{name}: compacted {result.files_compacted} files into {result.files_written}, vacuumed "
            f"{result.files_vacuumed}, version {result.version_before} -> {result.version_after}"
        )
    metadata = {"tables": len(done), **{total: sum(getattr(r, total) for r in done) for total in TOTALS}}
    if failed:
        raise dg.Failure(f"maintenance failed for {sorted(failed)}", metadata={**metadata, "failures": failed})
    return dg.Output(None, metadata=metadata)


@dg.job(name=JOB_NAME, tags={MAINTENANCE_TAG: "true"}, description=maintain_lake.description)
def lake_maintenance_job() -> None:
    maintain_lake()


@dg.schedule(
    name="lake_maintenance_schedule",
    job=lake_maintenance_job,
    cron_schedule=WEEKLY,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Weekly lake maintenance; a tick is skipped while any run is in progress.",
)
def maintenance_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    if busy := runs_in_progress(context.instance):
        return dg.SkipReason(f"runs in progress: {_describe(busy)}")
    return dg.RunRequest()
