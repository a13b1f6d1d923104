"""The suites in expectations/ run as real GX validations: empty and valid batches pass, bad rows fail."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from agentinstruct_dagster import tables
from agentinstruct_dagster.config.errors import ConfigFileError
from agentinstruct_dagster.ids import content_id
from agentinstruct_dagster.project import expectations_dir
from agentinstruct_dagster.quality.gx_suites import shape_suite_path, suite_path_for, validate_frame

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


# One stage-specific broken row per suite: (column, bad value, expectation that must catch it).
BREAKAGES = {
    "raw_documents": ("chunk_index", 1, "expect_column_pair_values_a_to_be_greater_than_b"),
    "transformed_texts": ("text", "too short", "expect_column_value_lengths_to_be_between"),
    "seed_instructions": ("instruction", None, "expect_column_values_to_not_be_null"),
    "refined_instructions": ("round", 0, "expect_column_values_to_be_between"),
    "training_set": ("messages", [{"role": "user", "content": "q"}], "expect_column_values_to_match_regex"),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_violations_fail_with_examples(stage: str) -> None:
    good = valid_row(stage, 1)
    column, value, expectation = BREAKAGES[stage]
    rows = [good, good, {**valid_row(stage, 2), "id": "not-a-hash"}, {**valid_row(stage, 3), column: value}]
    outcome = validate_frame(tables.frame(rows, STAGES[stage]), suite_path_for(stage))
    assert not outcome.success and outcome.failed >= 3 and outcome.row_count == 4
    by_type = {(failure["type"], failure["column"]): failure for failure in outcome.failures}
    duplicate = by_type["expect_column_values_to_be_unique", "id"]
    assert duplicate["unexpected_count"] == 2 and duplicate["examples"] == [good["id"]]
    assert by_type["expect_column_values_to_match_regex", "id"]["examples"] == ["not-a-hash"]
    assert any(failure["type"] == expectation and column in failure["column"] for failure in outcome.failures)
    assert all(failure["examples"] for failure in outcome.failures)
    assert "not-a-hash" in outcome.markdown() and expectation in outcome.markdown()


def test_missing_column_reports_the_column_and_the_error() -> None:
    frame = tables.frame([valid_row("seed_instructions", 1)], tables.SEED_INSTRUCTIONS).drop("answer")
    outcome = validate_frame(frame, suite_path_for("seed_instructions"))
    assert not outcome.success
    columns = next(f for f in outcome.failures if f["type"] == "expect_table_columns_to_match_set")
    assert columns["examples"] == ["missing: answer"]
    assert any(f["column"] == "answer" and "does not exist" in f["error"] for f in outcome.failures if f["error"])


def test_long_examples_are_shortened() -> None:
    row = {**valid_row("seed_instructions", 1), "answer": "x" * 30_000}
    outcome = validate_frame(tables.frame([row], tables.SEED_INSTRUCTIONS), suite_path_for("seed_instructions"))
    (failure,) = outcome.failures
    assert failure["column"] == "answer" and len(failure["examples"][0]) == 200


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"name": "x"}', "needs an `expectations` list"),
        ('{"name": "x", "expectations": [{"type": "expect_no_such_thing", "kwargs": {}}]}', "#1"),
        (
            '{"name": "x", "expectations": [{"type": "expect_column_values_to_not_be_null", "kwargs": {}}]}',
            "#1",
        ),
    ],
)
def test_malformed_suite_names_the_file(tmp_path: Path, content: str, message: str) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text(content)
    with pytest.raises(ConfigFileError, match=rf"broken\.json.*{re.escape(message)}"):
        validate_frame(pl.DataFrame({"id": ["a"]}), broken)


def test_a_skill_suite_replaces_its_shape_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert shape_suite_path("fermi", "qa") == expectations_dir() / "shapes" / "qa.json"
    (tmp_path / "skills").mkdir()
    (tmp_path / "skills" / "fermi.json").write_text('{"expectations": []}')
    monkeypatch.setenv("AGENTINSTRUCT_EXPECTATIONS_DIR", str(tmp_path))
    assert shape_suite_path("fermi", "qa") == tmp_path / "skills" / "fermi.json"
    assert shape_suite_path("brain_teaser", "qa") == tmp_path / "shapes" / "qa.json"


def test_failing_examples_name_their_row_ids() -> None:
    frame = pl.DataFrame(
        {"id": ["a1", "b2", "c3"], "answer_chars": [5, 0, 9], "instruction_chars": [20, 20, 20], "round": [1, 1, 1]}
    )
    outcome = validate_frame(frame, shape_suite_path("fermi", "qa"))
    assert not outcome.success and "rows `b2`" in outcome.markdown() and "b2" in outcome.summary()
