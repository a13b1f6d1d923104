"""Running batches from the command line: register them as partitions and execute the pipeline job."""

from __future__ import annotations

import copy
import os
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from agentinstruct_dagster.config.profiles import Profile
from agentinstruct_dagster.inbox import validate_batch_key
from agentinstruct_dagster.pipeline.automation import JOB_NAME, fail_abandoned_runs, unmaterialized_batches
from agentinstruct_dagster.pipeline.llm_resource import FRESH_CALLS_TAG
from agentinstruct_dagster.pipeline.partitions import BATCHES
from agentinstruct_dagster.pipeline.skill_assets import LLM_POOL
from agentinstruct_dagster.project import project_dir
from agentinstruct_dagster.storage.lease import (
    BatchBusyError,
    batch_lease,
    exclusive_lock,
    release_abandoned_leases,
)

DEFAULT_DAGSTER_HOME = "data/dagster_home"
INIT_LOCK = ".agentinstruct-init.lock"
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
PARTITION_TAG = "dagster/partition"
# The run queue starts no run of a batch while another run of it is in progress (CLI runs included).
ONE_RUN_PER_BATCH = {"key": PARTITION_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
# The daemon marks failed the runs whose worker died (resuming none) or that never started.
RUN_MONITORING = {
    "enabled": True,
    "start_timeout_seconds": 180,
    "cancel_timeout_seconds": 180,
    "max_resume_run_attempts": 0,
    "poll_interval_seconds": 30,
}
INSTANCE_DEFAULTS = {"telemetry": {"enabled": False}, "run_monitoring": RUN_MONITORING}
# Pools are claimed by steps (a run waits for a slot only while it runs a model stage).
POOL_DEFAULTS = {"granularity": "op"}
ACTIVE_RUN_STATUSES = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def dagster_instance(profile: Profile | None = None) -> dg.DagsterInstance:
    """The persistent instance (runs show in the UI); DAGSTER_HOME defaults to the project's data folder. With
    a profile, the `llm` pool's limit is set to its `llm.parallel_runs`."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(project_dir() / DEFAULT_DAGSTER_HOME)))
    home.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(home / INIT_LOCK):  # processes creating a new instance's databases at once collide
        write_instance_settings(home / "dagster.yaml")
        instance = dg.DagsterInstance.get()
        if profile is not None:
            set_pool_limit(instance, profile)
        return instance


def set_pool_limit(instance: dg.DagsterInstance, profile: Profile) -> None:
    """Model stages of at most `llm.parallel_runs` runs call the provider at once (the Dagster pool `llm`)."""
    instance.event_log_storage.set_concurrency_slots(LLM_POOL, profile.llm.parallel_runs)


def write_instance_settings(path: Path) -> None:
    """Add the project's instance settings that `dagster.yaml` lacks, keeping every key it sets; the file is
    replaced atomically, so a concurrent process never reads half of it."""
    existing = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    settings = instance_settings(existing)
    if settings != existing:
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(yaml.safe_dump(settings, sort_keys=False))
        os.replace(temporary, path)


def instance_settings(existing: dict[str, Any]) -> dict[str, Any]:
    """`existing` with the project's defaults for what it does not set: no telemetry, run monitoring, and a
    tag concurrency limit of one in-progress run per batch (`dagster/partition`)."""
    settings = copy.deepcopy(existing)
    for section, defaults in INSTANCE_DEFAULTS.items():
        settings[section] = {**defaults, **(settings.get(section) or {})}
    concurrency = settings["concurrency"] = settings.get("concurrency") or {}
    concurrency["pools"] = {**POOL_DEFAULTS, **(concurrency.get("pools") or {})}
    holder = _tag_limits_holder(settings)
    limits = holder.get("tag_concurrency_limits") or []
    if not any(limit.get("key") == PARTITION_TAG for limit in limits):
        holder["tag_concurrency_limits"] = [*limits, ONE_RUN_PER_BATCH]
    return settings


def _tag_limits_holder(settings: dict[str, Any]) -> dict[str, Any]:
    """Where the settings keep their tag concurrency limits: a legacy `run_queue` / `run_coordinator` section
    that already has some (Dagster refuses them in two places), else `concurrency: runs:`."""
    for legacy in (settings.get("run_queue"), (settings.get("run_coordinator") or {}).get("config")):
        if legacy and "tag_concurrency_limits" in legacy:
            return legacy
    concurrency = settings["concurrency"] = settings.get("concurrency") or {}
    runs = concurrency["runs"] = concurrency.get("runs") or {}
    return runs


def register_batches(instance: dg.DagsterInstance, batch_keys: list[str]) -> None:
    """Add the batches not registered yet; BatchKeyError, before registering any, if a key is not valid."""
    for key in batch_keys:
        validate_batch_key(key)
    known = set(instance.get_dynamic_partitions(BATCHES))
    new = [key for key in dict.fromkeys(batch_keys) if key not in known]
    if new:
        instance.add_dynamic_partitions(BATCHES, new)


def skill_selection(defs: dg.Definitions, skills: list[str]) -> list[dg.AssetKey]:
    """The assets a run of only these skills materializes: documents, the skills' stages, the training set."""
    keys = [key for assets_def in defs.assets or [] for key in assets_def.keys]
    known = {key.path[0] for key in keys if len(key.path) > 1}
    unknown = sorted(set(skills) - known)
    if unknown:
        raise ValueError(f"unknown skill(s) {unknown}; the catalogue has {sorted(known)}")
    return [key for key in keys if len(key.path) == 1 or key.path[0] in skills]


def run_batches(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    batch_keys: list[str],
    *,
    fresh_calls: bool = False,
    skills: list[str] | None = None,
) -> dict[str, dg.ExecuteInProcessResult]:
    """Register and run each batch in turn, one Dagster run per batch, recorded in the instance; an invalid
    batch key raises BatchKeyError before anything is registered.

    With `fresh_calls`, the call ledger's cached answers are ignored and every model call is made again;
    with `skills`, only those skills run (all by default). Each batch runs holding its lease in the lake
    (`storage/lease.py`): BatchBusyError at once if another process runs it or a Dagster run of it is in
    progress; runs whose process died holding a lease are marked failed first.
    """
    selection = skill_selection(defs, skills) if skills else None
    for key in batch_keys:
        validate_batch_key(key)
    job = defs.resolve_job_def(JOB_NAME)
    tags = {FRESH_CALLS_TAG: "true"} if fresh_calls else {}
    lake = defs.resources["lake"].lease_root()
    fail_abandoned_runs(instance, release_abandoned_leases(lake))
    results = {}
    for batch in dict.fromkeys(batch_keys):
        run_id = str(uuid.uuid4())
        with batch_lease(lake, batch, run_id) as abandoned:
            fail_abandoned_runs(instance, [abandoned] if abandoned else [])
            refuse_if_run_in_progress(instance, batch)
            register_batches(instance, [batch])  # under the lease: two processes never register one key at once
            results[batch] = job.execute_in_process(
                partition_key=batch,
                instance=instance,
                raise_on_error=False,
                run_config=QUIET_LOGS,
                tags=tags,
                asset_selection=selection,
                run_id=run_id,
            )
    return results



def refuse_if_run_in_progress(instance: dg.DagsterInstance, batch: str) -> None:
    """BatchBusyError if a run of the batch launched through Dagster (UI, sensor, schedule) is in progress."""
    records = instance.get_run_records(dg.RunsFilter(statuses=ACTIVE_RUN_STATUSES, tags={PARTITION_TAG: batch}))
    if records:
        run = records[0].dagster_run
        raise BatchBusyError(
            f"batch {batch!r} has Dagster run {run.run_id} in progress ({run.status.value}); wait for it to end, "
            "or terminate it in the UI if its process is gone"
        )


def batches_to_backfill(instance: dg.DagsterInstance, requested: list[str], missing: bool) -> list[str]:
    return list(dict.fromkeys([*requested, *(unmaterialized_batches(instance) if missing else [])]))
