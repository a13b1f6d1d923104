"""Blocking Great Expectations checks per batch: a failure stops downstream stages. (GX itself is
imported only when a check runs, inside `validate_frame`.)

Each stage table has its suite (`expectations/<stage>.json`); each skill also has one for its shape
(`expectations/skills/<skill>.json`), run on features computed from its refined rows (MCQ key among the
options, tool calls naming a declared API, code that parses and passed in the sandbox, ...).
"""

import dagster as dg
import polars as pl

from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.config.errors import ConfigFileError
from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.pipeline.partitions import batches
from agentinstruct_dagster.pipeline.skill_assets import stage_key
from agentinstruct_dagster.quality.gx_suites import SuiteOutcome, skill_suite_path, suite_path_for, validate_frame
from agentinstruct_dagster.shapes import shape_for


def _result(outcome: SuiteOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=outcome.success,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "rows": outcome.row_count,
            "expectations_evaluated": outcome.evaluated,
            "expectations_failed": outcome.failed,
            "failures": dg.MetadataValue.md(outcome.markdown()),
        },
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
    """Validates one batch of a skill's refined rows against `expectations/skills/<skill>.json`, which must
    exist when the definitions load."""
    suite_path = skill_suite_path(skill.skill)
    if not suite_path.is_file():
        raise ConfigFileError(
            f"skill `{skill.skill}` has no expectation suite {suite_path}; copy one of shape `{skill.shape}` "
            f"from {suite_path.parent} (its `meta.shape` says which) and adapt it"
        )
    asset_key = stage_key(skill, "refined_instructions")

    @dg.asset_check(
        asset=asset_key,
        name=f"gx_{skill.shape}_shape",
        blocking=True,
        partitions_def=batches,
        description=f"Great Expectations suite expectations/skills/{skill.skill}.json on the features of "
        f"this batch's `{skill.shape}` rows.",
    )
    def skill_check(context: dg.AssetCheckExecutionContext, lake: Lake) -> dg.AssetCheckResult:
        refined = lake.read(asset_key, context.partition_key)
        if refined.is_empty():
            return dg.AssetCheckResult(passed=True, metadata={"rows": 0, "note": "no rows in this batch"})
        return _result(validate_frame(shape_features(refined, skill), suite_path))

    return skill_check
