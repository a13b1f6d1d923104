"""Inbox sensor and catch-up schedule as an operator sees them: new and changed batch folders run (once per state),
folders being written wait, every tick that requests nothing says why, and registered batches without a folder
are named and never requested."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from botocore.client import BaseClient
from click.testing import CliRunner
from conftest import PASSAGES, Project, isolated_project
from dagster._core.test_utils import create_run_for_test

from agentinstruct_dagster.cli import main
from agentinstruct_dagster.definitions import build_definitions
from agentinstruct_dagster.inbox import list_inbox
from agentinstruct_dagster.pipeline.automation import FINAL_ASSET, JOB_NAME, build_inbox_sensor, build_schedule
from agentinstruct_dagster.pipeline.partitions import BATCHES
from agentinstruct_dagster.runs import run_batches
from agentinstruct_dagster.storage.delta import read_all
from agentinstruct_dagster.storage.paths import ledger_path, table_path

TICK = datetime(2026, 11, 24, 2, tzinfo=UTC)


def tick(project: Project, cursor: str | None) -> dg.SensorResult:
    """One evaluation of the real inbox sensor; its partition requests are applied as the daemon would."""
    sensor = build_inbox_sensor(project.profile)
    result = sensor(dg.build_sensor_context(instance=project.instance, cursor=cursor))
    for request in result.dynamic_partitions_requests:
        project.instance.add_dynamic_partitions(BATCHES, list(request.partition_keys))
    return result


def requested(result: dg.SensorResult) -> list[tuple[str | None, str | None]]:
    return [(request.partition_key, request.run_key) for request in result.run_requests]


def fingerprint(project: Project, batch: str) -> str:
    (folder,) = [folder for folder in list_inbox(project.inbox).folders if folder.name == batch]
    return folder.fingerprint


def age(folder: Path, seconds: float) -> None:
    """Set the modification time of the folder and everything in it `seconds` into the past."""
    past = time.time() - seconds
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (past, past), follow_symlinks=False)


def materialize_training_set(project: Project, batch: str) -> None:
    project.instance.report_runless_asset_event(dg.AssetMaterialization(FINAL_ASSET, partition=batch))


def catch_up(project: Project) -> list[dg.RunRequest] | dg.SkipReason:
    schedule = build_schedule(project.profile)
    return schedule(dg.build_schedule_context(instance=project.instance, scheduled_execution_time=TICK))


def test_a_new_folder_runs_once_and_an_unchanged_tick_says_why(project: Project) -> None:
    project.add_batch("alpha")
    first = tick(project, cursor=None)
    print_ = fingerprint(project, "alpha")
    assert requested(first) == [("alpha", f"inbox:alpha:{print_}")]
    assert [request.partition_keys for request in first.dynamic_partitions_requests] == [["alpha"]]
    assert json.loads(first.cursor) == {"alpha": print_} and len(print_) == 12

    second = tick(project, first.cursor)
    assert second.run_requests == [] and second.cursor == first.cursor
    assert second.skip_reason.skip_message == (
        f"no new or changed batch folder in {project.inbox} (1 registered, 1 unchanged)"
    )


def test_files_added_changed_touched_or_removed_in_a_registered_folder_run_it_again(project: Project) -> None:
    folder = project.add_batch("alpha")
    cursor = tick(project, cursor=None).cursor
    run_keys = [json.loads(cursor)["alpha"]]
    edits = [
        lambda: (folder / "added.txt").write_text(PASSAGES[2]),
        lambda: (folder / "doc0.txt").write_text(PASSAGES[0] + " One more sentence."),
        lambda: os.utime(folder / "doc1.txt", (1e9, 1e9)),
        lambda: (folder / "added.txt").unlink(),
        lambda: shutil.copytree(folder, folder / "sub"),
    ]
    for edit in edits:
        edit()
        result = tick(project, cursor)
        assert requested(result) == [("alpha", f"inbox:alpha:{fingerprint(project, 'alpha')}")]
        assert result.dynamic_partitions_requests == []  # already registered
        run_keys.append(json.loads(result.cursor)["alpha"])
        cursor = result.cursor
    assert len(set(run_keys)) == len(edits) + 1
    assert tick(project, cursor).run_requests == []


def test_the_fingerprint_is_a_listing_independent_of_where_and_when(project: Project, tmp_path: Path) -> None:
    """Same relative paths, sizes and mtimes give the same fingerprint in another inbox and at another tick."""
    folder = project.add_batch("alpha")
    elsewhere = tmp_path / "other_inbox"
    shutil.copytree(folder, elsewhere / "alpha")  # copy2 keeps the mtimes
    os.utime(folder, (1e9, 1e9))  # a folder's own mtime is not part of it
    assert list_inbox(elsewhere).folders[0].fingerprint == fingerprint(project, "alpha")
    time.sleep(0.01)
    assert list_inbox(project.inbox).folders[0].fingerprint == fingerprint(project, "alpha")


def test_a_folder_still_being_written_waits_until_it_settles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with isolated_project(tmp_path, monkeypatch, schedule={"inbox_settle_seconds": 60}) as project:
        fresh = project.add_batch("fresh")
        waiting = tick(project, cursor=None)
        assert waiting.run_requests == [] and waiting.dynamic_partitions_requests == []
        assert project.instance.get_dynamic_partitions(BATCHES) == []
        assert (
            "(0 registered, 0 unchanged); still settling (to stay unchanged for 60 s): 'fresh' changed 0 s ago"
            in waiting.skip_reason.skip_message
        )

        age(fresh, 120)
        settled = tick(project, waiting.cursor)
        assert requested(settled) == [("fresh", f"inbox:fresh:{fingerprint(project, 'fresh')}")]

        (fresh / "late.txt").write_text(PASSAGES[2])  # a registered folder being written to waits too
        assert tick(project, settled.cursor).run_requests == []
        age(fresh, 120)
        assert requested(tick(project, settled.cursor)) == [("fresh", f"inbox:fresh:{fingerprint(project, 'fresh')}")]


def test_the_first_tick_after_upgrading_adopts_batches_that_ran_and_runs_the_others(project: Project) -> None:
    for batch in ("done", "busy", "never"):
        project.add_batch(batch, [PASSAGES[0], batch])
    project.instance.add_dynamic_partitions(BATCHES, ["done", "busy", "never"])
    materialize_training_set(project, "done")
    create_run_for_test(
        project.instance, job_name=JOB_NAME, status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": "busy"}
    )

    upgraded = tick(project, cursor=None)
    assert requested(upgraded) == [("never", f"inbox:never:{fingerprint(project, 'never')}")]
    assert json.loads(upgraded.cursor) == {batch: fingerprint(project, batch) for batch in ("busy", "done", "never")}
    assert tick(project, upgraded.cursor).skip_reason.skip_message.endswith("(3 registered, 3 unchanged)")

    adopted_only = tick(project, json.dumps({"never": fingerprint(project, "never")}))
    assert adopted_only.run_requests == []
    assert "adopted without a run (training set materialized or a run under way): 'busy', 'done'" in (
        adopted_only.skip_reason.skip_message
    )


def test_refused_and_vanished_folders_are_named_in_the_skip_reason(
    project: Project, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    project.add_batch("tab\there")
    (tmp_path / "elsewhere").mkdir()
    (project.inbox / "linked").symlink_to(tmp_path / "elsewhere")
    project.instance.add_dynamic_partitions(BATCHES, ["from_ui"])
    result = tick(project, cursor=None)
    message = result.skip_reason.skip_message
    assert "refused (reasons in the log): 'linked', 'tab\\there'" in message
    assert "registered without a folder: 'from_ui' (put the folder back, or, if the batch is registered" in message
    assert "Delete partitions" in message
    assert "the inbox folder of batch 'linked' is a symbolic link" in capfd.readouterr().err
    assert json.loads(result.cursor) == {}


def test_the_schedule_requests_only_batches_with_a_folder_and_names_the_others(
    project: Project, capfd: pytest.CaptureFixture[str]
) -> None:
    vanished = project.add_batch("vanished")
    project.add_batch("ready")
    project.instance.add_dynamic_partitions(BATCHES, ["from_ui", "ready", "vanished"])
    shutil.rmtree(vanished)

    requests = catch_up(project)
    assert [(request.partition_key, request.run_key) for request in requests] == [
        ("ready", f"schedule:{TICK.isoformat()}:ready")
    ]
    logged = capfd.readouterr().err
    for batch in ("from_ui", "vanished"):
        assert (
            f"WARNING - registered batch skipped: no inbox folder for batch {batch!r} under {project.inbox}" in logged
        )
    assert "Delete partitions" in logged

    materialize_training_set(project, "ready")
    skipped = catch_up(project)
    assert isinstance(skipped, dg.SkipReason)
    assert skipped.skip_message.startswith("no registered batch to run; 2 not materialized but skipped: ")
    assert f"no inbox folder for batch 'from_ui' under {project.inbox}" in skipped.skip_message
    assert f"no inbox folder for batch 'vanished' under {project.inbox}" in skipped.skip_message
    assert "agentinstruct forget <batch>" in skipped.skip_message

    forgotten = CliRunner().invoke(main, ["forget", "from_ui"])
    assert forgotten.exit_code == 0, forgotten.output
    assert project.instance.get_dynamic_partitions(BATCHES) == ["ready", "vanished"]
    assert "from_ui" not in catch_up(project).skip_message
    unknown = CliRunner().invoke(main, ["forget", "from_ui"])
    assert unknown.exit_code == 1 and "batch 'from_ui' is not registered" in unknown.output


def test_the_schedule_says_so_when_everything_is_materialized(project: Project) -> None:
    assert catch_up(project).skip_message == "every registered batch's training set is materialized"
    project.add_batch("ready")
    project.instance.add_dynamic_partitions(BATCHES, ["ready"])
    materialize_training_set(project, "ready")
    assert catch_up(project).skip_message == "every registered batch's training set is materialized"


def test_a_run_of_a_batch_without_folder_fails_in_raw_documents_and_says_why(project: Project) -> None:
    project.instance.add_dynamic_partitions(BATCHES, ["from_ui"])
    job = build_definitions(project.profile).resolve_job_def(JOB_NAME)
    result = job.execute_in_process(partition_key="from_ui", instance=project.instance, raise_on_error=False)
    assert not result.success
    failures = [event for event in result.all_events if event.is_step_failure]
    assert [event.step_key for event in failures] == ["raw_documents"]
    message = failures[0].step_failure_data.error.message
    assert f"no inbox folder for batch 'from_ui' under {project.inbox}; put the folder back" in message
    assert not table_path(project.lake, ["raw_documents"]).exists()


def test_a_changed_batch_reruns_paying_only_for_its_new_document(project: Project) -> None:
    """The sensor's re-run of a changed folder answers the unchanged documents' calls from the call ledger."""
    folder = project.add_batch("alpha", PASSAGES[:2])
    defs = build_definitions(project.profile)
    first = tick(project, cursor=None)
    assert run_batches(defs, project.instance, ["alpha"])["alpha"].success
    calls_first_run = read_all(ledger_path(project.lake)).height

    (folder / "doc2.txt").write_text(PASSAGES[2])
    assert [key for key, _ in requested(tick(project, first.cursor))] == ["alpha"]
    assert run_batches(defs, project.instance, ["alpha"])["alpha"].success
    calls_second_run = read_all(ledger_path(project.lake)).height - calls_first_run
    assert 0 < calls_second_run < calls_first_run


def test_an_object_store_inbox_is_fingerprinted_from_its_listing(
    s3: BaseClient, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = {"root": f"s3://{bucket}/lake", "inbox": f"s3://{bucket}/inbox"}
    with isolated_project(tmp_path, monkeypatch, storage=storage) as project:
        s3.put_object(Bucket=bucket, Key="inbox/alpha/doc0.txt", Body=PASSAGES[0].encode())
        s3.put_object(Bucket=bucket, Key="inbox/.hidden/doc0.txt", Body=PASSAGES[0].encode())
        first = tick(project, cursor=None)
        assert [key for key, _ in requested(first)] == ["alpha"]
        assert tick(project, first.cursor).run_requests == []

        s3.put_object(Bucket=bucket, Key="inbox/alpha/sub/doc1.txt", Body=PASSAGES[1].encode())
        changed = tick(project, first.cursor)
        assert [key for key, _ in requested(changed)] == ["alpha"]
        assert requested(changed) != requested(first)
        assert "refused (reasons in the log): '.hidden'" in tick(project, changed.cursor).skip_reason.skip_message
