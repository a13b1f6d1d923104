"""A shape is what a skill's instructions look like: the fields agents return, the extra work a task needs
before it is kept (a key check, a sandbox run, simulated tools), the turns of its training row and the
features its Great Expectations suite checks. `QaShape` is the plain instruction/answer pair.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel

from agentinstruct_dagster.config.catalogue import Skill, TransformationAgent
from agentinstruct_dagster.config.profiles import SandboxSettings
from agentinstruct_dagster.config.substance import substance_thresholds
from agentinstruct_dagster.llm.schemas import EditedInstruction, SeedInstruction, TransformedText
from agentinstruct_dagster.llm.types import LLMRequest, LLMResult
from agentinstruct_dagster.quality.substance import acceptor

Message = dict[str, Any]


@dataclass(frozen=True)
class Task:
    """One instruction as the tables keep it: readable `instruction`/`answer` plus the shape's structure."""

    text: str
    instruction: str
    answer: str
    structured: dict[str, Any] | None = None

    def with_structure(self, **values: Any) -> Task:
        return replace(self, structured={**(self.structured or {}), **values})


@dataclass(frozen=True)
class Rejection:
    """Why a task is not kept; it goes to quarantine as `shape_<reason>`."""

    reason: str
    detail: str
    payload: Any = None


@dataclass(frozen=True)
class Support:
    """What a shape's extra work may use: model calls (counted by the stage), the skill and the sandbox.
    `on_failure(result, agent)` records a failed support call (the stage quarantines it)."""

    skill: Skill
    call: Callable[[LLMRequest[Any]], Awaitable[LLMResult[Any]]]
    sandbox: SandboxSettings
    on_failure: Callable[[LLMResult[Any], str], None]

    async def ask(self, agent: str, response_model: type[BaseModel], **values: Any) -> Any | None:
        """Call a support agent declared in the skill file; None (and a recorded failure) if the call failed."""
        declared = self.skill.support_agents[agent]
        result = await self.call(
            LLMRequest(
                agent=agent,
                role="support",
                system=declared.system_prompt,
                user=declared.prompt.format(**values),
                response_model=response_model,
                prompt_version=self.skill.seed.prompt_version,
                accept=acceptor(substance_thresholds(self.skill.substance)),
            )
        )
        if not result.ok:
            self.on_failure(result, agent)
            return None
        return result.value


def call_id(*parts: Any) -> str:
    return "call_" + hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def user_and_system(skill: Skill, text: str, instruction: str) -> list[Message]:
    """The system turn (if the skill has one) and the first user turn from the skill's template."""
    turns = [{"role": "system", "content": skill.training.system_prompt}] if skill.training.system_prompt else []
    return [
        *turns,
        {"role": "user", "content": skill.training.user_template.format(text=text, instruction=instruction)},
    ]


class QaShape:
    """An instruction and its answer; the template the rest follow."""

    name = "qa"
    transform_model: type[BaseModel] = TransformedText
    seed_output: type[BaseModel] = SeedInstruction
    edit_output: type[BaseModel] = EditedInstruction

    def __init__(self, skill: Skill) -> None:
        self.skill = skill

    def transformed(self, value: Any, agent: TransformationAgent) -> tuple[str, dict[str, Any] | None]:
        """The transformed text and any structure to carry with it."""
        return value.text.strip(), None

    def seed_context(self, text: dict[str, Any], batch_texts: list[dict[str, Any]], seed: int) -> Task:
        """What the seed agent sees (its `text`) and the structure carried into the task."""
        return Task(text=text["text"], instruction="", answer="", structured=structure_of(text) or None)

    def seed_model(self, context: Task) -> type[BaseModel]:
        """What the seed agent returns; shapes whose fields depend on the context build it per request."""
        return self.seed_output

    def edit_model(self, current: Task) -> type[BaseModel]:
        return self.edit_output

    def task(self, value: Any, context: Task) -> Task:
        """A seed agent's or editor's output as a task; editors may also rewrite the text."""
        return Task(
            text=getattr(value, "text", context.text).strip(),
            instruction=value.instruction.strip(),
            answer=value.answer.strip(),
            structured=context.structured,
        )

    async def complete(self, task: Task, support: Support) -> Task | Rejection:
        """Extra work before a task is kept; plain pairs need none."""
        return task

    def messages(self, row: dict[str, Any], skill: Skill) -> list[Message]:
        return [*user_and_system(skill, row["text"], row["instruction"]), assistant(row["answer"])]

    def tools(self, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        return None

    def features(self, row: dict[str, Any]) -> dict[str, Any]:
        """Values the skill's expectation suite checks, computed from a refined row."""
        return {"instruction_chars": len(row["instruction"]), "answer_chars": len(row["answer"])}


def assistant(content: str | None, tool_calls: list[dict[str, Any]] | None = None) -> Message:
    """An assistant turn; with `tool_calls` its content may be None, as in the OpenAI chat format."""
    return {"role": "assistant", "content": content, "tool_calls": tool_calls}


def tool_turn(tool_call_id: str, content: str) -> Message:
    return {"role": "tool", "content": content, "tool_call_id": tool_call_id}


def structure_of(row: dict[str, Any]) -> dict[str, Any]:
    """A row's `structured` column as a dict (empty when the shape carries none)."""
    value = row.get("structured")
    return json.loads(value) if value else {}
