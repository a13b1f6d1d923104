"""Conversation: several user/assistant exchanges grounded in the text, kept as turns."""

from __future__ import annotations

from typing import Any

from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.shapes.base import Message, QaShape, Task, assistant, structure_of, user_and_system
from agentinstruct_dagster.shapes.models import Dialogue, DialogueEdit


def transcript(turns: list[dict[str, str]]) -> str:
    return "\n\n".join(f"User: {turn['user']}\nAssistant: {turn['assistant']}" for turn in turns)


class ConversationShape(QaShape):
    name = "conversation"
    seed_output = Dialogue
    edit_output = DialogueEdit

    def task(self, value: Any, context: Task) -> Task:
        turns = [{"user": turn.user.strip(), "assistant": turn.assistant.strip()} for turn in value.turns]
        return Task(
            text=getattr(value, "text", context.text).strip(),
            instruction=transcript(turns),
            answer=turns[-1]["assistant"],
            structured={"turns": turns},
        )

    def messages(self, row: dict[str, Any], skill: Skill) -> list[Message]:
        turns = structure_of(row)["turns"]
        messages = [*user_and_system(skill, row["text"], turns[0]["user"]), assistant(turns[0]["assistant"])]
        for turn in turns[1:]:
            messages += [{"role": "user", "content": turn["user"]}, assistant(turn["assistant"])]
        return messages

    def features(self, row: dict[str, Any]) -> dict[str, Any]:
        turns = structure_of(row).get("turns", [])
        return {
            "user_turns": len(turns),
            "empty_turns": sum(not turn["user"] or not turn["assistant"] for turn in turns),
        }
