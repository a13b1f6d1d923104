"""Blocking Great Expectations checks per batch of the documents and the training set: a failure stops what
is downstream. (Each skill's stage assets carry their own checks, evaluated by their wave: stage_checks.py.)
GX itself is imported only when a check runs, inside `validate_frame`.
"""

import dagster as dg
import polars as pl

from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.pipeline.partitions import batches
from agentinstruct_dagster.pipeline.skill_assets import RAW_DOCUMENTS_KEY, STAGES, stage_key
from agentinstruct_dagster.pipeline.stage_checks import check_result
from agentinstruct_dagster.quality.gates import BATCH_GATE, gate_suite_path, skill_figures
from agentinstruct_dagster.quality.gx_suites import (
    SuiteOutcome,
    suite_path_for,
    validate_frame,
)
from agentinstruct_dagster.tables import JUDGED_INSTRUCTIONS, REFINED_INSTRUCTIONS, SEED_INSTRUCTIONS

TRAINING_SET_KEY = dg.AssetKey("training_set")


def build_suite_check(asset_key: dg.AssetKey, suite: str) -> dg.AssetChecksDefinition:
    """Validates one batch of `asset_key`'s table against `expectations/<suite>.json`."""

    @dg.asset_check(
        asset=asset_key,
        name=f"gx_{suite}",
        blocking=True,
        partitions_def=batches,
        description=f"Great Expectations suite expectations/{suite}.json on this batch's rows.",
    )
    def suite_check(context: dg.AssetCheckExecutionContext, lake: Lake) -> dg.AssetCheckResult:
        return check_result(validate_frame(lake.read(asset_key, context.partition_key), suite_path_for(suite)))

    return suite_check


def build_batch_gate_check(skills: list[Skill]) -> dg.AssetChecksDefinition:
    """Bounds each skill's figures for the batch: yield per source chunk, duplicate share, type coverage and
    answer lengths (`expectations/gates/batch.json`, or a skill's own `<skill>.batch.json`). A batch where no
    skill made a training pair fails."""

    @dg.asset_check(
        asset=TRAINING_SET_KEY,
        name="batch_gates",
        blocking=True,
        partitions_def=batches,
        description="Batch gates expectations/gates/batch.json per skill: training pairs per source chunk, "
        "duplicate share, instruction-type coverage, answer lengths; fails when the batch has no training pair.",
    )
    def batch_gates(context: dg.AssetCheckExecutionContext, lake: Lake) -> dg.AssetCheckResult:
        batch = context.partition_key
        pairs = lake.read(TRAINING_SET_KEY, batch)
        chunks = lake.read(RAW_DOCUMENTS_KEY, batch).height
        rows, outcomes = [], []
        for skill in skills:
            judged_key = stage_key(skill, "judged_instructions")
            if not _ran(lake, skill, batch):
                continue
            refined = lake.read_if_exists(stage_key(skill, "refined_instructions"), batch, REFINED_INSTRUCTIONS)
            figures = skill_figures(
                skill.skill,
                chunks=chunks,
                seeds=lake.read_if_exists(stage_key(skill, "seed_instructions"), batch, SEED_INSTRUCTIONS),
                candidates=refined["seed_id"].n_unique(),
                curation_quarantine=lake.read_quarantine(judged_key, batch),
                pairs=pairs.filter(pl.col("skill") == skill.skill),
                judged=lake.read_if_exists(judged_key, batch, JUDGED_INSTRUCTIONS),
            )
            rows.append(figures)
            outcomes.append(
                validate_frame(pl.DataFrame([figures]), gate_suite_path(BATCH_GATE, skill.skill), "skill")
            )
        if not rows:
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.ERROR,
                description="batch gate: no skill ran on this batch, so it has no training pair",
                metadata={"training_pairs": pairs.height},
            )
        return check_result(SuiteOutcome.combined(outcomes), figures=pl.DataFrame(rows))

    return batch_gates


def _ran(lake: Lake, skill: Skill, batch: str) -> bool:
    """Whether the skill ran on this batch (skills left out of a run did not): its first stage, from which every
    later one derives, kept or quarantined rows of the batch."""
    first = STAGES[0]
    key = stage_key(skill, first.name)
    kept, rejected = lake.read_if_exists(key, batch, first.schema), lake.read_quarantine(key, batch)
    return not (kept.is_empty() and rejected.is_empty())
