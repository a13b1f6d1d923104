"""Blocking Great Expectations checks per batch: a failure stops downstream stages. (GX itself is
imported only when a check runs, inside `validate_frame`.)

Each stage table has its suite (`expectations/<stage>.json`); each shape has one too
(`expectations/shapes/<shape>.json`, or a skill's own `expectations/skills/<skill>.json`), run on features
computed from a skill's refined rows (MCQ key among the options, tool calls naming a declared API, code that
parses and passed in the sandbox, ...).
"""

import dagster as dg
import polars as pl

from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.config.errors import ConfigFileError
from agentinstruct_dagster.pipeline.io_manager import markdown_table
from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.pipeline.partitions import batches
from agentinstruct_dagster.pipeline.skill_assets import RAW_DOCUMENTS_KEY, STAGES, stage_key
from agentinstruct_dagster.quality.gates import BATCH_GATE, STAGE_GATE, gate_suite_path, skill_figures, stage_figures
from agentinstruct_dagster.quality.gx_suites import (
    SuiteOutcome,
    load_suite_json,
    shape_suite_path,
    suite_path_for,
    validate_frame,
)
from agentinstruct_dagster.shapes import shape_for
from agentinstruct_dagster.tables import JUDGED_INSTRUCTIONS, REFINED_INSTRUCTIONS, SEED_INSTRUCTIONS

TRAINING_SET_KEY = dg.AssetKey("training_set")


def _result(outcome: SuiteOutcome, figures: pl.DataFrame | None = None) -> dg.AssetCheckResult:
    """The check result: passed or not, counts, the failures (with row ids) and any gate figures."""
    metadata = {
        "rows": outcome.row_count,
        "expectations_evaluated": outcome.evaluated,
        "expectations_failed": outcome.failed,
        "failures": dg.MetadataValue.md(outcome.markdown()),
    }
    if figures is not None:
        metadata["figures"] = dg.MetadataValue.md(markdown_table(figures, max_rows=figures.height, max_chars=60))
    return dg.AssetCheckResult(
        passed=outcome.success,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if outcome.success else outcome.summary(),
        metadata=metadata,
    )


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
        return _result(validate_frame(lake.read(asset_key, context.partition_key), suite_path_for(suite)))

    return suite_check


def shape_features(refined: pl.DataFrame, skill: Skill) -> pl.DataFrame:
    """One row per refined row: its id and round, and the features its shape computes."""
    shape = shape_for(skill)
    return pl.DataFrame(
        [{"id": row["id"], "round": row["round"], **shape.features(row)} for row in refined.iter_rows(named=True)]
    )


def build_skill_check(skill: Skill) -> dg.AssetChecksDefinition:
    """Validates one batch of a skill's refined rows against its shape suite, which must exist when the
    definitions load."""
    suite_path = shape_suite_path(skill.skill, skill.shape)
    if not suite_path.is_file():
        raise ConfigFileError(f"skill `{skill.skill}` of shape `{skill.shape}` has no expectation suite {suite_path}")
    asset_key = stage_key(skill, "refined_instructions")

    @dg.asset_check(
        asset=asset_key,
        name=f"gx_{skill.shape}_shape",
        blocking=True,
        partitions_def=batches,
        description=f"Great Expectations suite {suite_path.parent.name}/{suite_path.name} on the features of "
        f"this batch's `{skill.shape}` rows.",
    )
    def skill_check(context: dg.AssetCheckExecutionContext, lake: Lake) -> dg.AssetCheckResult:
        refined = lake.read(asset_key, context.partition_key)
        if refined.is_empty():
            return dg.AssetCheckResult(passed=True, metadata={"rows": 0, "note": "no rows in this batch"})
        return _result(validate_frame(shape_features(refined, skill), suite_path))

    return skill_check


def build_stage_gate_check(skill: Skill, stage: str) -> dg.AssetChecksDefinition:
    """Bounds the share of a stage's rows quarantined in a batch, in all and for its commonest reason
    (`expectations/gates/stage.json`, or the skill's own `<skill>.stage.json`)."""
    asset_key = stage_key(skill, stage)
    suite_path = gate_suite_path(STAGE_GATE, skill.skill)

    @dg.asset_check(
        asset=asset_key,
        name="quarantine_gate",
        blocking=True,
        partitions_def=batches,
        description=f"Batch gate {suite_path.parent.name}/{suite_path.name}: the share of this batch's rows "
        "quarantined, in all and for the commonest reason.",
    )
    def stage_gate(context: dg.AssetCheckExecutionContext, lake: Lake) -> dg.AssetCheckResult:
        batch = context.partition_key
        figures = stage_figures(
            asset_key.to_user_string(),
            lake.read(asset_key, batch),
            lake.read_quarantine(asset_key, batch),
            min_rows=load_suite_json(suite_path).get("meta", {}).get("min_rows_for_shares", 1),
        )
        outcome = validate_frame(figures, suite_path, index_column="stage")
        return _result(outcome, figures=figures)

    return stage_gate


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
        return _result(SuiteOutcome.combined(outcomes), figures=pl.DataFrame(rows))

    return batch_gates


def _ran(lake: Lake, skill: Skill, batch: str) -> bool:
    """Whether the skill ran on this batch (skills left out of a run did not): its first stage, from which every
    later one derives, kept or quarantined rows of the batch."""
    first = STAGES[0]
    key = stage_key(skill, first.name)
    kept, rejected = lake.read_if_exists(key, batch, first.schema), lake.read_quarantine(key, batch)
    return not (kept.is_empty() and rejected.is_empty())
