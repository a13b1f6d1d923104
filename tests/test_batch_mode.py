"""Batch mode (`llm.mode: batch`) through the stand-in's Files and Batches API: real HTTP, real Delta tables, real
Dagster runs. The stage tables equal online mode's; failed, expired and partly failed batches end with every
request answered or quarantined with its class; file and token limits hold; a restarted engine resumes its
submitted batches instead of submitting them again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import openai
import polars as pl
import pytest
import yaml
from conftest import PASSAGES, STAGE_TABLES, isolated_project

from agentinstruct_dagster.config.profiles import LLMSettings
from agentinstruct_dagster.definitions import build_definitions
from agentinstruct_dagster.llm.engine import LLMEngine
from agentinstruct_dagster.llm.ledger import BATCH_ANSWERED, BATCH_ERROR, BATCH_SUBMITTED, CallLedger, call_rows
from agentinstruct_dagster.llm.schemas import SeedInstruction
from agentinstruct_dagster.llm.types import LLMRequest
from agentinstruct_dagster.project import project_dir
from agentinstruct_dagster.runs import run_batches
from agentinstruct_dagster.standin.server import StandinConfig, StandinServer
from agentinstruct_dagster.storage.delta import append_rows, read_all, read_quarantine
from agentinstruct_dagster.storage.paths import ledger_path, table_path

FAST_BATCHES = {"collect_seconds": 0.2, "poll_seconds": 0.1}
PRICES = {"m": {"input_per_million": 1.0, "output_per_million": 2.0}}


def llm_profile(mode: str, **standin: Any) -> dict[str, Any]:
    llm = yaml.safe_load((project_dir() / "resources" / "standin.yaml").read_text())["llm"]
    llm["standin"] = {"batch_completion_seconds": 0.3, **standin}
    return {**llm, "mode": mode, "batch": FAST_BATCHES}


def run_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llm: dict[str, Any]) -> tuple[Path, bool]:
    """The reading-comprehension pipeline over two passages as batch `b`, in an isolated project."""
    tmp_path.mkdir()
    with isolated_project(tmp_path, monkeypatch, llm=llm) as project:
        project.add_batch("b", PASSAGES[:2])
        result = run_batches(build_definitions(project.profile), project.instance, ["b"])["b"]
        return project.lake, result.success


def stage_tables(lake: Path) -> dict[str, tuple[pl.DataFrame, pl.DataFrame]]:
    """Every stage table's kept and quarantined rows, by id, without time columns."""
    tables = {}
    for key in STAGE_TABLES:
        kept, quarantined = read_all(table_path(lake, key)), read_quarantine(table_path(lake, key), "b")
        timeless = [name for name, kind in kept.schema.items() if isinstance(kind, pl.Datetime)]
        tables["/".join(key)] = (kept.drop(timeless).sort("id"), quarantined.drop("quarantined_at", strict=False))
    return tables


def test_batch_mode_yields_the_tables_of_online_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    online_lake, online_ok = run_pipeline(tmp_path / "online", monkeypatch, llm_profile("online"))
    batch_lake, batch_ok = run_pipeline(tmp_path / "batch", monkeypatch, llm_profile("batch"))
    assert online_ok and batch_ok
    online, batched = stage_tables(online_lake), stage_tables(batch_lake)
    for name, (kept, quarantined) in online.items():
        assert kept.height > 0, name
        assert batched[name][0].equals(kept), name
        assert batched[name][1].sort(pl.all()).equals(quarantined.sort(pl.all())), name

    ledger = read_all(ledger_path(batch_lake))
    lines = ledger.filter(pl.col("status").is_in([BATCH_SUBMITTED, BATCH_ANSWERED]))
    assert lines["provider_batch_id"].str.starts_with("batch_").all()
    assert lines["input_file_id"].str.starts_with("file-").all()
    answered = ledger.filter(pl.col("status") == BATCH_ANSWERED)
    assert answered["batch_state"].unique().to_list() == ["completed"]
    assert answered["output_file_id"].is_not_null().all()
    # Every model call was answered through a batch line, and no line was paid twice.
    assert answered["custom_id"].n_unique() == answered.height
    calls = call_rows(ledger)
    assert calls.height == call_rows(read_all(ledger_path(online_lake))).height
    assert answered.height >= calls.height


