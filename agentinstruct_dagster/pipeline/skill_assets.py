"""Each catalogue skill's stage assets: transformed_texts -> seed_instructions -> refined_instructions ->
judged_instructions, in one asset group per skill.

A stage of every skill is computed by one step (a subsettable multi-asset, a "wave"): the skills' stages run
side by side in one event loop and share the run's admission window and provider budget, while each asset
keeps its own table, lineage, code version and blocking checks. Chains inside a stage advance independently.
"""

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.config.curation import Curation, DecontaminationSettings, load_curation
from agentinstruct_dagster.ids import content_id
from agentinstruct_dagster.pipeline.background import as_completed_in_background
from agentinstruct_dagster.pipeline.generation import Generation
from agentinstruct_dagster.pipeline.io_manager import Outcome
from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.pipeline.llm_resource import LLMResource
from agentinstruct_dagster.pipeline.partitions import BATCHES, batches
from agentinstruct_dagster.pipeline.stage_checks import evaluate_stage_checks, stage_check_specs
from agentinstruct_dagster.quality.decontamination import BenchmarkIndex, load_benchmarks
from agentinstruct_dagster.stages.common import StageOutput
from agentinstruct_dagster.stages.judge import judge_instructions
from agentinstruct_dagster.stages.refine import refine_instructions
from agentinstruct_dagster.stages.seed import generate_seeds
from agentinstruct_dagster.stages.transform import transform_documents
from agentinstruct_dagster.tables import (
    JUDGED_INSTRUCTIONS,
    REFINED_INSTRUCTIONS,
    SEED_INSTRUCTIONS,
    TRANSFORMED_TEXTS,
    frame,
)

# Model stages of every run claim a slot of this Dagster pool: its limit bounds how many waves (of any batch)
# call the provider at once, and so, with each run's window, the provider budget across parallel runs.
LLM_POOL = "llm"
RAW_DOCUMENTS_KEY = dg.AssetKey("raw_documents")
StageFunction = Callable[..., Awaitable[StageOutput]]
# Keyword inputs a stage function needs beyond its upstream rows (settings, or reads of the lake or instance).
StageInputs = Callable[[dg.AssetExecutionContext, Lake, Generation, Skill], dict[str, Any]]


def seed_input(context: dg.AssetExecutionContext, lake: Lake, generation: Generation, skill: Skill) -> dict[str, Any]:
    return {"seed": generation.seed}


def task_inputs(context: dg.AssetExecutionContext, lake: Lake, generation: Generation, skill: Skill) -> dict[str, Any]:
    """The seed of deterministic choices and the sandbox limits a shape's extra work may need."""
    return {"seed": generation.seed, "sandbox": generation.sandbox}


def benchmark_index(curation: Curation) -> BenchmarkIndex:
    """The benchmark files' n-gram index, built once per process for each state of the folder's files (the
    skills of a wave ask for it at once: one builds it, the others wait)."""
    folder = curation.decontamination.benchmarks_path
    files = tuple(sorted((path.name, path.stat().st_mtime_ns) for path in folder.glob("*") if path.is_file()))
    with _INDEX_LOCK:
        return _index(folder, files, curation.decontamination.matching().model_dump_json())


_INDEX_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def _index(folder: Path, files: tuple[tuple[str, int], ...], settings: str) -> BenchmarkIndex:
    return load_benchmarks(folder, DecontaminationSettings.model_validate_json(settings))


def curation_inputs(
    context: dg.AssetExecutionContext, lake: Lake, generation: Generation, skill: Skill
) -> dict[str, Any]:
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
    inputs: StageInputs


