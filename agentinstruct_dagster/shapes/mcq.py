"""Multiple choice: four options and a key; a second agent answers independently and must agree."""

from __future__ import annotations

from typing import Any

from agentinstruct_dagster.shapes.base import QaShape, Rejection, Support, Task, structure_of
from agentinstruct_dagster.shapes.models import KEYS, KeyCheck, McqEdit, McqItem


def lettered(options: list[str]) -> str:
    return "\n".join(f"{key}. {option}" for key, option in zip(KEYS, options, strict=False))


class McqShape(QaShape):
    name = "mcq"
    seed_output = McqItem
    edit_output = McqEdit

    def task(self, value: Any, context: Task) -> Task:
        question, options = value.question.strip(), [option.strip() for option in value.options]
        return Task(
            text=getattr(value, "text", context.text).strip(),
            instruction=f"{question}\n\n{lettered(options)}",
            answer=f"{value.answer_key}. {value.explanation.strip()}",
            structured={"question": question, "options": options, "answer_key": value.answer_key},
        )

    async def complete(self, task: Task, support: Support) -> Task | Rejection:
        item = task.structured or {}
        if len({option.lower() for option in item["options"]}) < len(item["options"]):
            return Rejection("duplicate_options", "two options are the same", item)
        check = await support.ask("key_checker", KeyCheck, question=item["question"], options=lettered(item["options"]))
        if check is None:
            return Rejection("key_check_failed", "the key checker's call failed", item)
        if check.answer_key != item["answer_key"]:
            return Rejection(
                "answer_key_disputed",
                f"key {item['answer_key']}, the checker chose {check.answer_key}: {check.reasoning}",
                item,
            )
        return task.with_structure(key_checked_by="key_checker", checker_key=check.answer_key)

    def features(self, row: dict[str, Any]) -> dict[str, Any]:
        item = structure_of(row)
        options = item.get("options", [])
        return {
            "option_count": len(options),
            "distinct_options": len({option.lower() for option in options}),
            "answer_key": item.get("answer_key"),
            "answer_key_among_options": item.get("answer_key") in KEYS[: len(options)],
            "key_agrees_with_checker": item.get("checker_key") == item.get("answer_key"),
            "answer_starts_with_key": row["answer"].startswith(f"{item.get('answer_key')}."),
        }
