"""The pipeline job, the inbox sensor, the nightly schedule and the sensor that fails abandoned runs."""


import dagster as dg

from agentinstruct_dagster.config.profiles import Profile
from agentinstruct_dagster.inbox import BatchKeyError, inbox_batches, validate_batch_key
from agentinstruct_dagster.pipeline.partitions import BATCHES, batches
from agentinstruct_dagster.pipeline.skill_assets import LLM_POOL
from agentinstruct_dagster.storage.lease import LeaseHolder, lease_root, release_abandoned_leases
from agentinstruct_dagster.storage.location import storage_options

JOB_NAME = "agentinstruct_pipeline"
FINAL_ASSET = dg.AssetKey("training_set")

pipeline_job = dg.define_asset_job(
    JOB_NAME,
    selection=dg.AssetSelection.all(),
    partitions_def=batches,
    description="All stages of every skill, for one batch.",
)


def build_inbox_sensor(profile: Profile) -> dg.SensorDefinition:
    @dg.sensor(
        name="inbox_sensor",
        job=pipeline_job,
        minimum_interval_seconds=profile.schedule.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Registers each new folder of the inbox ({profile.storage.inbox}) as a batch and runs it; "
        "a folder whose name is not a valid batch key, or that is a link, is skipped with the reason in the log.",
    )
    def inbox_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        known = set(context.instance.get_dynamic_partitions(BATCHES))
        folders, refused = inbox_batches(
            profile.storage.inbox_path,
            profile.schedule.inbox_settle_seconds,
            storage_options=storage_options(profile.storage.inbox_path, profile.storage.storage_options),
        )
        for reason in refused:
            context.log.warning(f"inbox folder skipped: {reason}")
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
        requests = []
        for batch in unmaterialized_batches(context.instance):
            try:
                validate_batch_key(batch)
            except BatchKeyError as error:
                context.log.warning(f"registered batch skipped: {error}")
                continue
            requests.append(dg.RunRequest(partition_key=batch, run_key=f"schedule:{tick}:{batch}"))
        return requests

    return catch_up

def fail_abandoned_runs(instance: dg.DagsterInstance, holders: list[LeaseHolder]) -> None:
    """Mark failed the runs whose process died holding their batch's lease (killed mid-way), if still open;
    then free the pool slots that ended runs still hold."""
    for holder in holders:
        run = instance.get_run_by_id(holder.run_id)
        if run is not None and not run.is_finished:
            message = f"its process (pid {holder.pid} on {holder.host}, since {holder.started}) ended mid-run"
            instance.report_run_failed(run, message)
    free_slots_of_ended_runs(instance)


def free_slots_of_ended_runs(instance: dg.DagsterInstance) -> list[str]:
    """Give back the `llm` pool slots held by runs that have ended (a run killed mid-step never gives its slot
    back, and every later model stage would wait for it forever); returns those runs' ids."""
    storage = instance.event_log_storage
    holders = {slot.run_id for slot in storage.get_concurrency_info(LLM_POOL).claimed_slots}
    ended = []
    for run_id in sorted(holders):
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            storage.free_concurrency_slots_for_run(run_id)
            ended.append(run_id)
    return ended


def build_abandoned_runs_sensor(profile: Profile) -> dg.SensorDefinition:
    """Marks failed, within a minute, the runs whose process died holding their batch's lease (killed mid-way),
    and frees the lease: the run queue then starts the batch's next run."""

    @dg.sensor(
        name="abandoned_runs_sensor",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Marks failed the runs whose process was killed mid-way, and frees their batches.",
    )
    def abandoned_runs(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        holders = release_abandoned_leases(lease_root(profile.storage.root_path))
        fail_abandoned_runs(context.instance, holders)
        if not holders:
            return dg.SkipReason("no run was abandoned (a pool slot of an ended run, if any, was freed)")
        return dg.SkipReason(
            "marked failed the abandoned run(s) " + ", ".join(f"{h.run_id} (batch {h.batch!r})" for h in holders)
        )

    return abandoned_runs