STAGES = (
    StageSpec(
        "transformed_texts",
        None,
        transform_documents,
        TRANSFORMED_TEXTS,
        "transformation",
        "Content transformation: each document chunk rewritten by a transformation agent.",
        seed_input,
    ),
    StageSpec(
        "seed_instructions",
        "transformed_texts",
        generate_seeds,
        SEED_INSTRUCTIONS,
        "seed",
        "Seed instruction generation: one agent per instruction type writes an instruction and answer.",
        task_inputs,
    ),
    StageSpec(
        "refined_instructions",
        "seed_instructions",
        refine_instructions,
        REFINED_INSTRUCTIONS,
        "refinement",
        "Instruction refinement: suggester-editor rounds, one row per round; each chain advances on its own.",
        task_inputs,
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


def upstream_key(skill: Skill, spec: StageSpec) -> dg.AssetKey:
    return stage_key(skill, spec.upstream) if spec.upstream else RAW_DOCUMENTS_KEY


def stage_spec(skill: Skill, spec: StageSpec) -> dg.AssetSpec:
    """The stage asset of one skill (its upstream is declared by the wave)."""
    section = getattr(skill, spec.section)
    step = STAGES.index(spec) + 1
    return dg.AssetSpec(
        key=stage_key(skill, spec.name),
        group_name=skill.skill,
        # The step first: the catalogue lists descriptions cut short, under names cut in the middle.
        description=f"{step}/{len(STAGES)} {spec.description} ({skill.title})",
        code_version=content_id(section.model_dump()),
        kinds={"deltalake", "polars", "openai"},
        owners=skill.owners,
        tags={"skill": skill.skill, "stage": spec.name},
        metadata={"prompt_version": section.prompt_version, "split": skill.split},
    )


@dataclass(frozen=True)
class SkillResult:
    """One skill's stage in a wave: its outcome, metadata (counts, usage) and its checks' results."""

    outcome: Outcome
    failure_rate: float
    metadata: dict[str, Any]
    checks: list[dg.AssetCheckResult]


def build_stage_wave(skills: list[Skill], spec: StageSpec) -> dg.AssetsDefinition:
    """One step computing this stage for every selected skill at once (see the module docstring)."""

    names = {skill.skill: stage_key(skill, spec.name).to_python_identifier() for skill in skills}

    @dg.multi_asset(
        name=spec.name,
        outs={
            names[skill.skill]: dg.AssetOut.from_spec(stage_spec(skill, spec), dagster_type=Outcome, is_required=False)
            for skill in skills
        },
        deps=list(dict.fromkeys(upstream_key(skill, spec) for skill in skills)),
        internal_asset_deps={names[skill.skill]: {upstream_key(skill, spec)} for skill in skills},
        check_specs=[
            check for skill in skills for check in stage_check_specs(skill, spec.name, stage_key(skill, spec.name))
        ],
        partitions_def=batches,
        can_subset=True,
        pool=LLM_POOL,
    )
    def wave(context: dg.AssetExecutionContext, llm: LLMResource, lake: Lake, generation: Generation):
        batch = context.partition_key
        selected = [skill for skill in skills if stage_key(skill, spec.name) in context.selected_asset_keys]

        async def run_skill(skill: Skill) -> SkillResult:
            key = stage_key(skill, spec.name)
            upstream = await asyncio.to_thread(lake.read, upstream_key(skill, spec), batch)
            inputs = await asyncio.to_thread(spec.inputs, context, lake, generation, skill)
            engine = llm.engine(logger=context.log, batch=batch, asset=key.to_user_string())
            output = await spec.run(upstream, skill, engine, batch=batch, stage=key.to_user_string(), **inputs)
            outcome = Outcome(frame(output.rows, spec.schema).sort("id"), output.quarantine_frame())
            metadata = {
                **output.metadata(),
                "input_rows": upstream.height,
                "cost_usd": round(engine.usage.cost_usd, 6),
                "engine": engine.usage.metadata(),
            }
            # The checks run in a thread while the other skills' calls go on.
            checks = await asyncio.to_thread(
                evaluate_stage_checks, skill, spec.name, key, outcome.kept, outcome.quarantined
            )
            return SkillResult(outcome, output.failure_rate, metadata, checks)

        limit = llm.settings.max_failure_rate
        failures: list[str] = []
        crash: BaseException | None = None
        # Each skill's outcome is written (and its checks reported) as soon as it is done, while the others run.
        jobs = [functools.partial(run_skill, skill) for skill in selected]
        for index, result in as_completed_in_background(jobs):
            skill = selected[index]
            key = stage_key(skill, spec.name)
            if isinstance(result, BaseException):
                crash = crash or result
                failures.append(f"{key.to_user_string()}: {type(result).__name__}: {result}")
                continue
            metadata = result.metadata
            if result.failure_rate > limit:
                # Nothing is written: the batch's previous outcome of this stage stays whole, and the call ledger
                # keeps each failed call with its class and raw output.
                failures.append(
                    f"{key.to_user_string()}: {metadata['calls_failed']} of "
                    f"{metadata['calls_made'] + metadata['calls_cached']} model calls "
                    f"failed ({result.failure_rate:.0%}, the profile allows {limit:.0%}); nothing of this stage was "
                    f"written; each failed call's class and raw output is in the call ledger (llm_calls). "
                    f"Errors: {metadata['engine']['errors']}"
                )
                continue
            # Kept and quarantined rows replace the batch's previous outcome in one commit (by the IO manager).
            yield dg.Output(result.outcome, output_name=names[skill.skill], metadata=metadata)
            yield from (
                check
                for check in result.checks
                if dg.AssetCheckKey(key, check.check_name) in context.selected_asset_check_keys
            )
        if crash is not None:
            raise crash
        if failures:
            raise dg.Failure(description="\n".join(failures))

    return wave


def build_stage_waves(skills: list[Skill]) -> list[dg.AssetsDefinition]:
    return [build_stage_wave(skills, spec) for spec in STAGES]
