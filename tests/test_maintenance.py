"""Lake maintenance: compaction, vacuum and checkpoints on real Delta tables, run as the real Dagster job."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow.fs as pafs
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError
from polars.testing import assert_frame_equal

from agentinstruct_dagster.llm.ledger import CallLedger
from agentinstruct_dagster.pipeline.automation import JOB_NAME as PIPELINE_JOB
from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.pipeline.maintenance import MAINTENANCE_TAG, lake_maintenance_job, maintenance_schedule
from agentinstruct_dagster.storage.delta import read_all, scan_quarantine, write_outcome, write_partition
from agentinstruct_dagster.storage.maintenance import find_delta_tables, maintain_table
from agentinstruct_dagster.storage.paths import ledger_path

STAGE = Path("reading_comprehension") / "seed_instructions"
DOCUMENTS = Path("raw_documents")
NO_RETENTION = {"ops": {"maintain_lake": {"config": {"retention_hours": 0, "enforce_retention": False}}}}


def stage_rows(batch: str, version: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Kept rows and quarantined rows of a stage for `batch`; `version` changes their text."""
    kept = pl.DataFrame({"id": [f"{batch}-{i}" for i in range(3)], "text": [f"v{version} {i}" for i in range(3)]})
    quarantined = pl.DataFrame(
        {"id": [f"{batch}-q"], "stage": ["seed"], "reason": ["degenerate_text"], "detail": [f"v{version}"]}
    )
    return kept, quarantined


