"""Few-shot reasoning: worked examples, then a question answered step by step by the same method."""

from __future__ import annotations

from typing import Any

from agentinstruct_dagster.shapes.base import QaShape, Task, structure_of
from agentinstruct_dagster.shapes.models import FewShot, FewShotEdit


def prompt_with_examples(examples: list[dict[str, str]], question: str) -> str:
    shots = "\n\n".join(
        f"Example {number}:\nQ: {example['question']}\nA: {example['answer']}"
        for number, example in enumerate(examples, start=1)
    )
    return f"{shots}\n\nNow solve this one step by step, the same way:\nQ: {question}"


class FewShotShape(QaShape):
    name = "few_shot"
    seed_output = FewShot
    edit_output = FewShotEdit

    def task(self, value: Any, context: Task) -> Task:
        examples = [{"question": ex.question.strip(), "answer": ex.answer.strip()} for ex in value.examples]
        question = value.question.strip()
        return Task(
            text=getattr(value, "text", context.text).strip(),
            instruction=prompt_with_examples(examples, question),
            answer=value.answer.strip(),
            structured={"examples": examples, "question": question},
        )

    def features(self, row: dict[str, Any]) -> dict[str, Any]:
        examples = structure_of(row).get("examples", [])
        return {
            "examples": len(examples),
            "examples_answered": sum(bool(example["answer"]) for example in examples),
            "prompt_shows_examples": row["instruction"].startswith("Example 1:"),
        }
