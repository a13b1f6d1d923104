"""The audit trail on real runs: trace any row to its document, list a batch's quarantine, the quality report
(asset metadata, HTML, JSON, CLI) and the export's lineage columns and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from click.testing import CliRunner
from conftest import PASSAGES, Project

from agentinstruct_dagster.audit import LakeAudit, Trace
from agentinstruct_dagster.cli import main
from agentinstruct_dagster.config.profiles import load_profile
from agentinstruct_dagster.definitions import build_definitions
from agentinstruct_dagster.project import expectations_dir
from agentinstruct_dagster.quality_report import compute_report
from agentinstruct_dagster.report import stage_keys
from agentinstruct_dagster.runs import run_batches
from agentinstruct_dagster.storage.delta import read_all, read_partition, read_quarantine, scan_quarantine, table_exists
from agentinstruct_dagster.storage.paths import table_path

FINAL = dg.AssetKey("training_set")


def run_batch(project: Project, batch: str, texts: list[str] | None = None) -> dg.ExecuteInProcessResult:
    project.add_batch(batch, texts)
    result = run_batches(build_definitions(project.profile), project.instance, [batch])[batch]
    assert result.success
    return result


def audit_of(project: Project) -> LakeAudit:
    return LakeAudit(project.lake, stage_keys(build_definitions(project.profile)))


def with_faults(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """The project with a stand-in answering about 40% of attempts off-schema: with the repair re-ask, some
    calls of every stage fail and are quarantined. The batch-level quality gates are opened (they would stop
    a stage rejecting that much), so every stage runs."""
    expectations = tmp_path / "expectations"
    shutil.copytree(expectations_dir(), expectations)
    for gate in (expectations / "gates").glob("*.json"):
        gate.write_text(json.dumps({**json.loads(gate.read_text()), "expectations": []}))
    monkeypatch.setenv("AGENTINSTRUCT_EXPECTATIONS_DIR", str(expectations))
    path = tmp_path / "profiles" / "test.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["llm"]["standin"] = {"faults": [{"kind": "schema_mismatch", "first_attempts": 0, "rate": 0.4}]}
    profile["llm"]["max_failure_rate"] = 1.0
    path.write_text(yaml.safe_dump(profile))
    return Project(profile=load_profile(), instance=project.instance)


def table_row(project: Project, key: dg.AssetKey, row_id: str, *, quarantine: bool = False) -> dict:
    path = table_path(project.lake, key)
    rows = scan_quarantine(path).collect() if quarantine else read_all(path)
    return rows.filter(pl.col("id") == row_id).row(0, named=True)


def quarantine_of(project: Project, batch: str) -> pl.DataFrame:
    """Every stage table's quarantined rows of the batch, read directly."""
    parts = [
        read_quarantine(table_path(project.lake, key), batch)
        for key in stage_keys(build_definitions(project.profile))
        if table_exists(table_path(project.lake, key))
    ]
    return pl.concat(parts, how="diagonal_relaxed")


def assert_linked(project: Project, trace: Trace) -> None:
    """Each step is its table's row, and each step's parent is the step before it."""
    for step in trace.steps:
        assert table_row(project, step.table.key, step.id, quarantine=step.table.quarantine) == step.row
    for parent, child in zip(trace.steps, trace.steps[1:], strict=False):
        assert child.row["parent_id"] in (parent.id, parent.row.get("doc_id"))
        assert child.table.position >= parent.table.position


