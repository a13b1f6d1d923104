"""The pipeline job, the inbox sensor and the nightly schedule."""

import time
from pathlib import Path

import dagster as dg

from agentinstruct_dagster.config.profiles import Profile
from agentinstruct_dagster.pipeline.partitions import BATCHES, batches

JOB_NAME = "agentinstruct_pipeline"
FINAL_ASSET = dg.AssetKey("training_set")

pipeline_job = dg.define_asset_job(
    JOB_NAME,
    selection=dg.AssetSelection.all(),
    partitions_def=batches,
    description="All stages of every skill, for one batch.",
)


def settled_batch_folders(inbox: Path, settle_seconds: float, now: float | None = None) -> list[str]:
    """Batch folders of the inbox whose newest file is older than `settle_seconds` (copying has ended)."""
    if not inbox.is_dir():
        return []
    now = time.time() if now is None else now
    ready = []
    for folder in sorted(path for path in inbox.iterdir() if path.is_dir() and not path.name.startswith((".", "_"))):
        newest = max((item.stat().st_mtime for item in folder.rglob("*")), default=folder.stat().st_mtime)
        if now - newest >= settle_seconds:
            ready.append(folder.name)
    return ready


def build_inbox_sensor(profile: Profile) -> dg.SensorDefinition:
    @dg.sensor(
        name="inbox_sensor",
        job=pipeline_job,
        minimum_interval_seconds=profile.schedule.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Registers each new folder of the inbox ({profile.storage.inbox}) as a batch and runs it.",
    )
    def inbox_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        known = set(context.instance.get_dynamic_partitions(BATCHES))
        folders = settled_batch_folders(profile.storage.inbox_path, profile.schedule.inbox_settle_seconds)
        new = [folder for folder in folders if folder not in known]
        return dg.SensorResult(
            run_requests=[dg.RunRequest(partition_key=batch, run_key=f"inbox:{batch}") for batch in new],
            dynamic_partitions_requests=[batches.build_add_request(new)] if new else [],
        )

    return inbox_sensor


def unmaterialized_batches(instance: dg.DagsterInstance) -> list[str]:
    """Registered batches whose training set has not been materialized yet."""
    done = instance.get_materialized_partitions(FINAL_ASSET)
    return [batch for batch in instance.get_dynamic_partitions(BATCHES) if batch not in done]


def build_schedule(profile: Profile) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="catch_up_schedule",
        job=pipeline_job,
        cron_schedule=profile.schedule.cron,
        execution_timezone=profile.schedule.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Runs every registered batch whose training set is not materialized yet.",
    )
    def catch_up(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        tick = context.scheduled_execution_time.isoformat()
        return [
            dg.RunRequest(partition_key=batch, run_key=f"schedule:{tick}:{batch}")
            for batch in unmaterialized_batches(context.instance)
        ]

    return catch_up
