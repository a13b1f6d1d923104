"""Stage 3, instruction refinement: suggester and editor agents take turns, each round kept as a row."""

from __future__ import annotations

import asyncio
from typing import Any

import polars as pl

from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.config.profiles import SandboxSettings
from agentinstruct_dagster.config.substance import Substance, substance_thresholds
from agentinstruct_dagster.ids import content_id, seeded_choice
from agentinstruct_dagster.llm.engine import LLMEngine
from agentinstruct_dagster.llm.schemas import Suggestions
from agentinstruct_dagster.llm.types import LLMRequest
from agentinstruct_dagster.quality.rules import Rule, length_between, no_refusal, required
from agentinstruct_dagster.quality.substance import acceptor, refinement_rules
from agentinstruct_dagster.shapes import shape_for
from agentinstruct_dagster.shapes.base import Rejection, Task, structure_of
from agentinstruct_dagster.stages.common import StageOutput, to_json

AGENT = "suggester+editor"


def rules_for(thresholds: Substance) -> list[Rule]:
    """A skill's rules for refined instructions."""
    return [
        required("text", "instruction", "answer"),
        *refinement_rules(thresholds),
        length_between("text", 20, 200_000),
        length_between("instruction", 10, 20_000),
        length_between("answer", 1, 20_000),
        no_refusal("instruction", "answer"),
    ]


def bullets(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


async def refine_instructions(
    seeds: pl.DataFrame,
    skill: Skill,
    engine: LLMEngine,
    *,
    batch: str,
    stage: str,
    seed: int,
    sandbox: SandboxSettings,
) -> StageOutput:
    """Every seed runs its own chain of rounds; chains run concurrently, a failed round ends its chain.
    Each edit goes through the shape's extra work (key check, sandbox run, simulated tools) again."""
    section, shape = skill.refinement, shape_for(skill)
    goals = {goal.name: goal for goal in section.goals}
    thresholds = substance_thresholds(skill.substance)
    rules, accept = rules_for(thresholds), acceptor(thresholds)
    output = StageOutput(stage=stage, batch=batch)

    async def refine_round(current: dict[str, Any], seed_row: dict[str, Any], round_number: int) -> dict | None:
        chosen = seeded_choice(f"{seed_row['id']}:{round_number}", list(goals), section.goals_per_round, seed)
        suggestion = await engine.call(
            LLMRequest(
                agent="suggester",
                role="suggester",
                system=section.suggester_system_prompt,
                user=section.suggester_prompt.format(
                    text=current["text"],
                    instruction=current["instruction"],
                    answer=current["answer"],
                    goals=bullets([f"{name}: {goals[name].description}" for name in chosen]),
                    round=round_number,
                ),
                response_model=Suggestions,
                prompt_version=section.prompt_version,
                accept=accept,
            )
        )
        output.count(suggestion)
        if not suggestion.ok:
            output.reject_failed_call(suggestion, agent="suggester", parent_id=current["id"])
            return None
        suggestions = [line.strip() for line in suggestion.value.suggestions if line.strip()]
        previous = Task(current["text"], current["instruction"], current["answer"], structure_of(current) or None)
        editor_request = LLMRequest(
            agent="editor",
            role="editor",
            system=section.editor_system_prompt,
            user=section.editor_prompt.format(
                text=current["text"],
                instruction=current["instruction"],
                answer=current["answer"],
                suggestions=bullets(suggestions),
            ),
            response_model=shape.edit_model(previous),
            prompt_version=section.prompt_version,
            accept=accept,
        )
        edit = await engine.call(editor_request)
        output.count(edit)
        if not edit.ok:
            output.reject_failed_call(edit, agent="editor", parent_id=current["id"])
            return None
        task = await shape.complete(
            shape.task(edit.value, previous), output.support(skill, engine, sandbox, parent_id=current["id"])
        )
        if isinstance(task, Rejection):
            output.reject_task(task, parent_id=current["id"], source="editor")
            return None
        structured = to_json(task.structured)
        row = {
            "id": content_id(
                "refined",
                current["id"],
                round_number,
                section.prompt_version,
                task.text,
                task.instruction,
                task.answer,
                *([structured] if structured else []),
            ),
            "parent_id": current["id"],
            "seed_id": seed_row["id"],
            "doc_id": seed_row["doc_id"],
            "batch": batch,
            "skill": skill.skill,
            "instruction_type": seed_row["instruction_type"],
            "round": round_number,
            "goals": chosen,
            "suggestions": suggestions,
            "text": task.text,
            "instruction": task.instruction,
            "answer": task.answer,
            "structured": structured,
            "agent": AGENT,
            "prompt_version": section.prompt_version,
            "model": edit.model,
            "prompt_tokens": suggestion.prompt_tokens + edit.prompt_tokens,
            "completion_tokens": suggestion.completion_tokens + edit.completion_tokens,
            "_answer": edit.value,
            "_prompt": editor_request.user,
            "_source": current["text"],
            "_previous_instruction": current["instruction"],
            "_previous_answer": current["answer"],
        }
        return row if output.admit(row, rules) else None

    async def chain(seed_row: dict[str, Any]) -> None:
        current: dict[str, Any] | None = seed_row
        for round_number in range(1, section.rounds + 1):
            current = await refine_round(current, seed_row, round_number)
            if current is None:
                return

    async def main() -> None:
        await asyncio.gather(*(chain(row) for row in seeds.iter_rows(named=True)))

    await engine.session(main, expected_calls=2 * section.rounds * seeds.height)
    return output
