"""The pipeline end to end on the stand-in: real HTTP, real Delta tables, real Dagster runs and checks."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from click.testing import CliRunner
from conftest import PASSAGES, RC, STAGE_TABLES, Project, write_profile

from agentinstruct_dagster.cli import main
from agentinstruct_dagster.config.profiles import Profile, StandinSettings, load_profile
from agentinstruct_dagster.definitions import build_definitions
from agentinstruct_dagster.project import catalogue_dir, expectations_dir, profiles_dir
from agentinstruct_dagster.report import summarize
from agentinstruct_dagster.runs import run_batches
from agentinstruct_dagster.storage.delta import read_all, read_partition, read_quarantine
from agentinstruct_dagster.storage.paths import ledger_path, table_path


def tables(project: Project) -> dict[str, pl.DataFrame]:
    return {"/".join(key): read_all(table_path(project.lake, key)) for key in STAGE_TABLES}


def rows_of(frame: pl.DataFrame, batch: str) -> list[dict]:
    return frame.filter(pl.col("batch") == batch).sort("id").to_dicts()


def test_two_batches_rerun_replaces_only_its_batch(project: Project) -> None:
    project.add_batch("alpha")
    project.add_batch("it's batch two", PASSAGES[1:])
    defs = build_definitions(project.profile)
    results = run_batches(defs, project.instance, ["alpha", "it's batch two"])
    assert all(result.success for result in results.values())

    before = tables(project)
    for name, frame in before.items():
        assert set(frame["batch"].unique()) == {"alpha", "it's batch two"}, name
        assert frame.select("batch", "id").n_unique() == frame.height, name
    training = before["training_set"]
    assert training["split"].unique().to_list() == ["rc"]

    (project.inbox / "alpha" / "doc0.txt").write_text(PASSAGES[2], encoding="utf-8")
    assert run_batches(defs, project.instance, ["alpha"])["alpha"].success
    after = tables(project)
    for name in before:
        assert rows_of(after[name], "it's batch two") == rows_of(before[name], "it's batch two"), name
        assert after[name].select("batch", "id").n_unique() == after[name].height, name
    assert rows_of(after["raw_documents"], "alpha") != rows_of(before["raw_documents"], "alpha")
    assert run_batches(defs, project.instance, ["alpha"])["alpha"].success
    assert rows_of(tables(project)["training_set"], "alpha") == rows_of(after["training_set"], "alpha")


def test_lineage_joins_from_training_pair_to_document(project: Project) -> None:
    project.add_batch("lineage")
    assert run_batches(build_definitions(project.profile), project.instance, ["lineage"])["lineage"].success
    t = tables(project)
    pair = t["training_set"].row(0, named=True)
    rounds = t[f"{RC}/refined_instructions"]
    judged = t[f"{RC}/judged_instructions"].filter(pl.col("id") == pair["parent_id"]).row(0, named=True)
    assert judged["score"] >= 3 and judged["rationale"]
    chain = []
    current = rounds.filter(pl.col("id") == judged["parent_id"]).row(0, named=True)
    while current is not None:
        chain.append(current)
        parent = rounds.filter(pl.col("id") == current["parent_id"])
        current = parent.row(0, named=True) if parent.height else None
    assert [row["round"] for row in chain] == list(range(len(chain), 0, -1))
    seed = t[f"{RC}/seed_instructions"].filter(pl.col("id") == chain[-1]["parent_id"]).row(0, named=True)
    assert seed["id"] == pair["seed_id"]
    text = t[f"{RC}/transformed_texts"].filter(pl.col("id") == seed["parent_id"]).row(0, named=True)
    chunk = t["raw_documents"].filter(pl.col("id") == text["parent_id"]).row(0, named=True)
    assert chunk["doc_id"] == pair["doc_id"] == text["doc_id"]
    assert chunk["source"].startswith("doc")
    assert pair["messages"][-1]["content"] == chain[0]["answer"]
    for row in (text, seed, chain[0]):
        assert row["model"] == "agentinstruct-standin"
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
        assert row["agent"] and row["prompt_version"]


def test_bad_documents_are_quarantined_and_batch_succeeds(project: Project) -> None:
    folder = project.add_batch("mixed", PASSAGES[:1])
    (folder / "empty.txt").write_text("   \n")
    (folder / "binary.txt").write_bytes(b"\x00\x01\x02binary")
    (folder / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (folder / "copy.txt").write_text(PASSAGES[0])
    (folder / "notes.docx").write_bytes(b"PK")
    assert run_batches(build_definitions(project.profile), project.instance, ["mixed"])["mixed"].success
    quarantine = read_quarantine(table_path(project.lake, ["raw_documents"]), "mixed")
    reasons = dict(zip(quarantine["source"], quarantine["reason"], strict=True))
    assert reasons == {
        "empty.txt": "empty",
        "binary.txt": "binary",
        "latin1.txt": "unknown_encoding",
        "notes.docx": "unsupported_type",
        "doc0.txt": "duplicate",
    }
    assert all(detail for detail in quarantine["detail"])
    assert read_partition(table_path(project.lake, ["raw_documents"]), "mixed")["doc_id"].n_unique() == 1


def test_failing_blocking_check_stops_downstream(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suites = tmp_path / "expectations"
    shutil.copytree(expectations_dir(), suites)
    impossible = json.loads((suites / "seed_instructions.json").read_text())
    impossible["expectations"].append(
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 0, "max_value": 0}}
    )
    (suites / "seed_instructions.json").write_text(json.dumps(impossible))
    monkeypatch.setenv("AGENTINSTRUCT_EXPECTATIONS_DIR", str(suites))
    project.add_batch("blocked")

    result = run_batches(build_definitions(project.profile), project.instance, ["blocked"])["blocked"]
    assert not result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    failed = evaluations["gx_seed_instructions"]
    assert not failed.passed and failed.metadata["expectations_failed"].value >= 1
    materialized = {event.asset_key for event in result.get_asset_materialization_events()}
    assert dg.AssetKey([RC, "seed_instructions"]) in materialized
    assert dg.AssetKey([RC, "refined_instructions"]) not in materialized
    assert dg.AssetKey("training_set") not in materialized


def test_sensor_registers_new_inbox_folders(project: Project) -> None:
    defs = build_definitions(project.profile)
    sensor = defs.resolve_sensor_def("inbox_sensor")
    project.add_batch("new folder")
    result = sensor(dg.build_sensor_context(instance=project.instance))
    assert [request.partition_key for request in result.run_requests] == ["new folder"]
    assert result.dynamic_partitions_requests[0].partition_keys == ["new folder"]
    project.instance.add_dynamic_partitions("batches", ["new folder"])
    assert sensor(dg.build_sensor_context(instance=project.instance, cursor=result.cursor)).run_requests == []


def test_schedule_requests_registered_batches_not_yet_materialized(project: Project) -> None:
    project.add_batch("done")
    defs = build_definitions(project.profile)
    assert run_batches(defs, project.instance, ["done"])["done"].success
    project.add_batch("waiting")
    project.instance.add_dynamic_partitions("batches", ["waiting"])
    schedule = defs.resolve_schedule_def("catch_up_schedule")
    tick = datetime(2026, 11, 24, 2, tzinfo=UTC)
    requests = schedule(dg.build_schedule_context(instance=project.instance, scheduled_execution_time=tick))
    assert [request.partition_key for request in requests] == ["waiting"]


def test_backfill_and_export_from_the_command_line(project: Project, tmp_path: Path) -> None:
    project.add_batch("b1", PASSAGES[:1])
    project.add_batch("b2", PASSAGES[2:])
    runner = CliRunner()
    backfill = runner.invoke(main, ["backfill", "--batch", "b1", "--batch", "b2"], catch_exceptions=False)
    assert backfill.exit_code == 0, backfill.output
    assert "b1" in backfill.output and "b2" in backfill.output
    # A real Dagster backfill, run by the daemon the command started: one run per batch, tagged with it.
    (backfill_record,) = project.instance.get_backfills()
    assert backfill_record.status.value == "COMPLETED_SUCCESS"
    assert f"backfill {backfill_record.backfill_id}" in backfill.output
    runs = project.instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_record.backfill_id}))
    assert sorted(run.tags["dagster/partition"] for run in runs) == ["b1", "b2"]
    assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}

    out = tmp_path / "export"
    exported = runner.invoke(main, ["export", "--out", str(out), "--batch", "b1", "--batch", "b2"])
    assert exported.exit_code == 0, exported.output
    lines = [json.loads(line) for line in (out / "rc.jsonl").read_text().splitlines()]
    training = read_all(table_path(project.lake, ["training_set"]))
    assert len(lines) == training.height > 0
    for line in lines:
        assert set(line) == {"messages"}
        assert [turn["role"] for turn in line["messages"]][-2:] == ["user", "assistant"]
    assert runner.invoke(main, ["export", "--out", str(out), "--format", "parquet"]).exit_code == 0
    assert pl.read_parquet(out / "rc.parquet").height == training.height


def faulty_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **llm_overrides: object) -> Profile:
    """A stand-in profile whose every call answers malformed JSON, twice (so the repair fails too)."""
    profiles = tmp_path / "faulty_profiles"
    profiles.mkdir()
    llm = yaml.safe_load((profiles_dir() / "standin.yaml").read_text())["llm"]
    llm["standin"] = {"faults": [{"kind": "malformed_json", "first_attempts": 2}]}
    write_profile(profiles, tmp_path, llm={**llm, **llm_overrides})
    monkeypatch.setenv("AGENTINSTRUCT_PROFILES_DIR", str(profiles))
    profile = load_profile("test")
    (profile.storage.inbox_path / "faulty").mkdir(parents=True)
    (profile.storage.inbox_path / "faulty" / "doc.txt").write_text(PASSAGES[0])
    return profile


def test_failed_model_calls_are_quarantined_with_raw_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = faulty_profile(tmp_path, monkeypatch, max_failure_rate=1.0)
    with dg.instance_for_test() as instance:
        result = run_batches(build_definitions(profile), instance, ["faulty"])["faulty"]
    # Every call failed, so nothing usable came out: the batch gates fail the run.
    assert not result.success
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert [(e.asset_key.to_user_string(), e.check_name) for e in failed] == [("training_set", "batch_gates")]
    assert "`pairs`" in failed[0].description and RC in failed[0].description
    key = [RC, "transformed_texts"]
    assert read_partition(table_path(profile.storage.root_path, key), "faulty").height == 0
    rejected = read_quarantine(table_path(profile.storage.root_path, key), "faulty").row(0, named=True)
    assert rejected["reason"] == "llm_invalid_output"
    assert rejected["payload"] and rejected["parent_id"]
    assert read_partition(table_path(profile.storage.root_path, ["training_set"]), "faulty").height == 0


def test_failure_rate_over_the_profile_threshold_fails_the_stage_and_keeps_the_last_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = faulty_profile(tmp_path, monkeypatch)
    data = profile.model_dump(mode="json") | {"name": "healthy"}
    data["llm"]["standin"] = StandinSettings().model_dump()
    (tmp_path / "faulty_profiles" / "healthy.yaml").write_text(yaml.safe_dump(data))
    healthy = load_profile("healthy")
    root, key = profile.storage.root_path, [RC, "transformed_texts"]
    with dg.instance_for_test() as instance:
        assert run_batches(build_definitions(healthy), instance, ["faulty"])["faulty"].success
        kept = read_partition(table_path(root, key), "faulty")
        rejected_before = read_quarantine(table_path(root, key), "faulty")
        since = datetime.now(UTC)
        defs = build_definitions(profile)
        result = run_batches(defs, instance, ["faulty"], fresh_calls=True)["faulty"]
    assert not result.success
    failure = next(event for event in result.all_events if event.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.user_failure_data.description
    assert "1 of 1 model calls failed (100%, the profile allows 50%)" in message
    assert "invalid_output" in message and "nothing of this stage was written" in message
    # The stage's rows and quarantine rows are those of the last successful run, replaced together or not at all.
    assert read_partition(table_path(root, key), "faulty").equals(kept) and kept.height == 1
    assert read_quarantine(table_path(root, key), "faulty").equals(rejected_before)
    failed = read_partition(ledger_path(root), "faulty").filter(pl.col("status") == "failed")
    assert failed["error_class"].to_list() == ["invalid_output"] and failed["content"][0]
    # The summary counts the failed stage's call, from the ledger.
    assert "1 made, 0 answered from the call ledger, 1 failed" in summarize(profile, defs, "faulty", result, 1, since)


def stage_metadata(result: dg.ExecuteInProcessResult, stage: str) -> dict:
    events = [event for event in result.get_asset_materialization_events() if event.asset_key.path[-1] == stage]
    return {name: value.value for name, value in events[0].materialization.metadata.items()}


def test_rerunning_an_unchanged_batch_makes_no_model_calls(project: Project) -> None:
    project.add_batch("cached")
    defs = build_definitions(project.profile)
    first = run_batches(defs, project.instance, ["cached"])["cached"]
    again = run_batches(defs, project.instance, ["cached"])["cached"]
    fresh = run_batches(defs, project.instance, ["cached"], fresh_calls=True)["cached"]
    stages = ("transformed_texts", "seed_instructions", "refined_instructions", "judged_instructions")
    for stage in stages:
        before, cached, forced = (stage_metadata(result, stage) for result in (first, again, fresh))
        assert before["calls_made"] > 0 and before["calls_cached"] == 0
        assert cached["calls_cached"] == before["calls_made"] and cached["calls_made"] == 0
        assert cached["engine"]["calls_made"] == 0
        assert forced["engine"]["calls_made"] == before["calls_made"] and forced["calls_cached"] == 0
    ledger = read_partition(ledger_path(project.lake), "cached")
    assert ledger.height == sum(2 * stage_metadata(first, stage)["calls_made"] for stage in stages)
    assert set(ledger["status"]) == {"ok"}
    assert tables(project)["training_set"].height == stage_metadata(first, "training_set")["dagster/row_count"]


def test_a_run_can_choose_its_skills(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    rc = yaml.safe_load((catalogue_dir() / "reading_comprehension.yaml").read_text())
    (catalogue / "reading_comprehension.yaml").write_text(yaml.safe_dump(rc))
    (catalogue / "rc_copy.yaml").write_text(yaml.safe_dump({**rc, "skill": "rc_copy", "split": "rc_copy"}))
    monkeypatch.setenv("AGENTINSTRUCT_CATALOGUE_DIR", str(catalogue))
    every_skill = project.profile.model_copy(update={"skills": None})
    project.add_batch("chosen", PASSAGES[:1])
    defs = build_definitions(every_skill)

    only_copy = run_batches(defs, project.instance, ["chosen"], skills=["rc_copy"])["chosen"]
    assert only_copy.success
    materialized = {event.asset_key.to_user_string() for event in only_copy.get_asset_materialization_events()}
    assert materialized == {
        "raw_documents",
        "rc_copy/transformed_texts",
        "rc_copy/seed_instructions",
        "rc_copy/refined_instructions",
        "rc_copy/judged_instructions",
        "training_set",
        "quality_report",
    }
    # Documents' suite; 4 stage suites and 4 quarantine gates; the shape suite; the training set's suite and gates.
    assert len(only_copy.get_asset_check_evaluations()) == 12
    assert read_all(table_path(project.lake, ["training_set"]))["split"].unique().to_list() == ["rc_copy"]

    assert run_batches(defs, project.instance, ["chosen"])["chosen"].success
    assert sorted(read_all(table_path(project.lake, ["training_set"]))["split"].unique()) == ["rc", "rc_copy"]
    with pytest.raises(ValueError, match="unknown skill"):
        run_batches(defs, project.instance, ["chosen"], skills=["poetry"])