def flush_ledger(root: Path, batch: str, flushes: int) -> None:
    """`flushes` small commits to the call ledger, as a stage's periodic flushes make them."""
    ledger = CallLedger(ledger_path(root), batch, "reading_comprehension/seed_instructions")
    for call in range(flushes):
        ledger.record(
            request_hash=f"{batch}-{call}",
            agent="seed",
            model="agentinstruct-standin",
            status="ok",
            error_class=None,
            attempts=1,
            latency_seconds=0.01,
            prompt_tokens=10,
            completion_tokens=5,
            cost_usd=0.0,
            content=f"[stand-in] answer {call}",
        )
        ledger.flush()


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """A lake of many small commits: stage outcomes (batch `a` written twice), documents, ledger flushes; a
    lease folder; and a link to a table outside the lake, which maintenance must not follow."""
    root = tmp_path / "lake"
    for version, batch in enumerate(["a", "b", "a"]):
        write_outcome(root / STAGE, *stage_rows(batch, version), batch)
    for batch in ["a", "b", "c"]:
        write_partition(root / DOCUMENTS, pl.DataFrame({"id": [f"{batch}-doc"], "text": [batch]}), batch)
    for batch in ["a", "b"]:
        flush_ledger(root, batch, flushes=4)
    (root / "leases").mkdir()
    (root / "leases" / "lease.json").write_text("{}")
    write_partition(tmp_path / "outside" / "table", pl.DataFrame({"id": ["x"]}), "x")
    write_partition(tmp_path / "outside" / "table", pl.DataFrame({"id": ["y"]}), "y")
    (root / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    return root


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def tables(root: Path) -> list[Path]:
    return [root / STAGE, root / DOCUMENTS, ledger_path(root)]


def files_on_disk(table: Path) -> set[str]:
    return {path.name for path in table.glob("*.parquet")}


def live_files(table: Path) -> set[str]:
    return {Path(uri).name for uri in DeltaTable(str(table)).file_uris()}


def contents(table: Path) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Every row of the table, kept and quarantined (the struct's fields), in a stable order."""
    kept, quarantine = read_all(table), scan_quarantine(table)
    key = "request_hash" if "request_hash" in kept.columns else "id"
    return kept.sort(key), None if quarantine is None else quarantine.collect().sort("id")


def rows_at(table: Path, version: int | None = None) -> pl.DataFrame:
    """Every stored row (kept and quarantined) of the table's version, through pyarrow's local filesystem."""
    files = pafs.SubTreeFileSystem(str(table), pafs.LocalFileSystem())
    dataset = DeltaTable(str(table), version=version).to_pyarrow_dataset(filesystem=files)
    return pl.from_arrow(dataset.to_table()).sort("id", "batch", nulls_last=True)


def assert_same_contents(before: tuple[pl.DataFrame, pl.DataFrame | None], table: Path) -> None:
    kept, quarantined = contents(table)
    assert_frame_equal(kept, before[0])
    assert (quarantined is None) == (before[1] is None)
    if quarantined is not None:
        assert_frame_equal(quarantined, before[1])


def run_maintenance(root: Path, instance: dg.DagsterInstance, run_config: dict) -> dg.ExecuteInProcessResult:
    return lake_maintenance_job.execute_in_process(
        instance=instance,
        resources={"lake": Lake(root=str(root), inbox=str(root.parent / "inbox"))},
        run_config=run_config,
        raise_on_error=False,
    )


def output_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    [output] = [event for event in result.all_events if event.is_successful_output]
    return {name: value.value for name, value in output.step_output_data.metadata.items()}


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    assert not result.success
    return result.failure_data_for_node("maintain_lake").error.message


def add_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus) -> dg.DagsterRun:
    run = dg.DagsterRun(job_name=PIPELINE_JOB, run_id=str(uuid.uuid4()), status=status)
    instance.add_run(run)
    return run


def test_finds_every_table_without_following_links(lake: Path) -> None:
    assert find_delta_tables(lake) == sorted(tables(lake))
    assert find_delta_tables(str(lake)) == sorted(tables(lake))
    with pytest.raises(FileNotFoundError, match="no lake folder"):
        find_delta_tables(lake / "missing")


def test_compacts_vacuums_and_keeps_every_row(lake: Path, instance: dg.DagsterInstance) -> None:
    rows_before = {table: contents(table) for table in tables(lake)}
    disk_before = {table: files_on_disk(table) for table in tables(lake)}
    live_before = {table: live_files(table) for table in tables(lake)}
    versions_before = {table: DeltaTable(str(table)).version() for table in tables(lake)}
    outside = lake.parent / "outside" / "table"
    outside_before = (files_on_disk(outside), DeltaTable(str(outside)).version())
    assert all(len(live) > 1 for live in live_before.values())

    result = run_maintenance(lake, instance, NO_RETENTION)

    assert result.success
    assert result.dagster_run.tags[MAINTENANCE_TAG] == "true"
    for table in tables(lake):
        assert_same_contents(rows_before[table], table)
        assert len(live_files(table)) == 1
        assert files_on_disk(table) == live_files(table)  # every replaced or compacted file is gone
        assert not any((table / name).exists() for name in disk_before[table] - live_files(table))
        assert DeltaTable(str(table)).version() > versions_before[table]
        assert (table / "_delta_log" / "_last_checkpoint").exists()
    assert output_metadata(result) == {
        "tables": 3,
        "files_compacted": sum(len(live) for live in live_before.values()),
        "files_written": 3,
        "files_vacuumed": sum(len(disk) for disk in disk_before.values()),  # every file was replaced
    }
    assert (files_on_disk(outside), DeltaTable(str(outside)).version()) == outside_before

    disk_after = {table: files_on_disk(table) for table in tables(lake)}
    again = run_maintenance(lake, instance, NO_RETENTION)

    assert again.success
    assert output_metadata(again)["files_compacted"] == output_metadata(again)["files_written"] == 0
    for table in tables(lake):
        assert files_on_disk(table) == disk_after[table]
        assert_same_contents(rows_before[table], table)


def test_vacuums_orphans_and_keeps_what_the_retention_protects(lake: Path, instance: dg.DagsterInstance) -> None:
    table = lake / STAGE
    version_before, rows_before = DeltaTable(str(table)).version(), contents(table)
    orphan = table / "part-00000-left-by-a-killed-writer.snappy.parquet"
    orphan.write_bytes(b"PAR1")

    kept = maintain_table(str(table))  # default retention: 168 h
    assert (kept.files_compacted, kept.files_written, kept.files_vacuumed) == (2, 1, 0)
    assert orphan.exists()
    assert_frame_equal(rows_at(table, version_before), rows_at(table))  # time travel still reads the old files

    assert run_maintenance(lake, instance, NO_RETENTION).success
    assert not orphan.exists()
    assert files_on_disk(table) == live_files(table)
    assert_same_contents(rows_before, table)


def test_touches_no_table_while_another_run_is_in_progress(lake: Path, instance: dg.DagsterInstance) -> None:
    disk_before = {table: files_on_disk(table) for table in tables(lake)}
    running = add_run(instance, dg.DagsterRunStatus.STARTED)

    skipped = maintenance_schedule(dg.build_schedule_context(instance=instance))
    refused = run_maintenance(lake, instance, NO_RETENTION)

    assert isinstance(skipped, dg.SkipReason) and running.run_id in (skipped.skip_message or "")
    assert running.run_id in failure_message(refused)
    assert {table: files_on_disk(table) for table in tables(lake)} == disk_before

    instance.report_run_failed(running)
    assert isinstance(maintenance_schedule(dg.build_schedule_context(instance=instance)), dg.RunRequest)
    assert run_maintenance(lake, instance, NO_RETENTION).success


def test_refuses_a_retention_below_the_default_unless_told(lake: Path, instance: dg.DagsterInstance) -> None:
    disk_before = {table: files_on_disk(table) for table in tables(lake)}
    result = run_maintenance(lake, instance, {"ops": {"maintain_lake": {"config": {"retention_hours": 0}}}})

    assert "below 168 h" in failure_message(result)
    assert {table: files_on_disk(table) for table in tables(lake)} == disk_before
    with pytest.raises(DeltaError, match="retention"):
        maintain_table(str(lake / STAGE), retention_hours=0)  # deltalake's own enforcement stays on


def test_a_broken_table_fails_the_run_after_the_others_are_done(lake: Path, instance: dg.DagsterInstance) -> None:
    log = lake / DOCUMENTS / "_delta_log"
    for entry in log.iterdir():
        entry.write_text("not json")

    result = run_maintenance(lake, instance, NO_RETENTION)

    assert "raw_documents" in failure_message(result)
    assert len(live_files(lake / STAGE)) == len(live_files(ledger_path(lake))) == 1
