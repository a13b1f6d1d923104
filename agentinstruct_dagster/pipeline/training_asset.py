"""training_set: every skill's judged instructions as chat pairs, one split per skill."""

import dagster as dg
import polars as pl

from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.pipeline.partitions import batches
from agentinstruct_dagster.pipeline.skill_assets import stage_key
from agentinstruct_dagster.stages.training import training_pairs
from agentinstruct_dagster.tables import JUDGED_INSTRUCTIONS, TRAINING_SET


def build_training_set(skills: list[Skill]) -> dg.AssetsDefinition:
    @dg.asset(
        name="training_set",
        partitions_def=batches,
        group_name="training",
        deps=[stage_key(skill, "judged_instructions") for skill in skills],
        kinds={"deltalake", "polars"},
        description="Chat-format training pairs (`messages` of {role, content}), split per skill like "
        "orca-agentinstruct-1M-v1, from every skill's judged instructions (each refinement chain's final "
        "round that passed dedup, decontamination and the judge). Formats only; no LLM calls.",
    )
    def training_set(context: dg.AssetExecutionContext, lake: Lake) -> pl.DataFrame:
        batch = context.partition_key
        parts = [
            training_pairs(
                lake.read_if_exists(stage_key(skill, "judged_instructions"), batch, JUDGED_INSTRUCTIONS),
                skill,
                batch=batch,
            )
            for skill in skills
        ]
        pairs = pl.concat(parts) if parts else pl.DataFrame(schema=TRAINING_SET)
        context.add_output_metadata(
            {"rows_per_split": {split: count for split, count in pairs["split"].value_counts().iter_rows()}}
        )
        return pairs.sort("split", "id")

    return training_set
