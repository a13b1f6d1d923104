"""The pipeline job, the inbox sensor, the nightly schedule and the sensor that fails abandoned runs."""

import json
import logging
import time
from dataclasses import dataclass

import dagster as dg

from agentinstruct_dagster.config.profiles import Profile
from agentinstruct_dagster.inbox import MISSING_FOLDER_HINT, InboxFolder, InboxListing, batch_folder, list_inbox
from agentinstruct_dagster.pipeline.partitions import BATCHES, batches
from agentinstruct_dagster.pipeline.skill_assets import LLM_POOL
from agentinstruct_dagster.storage.lease import LeaseHolder, lease_root, release_abandoned_leases
from agentinstruct_dagster.storage.location import storage_options

JOB_NAME = "agentinstruct_pipeline"
FINAL_ASSET = dg.AssetKey("training_set")

pipeline_job = dg.define_asset_job(
    JOB_NAME,
    selection=dg.AssetSelection.all(),
    description="All stages of every skill, for one batch (partitioned by batch, as its assets are).",
)


UNFINISHED_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dataclass(frozen=True)
class InboxTick:
    """What one tick of the inbox sensor found: the settled folders to run (new, changed since their last run,
    or registered and never run), the registered ones it adopts without a run, and the folders that wait."""

    new: list[InboxFolder]
    changed: list[InboxFolder]
    never_run: list[InboxFolder]
    adopted: list[InboxFolder]
    unchanged: list[InboxFolder]
    settling: list[InboxFolder]

    @property
    def to_run(self) -> list[InboxFolder]:
        return [*self.new, *self.changed, *self.never_run]

    def cursor(self, last_runs: dict[str, str], registered: set[str]) -> str:
        """The fingerprint each registered batch last ran (or was adopted) at, as the sensor's next cursor."""
        kept = {batch: last for batch, last in last_runs.items() if batch in registered}
        kept.update({folder.name: folder.fingerprint for folder in [*self.to_run, *self.adopted]})
        return json.dumps(kept, sort_keys=True, separators=(",", ":"))


def read_cursor(cursor: str | None, log: logging.Logger) -> dict[str, str]:
    """The inbox sensor's cursor: batch → fingerprint of its folder when it last ran. A cursor that is not such a
    JSON object (set by hand) counts as empty, which is safe: see `plan_inbox_tick`."""
    if not cursor:
        return {}
    try:
        loaded = json.loads(cursor)
    except json.JSONDecodeError:
        loaded = None
    if isinstance(loaded, dict) and all(isinstance(value, str) for value in loaded.values()):
        return loaded
    log.warning(f"inbox sensor cursor ignored (not a JSON object of batch to fingerprint): {cursor[:200]!r}")
    return {}


def plan_inbox_tick(
    instance: dg.DagsterInstance,
    listing: InboxListing,
    registered: set[str],
    last_runs: dict[str, str],
    settle_seconds: float,
) -> InboxTick:
    """Sort the inbox's folders for one tick. A settled folder is run when it is new, or registered and its
    fingerprint differs from the one it last ran at. A registered batch with no fingerprint in the cursor (the
    first tick after upgrading, or a batch registered by the CLI or in the UI) is adopted, its fingerprint recorded
    without a run, if its training set is materialized or a run of it is queued or in progress; otherwise it is
    run like a new folder. A folder that is not settled waits."""
    now = time.time()
    settled = [folder for folder in listing.folders if folder.settled(settle_seconds, now)]
    unknown = [folder for folder in settled if folder.name in registered and folder.name not in last_runs]
    covered = materialized_or_running(instance) if unknown else set()
    known = [folder for folder in settled if folder.name in last_runs]
    return InboxTick(
        new=[folder for folder in settled if folder.name not in registered],
        changed=[folder for folder in known if last_runs[folder.name] != folder.fingerprint],
        never_run=[folder for folder in unknown if folder.name not in covered],
        adopted=[folder for folder in unknown if folder.name in covered],
        unchanged=[folder for folder in known if last_runs[folder.name] == folder.fingerprint],
        settling=[folder for folder in listing.folders if not folder.settled(settle_seconds, now)],
    )


def materialized_or_running(instance: dg.DagsterInstance) -> set[str]:
    """Batches whose training set is materialized or that have a run queued or in progress."""
    running = instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED_RUN_STATUSES))
    return set(instance.get_materialized_partitions(FINAL_ASSET)) | {
        run.tags["dagster/partition"] for run in running if "dagster/partition" in run.tags
    }


