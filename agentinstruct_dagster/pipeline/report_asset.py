"""quality_report: a batch's quality report as asset metadata and as HTML and JSON files. No LLM calls."""

from typing import Any

import dagster as dg
import polars as pl

from agentinstruct_dagster.audit import LakeAudit
from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.pipeline.automation import FINAL_ASSET
from agentinstruct_dagster.pipeline.io_manager import table_preview
from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.pipeline.partitions import batches
from agentinstruct_dagster.pipeline.skill_assets import RAW_DOCUMENTS_KEY, STAGES, stage_key
from agentinstruct_dagster.quality_report import compute_report, sections, to_markdown, write_report
from agentinstruct_dagster.storage.location import Location, location_uri


def pipeline_keys(skills: list[Skill]) -> list[dg.AssetKey]:
    """The tables the report reads, in pipeline order."""
    return [RAW_DOCUMENTS_KEY, *(stage_key(skill, spec.name) for skill in skills for spec in STAGES), FINAL_ASSET]


QUARANTINE_PREVIEW_ROWS = 50
REPORT_COLUMNS = {
    "rows": "Rows of the batch quarantined for this reason in this stage.",
    "example_ids": "Ids of the first of these rows (`agentinstruct trace ID` follows one to its document).",
}


def quarantine_tables(report: dict[str, Any], quarantined: pl.DataFrame) -> dict[str, dg.TableMetadataValue]:
    """The batch's quarantine in the UI: counts per stage and reason with example ids, and the first rows."""
    by_stage = pl.DataFrame(
        report["quarantine_by_stage"],
        schema={"stage": pl.String, "reason": pl.String, "rows": pl.Int64, "example_ids": pl.List(pl.String)},
    ).with_columns(pl.col("example_ids").list.join(", "))
    shown = quarantined.select("stage", "reason", "detail", "source", "id", "parent_id")
    return {
        "quarantine_by_stage": table_preview(by_stage, by_stage.height, descriptions=REPORT_COLUMNS),
        "quarantined_rows_preview": table_preview(shown, QUARANTINE_PREVIEW_ROWS, id_chars=None),
    }


def report_metadata(
    report: dict[str, Any], quarantined: pl.DataFrame, html_path: Location, json_path: Location
) -> dict[str, Any]:
    """Totals as numbers, the quarantine as tables, the other sections as markdown tables, then the files' URIs."""
    totals = report["totals"]
    tables = quarantine_tables(report, quarantined)
    return {
        "training_pairs": totals["training_pairs"],
        "quarantined_rows": totals["quarantined_rows"],
        "source_chunks": totals["source_chunks"],
        "documents": totals["documents"],
        **tables,
        **{
            section.key: dg.MetadataValue.md(to_markdown(section))
            for section in sections(report)
            if section.key not in tables
        },
        "report_html": dg.MetadataValue.url(location_uri(html_path)),
        "report_json": dg.MetadataValue.url(location_uri(json_path)),
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
        "per stage and reason with example ids and its first rows, dedup and decontamination counts, judge scores, "
        "instruction-type mix and training pair lengths. Written to `<lake>/reports/<batch>.html` and `.json`. No LLM "
        "calls.",
    )
    def quality_report(context: dg.AssetExecutionContext, lake: Lake) -> dg.MaterializeResult:
        audit = LakeAudit(lake.root, keys, lake.options)
        report = compute_report(audit, context.partition_key)
        html_path, json_path = write_report(lake.root, report, lake.options)
        quarantined = audit.quarantined(context.partition_key)
        return dg.MaterializeResult(metadata=report_metadata(report, quarantined, html_path, json_path))

    return quality_report
