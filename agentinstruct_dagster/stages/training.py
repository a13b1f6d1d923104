"""The training set: each refinement chain's deepest surviving round as chat messages (OpenAI format, with
tool calls and tool turns where the skill's shape has them). No LLM calls."""

from __future__ import annotations

import json

import polars as pl

from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.ids import content_id
from agentinstruct_dagster.shapes import shape_for
from agentinstruct_dagster.tables import TRAINING_SET, frame


def training_pairs(refined: pl.DataFrame, skill: Skill, *, batch: str) -> pl.DataFrame:
    """One pair per seed instruction: the last round its refinement chain reached."""
    shape = shape_for(skill)
    deepest = refined.sort("round").group_by("seed_id", maintain_order=True).last().sort("seed_id")
    rows = []
    for row in deepest.iter_rows(named=True):
        messages = shape.messages(row, skill)
        tools = shape.tools(row)
        rows.append(
            {
                "id": content_id("training", row["id"], messages),
                "parent_id": row["id"],
                "seed_id": row["seed_id"],
                "doc_id": row["doc_id"],
                "batch": batch,
                "skill": skill.skill,
                "split": skill.split,
                "messages": messages,
                "tools": None if tools is None else json.dumps(tools, ensure_ascii=False),
            }
        )
    return frame(rows, TRAINING_SET)
