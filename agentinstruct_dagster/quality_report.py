"""A batch's quality report: rows kept and quarantined per stage, yield per skill, quarantine reasons with
examples, curation counts, the judge's scores, the instruction-type mix and the lengths of the training pairs.

`compute_report` is a pure function of the lake's tables (a JSON-ready dict); `sections` lays it out as
tables, rendered as markdown (Dagster metadata), plain text (the CLI) or a self-contained HTML page.
"""

from __future__ import annotations

import html
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from agentinstruct_dagster.audit import LakeAudit, quarantine_counts, text_table
from agentinstruct_dagster.pipeline.automation import FINAL_ASSET
from agentinstruct_dagster.pipeline.skill_assets import RAW_DOCUMENTS_KEY
from agentinstruct_dagster.storage.location import Location, join, write_bytes

REPORTS_FOLDER = "reports"
EXAMPLES_PER_REASON = 3
CURATION_REASONS = ("duplicate_exact", "duplicate_near", "contaminated", "judge_low_score")
SCORE_BINS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
SCORE_LABELS = tuple(f"{low:.1f}-{high:.1f}" for low, high in itertools.pairwise(SCORE_BINS))
PERCENTILES = {"p5": 0.05, "median": 0.5, "p95": 0.95}
MARKDOWN_ROWS = 30
CELL_CHARS = 120
TEXT_CELL_CHARS = 100


def compute_report(audit: LakeAudit, batch: str) -> dict[str, Any]:
    """The batch's figures from every stage's table and quarantine table (no LLM calls)."""
    quarantined = audit.quarantined(batch)
    pairs = audit.partition(audit.table(FINAL_ASSET), batch, ["id", "parent_id", "skill", "messages"])
    chunks = audit.partition(audit.table(RAW_DOCUMENTS_KEY), batch, ["id", "doc_id"])
    stages = stage_counts(audit, batch, quarantined)
    reasons = quarantined["reason"].value_counts() if quarantined.height else pl.DataFrame()
    return {
        "batch": batch,
        "totals": {
            "documents": chunks["doc_id"].n_unique() if chunks.height else 0,
            "source_chunks": chunks.height,
            "training_pairs": pairs.height,
            "quarantined_rows": quarantined.height,
        },
        "stages": stages,
        "yield": skill_yield(stages, pairs, chunks.height),
        "quarantine_reasons": reason_examples(quarantined),
        "quarantine_by_stage": stage_reason_examples(quarantined),
        "curation": {reason: _count_of(reasons, reason) for reason in CURATION_REASONS},
        "judge": judge_scores(audit, batch),
        "instruction_types": instruction_types(audit, batch, pairs),
        "lengths": pair_lengths(pairs),
    }


def _count_of(counts: pl.DataFrame, reason: str) -> int:
    found = counts.filter(pl.col("reason") == reason) if counts.height else counts
    return int(found["count"].sum()) if found.height else 0


def stage_counts(audit: LakeAudit, batch: str, quarantined: pl.DataFrame) -> list[dict[str, Any]]:
    """Kept and quarantined rows per stage; stages of skills with no rows in this batch are left out."""
    rejected = dict(quarantined.group_by("stage").len().rows()) if quarantined.height else {}
    rows = [
        {
            "stage": table.name,
            "skill": table.skill,
            "kept": audit.count(table, batch),
            "quarantined": rejected.get(table.name, 0),
        }
        for table in audit.tables
        if audit.scan(table) is not None or table.name in rejected
    ]
    active = {row["skill"] for row in rows if row["kept"] or row["quarantined"]}
    return [row for row in rows if row["skill"] is None or row["skill"] in active]


def skill_yield(stages: list[dict[str, Any]], pairs: pl.DataFrame, chunks: int) -> list[dict[str, Any]]:
    """Training pairs per source chunk, per skill."""
    per_skill = dict(pairs.group_by("skill").len().rows()) if pairs.height else {}
    skills = sorted({row["skill"] for row in stages if row["skill"]} | set(per_skill))
    return [
        {
            "skill": skill,
            "training_pairs": per_skill.get(skill, 0),
            "source_chunks": chunks,
            "pairs_per_chunk": round(per_skill.get(skill, 0) / chunks, 3) if chunks else 0.0,
        }
        for skill in skills
    ]


def reason_examples(quarantined: pl.DataFrame) -> list[dict[str, Any]]:
    """Each reason: its rows, the stages it occurred in, and a few example ids."""
    if not quarantined.height:
        return []
    grouped = quarantined.group_by("reason", maintain_order=True).agg(
        pl.len().alias("rows"),
        pl.col("stage").unique(maintain_order=True).alias("stages"),
        pl.col("id").head(EXAMPLES_PER_REASON).alias("example_ids"),
    )
    return grouped.sort("rows", "reason", descending=[True, False]).to_dicts()


