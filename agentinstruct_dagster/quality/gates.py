"""Batch-level quality gates: figures about a whole batch that Great Expectations suites in
`expectations/gates/` bound (thresholds are data). Row rules drop bad rows; gates fail a batch whose rows,
taken together, say the data is not usable: too much quarantined, too little yield, too many duplicates,
too narrow a type mix, answers too short.

A skill may replace a gate suite with `expectations/gates/<skill>.<gate>.json`.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from agentinstruct_dagster.project import expectations_dir

STAGE_GATE = "stage"
BATCH_GATE = "batch"
EXAMPLE_IDS = 3


def gate_suite_path(gate: str, skill: str | None = None) -> Path:
    """`expectations/gates/<skill>.<gate>.json` when the skill has its own, else `expectations/gates/<gate>.json`."""
    folder = expectations_dir() / "gates"
    override = folder / f"{skill}.{gate}.json"
    return override if skill and override.is_file() else folder / f"{gate}.json"


def stage_figures(stage: str, kept: pl.DataFrame, quarantined: pl.DataFrame, min_rows: int) -> pl.DataFrame:
    """One row: how many of a stage's rows were attempted, kept and quarantined, and its commonest reason.
    Below `min_rows` attempted the shares are null (a share of two rows is noise), which the suite passes."""
    attempted = kept.height + quarantined.height
    reasons = (
        quarantined.group_by("reason")
        .agg(rows=pl.len(), example_ids=pl.col("id").sort().head(EXAMPLE_IDS))
        .sort(["rows", "reason"], descending=[True, False])
    )
    top = reasons.row(0, named=True) if reasons.height else {"reason": None, "rows": 0, "example_ids": []}
    return pl.DataFrame(
        {
            "stage": [stage],
            "attempted": [attempted],
            "kept": [kept.height],
            "quarantined": [quarantined.height],
            "quarantine_share": [quarantined.height / attempted if attempted >= min_rows else None],
            "top_reason": [top["reason"]],
            "top_reason_share": [top["rows"] / attempted if attempted >= min_rows else None],
            "top_reason_examples": [", ".join(top["example_ids"])],
        }
    )


def skill_figures(
    skill: str,
    *,
    chunks: int,
    seeds: pl.DataFrame,
    candidates: int,
    curation_quarantine: pl.DataFrame,
    pairs: pl.DataFrame,
    judged: pl.DataFrame,
) -> dict[str, object]:
    """One skill's batch figures: yield per source chunk, duplicate share, instruction-type coverage and the
    median lengths of the instructions and answers that became training pairs."""
    reasons = curation_quarantine["reason"] if curation_quarantine.height else pl.Series([], dtype=pl.String)
    duplicates = int(reasons.str.starts_with("duplicate_").sum())
    types_seeded = seeds["instruction_type"].n_unique() if seeds.height else 0
    types_kept = judged["instruction_type"].n_unique() if judged.height else 0
    return {
        "skill": skill,
        "source_chunks": chunks,
        "pairs": pairs.height,
        "pairs_per_chunk": pairs.height / chunks if chunks else 0.0,
        "final_rounds": candidates,
        "duplicates": duplicates,
        "duplicate_share": duplicates / candidates if candidates else 0.0,
        "contaminated": int((reasons == "contaminated").sum()),
        "types_seeded": types_seeded,
        "types_in_pairs": types_kept,
        "type_coverage": types_kept / types_seeded if types_seeded else 0.0,
        "median_instruction_chars": _median_chars(judged, "instruction"),
        "median_answer_chars": _median_chars(judged, "answer"),
    }


def _median_chars(frame: pl.DataFrame, column: str) -> float:
    return float(frame[column].str.len_chars().median() or 0) if frame.height else 0.0
