"""The catalogue as a table: one row per skill, for the CLI and the README."""

from __future__ import annotations

from agentinstruct_dagster.config.catalogue import Skill

COLUMNS = ("skill", "split", "shape", "transformation agents", "instruction types", "named in paper", "rounds")


def skill_rows(skills: list[Skill]) -> list[tuple[str, ...]]:
    return [
        (
            skill.skill,
            skill.split,
            skill.shape,
            str(len(skill.transformation.agents)),
            str(len(skill.seed.types)),
            str(sum(kind.named_in_paper for kind in skill.seed.types)),
            str(skill.refinement.rounds),
        )
        for skill in skills
    ]


def markdown(skills: list[Skill]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in skill_rows(skills)]
    return "\n".join(lines)


def plain(skills: list[Skill]) -> str:
    rows = [COLUMNS, *skill_rows(skills)]
    widths = [max(len(row[index]) for row in rows) for index in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)
