"""The stage suites in expectations/ run as real GX validations: empty and valid batches pass, bad rows fail."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from agentinstruct_dagster import tables
from agentinstruct_dagster.config.errors import ConfigFileError
from agentinstruct_dagster.ids import content_id
from agentinstruct_dagster.quality.gx_suites import suite_path_for, validate_frame

STAGES = {
    "raw_documents": tables.RAW_DOCUMENTS,
    "transformed_texts": tables.TRANSFORMED_TEXTS,
    "seed_instructions": tables.SEED_INSTRUCTIONS,
    "refined_instructions": tables.REFINED_INSTRUCTIONS,
    "training_set": tables.TRAINING_SET,
}
PROVENANCE = {"agent": "a", "prompt_version": "v1", "model": "m", "prompt_tokens": 10, "completion_tokens": 5}


def valid_row(stage: str, n: int) -> dict:
    ids = {name: content_id(name, n) for name in ("id", "parent_id", "seed_id", "doc_id")}
    text = "A passage about lighthouses and the Fresnel lens, long enough."
    qa = {"instruction": "Which lens made the beam visible farther?", "answer": "The Fresnel lens."}
    rows = {
        "raw_documents": {
            "id": ids["id"],
            "doc_id": ids["doc_id"],
            "source": "a.txt",
            "content_type": "txt",
            "title": "t",
            "text": text,
            "chunk_index": 0,
            "chunk_count": 1,
            "char_start": 0,
            "char_end": len(text),
            "doc_chars": len(text),
        },
        "transformed_texts": {**ids, "skill": "rc", "text": text, **PROVENANCE},
        "seed_instructions": {
            **ids,
            "skill": "rc",
            "transformation": "poem",
            "instruction_type": "inference",
            "text": text,
            **qa,
            **PROVENANCE,
        },
        "refined_instructions": {
            **ids,
            "skill": "rc",
            "instruction_type": "inference",
            "round": 1,
            "goals": ["flip_answer"],
            "suggestions": ["s"],
            "text": text,
            **qa,
            **PROVENANCE,
        },
        "training_set": {
            **ids,
            "skill": "rc",
            "split": "rc",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        },
    }
    return {**rows[stage], "batch": "b"}


@pytest.mark.parametrize("stage", list(STAGES))
def test_empty_and_valid_batches_pass(stage: str) -> None:
    assert validate_frame(tables.frame([], STAGES[stage]), suite_path_for(stage)).success
    outcome = validate_frame(
        tables.frame([valid_row(stage, n) for n in range(3)], STAGES[stage]), suite_path_for(stage)
    )
    assert outcome.success, outcome.markdown()
    assert outcome.row_count == 3 and outcome.evaluated >= 10


@pytest.mark.parametrize("stage", list(STAGES))
def test_violations_fail_with_examples(stage: str) -> None:
    good = valid_row(stage, 1)
    bad = tables.frame([good, good, {**valid_row(stage, 2), "id": "not-a-hash"}], STAGES[stage])
    outcome = validate_frame(bad, suite_path_for(stage))
    assert not outcome.success and outcome.failed >= 2
    failed = {failure["expectation"] for failure in outcome.failures}
    assert {"expect_column_values_to_be_unique", "expect_column_values_to_match_regex"} <= failed
    assert "not-a-hash" in outcome.markdown()


def test_missing_column_fails() -> None:
    frame = tables.frame([valid_row("seed_instructions", 1)], tables.SEED_INSTRUCTIONS).drop("answer")
    assert not validate_frame(frame, suite_path_for("seed_instructions")).success


def test_malformed_suite_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigFileError, match=r"broken\.json"):
        validate_frame(pl.DataFrame(), broken)
    empty = tmp_path / "empty.json"
    empty.write_text('{"name": "x"}')
    with pytest.raises(ConfigFileError, match="expectations"):
        validate_frame(pl.DataFrame(), empty)
