"""The one place that assembles the Dagster `Definitions` from the catalogue and the active profile."""

from __future__ import annotations

import warnings

import dagster as dg

from agentinstruct_dagster.config.catalogue import Skill, load_catalogue
from agentinstruct_dagster.config.profiles import Profile, load_profile
from agentinstruct_dagster.pipeline.automation import (
    build_abandoned_runs_sensor,
    build_inbox_sensor,
    build_schedule,
    pipeline_job,
)
from agentinstruct_dagster.pipeline.checks import (
    build_batch_gate_check,
    build_suite_check,
)
from agentinstruct_dagster.pipeline.generation import Generation
from agentinstruct_dagster.pipeline.ingest_asset import raw_documents
from agentinstruct_dagster.pipeline.io_manager import DeltaIOManager
from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.pipeline.llm_resource import LLMResource
from agentinstruct_dagster.pipeline.maintenance import lake_maintenance_job, maintenance_schedule
from agentinstruct_dagster.pipeline.report_asset import build_quality_report
from agentinstruct_dagster.pipeline.skill_assets import build_stage_waves
from agentinstruct_dagster.pipeline.training_asset import build_training_set

# The start of the PreviewWarning Dagster gives for every asset check with a `partitions_def`.
PARTITIONED_CHECK_PREVIEW = r"Specifying a partitions_def on an AssetCheckSpec is currently in preview"


def selected_skills(profile: Profile, catalogue: dict[str, Skill]) -> list[Skill]:
    if profile.skills is None:
        return list(catalogue.values())
    unknown = sorted(set(profile.skills) - set(catalogue))
    if unknown:
        raise ValueError(f"profile {profile.name!r} selects unknown skill(s) {unknown}; known: {sorted(catalogue)}")
    return [catalogue[name] for name in profile.skills]


def build_definitions(profile: Profile | None = None, catalogue: dict[str, Skill] | None = None) -> dg.Definitions:
    profile = profile or load_profile()
    skills = selected_skills(profile, catalogue or load_catalogue())
    training_set = build_training_set(skills)
    # Each skill's stage assets carry their own checks (evaluated by their wave); these check the rest.
    with warnings.catch_warnings():
        # Partitioned asset checks are a Dagster preview the project relies on; the warning gives users nothing to do.
        warnings.filterwarnings("ignore", PARTITIONED_CHECK_PREVIEW, dg.PreviewWarning)
        checks = [
            build_suite_check(raw_documents.key, "raw_documents"),
            build_suite_check(training_set.key, "training_set"),
            build_batch_gate_check(skills),
        ]
    assets = [raw_documents, *build_stage_waves(skills), training_set, build_quality_report(skills)]
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[pipeline_job, lake_maintenance_job],
        # One process per run: the LLM resource (and the stand-in) is set up once per run, and Great
        # Expectations is imported once instead of once per step (a multiprocess run took 1m9s, mostly imports).
        executor=dg.in_process_executor,
        sensors=[build_inbox_sensor(profile), build_abandoned_runs_sensor(profile)],
        schedules=[build_schedule(profile), maintenance_schedule],
        resources=build_resources(profile),
    )


def build_resources(profile: Profile) -> dict[str, dg.ConfigurableResource | dg.ConfigurableIOManager]:
    """The run's resources, built from the profile once: one lake for tables, quarantine and call ledger."""
    lake = Lake.for_storage(profile.storage)
    key_variable = profile.llm.api_key_env
    return {
        "io_manager": DeltaIOManager(lake=lake),
        "lake": lake,
        "llm": LLMResource(
            profile=profile.name,
            settings=profile.llm,
            api_key=dg.EnvVar(key_variable) if key_variable else None,
            lake=lake,
        ),
        "generation": Generation(seed=profile.seed, ingest=profile.ingest, sandbox=profile.sandbox),
    }


defs = build_definitions()