def stage_reason_examples(quarantined: pl.DataFrame) -> list[dict[str, Any]]:
    """Each stage and reason (stages in pipeline order, commonest reason first): its rows and a few example ids."""
    if not quarantined.height:
        return []
    examples = quarantined.group_by("stage", "reason").agg(pl.col("id").head(EXAMPLES_PER_REASON).alias("example_ids"))
    counts = quarantine_counts(quarantined).join(examples, on=["stage", "reason"], how="left", maintain_order="left")
    return counts.select("stage", "reason", "rows", "example_ids").to_dicts()


def judge_scores(audit: LakeAudit, batch: str) -> list[dict[str, Any]]:
    """Per judged table (a table with `score` and `scores`): the kept rows' score histogram and means."""
    results = []
    for table in audit.tables:
        if not {"score", "scores"} <= set(audit.columns(table)):
            continue
        judged = audit.partition(table, batch, ["score", "scores"])
        if not judged.height:
            continue
        criteria = pl.DataFrame([json.loads(scores) for scores in judged["scores"]])
        results.append(
            {
                "skill": table.skill,
                "rows": judged.height,
                "mean_score": round(float(judged["score"].mean()), 3),
                "histogram": score_histogram(judged["score"].to_list()),
                "criteria_means": {name: round(float(criteria[name].mean()), 3) for name in criteria.columns},
            }
        )
    return results


def score_histogram(scores: list[float]) -> dict[str, int]:
    """Counts per half-point bin from 1 to 5 (the last bin includes 5)."""
    counts = dict.fromkeys(SCORE_LABELS, 0)
    for score in scores:
        counts[SCORE_LABELS[sum(score >= edge for edge in SCORE_BINS[1:-1])]] += 1
    return counts


def instruction_types(audit: LakeAudit, batch: str, pairs: pl.DataFrame) -> list[dict[str, Any]]:
    """Training pairs per skill and instruction type (from each pair's parent row)."""
    if not pairs.height:
        return []
    parent_ids = pairs["parent_id"].to_list()
    predicate = (pl.col("batch") == batch) & pl.col("id").is_in(parent_ids)
    found = (
        audit.rows(table, predicate, ["id", "instruction_type"])
        for table in audit.tables
        if "instruction_type" in audit.columns(table)
    )
    parents = [part for part in found if part.height]
    if not parents:
        return []
    types = pl.concat(parents).unique("id")
    mix = pairs.join(types, left_on="parent_id", right_on="id", how="left").group_by("skill", "instruction_type").len()
    totals = mix.group_by("skill").agg(pl.col("len").sum().alias("total"))
    return (
        mix.join(totals, on="skill")
        .select(
            "skill",
            "instruction_type",
            pl.col("len").alias("pairs"),
            (pl.col("len") / pl.col("total")).round(3).alias("share"),
        )
        .sort("skill", "pairs", "instruction_type", descending=[False, True, False])
        .to_dicts()
    )


def pair_lengths(pairs: pl.DataFrame) -> list[dict[str, Any]]:
    """Characters of each pair's user turns (instruction) and assistant turns (answer): p5, median, p95."""
    if not pairs.height:
        return []
    turns = pairs.select("id", "skill", "messages").explode("messages").unnest("messages")
    chars = pl.col("content").fill_null("").str.len_chars()
    per_pair = turns.group_by("id", "skill").agg(
        instruction=chars.filter(pl.col("role") == "user").sum(),
        answer=chars.filter(pl.col("role") == "assistant").sum(),
    )
    results = []
    for (skill,), group in per_pair.sort("skill").group_by("skill", maintain_order=True):
        for field in ("instruction", "answer"):
            figures = {name: int(group[field].quantile(q, "nearest")) for name, q in PERCENTILES.items()}
            results.append({"skill": skill, "field": field, **figures})
    return results


# --- layout and rendering ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One table of the report; `bars` draws its numbers as bars in HTML."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]]
    bars: bool = False


