"""Stage 2, seed instruction generation: one agent per instruction type writes an instruction and answer."""

from __future__ import annotations

import asyncio
from typing import Any

import polars as pl

from agentinstruct_dagster.config.catalogue import InstructionType, Skill
from agentinstruct_dagster.ids import content_id, seeded_choice
from agentinstruct_dagster.llm.engine import LLMEngine
from agentinstruct_dagster.llm.schemas import SeedInstruction
from agentinstruct_dagster.llm.types import LLMRequest
from agentinstruct_dagster.quality.rules import length_between, no_refusal, required
from agentinstruct_dagster.stages.common import StageOutput, provenance

RULES = [
    required("instruction", "answer"),
    length_between("instruction", 10, 20_000),
    length_between("answer", 1, 20_000),
    no_refusal("instruction", "answer"),
]


def generate_seeds(
    texts: pl.DataFrame, skill: Skill, engine: LLMEngine, *, batch: str, stage: str, seed: int
) -> StageOutput:
    """For each transformed text, the routed instruction types chosen by a seeded hash, one call each."""
    section = skill.seed
    jobs = [
        (text, skill.types_by_name[name])
        for text in texts.iter_rows(named=True)
        for name in seeded_choice(text["id"], skill.types_for(text["agent"]), section.types_per_text, seed)
    ]
    output = StageOutput(stage=stage, batch=batch)

    async def generate(text: dict[str, Any], kind: InstructionType) -> None:
        agent = f"seed_{kind.name}"
        request = LLMRequest(
            agent=agent,
            role="seed",
            system=section.system_prompt,
            user=section.prompt.format(
                text=text["text"],
                type_name=kind.name,
                type_description=kind.description,
                transformation=text["agent"],
            ),
            response_model=SeedInstruction,
            prompt_version=section.prompt_version,
        )
        result = await engine.call(request)
        output.count(result)
        if not result.ok:
            output.reject_failed_call(result, agent=agent, parent_id=text["id"])
            return
        instruction, answer = result.value.instruction.strip(), result.value.answer.strip()
        output.admit(
            {
                "id": content_id("seed", text["id"], kind.name, section.prompt_version, instruction, answer),
                "parent_id": text["id"],
                "doc_id": text["doc_id"],
                "batch": batch,
                "skill": skill.skill,
                "transformation": text["agent"],
                "instruction_type": kind.name,
                "text": text["text"],
                "instruction": instruction,
                "answer": answer,
                **provenance(result, agent=agent, prompt_version=section.prompt_version),
            },
            RULES,
        )

    async def main() -> None:
        await asyncio.gather(*(generate(text, kind) for text, kind in jobs))

    engine.run(main, expected_calls=len(jobs))
    return output
