"""quality_report: a batch's quality report as asset metadata and as HTML and JSON files. No LLM calls."""

from pathlib import Path
from typing import Any

import dagster as dg

from agentinstruct_dagster.audit import LakeAudit
from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.pipeline.automation import FINAL_ASSET
from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.pipeline.partitions import batches
from agentinstruct_dagster.pipeline.skill_assets import RAW_DOCUMENTS_KEY, STAGES, stage_key
from agentinstruct_dagster.quality_report import compute_report, sections, to_markdown, write_report
from agentinstruct_dagster.storage.location import Location


def pipeline_keys(skills: list[Skill]) -> list[dg.AssetKey]:
    """The tables the report reads, in pipeline order."""
    return [RAW_DOCUMENTS_KEY, *(stage_key(skill, spec.name) for skill in skills for spec in STAGES), FINAL_ASSET]


def report_metadata(report: dict[str, Any], html_path: Location, json_path: Location) -> dict[str, Any]:
    """Totals as numbers, each section as a markdown table, then the files (local paths or object-store URIs)."""
    totals = report["totals"]
    url = html_path.resolve().as_uri() if isinstance(html_path, Path) else html_path
    return {
        "training_pairs": totals["training_pairs"],
        "quarantined_rows": totals["quarantined_rows"],
        "source_chunks": totals["source_chunks"],
        "documents": totals["documents"],
        **{section.key: dg.MetadataValue.md(to_markdown(section)) for section in sections(report)},
        "report_html": dg.MetadataValue.path(str(html_path)),
        "report_url": dg.MetadataValue.url(url),
        "report_json": dg.MetadataValue.path(str(json_path)),
    }


REPORT_KEY = dg.AssetKey("quality_report")


def build_quality_report(skills: list[Skill]) -> dg.AssetsDefinition:
    keys = pipeline_keys(skills)

    @dg.asset(
        key=REPORT_KEY,
        partitions_def=batches,
        group_name="quality",
        deps=[FINAL_ASSET],
        kinds={"html", "json"},
        description="The batch's quality report: rows kept and quarantined per stage, yield per skill, quarantine "
        "reasons with example ids, dedup and decontamination counts, judge scores, instruction-type mix and "
        "training pair lengths. Written to <lake>/reports/<batch>.html and .json. No LLM calls.",
    )
    def quality_report(context: dg.AssetExecutionContext, lake: Lake) -> dg.MaterializeResult:
        report = compute_report(LakeAudit(lake.root, keys, lake.options), context.partition_key)
        html_path, json_path = write_report(lake.root, report, lake.options)
        return dg.MaterializeResult(metadata=report_metadata(report, html_path, json_path))

    return quality_report