def sections(report: dict[str, Any]) -> list[Section]:
    """The report as tables: content columns first, ids last."""
    return [
        Section(
            "stages",
            "Rows per stage",
            ["stage", "kept", "quarantined"],
            [[row["stage"], row["kept"], row["quarantined"]] for row in report["stages"]],
        ),
        Section(
            "yield",
            "Yield per skill (training pairs per source chunk)",
            ["skill", "training pairs", "source chunks", "pairs per chunk"],
            [
                [row["skill"], row["training_pairs"], row["source_chunks"], row["pairs_per_chunk"]]
                for row in report["yield"]
            ],
        ),
        Section(
            "quarantine_reasons",
            "Quarantine reasons",
            ["reason", "rows", "stages", "example ids"],
            [
                [row["reason"], row["rows"], ", ".join(row["stages"]), ", ".join(row["example_ids"])]
                for row in report["quarantine_reasons"]
            ],
        ),
        Section(
            "quarantine_by_stage",
            "Quarantine per stage and reason",
            ["stage", "reason", "rows", "example ids"],
            [
                [row["stage"], row["reason"], row["rows"], ", ".join(row["example_ids"])]
                for row in report["quarantine_by_stage"]
            ],
        ),
        Section(
            "curation",
            "Curation (dedup, decontamination, judge)",
            ["reason", "rows"],
            [[reason, count] for reason, count in report["curation"].items()],
        ),
        Section(
            "judge_scores",
            "Judge scores of kept rows",
            ["skill", "rows", "mean score", "criterion means"],
            [
                [
                    row["skill"],
                    row["rows"],
                    row["mean_score"],
                    ", ".join(f"{k} {v}" for k, v in row["criteria_means"].items()),
                ]
                for row in report["judge"]
            ],
        ),
        Section(
            "judge_histogram",
            "Judge score histogram (mean score per row)",
            ["skill", *SCORE_LABELS],
            [[row["skill"], *(row["histogram"][label] for label in SCORE_LABELS)] for row in report["judge"]],
            bars=True,
        ),
        Section(
            "instruction_types",
            "Instruction types of the training pairs",
            ["skill", "instruction type", "pairs", "share"],
            [
                [row["skill"], row["instruction_type"], row["pairs"], row["share"]]
                for row in report["instruction_types"]
            ],
        ),
        Section(
            "lengths",
            "Training pair lengths (characters)",
            ["skill", "turns", *PERCENTILES],
            [[row["skill"], row["field"], *(row[name] for name in PERCENTILES)] for row in report["lengths"]],
        ),
    ]


def _cell(value: Any, limit: int = CELL_CHARS) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_markdown(section: Section, max_rows: int = MARKDOWN_ROWS) -> str:
    """A markdown table of at most `max_rows` rows (then a line saying how many more there are)."""
    if not section.rows:
        return f"**{section.title}**: none"

    def line(values: list[Any]) -> str:
        return "| " + " | ".join(_cell(value).replace("|", "\\|") for value in values) + " |"

    lines = [f"**{section.title}**", "", line(section.columns), "|" + "---|" * len(section.columns)]
    lines += [line(row) for row in section.rows[:max_rows]]
    if len(section.rows) > max_rows:
        lines += ["", f"… {len(section.rows) - max_rows} more rows in the HTML report"]
    return "\n".join(lines)


def to_text(report: dict[str, Any]) -> str:
    """The whole report as plain text (the CLI's `report`)."""
    totals = report["totals"]
    lines = [f"quality report of batch {report['batch']!r}: " + ", ".join(f"{k} {v}" for k, v in totals.items())]
    for section in sections(report):
        lines += ["", section.title]
        rows = [
            [
                _cell(value, TEXT_CELL_CHARS) if isinstance(value, str) and not name.endswith("ids") else value
                for name, value in zip(section.columns, row, strict=True)
            ]
            for row in section.rows
        ]
        lines.append(text_table(section.columns, rows) if rows else "none")
    return "\n".join(lines)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.ids { font-family: monospace; font-size: 0.8rem; }
.bar { display: inline-block; height: 0.7rem; background: #4a7bd0; margin-right: 0.3rem; }
.totals span { margin-right: 1.5rem; }
"""


def to_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page (inline CSS, no scripts) of the whole report."""
    title = f"Quality report: batch {report['batch']}"
    totals = "".join(
        f"<span><b>{html.escape(str(v))}</b> {html.escape(k.replace('_', ' '))}</span>"
        for k, v in report["totals"].items()
    )
    body = [f"<h1>{html.escape(title)}</h1>", f'<p class="totals">{totals}</p>']
    for section in sections(report):
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body.append(_html_table(section) if section.rows else "<p>none</p>")
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _html_table(section: Section) -> str:
    numbers = [value for row in section.rows for value in row if isinstance(value, int | float)]
    top = max(numbers, default=0) or 1
    head = "".join(f"<th>{html.escape(name)}</th>" for name in section.columns)
    rows = []
    for row in section.rows:
        cells = []
        for name, value in zip(section.columns, row, strict=True):
            if isinstance(value, int | float):
                bar = f'<span class="bar" style="width:{4 * value / top:.2f}rem"></span>' if section.bars else ""
                cells.append(f'<td class="num">{bar}{value}</td>')
            else:
                kind = ' class="ids"' if name.endswith("ids") else ""
                cells.append(f"<td{kind}>{html.escape(str(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"


def report_paths(root: str | Path, batch: str) -> tuple[Location, Location]:
    """Where a batch's report is written: `<root>/reports/<batch>.html` and `.json` (a local root or a URI)."""
    return join(root, REPORTS_FOLDER, f"{batch}.html"), join(root, REPORTS_FOLDER, f"{batch}.json")


def write_report(
    root: str | Path, report: dict[str, Any], storage_options: Mapping[str, str] | None = None
) -> tuple[Location, Location]:
    """Write the report as HTML and JSON; returns both locations."""
    html_path, json_path = report_paths(root, report["batch"])
    write_bytes(html_path, to_html(report).encode(), storage_options)
    write_bytes(json_path, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode(), storage_options)
    return html_path, json_path
