"""The training set: every judged row (a refinement chain's final round that passed dedup, decontamination and
the judge) as chat messages (OpenAI format, with tool calls and tool turns where the skill's shape has them).
No LLM calls."""

from __future__ import annotations

import json

import polars as pl

from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.ids import content_id
from agentinstruct_dagster.shapes import shape_for
from agentinstruct_dagster.tables import TRAINING_SET, frame


def training_pairs(judged: pl.DataFrame, skill: Skill, *, batch: str) -> pl.DataFrame:
    """One pair per judged row, i.e. per refinement chain whose final round was kept."""
    shape = shape_for(skill)
    rows = []
    for row in judged.sort("seed_id").iter_rows(named=True):
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