def settings(**batch: Any) -> LLMSettings:
    return LLMSettings(
        provider="openai_compatible",
        models={"default": "m"},
        prices=PRICES,
        mode="batch",
        batch={**FAST_BATCHES, **batch},
        backoff_base_seconds=0.01,
        backoff_max_seconds=0.05,
    )


def request(index: int) -> LLMRequest:
    return LLMRequest(
        agent="test",
        role="seed",
        system="Write a question.",
        user=f"The Fresnel lens bent light into one beam, case {index}.",
        response_model=SeedInstruction,
    )


def run_engine(server: StandinServer, llm: LLMSettings, count: int, ledger: CallLedger | None = None) -> tuple:
    engine = LLMEngine(llm, base_url=server.base_url, ledger=ledger, label="stage")
    results = engine.run(lambda: asyncio.gather(*(engine.call(request(index)) for index in range(count))))
    return results, engine


def provider_batches(server: StandinServer) -> list[Any]:
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    return list(client.batches.list(limit=100))


def test_partly_failed_batches_are_resubmitted_until_answered(tmp_path: Path) -> None:
    with StandinServer(StandinConfig(batch_completion_seconds=0.2, batch_failure_rate=0.3)) as server:
        ledger = CallLedger(tmp_path / "ledger", "b", "stage")
        results, engine = run_engine(server, settings(), 20, ledger)
        ledger.flush()
        assert all(result.ok for result in results)
        assert engine.usage.batch_calls == 20 and engine.usage.retries > 0
        rows = read_all(tmp_path / "ledger")
        errors = rows.filter(pl.col("status") == BATCH_ERROR)
        assert errors.height == engine.usage.retries
        assert errors["error_class"].unique().to_list() == ["server_error"]
        # The cost of a batched call is the price with the batch discount.
        usage = engine.usage
        assert usage.cost_usd == pytest.approx(0.5 * (usage.prompt_tokens + 2 * usage.completion_tokens) / 1e6)

        online_retry, engine = run_engine(server, settings(retry="online"), 20)
        assert all(result.ok for result in online_retry)
        assert engine.usage.batch_calls == 20 - engine.usage.retries > 0
        assert [result.value for result in online_retry] == [result.value for result in results]


def test_expired_batches_are_retried_then_quarantined_past_max_submissions(tmp_path: Path) -> None:
    expiring = StandinConfig(batch_completion_seconds=1.0, batch_never_finishes=True, batch_expire_seconds=0.05)
    with StandinServer(expiring) as server:
        ledger = CallLedger(tmp_path / "ledger", "b", "stage")
        results, engine = run_engine(server, settings(max_submissions=2), 4, ledger)
        ledger.flush()
    assert [result.error_class for result in results] == ["batch_expired"] * 4
    assert "after 2 submissions" in results[0].error
    rows = read_all(tmp_path / "ledger")
    assert rows.filter(pl.col("status") == BATCH_SUBMITTED).height == 8
    expired = rows.filter(pl.col("status") == BATCH_ERROR)
    assert expired["error_class"].unique().to_list() == ["batch_expired"]
    assert expired["batch_state"].unique().to_list() == ["expired"]
    assert call_rows(rows)["error_class"].to_list() == ["batch_expired"] * 4

    with StandinServer(expiring) as server:
        results, engine = run_engine(server, settings(retry="online"), 4)
    assert all(result.ok for result in results) and engine.usage.batch_calls == 0


def test_expired_batches_over_the_failure_threshold_fail_the_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = llm_profile("batch", batch_never_finishes=True, batch_expire_seconds=0.2)
    llm["batch"] = {**FAST_BATCHES, "max_submissions": 1}
    with isolated_project(tmp_path, monkeypatch, llm=llm) as project:
        project.add_batch("b", PASSAGES[:1])
        result = run_batches(build_definitions(project.profile), project.instance, ["b"])["b"]
    assert not result.success
    failures = [event for event in result.all_events if event.is_step_failure]
    message = failures[0].step_failure_data.user_failure_data.description
    assert "model calls failed" in message and "batch_expired" in message


