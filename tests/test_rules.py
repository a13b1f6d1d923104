"""Row-level rules: failing rows go to quarantine with the rule's name; passing rows lose context keys."""

from __future__ import annotations

from agentinstruct_dagster.quality.rules import length_between, no_refusal, required
from agentinstruct_dagster.stages.common import StageOutput

RULES = [
    required("instruction", "answer"),
    length_between("instruction", 10, 100),
    no_refusal("instruction", "answer"),
]


def test_each_rule_quarantines_with_its_name() -> None:
    output = StageOutput(stage="rc/refined_instructions", batch="b")
    base = {"id": "r", "parent_id": "p", "agent": "editor", "_previous_instruction": "Old question here?"}
    cases = {
        "required_fields": {"instruction": "A fine question?", "answer": ""},
        "instruction_length": {"instruction": "Short?", "answer": "x"},
        "refusal_phrase": {"instruction": "A fine question?", "answer": "As an AI language model, I cannot."},
    }
    for fields in cases.values():
        assert not output.admit({**base, **fields}, RULES)
    assert output.admit({**base, "instruction": "A new, harder question?", "answer": "Yes."}, RULES)
    assert [row["reason"] for row in output.quarantined] == [f"rule_{name}" for name in cases]
    assert all(row["detail"] and row["parent_id"] == "p" and row["payload"] for row in output.quarantined)
    assert "_previous_instruction" not in output.rows[0]
    assert output.quarantine_frame()["id"].n_unique() == len(cases)
    assert output.metadata()["quarantine_reasons"] == {f"rule_{name}": 1 for name in cases}
