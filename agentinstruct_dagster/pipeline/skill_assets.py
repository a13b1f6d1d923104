"""One asset group per catalogue skill: transformed_texts -> seed_instructions -> refined_instructions."""

from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import polars as pl

from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.ids import content_id
from agentinstruct_dagster.llm.engine import LLMEngine
from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.pipeline.llm_resource import LLMResource
from agentinstruct_dagster.pipeline.partitions import batches
from agentinstruct_dagster.stages.common import StageOutput
from agentinstruct_dagster.stages.refine import refine_instructions
from agentinstruct_dagster.stages.seed import generate_seeds
from agentinstruct_dagster.stages.transform import transform_documents
from agentinstruct_dagster.tables import REFINED_INSTRUCTIONS, SEED_INSTRUCTIONS, TRANSFORMED_TEXTS, frame

RAW_DOCUMENTS_KEY = dg.AssetKey("raw_documents")
StageFunction = Callable[..., StageOutput]


@dataclass(frozen=True)
class StageSpec:
    name: str
    upstream: str | None
    run: StageFunction
    schema: pl.Schema
    section: str
    description: str


STAGES = (
    StageSpec(
        "transformed_texts",
        None,
        transform_documents,
        TRANSFORMED_TEXTS,
        "transformation",
        "Content transformation: each document chunk rewritten by a transformation agent.",
    ),
    StageSpec(
        "seed_instructions",
        "transformed_texts",
        generate_seeds,
        SEED_INSTRUCTIONS,
        "seed",
        "Seed instruction generation: one agent per instruction type writes an instruction and answer.",
    ),
    StageSpec(
        "refined_instructions",
        "seed_instructions",
        refine_instructions,
        REFINED_INSTRUCTIONS,
        "refinement",
        "Instruction refinement: suggester-editor rounds, one row per round.",
    ),
)


def stage_key(skill: Skill | str, stage: str) -> dg.AssetKey:
    return dg.AssetKey([skill if isinstance(skill, str) else skill.skill, stage])


def build_stage_asset(skill: Skill, spec: StageSpec) -> dg.AssetsDefinition:
    key = stage_key(skill, spec.name)
    upstream = stage_key(skill, spec.upstream) if spec.upstream else RAW_DOCUMENTS_KEY
    section = getattr(skill, spec.section)

    @dg.asset(
        key=key,
        ins={"upstream": dg.AssetIn(key=upstream)},
        partitions_def=batches,
        group_name=skill.skill,
        description=f"{skill.title}. {spec.description}",
        code_version=content_id(section.model_dump()),
        kinds={"deltalake", "polars", "openai"},
        metadata={"prompt_version": section.prompt_version, "split": skill.split},
    )
    def stage_asset(
        context: dg.AssetExecutionContext, llm: LLMResource, lake: Lake, upstream: pl.DataFrame
    ) -> pl.DataFrame:
        batch = context.partition_key
        engine: LLMEngine = llm.engine(logger=context.log, batch=batch, asset=key.to_user_string())
        output = spec.run(
            upstream, skill, engine, batch=batch, stage=key.to_user_string(), profile=llm.profile_settings
        )
        quarantine = lake.write_quarantine(key, batch, output.quarantine_frame())
        metadata = {
            **output.metadata(),
            "input_rows": upstream.height,
            "cost_usd": round(engine.usage.cost_usd, 6),
            "engine": engine.usage.metadata(),
            "quarantine_table": dg.MetadataValue.path(str(quarantine)),
        }
        limit = llm.profile_settings.llm.max_failure_rate
        if output.failure_rate > limit:
            raise dg.Failure(
                description=f"{output.failed_calls} of {output.llm_calls} model calls failed "
                f"({output.failure_rate:.0%}, the profile allows {limit:.0%}); see {quarantine} for each "
                f"failure's class and raw output. Errors: {dict(engine.usage.errors)}",
                metadata=metadata,
            )
        context.add_output_metadata(metadata)
        return frame(output.rows, spec.schema).sort("id")

    return stage_asset


def build_skill_assets(skill: Skill) -> list[dg.AssetsDefinition]:
    return [build_stage_asset(skill, spec) for spec in STAGES]