def test_trace_from_a_training_pair_to_its_document(project: Project) -> None:
    run_batch(project, "traced")
    pair = read_all(table_path(project.lake, FINAL)).row(0, named=True)
    trace = audit_of(project).trace(pair["id"])
    assert trace is not None and trace.target.id == pair["id"] and trace.batch == "traced"
    assert_linked(project, trace)
    names = [step.table.name for step in trace.steps]
    assert names[0] == "raw_documents" and names[-1] == "training_set"
    assert {"reading_comprehension/transformed_texts", "reading_comprehension/seed_instructions"} <= set(names)
    rounds = [step.row["round"] for step in trace.steps if step.table.key.path[-1] == "refined_instructions"]
    assert rounds == list(range(1, len(rounds) + 1)) and rounds
    document = trace.steps[0].row
    assert document["doc_id"] == pair["doc_id"]
    seed = next(step for step in trace.steps if step.table.key.path[-1] == "seed_instructions")
    assert seed.id == pair["seed_id"]

    from_the_seed = audit_of(project).trace(seed.id)
    assert [step.id for step in from_the_seed.steps] == [step.id for step in trace.steps]

    shown = CliRunner().invoke(main, ["trace", pair["id"]])
    assert shown.exit_code == 0, shown.output
    for step in trace.steps:
        assert step.id in shown.output
    assert f"document {document['title']!r} ({document['source']}), chunk 1 of 1" in shown.output
    assert f"chars {document['char_start']}-{document['char_end']}" in shown.output
    unknown = CliRunner().invoke(main, ["trace", "0123456789abcdef"])
    assert unknown.exit_code == 1 and "no row with id '0123456789abcdef'" in unknown.output


