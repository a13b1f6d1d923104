"""Running batches from the command line: register them as partitions and execute the pipeline job."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from agentinstruct_dagster.pipeline.automation import JOB_NAME, unmaterialized_batches
from agentinstruct_dagster.pipeline.partitions import BATCHES
from agentinstruct_dagster.project import project_dir

DEFAULT_DAGSTER_HOME = "data/dagster_home"
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def dagster_instance() -> dg.DagsterInstance:
    """The persistent instance (runs show in the UI); DAGSTER_HOME defaults to the project's data folder."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(project_dir() / DEFAULT_DAGSTER_HOME)))
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists():
        settings.write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.get()


def register_batches(instance: dg.DagsterInstance, batch_keys: list[str]) -> None:
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
    """Register and run each batch in turn, one Dagster run per batch, recorded in the instance.

    With `fresh_calls`, the call ledger's cached answers are ignored and every model call is made again;
    with `skills`, only those skills run (all by default).
    """
    selection = skill_selection(defs, skills) if skills else None
    register_batches(instance, batch_keys)
    job = defs.resolve_job_def(JOB_NAME)
    run_config: dict = dict(QUIET_LOGS)
    if fresh_calls:
        profile = defs.resources["llm"].profile
        run_config["resources"] = {"llm": {"config": {"profile": profile, "fresh_calls": True}}}
    return {
        batch: job.execute_in_process(
            partition_key=batch,
            instance=instance,
            raise_on_error=False,
            run_config=run_config,
            asset_selection=selection,
        )
        for batch in dict.fromkeys(batch_keys)
    }


def batches_to_backfill(instance: dg.DagsterInstance, requested: list[str], missing: bool) -> list[str]:
    return list(dict.fromkeys([*requested, *(unmaterialized_batches(instance) if missing else [])]))