def test_files_stay_within_the_request_limit(tmp_path: Path) -> None:
    with StandinServer(StandinConfig(batch_completion_seconds=0.3, batch_max_requests=4)) as server:
        results, engine = run_engine(server, settings(max_requests_per_file=4), 10)
        batches = provider_batches(server)
    assert all(result.ok for result in results)
    assert sorted(batch.request_counts.total for batch in batches) == [2, 4, 4]
    assert [batch.status for batch in batches] == ["completed"] * 3 and engine.batcher.files_submitted == 3


def test_batches_stay_within_the_enqueued_token_limit(tmp_path: Path) -> None:
    limits = StandinConfig(batch_completion_seconds=0.3, batch_enqueued_token_limit=60)
    with StandinServer(limits) as server:
        results, engine = run_engine(server, settings(max_enqueued_tokens=60), 10)
        batches = provider_batches(server)
    assert all(result.ok for result in results)
    assert [batch.status for batch in batches] == ["completed"] * len(batches)  # none token_limit_exceeded
    assert len(batches) >= 3 and engine.batcher.files_submitted == len(batches)


class Stop(Exception):
    """The engine's process stopping while its batch runs."""


def stop_after_submitting(server: StandinServer, ledger_folder: Path, indexes: range) -> str:
    """Ask for the requests, stop as soon as their batch is submitted; the provider batch's id."""
    engine = LLMEngine(settings(), base_url=server.base_url, ledger=CallLedger(ledger_folder, "b", "stage"))

    async def stopped_early() -> None:
        asyncio.gather(*(engine.call(request(index)) for index in indexes))
        while engine.batcher.files_submitted == 0:
            await asyncio.sleep(0.02)
        raise Stop

    with pytest.raises(Stop):
        engine.run(stopped_early)
    return provider_batches(server)[0].id


def test_a_restarted_engine_resumes_its_batches_without_submitting_again(tmp_path: Path) -> None:
    slow = StandinConfig(batch_completion_seconds=2.0, state_dir=str(tmp_path / "standin"))
    ledger = tmp_path / "ledger"
    with StandinServer(slow) as server:
        running = stop_after_submitting(server, ledger, range(6))
        assert provider_batches(server)[0].status in ("validating", "in_progress")

    # A new stand-in (another port) over the same state, a new engine and ledger: the running batch is polled.
    with StandinServer(slow) as server:
        results, engine = run_engine(server, settings(), 6, CallLedger(ledger, "b", "stage"))
        assert all(result.ok for result in results) and engine.usage.batch_calls == 6
        assert [batch.id for batch in provider_batches(server)] == [running]
        assert engine.batcher.files_submitted == 0

        finished = stop_after_submitting(server, ledger, range(6, 12))
    time.sleep(2.2)  # the batch completes while no engine polls it
    with StandinServer(slow) as server:
        started = time.monotonic()
        results, engine = run_engine(server, settings(), 12, CallLedger(ledger, "b", "stage"))
        assert all(result.ok for result in results) and time.monotonic() - started < 1.5
        assert [batch.id for batch in provider_batches(server)] == [finished, running]
        assert engine.batcher.files_submitted == 0 and engine.usage.calls_cached == 6

    answered = read_all(ledger).filter(pl.col("status") == BATCH_ANSWERED)
    assert answered.height == answered["custom_id"].n_unique() == 12


def test_answers_collected_before_are_never_submitted_again(tmp_path: Path) -> None:
    """A run stopped after collecting a batch but before recording its calls: the answers are reused."""
    with StandinServer(StandinConfig(batch_completion_seconds=0.2)) as server:
        ledger = CallLedger(tmp_path / "first", "b", "stage")
        first, _ = run_engine(server, settings(), 5, ledger)
    lines_only = read_all(tmp_path / "first").filter(pl.col("status").is_in([BATCH_SUBMITTED, BATCH_ANSWERED]))
    append_rows(tmp_path / "second", lines_only)
    with StandinServer(StandinConfig(batch_completion_seconds=0.2)) as server:
        again, engine = run_engine(server, settings(), 5, CallLedger(tmp_path / "second", "b", "stage"))
        assert provider_batches(server) == [] and engine.usage.calls_made == 5
    assert [result.value for result in again] == [result.value for result in first]
