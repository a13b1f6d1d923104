"""What the Dagster UI shows an auditor, read back from the instance after real runs on the stand-in: the quality
report's quarantine tables, each stage's quarantine preview, sample rows with content first and ids last, column
descriptions, call counts that say what they count, and readable names, tags and owners in the asset graph."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from conftest import PASSAGES, Project, isolated_project

from agentinstruct_dagster.definitions import build_definitions
from agentinstruct_dagster.pipeline.io_manager import ID_COLUMNS
from agentinstruct_dagster.project import catalogue_dir, expectations_dir, project_dir
from agentinstruct_dagster.report import stage_keys
from agentinstruct_dagster.runs import run_batches
from agentinstruct_dagster.storage.delta import read_quarantine, table_exists
from agentinstruct_dagster.storage.paths import table_path

RC = "reading_comprehension"
BATCH = "audited"
REPORT = dg.AssetKey("quality_report")
STAGES = ("transformed_texts", "seed_instructions", "refined_instructions", "judged_instructions")


@dataclass
class Audited:
    """A batch run with quarantined rows in every stage, and the lake's quarantine read directly."""

    project: Project
    keys: list[dg.AssetKey]
    quarantine: pl.DataFrame

    def metadata(self, key: dg.AssetKey) -> dict[str, dg.MetadataValue]:
        event = self.project.instance.get_latest_materialization_event(key)
        assert event is not None and event.asset_materialization is not None, key
        return dict(event.asset_materialization.metadata)


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audited]:
    """One run of a batch with an empty document and a stand-in answering 40% of attempts off-schema (some calls
    of every stage fail and are quarantined), with the batch gates opened so that every stage runs."""
    tmp_path = tmp_path_factory.mktemp("ui")
    expectations = tmp_path / "expectations"
    shutil.copytree(expectations_dir(), expectations)
    for gate in (expectations / "gates").glob("*.json"):
        gate.write_text(json.dumps({**json.loads(gate.read_text()), "expectations": []}))
    llm = yaml.safe_load((project_dir() / "resources" / "standin.yaml").read_text())["llm"]
    llm["standin"] = {"faults": [{"kind": "schema_mismatch", "first_attempts": 0, "rate": 0.4}]}
    llm["max_failure_rate"] = 1.0
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("AGENTINSTRUCT_EXPECTATIONS_DIR", str(expectations))
        with isolated_project(tmp_path, monkeypatch, llm=llm) as project:
            yield run_audited(project)


def run_audited(project: Project) -> Audited:
    (project.add_batch(BATCH, PASSAGES) / "empty.txt").write_text("")
    defs = build_definitions(project.profile)
    assert run_batches(defs, project.instance, [BATCH])[BATCH].success
    keys = stage_keys(defs)
    parts = [
        read_quarantine(table_path(project.lake, key), BATCH)
        for key in keys
        if table_exists(table_path(project.lake, key))
    ]
    return Audited(project, keys, pl.concat(parts, how="diagonal_relaxed"))


def records(value: dg.MetadataValue) -> list[dict]:
    assert isinstance(value, dg.TableMetadataValue)
    return [record.data for record in value.records]


def column_names(value: dg.TableMetadataValue) -> list[str]:
    return [column.name for column in value.schema.columns]


def test_quality_report_lists_the_batch_quarantine_by_stage_and_reason(audited: Audited) -> None:
    quarantine = audited.quarantine
    stages = set(quarantine["stage"])
    assert "raw_documents" in stages and len(stages) >= 3
    metadata = audited.metadata(REPORT)
    by_stage = records(metadata["quarantine_by_stage"])
    expected = {tuple(row[:2]): row[2] for row in quarantine.group_by("stage", "reason").len().rows()}
    assert {(row["stage"], row["reason"]): row["rows"] for row in by_stage} == expected
    # Stages in pipeline order; every example id is a quarantined row of that stage and reason.
    order = [key.to_user_string() for key in audited.keys]
    positions = [order.index(row["stage"]) for row in by_stage]
    assert positions == sorted(positions)
    for row in by_stage:
        ids = row["example_ids"].split(", ")
        rows = quarantine.filter((pl.col("stage") == row["stage"]) & (pl.col("reason") == row["reason"]))
        assert set(ids) <= set(rows["id"]) and len(ids) == min(3, rows.height)
    assert all(column.description for column in metadata["quarantine_by_stage"].schema.columns)


