"""A materialization killed mid-stage, then re-run, ends with exactly the rows of a clean run, and the
ledger shows no successful call made twice."""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import yaml

from agentinstruct_dagster.project import profiles_dir, sample_documents_dir
from agentinstruct_dagster.storage.delta import read_all, table_exists
from agentinstruct_dagster.storage.paths import ledger_path, table_path

REFINE = "reading_comprehension/refined_instructions"


def make_project(root: Path) -> dict[str, str]:
    """A profile with a slow stand-in (so a run takes seconds) and the sample documents as batch `crash`."""
    profiles = root / "profiles"
    profiles.mkdir(parents=True)
    data = yaml.safe_load((profiles_dir() / "standin.yaml").read_text())
    data["name"] = "slow"
    data["llm"].update(max_concurrency=4, standin={"latency_seconds": 0.15})
    data["storage"] = {"root": str(root / "lake"), "inbox": str(root / "inbox")}
    data["skills"] = ["reading_comprehension"]  # resume is the same for every skill; one keeps the test short
    (profiles / "slow.yaml").write_text(yaml.safe_dump(data))
    (root / "inbox").mkdir()
    shutil.copytree(sample_documents_dir(), root / "inbox" / "crash")
    return {
        **os.environ,
        "AGENTINSTRUCT_PROFILES_DIR": str(profiles),
        "AGENTINSTRUCT_PROFILE": "slow",
        "DAGSTER_HOME": str(root / "dagster_home"),
    }


def backfill(env: dict[str, str]) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "agentinstruct"), "backfill", "--in-process", "--batch", "crash"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(run: subprocess.Popen, ready: Callable[[], bool], moment: str) -> None:
    """SIGKILL the run as soon as `ready()` holds (within 240 s, and before the run ends by itself)."""
    deadline = time.monotonic() + 240
    while not ready():
        assert run.poll() is None, f"the run ended before it could be killed {moment}"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    run.send_signal(signal.SIGKILL)
    run.wait()


def assert_same_tables(lake: Path, clean_lake: Path) -> None:
    """The resumed lake's documents, refinements and training pairs are exactly the clean run's."""
    for key in (["raw_documents"], ["reading_comprehension", "refined_instructions"], ["training_set"]):
        assert read_all(table_path(lake, key)).sort("id").equals(read_all(table_path(clean_lake, key)).sort("id")), key


def refine_calls_flushed(lake: Path) -> int:
    ledger = ledger_path(lake)
    return read_all(ledger).filter(pl.col("asset") == REFINE).height if table_exists(ledger) else 0


def test_killed_run_resumes_without_paying_twice(tmp_path: Path) -> None:
    clean_env = make_project(tmp_path / "clean")
    assert backfill(clean_env).wait(timeout=300) == 0

    env = make_project(tmp_path / "killed")
    lake = tmp_path / "killed" / "lake"
    kill_when(backfill(env), lambda: refine_calls_flushed(lake) >= 10, "mid-stage")
    flushed = read_all(ledger_path(lake))
    assert not table_exists(table_path(lake, ["training_set"]))

    assert backfill(env).wait(timeout=300) == 0
    ledger = read_all(ledger_path(lake))
    successes = ledger.filter(pl.col("status") == "ok")
    assert successes["request_hash"].n_unique() == successes.height, "a successful call was paid twice"
    clean_ledger = read_all(ledger_path(tmp_path / "clean" / "lake"))
    assert set(successes["request_hash"]) == set(clean_ledger["request_hash"])
    assert ledger.height - flushed.height < clean_ledger.height, "the re-run repeated calls flushed before the kill"
    assert_same_tables(lake, tmp_path / "clean" / "lake")


def batch_lines(lake: Path) -> pl.DataFrame:
    """The ledger's batch-line rows (submitted, answered, failed), with the line each custom_id is a submission of."""
    if not table_exists(ledger_path(lake)):
        return pl.DataFrame()
    rows = read_all(ledger_path(lake)).filter(pl.col("provider_batch_id").is_not_null())
    return rows.with_columns(line=pl.col("custom_id").str.replace(r"-\d+$", ""))


def open_batches(lines: pl.DataFrame) -> set[str]:
    """Provider batches with submitted lines and no line collected yet."""
    if lines.is_empty():
        return set()
    submitted = set(lines.filter(pl.col("status") == "batch_submitted")["provider_batch_id"])
    return submitted - set(lines.filter(pl.col("status") != "batch_submitted")["provider_batch_id"])


def later_batch_in_progress(lines: pl.DataFrame) -> bool:
    """Some batch is collected and another is still open."""
    return not lines.is_empty() and bool(open_batches(lines)) and (lines["status"] == "batch_answered").any()


def test_a_run_killed_while_its_batches_run_polls_them_again_and_submits_nothing_twice(tmp_path: Path) -> None:
    clean_env = make_project(tmp_path / "clean")
    assert backfill(clean_env).wait(timeout=300) == 0

    env = make_project(tmp_path / "killed")
    profile = Path(env["AGENTINSTRUCT_PROFILES_DIR"]) / "slow.yaml"
    data = yaml.safe_load(profile.read_text())
    data["llm"].update(
        mode="batch",
        batch={"collect_seconds": 0.2, "poll_seconds": 0.2},
        standin={"batch_completion_seconds": 3.0},
    )
    profile.write_text(yaml.safe_dump(data))
    lake = tmp_path / "killed" / "lake"
    # Killed once a later stage's batch is in progress: earlier batches are collected, this one is not.
    kill_when(backfill(env), lambda: later_batch_in_progress(batch_lines(lake)), "while a batch ran")
    in_progress = open_batches(batch_lines(lake))

    assert backfill(env).wait(timeout=300) == 0
    lines = batch_lines(lake)
    submitted = lines.filter(pl.col("status") == "batch_submitted")
    assert submitted["line"].n_unique() == submitted.height, "a request line was submitted twice"
    answered = lines.filter(pl.col("status") == "batch_answered")
    assert answered["custom_id"].n_unique() == answered.height, "an answer was collected (paid) twice"
    assert in_progress <= set(answered["provider_batch_id"]), "a batch in progress at the kill was not collected"
    stand_in_batches = list((lake / "standin_state" / "batches").iterdir())
    assert len(stand_in_batches) == submitted["provider_batch_id"].n_unique()
    assert_same_tables(lake, tmp_path / "clean" / "lake")
