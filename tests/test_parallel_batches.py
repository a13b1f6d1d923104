"""Batches in parallel: `agentinstruct backfill` launches a Dagster backfill that the daemon runs, one process
per batch, several at once, within one provider budget; here on the S3-compatible store."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import yaml
from botocore.client import BaseClient
from conftest import PASSAGES, write_profile

from agentinstruct_dagster.standin.server import StandinConfig, StandinServer
from agentinstruct_dagster.storage.delta import read_partition

BATCHES = ["one", "two", "three", "four"]
BUDGET = 4  # calls in flight across every run: the provider answers 429 to any call over it


def test_four_batches_run_at_once_within_one_provider_budget(
    s3: BaseClient, bucket: str, tmp_path: Path, monkeypatch
) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    write_profile(profiles, tmp_path, storage={"root": f"s3://{bucket}/lake", "inbox": f"s3://{bucket}/inbox"})
    data = yaml.safe_load((profiles / "test.yaml").read_text())
    # One provider for every run: a stand-in server of the test's, reached as an OpenAI-compatible endpoint.
    provider = StandinServer(StandinConfig(latency_seconds=0.5, max_in_flight=BUDGET, cap_retry_after_seconds=0.05))
    data["llm"].update(provider="openai_compatible", base_url=provider.base_url)
    data["llm"].update(max_concurrency=BUDGET, parallel_runs=4, timeout_seconds=30)
    (profiles / "test.yaml").write_text(yaml.safe_dump(data))
    for number, batch in enumerate(BATCHES):
        for index, text in enumerate(PASSAGES):
            body = f"{text} (Copy {number} of document {index}: {batch}.)".encode()
            s3.put_object(Bucket=bucket, Key=f"inbox/{batch}/doc{index}.txt", Body=body)
    env = {
        **os.environ,
        "AGENTINSTRUCT_PROFILES_DIR": str(profiles),
        "AGENTINSTRUCT_PROFILE": "test",
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    command = [str(Path(sys.executable).parent / "agentinstruct"), "backfill"]
    command += [argument for batch in BATCHES for argument in ("--batch", batch)]
    with provider:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "queued for the Dagster daemon" in done.stdout and done.stdout.count(": SUCCESS in") == 4

    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    with dg.DagsterInstance.get() as instance:
        (backfill,) = instance.get_backfills()
        records = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
        pool = instance.event_log_storage.get_concurrency_info("llm")
    assert sorted(record.dagster_run.tags["dagster/partition"] for record in records) == sorted(BATCHES)
    assert pool.slot_count == 4  # the profile's parallel_runs, as the Dagster pool of the model stages
    # Separate run processes, at the same time: some moment had at least two runs in progress.
    spans = sorted((record.start_time, record.end_time) for record in records)
    assert any(later_start < earlier_end for (_, earlier_end), (later_start, _) in itertools.pairwise(spans))

    lake = f"s3://{bucket}/lake"
    calls = pl.concat([read_partition(f"{lake}/llm_calls", batch) for batch in BATCHES])
    # One provider budget: each run admitted BUDGET / parallel_runs calls at a time, so together they never went
    # over the cap (a run using the whole budget would have met 429s, and retried).
    assert calls.height > 0 and calls["attempts"].max() == 1 and set(calls["status"]) == {"ok"}
    for batch in BATCHES:
        assert read_partition(f"{lake}/training_set", batch).height > 0