def test_quality_report_previews_the_quarantined_rows_by_id(audited: Audited) -> None:
    preview = audited.metadata(REPORT)["quarantined_rows_preview"]
    shown = records(preview)
    assert len(shown) == min(50, audited.quarantine.height)
    assert column_names(preview) == ["stage", "reason", "detail", "source", "id", "parent_id"]
    assert all(column.description for column in preview.schema.columns)
    lake = {row["id"]: row for row in audited.quarantine.iter_rows(named=True)}
    for row in shown:  # whole ids (for `agentinstruct trace`), each a quarantined row of the lake
        assert row["id"] in lake
        assert (row["stage"], row["reason"], row["parent_id"]) == tuple(
            lake[row["id"]][name] for name in ("stage", "reason", "parent_id")
        )
        assert len(row["detail"] or "") <= 200


def test_each_stage_previews_its_own_quarantine(audited: Audited) -> None:
    for key in audited.keys[:-1]:  # the training set quarantines nothing
        metadata = audited.metadata(key)
        mine = audited.quarantine.filter(pl.col("stage") == key.to_user_string())
        assert metadata["quarantined_rows"].value == mine.height, key
        assert sum(metadata["quarantine_reasons"].value.values()) == mine.height, key
        if mine.height:
            shown = records(metadata["quarantine"])
            assert len(shown) == min(20, mine.height)
            assert {row["id"] for row in shown} <= set(mine["id"])
            assert column_names(metadata["quarantine"])[-2:] == ["id", "parent_id"]


def test_sample_rows_show_content_first_and_short_ids_last(audited: Audited) -> None:
    for key in audited.keys:
        sample = audited.metadata(key)["sample_rows"]
        names = column_names(sample)
        ids = [name for name in names if name in ID_COLUMNS]
        assert ids and names[-len(ids) :] == ids and "batch" not in names, key
        first = {"training_set": "messages", "raw_documents": "text", "transformed_texts": "text"}
        assert names[0] == first.get(key.path[-1], "instruction"), key
        for row in records(sample):
            assert all(len(row[name]) == 9 and row[name].endswith("…") for name in ids if row[name]), key
            assert all(len(value) <= 200 for value in row.values() if isinstance(value, str)), key
    pair = records(audited.metadata(dg.AssetKey("training_set"))["sample_rows"])[0]
    assert pair["messages"].startswith("system: ") or pair["messages"].startswith("user: ")


def test_column_schemas_describe_every_column_and_uris_are_usable(audited: Audited) -> None:
    for key in audited.keys:
        metadata = audited.metadata(key)
        columns = metadata["dagster/column_schema"].schema.columns
        assert [column.name for column in columns if not column.description] == [], key
        assert metadata["dagster/uri"].value == table_path(audited.project.lake, key).resolve().as_uri(), key
    report = audited.metadata(REPORT)
    for name in ("report_html", "report_json"):
        assert isinstance(report[name], dg.UrlMetadataValue)
        assert report[name].value.startswith("file://")
        assert Path(report[name].value.removeprefix("file://")).is_file()


def test_call_counts_say_what_they_count(project: Project) -> None:
    project.add_batch("twice", PASSAGES[:1])
    defs = build_definitions(project.profile)
    keys = [dg.AssetKey([RC, stage]) for stage in STAGES]

    def counts() -> dict[dg.AssetKey, dict]:
        """Each stage's latest materialization metadata, read from the instance."""
        events = {key: project.instance.get_latest_materialization_event(key) for key in keys}
        return {key: {k: v.value for k, v in e.asset_materialization.metadata.items()} for key, e in events.items()}

    assert run_batches(defs, project.instance, ["twice"])["twice"].success
    first = counts()
    assert run_batches(defs, project.instance, ["twice"])["twice"].success
    second = counts()
    for key in keys:
        made = first[key]["calls_made"]
        assert made > 0 and first[key]["calls_cached"] == 0 and first[key]["prompt_tokens_paid"] > 0, key
        assert second[key]["calls_made"] == 0 and second[key]["calls_cached"] == made, key
        assert second[key]["calls_failed"] == 0 and second[key]["prompt_tokens_paid"] == 0, key
        assert not {"llm_calls", "cached_calls", "failed_calls"} & set(second[key]), key


def test_stage_assets_carry_step_tags_and_the_skill_owners(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    skill = yaml.safe_load((catalogue_dir() / f"{RC}.yaml").read_text())
    (catalogue / f"{RC}.yaml").write_text(yaml.safe_dump({**skill, "owners": ["team:curation", "ada@example.org"]}))
    monkeypatch.setenv("AGENTINSTRUCT_CATALOGUE_DIR", str(catalogue))
    specs = {spec.key: spec for spec in build_definitions(project.profile).resolve_all_asset_specs()}
    for step, stage in enumerate(STAGES, 1):
        spec = specs[dg.AssetKey([RC, stage])]
        assert {"skill": RC, "stage": stage}.items() <= spec.tags.items()
        assert spec.owners == ["team:curation", "ada@example.org"]
        assert (spec.description or "").startswith(f"{step}/4 ")