def inbox_skip_reason(
    inbox: str, tick: InboxTick, listing: InboxListing, registered: set[str], settle_seconds: float
) -> str:
    """Why a tick requested nothing, naming the folders that wait, are refused or are missing."""
    parts = [
        f"no new or changed batch folder in {inbox} ({len(registered)} registered, {len(tick.unchanged)} unchanged)"
    ]
    if tick.adopted:
        adopted = ", ".join(repr(folder.name) for folder in tick.adopted)
        parts.append(f"adopted without a run (training set materialized or a run under way): {adopted}")
    if tick.settling:
        now = time.time()
        parts.append(
            f"still settling (to stay unchanged for {settle_seconds:g} s): "
            + ", ".join(f"{folder.name!r} changed {max(now - folder.changed, 0):.0f} s ago" for folder in tick.settling)
        )
    if listing.refused:
        parts.append("refused (reasons in the log): " + ", ".join(map(repr, listing.refused)))
    listed = {folder.name for folder in listing.folders} | set(listing.refused)
    missing = sorted(registered - listed)
    if missing:
        parts.append(f"registered without a folder: {', '.join(map(repr, missing))} ({MISSING_FOLDER_HINT})")
    return "; ".join(parts)


def build_inbox_sensor(profile: Profile) -> dg.SensorDefinition:
    inbox = profile.storage.inbox_path
    settle_seconds = profile.schedule.inbox_settle_seconds

    @dg.sensor(
        name="inbox_sensor",
        job=pipeline_job,
        minimum_interval_seconds=profile.schedule.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Registers each new folder of the inbox ({inbox}) as a batch and runs it, and runs a registered "
        f"batch again when its files change (added, removed, resized or touched), once its folder has been unchanged "
        f"for {settle_seconds:g} s. The cursor holds each batch's fingerprint at its last run. A folder whose name is "
        "not a valid batch key, or that is a link, is skipped with the reason in the log.",
    )
    def inbox_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        last_runs = read_cursor(context.cursor, context.log)
        listing = list_inbox(inbox, storage_options(inbox, profile.storage.storage_options))
        for reason in listing.refused.values():
            context.log.warning(f"inbox folder skipped: {reason}")
        registered = set(context.instance.get_dynamic_partitions(BATCHES))
        tick = plan_inbox_tick(context.instance, listing, registered, last_runs, settle_seconds)
        registered |= {folder.name for folder in tick.new}
        for folder in tick.changed:
            context.log.info(f"batch {folder.name!r}: files changed since its last run, run requested")
        for folder in tick.never_run:
            context.log.info(f"batch {folder.name!r}: registered, never run and not materialized, run requested")
        for folder in tick.adopted:
            context.log.info(f"batch {folder.name!r}: adopted at its current files without a run")
        new_keys = [folder.name for folder in tick.new]
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(partition_key=folder.name, run_key=f"inbox:{folder.name}:{folder.fingerprint}")
                for folder in tick.to_run
            ],
            dynamic_partitions_requests=[batches.build_add_request(new_keys)] if new_keys else [],
            skip_reason=None
            if tick.to_run
            else inbox_skip_reason(str(inbox), tick, listing, registered, settle_seconds),
            cursor=tick.cursor(last_runs, registered),
        )

    return inbox_sensor


def unmaterialized_batches(instance: dg.DagsterInstance) -> list[str]:
    """Registered batches whose training set has not been materialized yet."""
    done = instance.get_materialized_partitions(FINAL_ASSET)
    return [batch for batch in instance.get_dynamic_partitions(BATCHES) if batch not in done]


def build_schedule(profile: Profile) -> dg.ScheduleDefinition:
    inbox = profile.storage.inbox_path
    options = storage_options(inbox, profile.storage.storage_options)

    @dg.schedule(
        name="catch_up_schedule",
        job=pipeline_job,
        cron_schedule=profile.schedule.cron,
        execution_timezone=profile.schedule.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Runs every registered batch whose training set is not materialized yet; a registered batch "
        "whose inbox folder is missing (added in the UI, or deleted) or whose key is invalid is skipped, by name.",
    )
    def catch_up(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
        tick = context.scheduled_execution_time.isoformat()
        waiting = unmaterialized_batches(context.instance)
        requests, skipped = [], []
        for batch in waiting:
            try:
                batch_folder(inbox, batch, options)
            except ValueError as error:
                context.log.warning(f"registered batch skipped: {error}")
                skipped.append(str(error))
                continue
            requests.append(dg.RunRequest(partition_key=batch, run_key=f"schedule:{tick}:{batch}"))
        if requests:
            return requests
        if not waiting:
            return dg.SkipReason("every registered batch's training set is materialized")
        return dg.SkipReason(
            f"no registered batch to run; {len(skipped)} not materialized but skipped: " + " | ".join(skipped)
        )

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
