"""What a re-run costs: a finished batch re-materialized, and a run killed half way then re-run.

Runs the sample documents through the CLI in subprocesses against a slow stand-in (0.2 s, 4 in flight)
and counts model calls in the call ledger. Usage: .venv/bin/python bench/resume.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml

from agentinstruct_dagster.project import profiles_dir, sample_documents_dir
from agentinstruct_dagster.storage.delta import read_all, table_exists
from agentinstruct_dagster.storage.paths import ledger_path


def project(root: Path) -> dict[str, str]:
    profiles = root / "profiles"
    profiles.mkdir(parents=True)
    data = yaml.safe_load((profiles_dir() / "standin.yaml").read_text())
    data["name"] = "bench"
    data["llm"].update(max_concurrency=4, standin={"latency_seconds": 0.2})
    data["storage"] = {"root": str(root / "lake"), "inbox": str(root / "inbox")}
    data["skills"] = ["reading_comprehension"]
    (profiles / "bench.yaml").write_text(yaml.safe_dump(data))
    (root / "inbox").mkdir()
    shutil.copytree(sample_documents_dir(), root / "inbox" / "sample")
    env = {"AGENTINSTRUCT_PROFILES_DIR": str(profiles), "AGENTINSTRUCT_PROFILE": "bench"}
    return {**os.environ, **env, "DAGSTER_HOME": str(root / "home")}


def backfill(env: dict[str, str]) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "agentinstruct"), "backfill", "--in-process", "--batch", "sample"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ledger_rows(root: Path) -> pl.DataFrame:
    path = ledger_path(root / "lake")
    return read_all(path) if table_exists(path) else pl.DataFrame({"request_hash": [], "status": []})


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        clean = Path(scratch) / "clean"
        env = project(clean)
        started = time.perf_counter()
        assert backfill(env).wait() == 0
        clean_seconds = time.perf_counter() - started
        total = ledger_rows(clean).height
        assert backfill(env).wait() == 0
        rerun_calls = ledger_rows(clean).height - total

        killed = Path(scratch) / "killed"
        env = project(killed)
        run = backfill(env)
        while ledger_rows(killed).height < total // 2:
            time.sleep(0.05)
        run.send_signal(signal.SIGKILL)
        run.wait()
        flushed = ledger_rows(killed)
        missing = total - flushed.filter(pl.col("status") == "ok")["request_hash"].n_unique()
        assert backfill(env).wait() == 0
        resumed = ledger_rows(killed)
        successes = resumed.filter(pl.col("status") == "ok")
        result = {
            "calls_in_a_clean_run": total,
            "clean_run_seconds": round(clean_seconds, 1),
            "calls_when_rematerializing_the_finished_batch": rerun_calls,
            "calls_flushed_before_kill": flushed.height,
            "calls_missing_after_kill": missing,
            "calls_made_by_the_rerun": resumed.height - flushed.height,
            "successful_calls_paid_twice": successes.height - successes["request_hash"].n_unique(),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
