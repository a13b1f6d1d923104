"""Stage 2, seed instruction generation: one agent per instruction type writes an instruction and answer."""

from __future__ import annotations

import asyncio
from typing import Any

import polars as pl

from agentinstruct_dagster.config.catalogue import InstructionType, Skill
from agentinstruct_dagster.config.profiles import SandboxSettings
from agentinstruct_dagster.config.substance import Substance, substance_thresholds
from agentinstruct_dagster.ids import content_id, seeded_choice
from agentinstruct_dagster.llm.engine import LLMEngine
from agentinstruct_dagster.llm.types import LLMRequest
from agentinstruct_dagster.quality.rules import Rule, length_between, no_refusal, required
from agentinstruct_dagster.quality.substance import acceptor, seed_rules
from agentinstruct_dagster.shapes import shape_for
from agentinstruct_dagster.shapes.base import Rejection
from agentinstruct_dagster.stages.common import StageOutput, provenance, to_json


def rules_for(thresholds: Substance) -> list[Rule]:
    """A skill's rules for seed instructions."""
    return [
        required("instruction", "answer"),
        *seed_rules(thresholds),
        length_between("instruction", 10, 20_000),
        length_between("answer", 1, 20_000),
        no_refusal("instruction", "answer"),
    ]


async def generate_seeds(
    texts: pl.DataFrame,
    skill: Skill,
    engine: LLMEngine,
    *,
    batch: str,
    stage: str,
    seed: int,
    sandbox: SandboxSettings,
) -> StageOutput:
    """For each transformed text, the routed instruction types chosen by a seeded hash, one call each;
    the skill's shape then does its extra work (key check, sandbox run, simulated tools) before a row is kept."""
    section, shape = skill.seed, shape_for(skill)
    rows = list(texts.iter_rows(named=True))
    contexts = {text["id"]: shape.seed_context(text, rows, seed) for text in rows}
    jobs = [
        (text, skill.types_by_name[name])
        for text in rows
        for name in seeded_choice(text["id"], skill.types_for(text["agent"]), section.types_per_text, seed)
    ]
    thresholds = substance_thresholds(skill.substance)
    rules, accept = rules_for(thresholds), acceptor(thresholds)
    output = StageOutput(stage=stage, batch=batch)

    async def generate(text: dict[str, Any], kind: InstructionType) -> None:
        agent = f"seed_{kind.name}"
        context = contexts[text["id"]]
        request = LLMRequest(
            agent=agent,
            role="seed",
            system=section.system_prompt,
            user=section.prompt.format(
                text=context.text,
                type_name=kind.name,
                type_description=kind.description,
                transformation=text["agent"],
            ),
            response_model=shape.seed_model(context),
            prompt_version=section.prompt_version,
            accept=accept,
        )
        result = await engine.call(request)
        output.count(result)
        if not result.ok:
            output.reject_failed_call(result, agent=agent, parent_id=text["id"])
            return
        task = await shape.complete(
            shape.task(result.value, context), output.support(skill, engine, sandbox, parent_id=text["id"])
        )
        if isinstance(task, Rejection):
            output.reject_task(task, parent_id=text["id"], source=agent)
            return
        structured = to_json(task.structured)
        output.admit(
            {
                "id": content_id(
                    "seed",
                    text["id"],
                    kind.name,
                    section.prompt_version,
                    task.instruction,
                    task.answer,
                    *([structured] if structured else []),
                ),
                "parent_id": text["id"],
                "doc_id": text["doc_id"],
                "batch": batch,
                "skill": skill.skill,
                "transformation": text["agent"],
                "instruction_type": kind.name,
                "text": task.text,
                "instruction": task.instruction,
                "answer": task.answer,
                "structured": structured,
                **provenance(result, agent=agent, prompt_version=section.prompt_version),
                "_answer": result.value,
                "_prompt": request.user,
                "_source": context.text,
            },
            rules,
        )

    async def main() -> None:
        await asyncio.gather(*(generate(text, kind) for text, kind in jobs))

    await engine.session(main, expected_calls=len(jobs))
    return output
