"""Stage 1, content transformation: an agent rewrites each document chunk into an intermediate form."""

from __future__ import annotations

import asyncio
from typing import Any

import polars as pl

from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.config.substance import Substance, substance_thresholds
from agentinstruct_dagster.ids import content_id, seeded_choice
from agentinstruct_dagster.llm.engine import LLMEngine
from agentinstruct_dagster.llm.types import LLMRequest
from agentinstruct_dagster.quality.rules import Rule, length_between, no_refusal, required
from agentinstruct_dagster.quality.substance import acceptor, transformation_rules
from agentinstruct_dagster.shapes import QaShape, shape_for
from agentinstruct_dagster.stages.common import StageOutput, provenance, to_json


def rules_for(thresholds: Substance, shape: QaShape) -> list[Rule]:
    """A skill's rules for transformed texts; prose (not tables, APIs, pages) is also compared with its source."""
    prose = "text" in shape.transform_model.model_fields
    return [
        required("text"),
        *transformation_rules(thresholds, prose=prose),
        length_between("text", 20, 200_000),
        no_refusal("text"),
    ]


async def transform_documents(
    documents: pl.DataFrame, skill: Skill, engine: LLMEngine, *, batch: str, stage: str, seed: int, **_: Any
) -> StageOutput:
    """One row per (chunk, chosen transformation agent); agents are chosen by a seeded hash of the chunk."""
    section = skill.transformation
    agents = {agent.name: agent for agent in section.agents}
    jobs = [
        (chunk, agents[name])
        for chunk in documents.iter_rows(named=True)
        for name in seeded_choice(chunk["id"], list(agents), section.agents_per_document, seed)
    ]
    shape = shape_for(skill)
    thresholds = substance_thresholds(skill.substance)
    rules, accept = rules_for(thresholds, shape), acceptor(thresholds)
    output = StageOutput(stage=stage, batch=batch)

    async def transform(chunk: dict[str, Any], agent: Any) -> None:
        request = LLMRequest(
            agent=agent.name,
            role="transformation",
            system=section.system_prompt,
            user=agent.prompt.format(text=chunk["text"], title=chunk["title"] or ""),
            response_model=shape.transform_model,
            prompt_version=section.prompt_version,
            accept=accept,
        )
        result = await engine.call(request)
        output.count(result)
        if not result.ok:
            output.reject_failed_call(result, agent=agent.name, parent_id=chunk["id"])
            return
        text, structured = shape.transformed(result.value, agent)
        output.admit(
            {
                "id": content_id("transformed", chunk["id"], skill.skill, agent.name, section.prompt_version, text),
                "parent_id": chunk["id"],
                "doc_id": chunk["doc_id"],
                "batch": batch,
                "skill": skill.skill,
                "text": text,
                "structured": to_json(structured),
                **provenance(result, agent=agent.name, prompt_version=section.prompt_version),
                "_answer": result.value,
                "_prompt": request.user,
                "_source": chunk["text"],
            },
            rules,
        )

    async def main() -> None:
        await asyncio.gather(*(transform(chunk, agent) for chunk, agent in jobs))

    await engine.session(main, expected_calls=len(jobs))
    return output
