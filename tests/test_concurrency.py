"""One run per batch at a time: two CLI processes on one batch (the lease in the lake), Dagster's run queue
(a tag concurrency limit per batch, in the instance's dagster.yaml), and runs killed mid-way marked failed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
import yaml
from conftest import PASSAGES, Project, write_profile
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

from agentinstruct_dagster.config.profiles import load_profile
from agentinstruct_dagster.definitions import build_definitions
from agentinstruct_dagster.pipeline.automation import JOB_NAME, build_abandoned_runs_sensor
from agentinstruct_dagster.project import profiles_dir
from agentinstruct_dagster.runs import INIT_LOCK, PARTITION_TAG, dagster_instance, run_batches
from agentinstruct_dagster.storage.lease import BatchBusyError, batch_lease, exclusive_lock, lease_path

BATCH = "b"


def cli_project(root: Path) -> dict[str, str]:
    """A project whose stand-in answers after 0.3 s (a run takes seconds), with two documents as batch `b`;
    the environment of a CLI process working on it."""
    profiles = root / "profiles"
    profiles.mkdir()
    llm = yaml.safe_load((profiles_dir() / "standin.yaml").read_text())["llm"]
    llm["standin"] = {"latency_seconds": 0.3}
    write_profile(profiles, root, llm=llm)
    folder = root / "inbox" / BATCH
    folder.mkdir(parents=True)
    for index, text in enumerate(PASSAGES[:2]):
        (folder / f"doc{index}.txt").write_text(text, encoding="utf-8")
    return {
        **os.environ,
        "AGENTINSTRUCT_PROFILES_DIR": str(profiles),
        "AGENTINSTRUCT_PROFILE": "test",
        "DAGSTER_HOME": str(root / "dagster_home"),
    }


def backfill(env: dict[str, str], log: Path) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "agentinstruct"), "backfill", "--in-process", "--batch", BATCH]
    with log.open("w") as output:
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)


@contextmanager
def open_instance(home: Path) -> Iterator[dg.DagsterInstance]:
    """The CLI processes' instance, opened as they open it: one process at a time creates its databases."""
    with exclusive_lock(home / INIT_LOCK):
        instance = dg.DagsterInstance.from_config(str(home))
    with instance:
        yield instance


def batch_runs(home: Path) -> list[dg.DagsterRun]:
    with open_instance(home) as instance:
        return list(instance.get_runs(dg.RunsFilter(tags={PARTITION_TAG: BATCH})))


def wait_for_started_run(home: Path, process: subprocess.Popen) -> dg.DagsterRun:
    """The batch's Dagster run once the process has started it."""
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, "the run ended before it could be observed"
        assert time.monotonic() < deadline
        if (home / "dagster.yaml").exists():
            started = [run for run in batch_runs(home) if run.status == dg.DagsterRunStatus.STARTED]
            if started:
                return started[0]
        time.sleep(0.2)


def runs_dequeued(instance: dg.DagsterInstance) -> list[str]:
    """The queued runs Dagster's run queue daemon would launch now (its own limit logic)."""
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    return [run.run_id for run in daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)]


def add_run(instance: dg.DagsterInstance, batch: str, status: dg.DagsterRunStatus) -> str:
    """A run of the pipeline for the batch, as the UI, a sensor or the schedule would submit it."""
    run_id = str(uuid.uuid4())
    repository = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("agentinstruct"), "__repository__")
    run = dg.DagsterRun(
        job_name=JOB_NAME,
        run_id=run_id,
        status=status,
        tags={PARTITION_TAG: batch},
        remote_job_origin=RemoteJobOrigin(repository, JOB_NAME),
    )
    instance.add_run(run)
    return run_id


def test_two_cli_runs_of_one_batch_one_fails_at_once(tmp_path: Path) -> None:
    env = cli_project(tmp_path)
    home = tmp_path / "dagster_home"
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    processes = [backfill(env, log) for log in logs]
    deadline = time.monotonic() + 180
    while all(process.poll() is None for process in processes):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    loser_index = next(index for index, process in enumerate(processes) if process.poll() is not None)
    loser, winner = processes[loser_index], processes[1 - loser_index]
    assert winner.poll() is None, "both ended: the second run did not stop while the first was running"
    assert loser.returncode == 1
    message = logs[loser_index].read_text()
    assert f"batch {BATCH!r} is being run by pid {winner.pid}" in message
    assert "Traceback" not in message

    running = wait_for_started_run(home, winner)
    with open_instance(home) as instance:  # the CLI's run holds Dagster's queue too
        queued = {key: add_run(instance, key, dg.DagsterRunStatus.QUEUED) for key in (BATCH, "other")}
        assert runs_dequeued(instance) == [queued["other"]]
        for run_id in queued.values():
            instance.delete_run(run_id)

    assert winner.wait(timeout=300) == 0, logs[1 - loser_index].read_text()[-3000:]
    assert [(run.run_id, run.status) for run in batch_runs(home)] == [(running.run_id, dg.DagsterRunStatus.SUCCESS)]
    assert lease_path(tmp_path / "lake", BATCH).read_text() == "", "the lease was not released"


