"""Retrieval-augmented generation: the text among distractor chunks of other documents; answers cite it."""

from __future__ import annotations

import re
from typing import Any

from agentinstruct_dagster.ids import seeded_choice
from agentinstruct_dagster.llm.schemas import SeedInstruction
from agentinstruct_dagster.shapes.base import QaShape, Task, structure_of

CITATION = re.compile(r"\[(\d+)\]")


def numbered(chunks: list[str]) -> str:
    return "\n\n".join(f"[{number}] {chunk}" for number, chunk in enumerate(chunks, start=1))


class RagShape(QaShape):
    name = "rag"
    edit_output = SeedInstruction  # editors rewrite the instruction and answer; the numbered context stays as built

    def seed_context(self, text: dict[str, Any], batch_texts: list[dict[str, Any]], seed: int) -> Task:
        others = {row["id"]: row for row in batch_texts if row["doc_id"] != text["doc_id"]}
        chosen = seeded_choice(text["id"], list(others), self.skill.retrieval_settings.distractors, seed)
        limit = self.skill.retrieval_settings.chunk_chars
        pool = [(text["id"], text["text"][:limit]), *((key, others[key]["text"][:limit]) for key in chosen)]
        order = seeded_choice(f"{text['id']}:order", [key for key, _ in pool], len(pool), seed)
        chunks = dict(pool)
        relevant = order.index(text["id"]) + 1
        context = numbered([chunks[key] for key in order])
        return Task(
            text=context,
            instruction="",
            answer="",
            structured={"relevant_chunk": relevant, "chunks": len(order), "distractor_ids": chosen},
        )

    def task(self, value: Any, context: Task) -> Task:
        task = super().task(value, context)
        relevant = (context.structured or {})["relevant_chunk"]
        cited = {int(number) for number in CITATION.findall(task.answer)}
        answer = task.answer if relevant in cited else f"{task.answer} [{relevant}]"
        return Task(task.text, task.instruction, answer, context.structured)

    def features(self, row: dict[str, Any]) -> dict[str, Any]:
        item = structure_of(row)
        labels = {int(number) for number in re.findall(r"(?m)^\[(\d+)\] ", row["text"])}
        cited = {int(number) for number in CITATION.findall(row["answer"])}
        return {
            "chunks": item.get("chunks"),
            "chunk_labels_in_text": len(labels),
            "cites_relevant_chunk": item.get("relevant_chunk") in cited,
            "citations_name_chunks": cited <= labels,
        }
