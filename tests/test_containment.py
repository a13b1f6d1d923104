"""Inbox containment: batch keys checked at every entry point before anything is registered or read, every entry
of a batch folder accounted for, nothing outside the inbox ever read; configuration errors in one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from click.testing import CliRunner
from conftest import PASSAGES, Project

from agentinstruct_dagster.cli import main
from agentinstruct_dagster.definitions import build_definitions
from agentinstruct_dagster.inbox import BatchKeyError, validate_batch_key
from agentinstruct_dagster.pipeline.automation import JOB_NAME, build_inbox_sensor, build_schedule
from agentinstruct_dagster.pipeline.partitions import BATCHES
from agentinstruct_dagster.project import catalogue_dir
from agentinstruct_dagster.runs import run_batches
from agentinstruct_dagster.storage.delta import read_all, read_partition, read_quarantine
from agentinstruct_dagster.storage.paths import table_path

SECRET = "Outside-the-inbox secret 7f3a: this sentence must never reach a table."
AGENTINSTRUCT = Path(sys.executable).with_name("agentinstruct")


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """TimeoutError in the main thread after `seconds` (interrupts a blocking open of a FIFO)."""

    def expire(_signal: int, _frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def lake_strings(lake: Path) -> str:
    """Every string value of every Delta table under the lake, joined."""
    tables = {log.parent for log in lake.rglob("_delta_log")}
    frames = [read_all(table) for table in tables]
    return "\n".join(
        str(value) for frame in frames for column in frame.select(pl.col(pl.String)).iter_columns() for value in column
    )


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "empty"),
        (".", "names the inbox or its parent"),
        ("..", "names the inbox or its parent"),
        ("a/b", "path separator '/'"),
        ("a\\b", "path separator '\\\\'"),
        ("/etc", "path separator '/'"),
        ("a\tb", "U+0009"),
        ("a\nb", "U+000A"),
        ("a\x00b", "U+0000"),
        ("a\u202eb", "U+202E"),
        (" padded", "whitespace"),
        (".hidden", "hidden folder"),
        ("_drafts", "hidden folder"),
        ("x" * 65, "65 bytes"),
    ],
)
def test_batch_key_rules_say_what_is_wrong_and_what_is_allowed(key: str, problem: str) -> None:
    with pytest.raises(BatchKeyError) as error:
        validate_batch_key(key)
    assert problem in str(error.value) and "a batch key is the name of one folder directly in the inbox" in str(
        error.value
    )


@pytest.mark.parametrize("key", ["sample", "it's batch two", "2024-06 Übersicht", "x" * 64])
def test_ordinary_folder_names_are_batch_keys(key: str) -> None:
    assert validate_batch_key(key) == key


@pytest.mark.parametrize(
    "args",
    [
        ["backfill", "--batch", ".."],
        ["backfill", "--batch", "ok", "--batch", "ABSOLUTE"],
        ["backfill", "--batch", "a\tb"],
        ["backfill", "--batch", "a/b"],
        ["demo", "--batch", ".."],
        ["demo", "--batch", "ABSOLUTE"],
    ],
)
def test_cli_refuses_bad_batch_keys_before_registering_anything(project: Project, args: list[str]) -> None:
    project.add_batch("ok")
    project.add_batch("a/b")
    (project.inbox / "a\tb").mkdir()
    (project.inbox.parent / "outside.txt").write_text(SECRET)  # what `..` would ingest
    args = [str(project.inbox.parent) if arg == "ABSOLUTE" else arg for arg in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--batch'" in result.output and "is not allowed" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert project.instance.get_dynamic_partitions(BATCHES) == []
    assert not project.lake.exists()
    assert (project.inbox.parent / "outside.txt").exists() and (project.inbox / "ok" / "doc0.txt").exists()


def test_backfill_of_an_unknown_or_linked_batch_folder_is_a_clear_error(project: Project, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "doc.txt").write_text(SECRET)
    project.inbox.mkdir(parents=True)
    (project.inbox / "linked").symlink_to(tmp_path / "elsewhere")
    runner = CliRunner()
    unknown = runner.invoke(main, ["backfill", "--batch", "nope"])
    assert unknown.exit_code == 1 and f"no inbox folder for batch 'nope' under {project.inbox}" in unknown.output
    linked = runner.invoke(main, ["backfill", "--batch", "linked"])
    assert linked.exit_code == 1 and "is a symbolic link" in linked.output, linked.output
    assert project.instance.get_dynamic_partitions(BATCHES) == [] and not project.lake.exists()


def test_sensor_skips_folders_that_are_not_batches_and_logs_why(
    project: Project, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    project.add_batch("good")
    project.add_batch("tab\there")
    project.add_batch(".hidden")
    (tmp_path / "elsewhere").mkdir()
    (project.inbox / "linked").symlink_to(tmp_path / "elsewhere")
    result = build_inbox_sensor(project.profile)(dg.build_sensor_context(instance=project.instance))
    logged = capfd.readouterr().err
    assert [request.partition_key for request in result.run_requests] == ["good"]
    assert [request.partition_keys for request in result.dynamic_partitions_requests] == [["good"]]
    assert "WARNING - inbox folder skipped: batch key 'tab\\there' is not allowed" in logged
    assert "control or format character U+0009" in logged
    assert "batch key '.hidden' is not allowed: it starts with '.'" in logged
    assert "the inbox folder of batch 'linked' is a symbolic link" in logged


def test_schedule_skips_an_invalid_registered_batch_and_logs_why(
    project: Project, capfd: pytest.CaptureFixture[str]
) -> None:
    project.add_batch("fine")
    project.instance.add_dynamic_partitions(BATCHES, ["fine", "../x"])
    tick = datetime(2026, 1, 1, 2, tzinfo=UTC)
    requests = build_schedule(project.profile)(
        dg.build_schedule_context(instance=project.instance, scheduled_execution_time=tick)
    )
    assert [request.partition_key for request in requests] == ["fine"]
    assert "WARNING - registered batch skipped: batch key '../x' is not allowed" in capfd.readouterr().err


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("../x", "batch key '../x' is not allowed: it contains the path separator '/'"),
        ("linked", "the inbox folder of batch 'linked' is a symbolic link"),
    ],
)
def test_a_partition_added_in_the_ui_is_refused_before_anything_is_read(
    project: Project, tmp_path: Path, key: str, message: str
) -> None:
    """A partition added in the UI reaches the code only when its run starts: raw_documents fails at once."""
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "doc.txt").write_text(SECRET)  # inbox/../x
    project.inbox.mkdir(parents=True)
    (project.inbox / "linked").symlink_to(tmp_path / "x")
    project.instance.add_dynamic_partitions(BATCHES, [key])
    job = build_definitions(project.profile).resolve_job_def(JOB_NAME)
    result = job.execute_in_process(partition_key=key, instance=project.instance, raise_on_error=False)
    assert not result.success
    failures = [event for event in result.all_events if event.is_step_failure]
    assert [event.step_key for event in failures] == ["raw_documents"]
    assert message in failures[0].step_failure_data.error.message
    assert not table_path(project.lake, ["raw_documents"]).exists()
    assert SECRET not in lake_strings(project.lake)


def test_every_entry_is_accounted_for_and_nothing_outside_is_read(project: Project, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    batch = project.add_batch("hostile")
    (batch / "sub").mkdir()
    (batch / "sub" / "inner.txt").write_text(PASSAGES[2])
    (batch / "_drafts").mkdir()
    (batch / "_drafts" / "draft.txt").write_text(SECRET)
    (batch / ".DS_Store").write_bytes(b"\x00\x01")
    links = {
        "hostname.txt": "/etc/hostname",
        "secret.txt": str(outside / "secret.txt"),
        "outside_folder": str(outside),
        "escape.txt": "../../outside/secret.txt",
        "gone.txt": str(tmp_path / "nowhere.txt"),
        "loop_a.txt": "loop_b.txt",
        "loop_b.txt": "loop_a.txt",
        "sub/up": "..",
        "mirror": "sub",
        "doc0_link.txt": "doc0.txt",
    }
    for name, target in links.items():
        (batch / name).symlink_to(target)
    os.mkfifo(batch / "pipe.txt")
    os.mkfifo(outside / "pipe.txt")
    (batch / "pipe_link.txt").symlink_to("pipe.txt")
    (batch / "outside_pipe.txt").symlink_to(outside / "pipe.txt")
    with deadline(90):
        result = run_batches(build_definitions(project.profile), project.instance, ["hostile"])["hostile"]
    assert result.success

    quarantine = read_quarantine(table_path(project.lake, ["raw_documents"]), "hostile")
    assert dict(quarantine.select("source", "reason").iter_rows()) == {
        ".DS_Store": "skipped_hidden",
        "_drafts": "skipped_hidden",
        "hostname.txt": "symlink_outside",
        "secret.txt": "symlink_outside",
        "outside_folder": "symlink_outside",
        "escape.txt": "symlink_outside",
        "gone.txt": "dangling_symlink",
        "loop_a.txt": "symlink_loop",
        "loop_b.txt": "symlink_loop",
        "sub/up": "symlink_loop",
        "mirror": "linked_folder",
        "pipe.txt": "special_file",
        "pipe_link.txt": "special_file",
        "outside_pipe.txt": "symlink_outside",
        "doc0_link.txt": "duplicate",
    }
    assert quarantine.filter(pl.col("reason") != "duplicate")["payload"].is_null().all()
    details = dict(quarantine.select("source", "detail").iter_rows())
    assert (
        details["hostname.txt"].startswith("link to /etc/hostname (") and "outside the batch" in details["hostname.txt"]
    )
    assert details["pipe.txt"] == "a FIFO, not a regular file: not opened"
    assert details["doc0_link.txt"].startswith("same text as doc0.txt")
    documents = read_partition(table_path(project.lake, ["raw_documents"]), "hostile")
    assert sorted(documents["source"].unique()) == ["doc0.txt", "doc1.txt", "sub/inner.txt"]
    materialization = result.asset_materializations_for_node("raw_documents")[0]
    assert materialization.metadata["files_read"].value == 4  # doc0, doc1, sub/inner and the link to doc0

    stored = lake_strings(project.lake)
    assert SECRET not in stored
    hostname = Path("/etc/hostname").read_text().strip()
    assert len(hostname) < 8 or hostname not in stored.replace("/etc/hostname", "")


def break_profile(tmp_path: Path, mistake: str) -> Path:
    path = tmp_path / "profiles" / "test.yaml"
    if mistake == "field":
        data = yaml.safe_load(path.read_text())
        data["llm"]["max_concurrency"] = "many"
        path.write_text(yaml.safe_dump(data))
    else:
        path.write_text(path.read_text() + "llm: [unclosed\n")
    return path


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AGENTINSTRUCT), *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


@pytest.mark.parametrize(
    ("mistake", "problem"),
    [
        ("field", r"invalid profile: field `llm\.max_concurrency`: "),
        ("yaml", r"not valid YAML: .+ at line \d+, column \d+$"),
    ],
)
def test_a_config_error_is_one_line_naming_file_and_field(
    project: Project, tmp_path: Path, mistake: str, problem: str
) -> None:
    path = break_profile(tmp_path, mistake)
    project.add_batch("b")
    for args in (["backfill", "--batch", "b"], ["export", "--out", str(tmp_path / "out")]):
        result = run_cli(*args)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert re.match(f"Error: {re.escape(str(path))}: {problem}", result.stderr.strip()), result.stderr


def test_a_catalogue_error_is_one_line_naming_file_and_field(tmp_path: Path) -> None:
    catalogue = tmp_path / "assets"
    catalogue.mkdir()
    skill = catalogue / "reading_comprehension.yaml"
    data = yaml.safe_load((catalogue_dir() / skill.name).read_text())
    del data["seed"]["types"]
    skill.write_text(yaml.safe_dump(data))
    result = run_cli("catalogue", AGENTINSTRUCT_CATALOGUE_DIR=str(catalogue))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    expected = f"Error: {skill}: invalid skill catalogue: field `seed.types`: Field required"
    assert result.stderr.strip().splitlines() == [expected]