def killed_backfill(root: Path) -> tuple[dict[str, str], subprocess.Popen, dg.DagsterRun]:
    """A CLI backfill of the batch killed with SIGKILL once its Dagster run has started: env, process, run."""
    env = cli_project(root)
    first = backfill(env, root / "first.log")
    killed = wait_for_started_run(root / "dagster_home", first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    return env, first, killed


def test_killed_cli_run_is_marked_failed_and_its_lease_taken_over(tmp_path: Path) -> None:
    env, first, killed = killed_backfill(tmp_path)
    home = tmp_path / "dagster_home"
    stale = json.loads(lease_path(tmp_path / "lake", BATCH).read_text())
    assert (stale["pid"], stale["run_id"]) == (first.pid, killed.run_id)

    second = backfill(env, tmp_path / "second.log")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    with open_instance(home) as instance:
        record = instance.get_run_by_id(killed.run_id)
        assert record is not None and record.status == dg.DagsterRunStatus.FAILURE
        failure = instance.all_logs(killed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[0]
        assert f"pid {first.pid}" in failure.message
    assert lease_path(tmp_path / "lake", BATCH).read_text() == ""


def test_the_abandoned_runs_sensor_fails_a_killed_run_without_another_run(tmp_path: Path) -> None:
    _, _, killed = killed_backfill(tmp_path)
    home = tmp_path / "dagster_home"
    profile = load_profile(str(tmp_path / "profiles" / "test.yaml"))
    sensor = build_abandoned_runs_sensor(profile)
    with open_instance(home) as instance:
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.STARTED
        tick = sensor(dg.build_sensor_context(instance=instance))
        assert killed.run_id in tick.skip_message
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
        assert "no run was abandoned" in sensor(dg.build_sensor_context(instance=instance)).skip_message
    assert lease_path(tmp_path / "lake", BATCH).read_text() == ""


def test_held_lease_refuses_and_stale_lease_is_taken_over(tmp_path: Path) -> None:
    batch = "../odd/batch\tkey"  # the lease's file name never depends on the key being a safe name
    path = lease_path(tmp_path, batch)
    assert path.parent == tmp_path / "leases"
    with batch_lease(tmp_path, batch, "run-1") as abandoned:
        assert abandoned is None
        with (
            pytest.raises(BatchBusyError, match=rf"is being run by pid {os.getpid()} .*run-1"),
            batch_lease(tmp_path, batch, "run-2"),
        ):
            pass
    assert path.read_text() == ""

    gone = {"batch": batch, "run_id": "run-3", "pid": 2**22 + 1, "host": "h", "started": "2026-01-01T00:00:00+00:00"}
    path.write_text(json.dumps(gone))  # written by a process that died without releasing it
    with batch_lease(tmp_path, batch, "run-4") as abandoned:
        assert abandoned is not None and (abandoned.pid, abandoned.run_id) == (gone["pid"], "run-3")
        assert json.loads(path.read_text())["run_id"] == "run-4"


def test_run_batches_refuses_a_batch_with_a_dagster_run_in_progress(project: Project) -> None:
    project.add_batch(BATCH)
    running = add_run(project.instance, BATCH, dg.DagsterRunStatus.STARTED)  # launched from the UI, say
    with pytest.raises(BatchBusyError, match=rf"run {running} in progress"):
        run_batches(build_definitions(project.profile), project.instance, [BATCH])
    assert [run.run_id for run in project.instance.get_runs(dg.RunsFilter(tags={PARTITION_TAG: BATCH}))] == [running]
    assert lease_path(project.lake, BATCH).read_text() == ""


def test_instance_settings_add_the_batch_limit_and_run_monitoring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    user_settings = {
        "telemetry": {"enabled": True},
        "run_monitoring": {"poll_interval_seconds": 5},
        "concurrency": {"runs": {"max_concurrent_runs": 4}},
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(user_settings))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dagster_instance() as instance:
        settings = yaml.safe_load((home / "dagster.yaml").read_text())
        assert settings["telemetry"] == {"enabled": True}
        assert settings["run_monitoring"]["poll_interval_seconds"] == 5
        assert settings["concurrency"]["runs"]["max_concurrent_runs"] == 4
        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 4
        assert {"key": PARTITION_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in (
            queue.tag_concurrency_limits
        )
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_resume_run_attempts == 0

        first_b, second_b, first_c = (add_run(instance, key, dg.DagsterRunStatus.QUEUED) for key in ("b", "b", "c"))
        assert runs_dequeued(instance) == [first_b, first_c]
        started = add_run(instance, "c", dg.DagsterRunStatus.STARTED)
        assert runs_dequeued(instance) == [first_b]
        instance.report_run_failed(instance.get_run_by_id(started))
        assert runs_dequeued(instance) == [first_b, first_c]  # the second run of b waits for the first
        assert second_b not in runs_dequeued(instance)

    with dagster_instance():  # loading again changes nothing
        assert yaml.safe_load((home / "dagster.yaml").read_text()) == settings
