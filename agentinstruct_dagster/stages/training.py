"""The training set: each refinement chain's deepest surviving round as chat messages. No LLM calls."""

from __future__ import annotations

from typing import Any

import polars as pl

from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.ids import content_id
from agentinstruct_dagster.tables import TRAINING_SET, frame


def messages_for(row: dict[str, Any], skill: Skill) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": skill.training.system_prompt}] if skill.training.system_prompt else []
    user = skill.training.user_template.format(text=row["text"], instruction=row["instruction"])
    return [*turns, {"role": "user", "content": user}, {"role": "assistant", "content": row["answer"]}]


def training_pairs(refined: pl.DataFrame, skill: Skill, *, batch: str) -> pl.DataFrame:
    """One pair per seed instruction: the last round its refinement chain reached."""
    deepest = refined.sort("round").group_by("seed_id", maintain_order=True).last().sort("seed_id")
    rows = []
    for row in deepest.iter_rows(named=True):
        messages = messages_for(row, skill)
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
            }
        )
    return frame(rows, TRAINING_SET)