def test_quarantine_listing_and_the_trace_of_a_rejected_row(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = with_faults(project, tmp_path, monkeypatch)
    run_batch(project, "faulty", PASSAGES)
    expected = quarantine_of(project, "faulty")
    assert expected.height > 0
    runner = CliRunner()

    listed = runner.invoke(main, ["quarantine", "--batch", "faulty", "--format", "jsonl", "--limit", "1000"])
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert sorted((row["stage"], row["reason"], row["id"]) for row in rows) == sorted(
        expected.select("stage", "reason", "id").rows()
    )
    table = runner.invoke(main, ["quarantine", "--batch", "faulty"])
    assert table.exit_code == 0, table.output
    assert f"batch 'faulty': {expected.height} quarantined row(s)" in table.output
    for (stage, reason), group in expected.group_by("stage", "reason"):
        assert any(line.split() == [str(group.height), stage, reason] for line in table.output.splitlines())

    stage = expected.filter(pl.col("stage").str.contains("/"))["stage"][0]
    of_stage = runner.invoke(
        main, ["quarantine", "--batch", "faulty", "--stage", stage.split("/")[1], "--format", "jsonl"]
    )
    ids = expected.filter(pl.col("stage").str.ends_with("/" + stage.split("/")[1]))["id"]
    assert {json.loads(line)["id"] for line in of_stage.output.splitlines()} == set(ids)
    absent = runner.invoke(main, ["quarantine", "--batch", "faulty", "--reason", "no_such_reason"])
    assert absent.exit_code == 0 and "no quarantined rows with reason 'no_such_reason'" in absent.output
    unknown = runner.invoke(main, ["quarantine", "--batch", "nope"])
    assert unknown.exit_code == 1 and "no rows of batch 'nope'" in unknown.output and "'faulty'" in unknown.output

    of_skills = expected.filter(pl.col("stage").str.contains("/") & pl.col("parent_id").is_not_null())
    rejected = of_skills.row(-1, named=True)  # from the latest stage that rejected something
    trace = audit_of(project).trace(rejected["id"])
    assert trace.target.table.quarantine and trace.steps[-1] == trace.target
    assert trace.steps[-2].id == rejected["parent_id"] and trace.steps[0].table.name == "raw_documents"
    assert_linked(project, trace)
    shown = runner.invoke(main, ["trace", rejected["id"]])
    assert shown.exit_code == 0, shown.output
    assert f"quarantined in {rejected['stage']}" in shown.output
    assert f"rejected because {rejected['reason']}" in shown.output


def test_quality_report_matches_the_tables(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = with_faults(project, tmp_path, monkeypatch)
    result = run_batch(project, "reported", PASSAGES)
    keys = stage_keys(build_definitions(project.profile))
    report = compute_report(audit_of(project), "reported")

    quarantined = quarantine_of(project, "reported")
    pairs = read_partition(table_path(project.lake, FINAL), "reported")
    chunks = read_partition(table_path(project.lake, ["raw_documents"]), "reported")
    assert report["totals"] == {
        "documents": len(PASSAGES),
        "source_chunks": chunks.height,
        "training_pairs": pairs.height,
        "quarantined_rows": quarantined.height,
    }
    for row in report["stages"]:
        key = dg.AssetKey.from_user_string(row["stage"])
        assert row["kept"] == read_partition(table_path(project.lake, key), "reported").height
        assert row["quarantined"] == quarantined.filter(pl.col("stage") == row["stage"]).height
    assert {row["stage"] for row in report["stages"]} == {
        key.to_user_string() for key in keys if table_exists(table_path(project.lake, key))
    }
    reasons = dict(quarantined.group_by("reason").len().rows())
    assert {row["reason"]: row["rows"] for row in report["quarantine_reasons"]} == reasons
    for row in report["quarantine_reasons"]:
        of_reason = quarantined.filter(pl.col("reason") == row["reason"])
        assert set(row["example_ids"]) <= set(of_reason["id"]) and len(row["example_ids"]) == min(3, of_reason.height)
    assert report["curation"] == {reason: reasons.get(reason, 0) for reason in report["curation"]}
    assert report["yield"] == [
        {
            "skill": "reading_comprehension",
            "training_pairs": pairs.height,
            "source_chunks": chunks.height,
            "pairs_per_chunk": round(pairs.height / chunks.height, 3),
        }
    ]
    assert sum(row["pairs"] for row in report["instruction_types"]) == pairs.height
    for judged in report["judge"]:
        rows = read_partition(table_path(project.lake, [judged["skill"], "judged_instructions"]), "reported")
        assert judged["rows"] == sum(judged["histogram"].values()) == rows.height
    assert {row["field"] for row in report["lengths"]} == {"instruction", "answer"}

    event = next(e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("quality_report"))
    metadata = event.materialization.metadata
    assert metadata["training_pairs"].value == pairs.height
    assert metadata["quarantined_rows"].value == quarantined.height
    assert "| stage | kept | quarantined |" in metadata["stages"].value
    html_path, json_path = project.lake / "reports" / "reported.html", project.lake / "reports" / "reported.json"
    assert metadata["report_html"].value == html_path.resolve().as_uri()
    assert metadata["report_json"].value == json_path.resolve().as_uri()
    assert json.loads(json_path.read_text()) == report
    page = html_path.read_text()
    assert f"<b>{pairs.height}</b> training pairs" in page and f"<b>{quarantined.height}</b> quarantined rows" in page
    for row in report["stages"]:
        cells = f'<td>{row["stage"]}</td><td class="num">{row["kept"]}</td><td class="num">{row["quarantined"]}</td>'
        assert cells in page

    printed = CliRunner().invoke(main, ["report", "--batch", "reported"])
    assert printed.exit_code == 0, printed.output
    assert f"training_pairs {pairs.height}, quarantined_rows {quarantined.height}" in printed.output
    assert CliRunner().invoke(main, ["report", "--batch", "nope"]).exit_code == 1


def test_export_with_lineage_and_its_errors(project: Project, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "export"
    nothing = runner.invoke(main, ["export", "--out", str(out)])
    assert nothing.exit_code == 1 and "no training set at" in nothing.output

    run_batch(project, "exported", PASSAGES[:1])
    pairs = read_all(table_path(project.lake, FINAL))
    exported = runner.invoke(main, ["export", "--out", str(out), "--lineage"])
    assert exported.exit_code == 0, exported.output
    records = [json.loads(line) for line in (out / "rc.jsonl").read_text().splitlines()]
    lineage = ["id", "doc_id", "seed_id", "parent_id", "batch", "skill"]
    assert [{name: record[name] for name in lineage} for record in records] == pairs.sort("batch", "id").select(
        lineage
    ).to_dicts()
    assert runner.invoke(main, ["export", "--out", str(out), "--format", "parquet", "--lineage"]).exit_code == 0
    assert pl.read_parquet(out / "rc.parquet").columns == ["messages", *lineage]

    unknown = runner.invoke(main, ["export", "--out", str(out), "--batch", "exported", "--batch", "nope"])
    assert unknown.exit_code == 1
    assert "no training pairs for batch(es) ['nope']; batches with pairs: ['exported']" in unknown.output
