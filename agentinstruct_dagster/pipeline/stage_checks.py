"""The blocking checks of each skill's stage assets, evaluated by the stage's wave on the rows it writes.

Every stage asset has its table's Great Expectations suite (`expectations/<stage>.json`) and a quarantine gate
(`expectations/gates/stage.json`, or the skill's `<skill>.stage.json`); refined instructions also have the
shape suite (`expectations/shapes/<shape>.json`, or the skill's `expectations/skills/<skill>.json`) run on
features of the rows (MCQ key among the options, tool calls naming a declared API, code that parses and
passed in the sandbox, ...). A wave evaluates a skill's checks in a thread as soon as that skill's stage is
done, while the other skills' calls go on; a failed check stops everything downstream of the stage.
"""

import dagster as dg
import polars as pl

from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.config.errors import ConfigFileError
from agentinstruct_dagster.pipeline.io_manager import markdown_table
from agentinstruct_dagster.quality.gates import STAGE_GATE, gate_suite_path, stage_figures
from agentinstruct_dagster.quality.gx_suites import (
    SuiteOutcome,
    load_suite_json,
    shape_suite_path,
    suite_path_for,
    validate_frame,
)
from agentinstruct_dagster.shapes import shape_for

SHAPE_STAGE = "refined_instructions"
QUARANTINE_GATE = "quarantine_gate"


def check_result(
    outcome: SuiteOutcome,
    figures: pl.DataFrame | None = None,
    *,
    asset_key: dg.AssetKey | None = None,
    check_name: str | None = None,
) -> dg.AssetCheckResult:
    """The check result: passed or not, counts, the failures (with row ids) and any gate figures; a step that
    evaluates several checks names the asset and check."""
    metadata = {
        "rows": outcome.row_count,
        "expectations_evaluated": outcome.evaluated,
        "expectations_failed": outcome.failed,
        "failures": dg.MetadataValue.md(outcome.markdown()),
    }
    if figures is not None:
        metadata["figures"] = dg.MetadataValue.md(markdown_table(figures, max_rows=figures.height, max_chars=60))
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=outcome.success,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if outcome.success else outcome.summary(),
        metadata=metadata,
    )


def shape_check_name(skill: Skill) -> str:
    return f"gx_{skill.shape}_shape"


def stage_check_specs(skill: Skill, stage: str, key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    """The checks of one skill's stage asset; a skill whose shape suite is missing fails to load."""
    gate = gate_suite_path(STAGE_GATE, skill.skill)
    specs = [
        dg.AssetCheckSpec(
            f"gx_{stage}",
            asset=key,
            blocking=True,
            description=f"Great Expectations suite expectations/{stage}.json on this batch's rows.",
        ),
        dg.AssetCheckSpec(
            QUARANTINE_GATE,
            asset=key,
            blocking=True,
            description=f"Batch gate {gate.parent.name}/{gate.name}: the share of this batch's rows quarantined, "
            "in all and for the commonest reason.",
        ),
    ]
    if stage == SHAPE_STAGE:
        suite = shape_suite_path(skill.skill, skill.shape)
        if not suite.is_file():
            raise ConfigFileError(f"skill `{skill.skill}` of shape `{skill.shape}` has no expectation suite {suite}")
        specs.append(
            dg.AssetCheckSpec(
                shape_check_name(skill),
                asset=key,
                blocking=True,
                description=f"Great Expectations suite {suite.parent.name}/{suite.name} on the features of this "
                f"batch's `{skill.shape}` rows.",
            )
        )
    return specs


def shape_features(refined: pl.DataFrame, skill: Skill) -> pl.DataFrame:
    """One row per refined row: its id and round, and the features its shape computes."""
    shape = shape_for(skill)
    return pl.DataFrame(
        [{"id": row["id"], "round": row["round"], **shape.features(row)} for row in refined.iter_rows(named=True)]
    )


def evaluate_stage_checks(
    skill: Skill, stage: str, key: dg.AssetKey, kept: pl.DataFrame, quarantined: pl.DataFrame
) -> list[dg.AssetCheckResult]:
    """Each check of the stage asset on the batch's kept and quarantined rows."""
    gate = gate_suite_path(STAGE_GATE, skill.skill)
    figures = stage_figures(
        key.to_user_string(),
        kept,
        quarantined,
        min_rows=load_suite_json(gate).get("meta", {}).get("min_rows_for_shares", 1),
    )
    results = [
        check_result(validate_frame(kept, suite_path_for(stage)), asset_key=key, check_name=f"gx_{stage}"),
        check_result(
            validate_frame(figures, gate, index_column="stage"), figures, asset_key=key, check_name=QUARANTINE_GATE
        ),
    ]
    if stage == SHAPE_STAGE:
        name = shape_check_name(skill)
        if kept.is_empty():
            note = {"rows": 0, "note": "no rows in this batch"}
            results.append(dg.AssetCheckResult(asset_key=key, check_name=name, passed=True, metadata=note))
        else:
            suite = shape_suite_path(skill.skill, skill.shape)
            outcome = validate_frame(shape_features(kept, skill), suite)
            results.append(check_result(outcome, asset_key=key, check_name=name))
    return results
