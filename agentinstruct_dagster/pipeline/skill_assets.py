"""One asset group per catalogue skill: transformed_texts -> seed_instructions -> refined_instructions ->
judged_instructions."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.config.curation import Curation, DecontaminationSettings, load_curation
from agentinstruct_dagster.ids import content_id
from agentinstruct_dagster.llm.engine import LLMEngine
from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.pipeline.llm_resource import LLMResource
from agentinstruct_dagster.pipeline.partitions import BATCHES, batches
from agentinstruct_dagster.quality.decontamination import BenchmarkIndex, load_benchmarks
from agentinstruct_dagster.stages.common import StageOutput
from agentinstruct_dagster.stages.judge import judge_instructions
from agentinstruct_dagster.stages.refine import refine_instructions
from agentinstruct_dagster.stages.seed import generate_seeds
from agentinstruct_dagster.stages.transform import transform_documents
from agentinstruct_dagster.storage.io_manager import Outcome
from agentinstruct_dagster.tables import (
    JUDGED_INSTRUCTIONS,
    REFINED_INSTRUCTIONS,
    SEED_INSTRUCTIONS,
    TRANSFORMED_TEXTS,
    frame,
)

RAW_DOCUMENTS_KEY = dg.AssetKey("raw_documents")
StageFunction = Callable[..., StageOutput]
# Extra keyword inputs a stage function needs beyond its upstream rows (read from the lake or the instance).
StageInputs = Callable[[dg.AssetExecutionContext, Lake, Skill], dict[str, Any]]


def no_inputs(context: dg.AssetExecutionContext, lake: Lake, skill: Skill) -> dict[str, Any]:
    return {}


def benchmark_index(curation: Curation) -> BenchmarkIndex:
    """The benchmark files' n-gram index, built once per process for each state of the folder's files."""
    folder = curation.decontamination.benchmarks_path
    files = tuple(sorted((path.name, path.stat().st_mtime_ns) for path in folder.glob("*") if path.is_file()))
    return _index(folder, files, curation.decontamination.matching().model_dump_json())


@lru_cache(maxsize=4)
def _index(folder: Path, files: tuple[tuple[str, int], ...], settings: str) -> BenchmarkIndex:
    return load_benchmarks(folder, DecontaminationSettings.model_validate_json(settings))


def curation_inputs(context: dg.AssetExecutionContext, lake: Lake, skill: Skill) -> dict[str, Any]:
    """The judged rows of every batch registered before this one (dedup compares against them), the
    benchmark index and the curation settings."""
    batch = context.partition_key
    registered = context.instance.get_dynamic_partitions(BATCHES)
    earlier = registered[: registered.index(batch)] if batch in registered else []
    curation = load_curation()
    return {
        "earlier": lake.read_batches_if_exists(stage_key(skill, "judged_instructions"), earlier, JUDGED_INSTRUCTIONS),
        "benchmarks": benchmark_index(curation),
        "curation": curation,
    }


@dataclass(frozen=True)
class StageSpec:
    name: str
    upstream: str | None
    run: StageFunction
    schema: pl.Schema
    section: str
    description: str
    inputs: StageInputs = no_inputs


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
    StageSpec(
        "judged_instructions",
        "refined_instructions",
        judge_instructions,
        JUDGED_INSTRUCTIONS,
        "judge",
        "Curation: each chain's final round, deduplicated (within the batch and against earlier batches), "
        "checked against benchmark files, and scored by an LLM judge; these rows become training pairs.",
        curation_inputs,
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
    def stage_asset(context: dg.AssetExecutionContext, llm: LLMResource, lake: Lake, upstream: pl.DataFrame) -> Outcome:
        batch = context.partition_key
        engine: LLMEngine = llm.engine(logger=context.log, batch=batch, asset=key.to_user_string())
        output = spec.run(
            upstream,
            skill,
            engine,
            batch=batch,
            stage=key.to_user_string(),
            profile=llm.profile_settings,
            **spec.inputs(context, lake, skill),
        )
        metadata = {
            **output.metadata(),
            "input_rows": upstream.height,
            "cost_usd": round(engine.usage.cost_usd, 6),
            "engine": engine.usage.metadata(),
        }
        limit = llm.profile_settings.llm.max_failure_rate
        if output.failure_rate > limit:
            # Nothing is written: the batch's previous rows and quarantine rows of this stage stay as they were,
            # and the call ledger keeps each failed call with its class and raw output.
            raise dg.Failure(
                description=f"{output.failed_calls} of {output.llm_calls} model calls failed "
                f"({output.failure_rate:.0%}, the profile allows {limit:.0%}); nothing of this stage was "
                f"written; each failed call's class and raw output is in the call ledger (llm_calls). "
                f"Errors: {dict(engine.usage.errors)}",
                metadata=metadata,
            )
        context.add_output_metadata(metadata)
        # Kept and quarantined rows replace the batch's previous outcome in one commit (by the IO manager).
        return Outcome(frame(output.rows, spec.schema).sort("id"), output.quarantine_frame())

    return stage_asset


def build_skill_assets(skill: Skill) -> list[dg.AssetsDefinition]:
    return [build_stage_asset(skill, spec) for spec in STAGES]
