"""What an operator sees of a run: a start and an end line per model stage however fast it is, one run summary
event with the run's totals (also as run tags), and no warning the user cannot act on at process start."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from conftest import Project, isolated_project

from agentinstruct_dagster.config.profiles import LLMSettings
from agentinstruct_dagster.definitions import build_definitions
from agentinstruct_dagster.llm.engine import LLMEngine
from agentinstruct_dagster.llm.schemas import SeedInstruction
from agentinstruct_dagster.llm.types import LLMRequest
from agentinstruct_dagster.pipeline.automation import JOB_NAME
from agentinstruct_dagster.project import project_dir
from agentinstruct_dagster.runs import register_batches, run_batches
from agentinstruct_dagster.standin.server import Fault, StandinConfig, StandinServer
from agentinstruct_dagster.storage.delta import read_partition
from agentinstruct_dagster.storage.paths import ledger_path

RC = "reading_comprehension"
STAGES = ["transformed_texts", "seed_instructions", "refined_instructions", "judged_instructions"]
COUNTS = ["calls_made", "calls_cached", "calls_failed", "prompt_tokens", "completion_tokens"]
DAGSTER = Path(sys.executable).with_name("dagster")


def messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The run's log lines (events without a Dagster event) at INFO or above."""
    return [
        entry.user_message for entry in instance.all_logs(run_id) if entry.dagster_event is None and entry.level >= 20
    ]


def counts(line: str) -> dict[str, int]:
    """The `name value` counts of a line (the first of each name: the totals of a run summary)."""
    found: dict[str, int] = {}
    for name, value in re.findall(rf"\b({'|'.join(COUNTS)}) (\d+)\b", line):
        found.setdefault(name, int(value))
    return found


def stage_lines(lines: list[str], stage: str) -> tuple[list[str], list[str]]:
    label = f"{RC}/{stage}: "
    mine = [line for line in lines if line.startswith(label)]
    return [line for line in mine if " started, " in line], [line for line in mine if " finished after " in line]


def run_lines(project: Project, batch: str) -> tuple[list[str], dict[str, str]]:
    result = run_batches(build_definitions(project.profile), project.instance, [batch])[batch]
    assert result.success
    return messages(project.instance, result.run_id), project.instance.get_run_by_id(result.run_id).tags


@pytest.fixture
def priced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    """The test project with a price for the stand-in's model, so every call made costs something."""
    llm = yaml.safe_load((project_dir() / "resources" / "standin.yaml").read_text())["llm"]
    llm["prices"] = {llm["models"]["default"]: {"input_per_million": 3.0, "output_per_million": 15.0}}
    with isolated_project(tmp_path, monkeypatch, llm=llm) as made:
        yield made


def cost(line: str) -> float:
    return float(re.search(r"\bcost_usd ([0-9.e-]+)", line).group(1))


def test_fast_stages_log_start_and_end_lines_and_the_run_a_summary(priced: Project) -> None:
    project = priced
    project.add_batch("obs")
    first, first_tags = run_lines(project, "obs")

    ledger = read_partition(ledger_path(project.lake), "obs")
    ended = {}
    for stage in STAGES:
        starts, ends = stage_lines(first, stage)
        assert len(starts) == 1 and len(ends) == 1, (stage, first)
        assert re.search(r"calls expected, window \d+ of at most \d+ calls in flight", starts[0])
        done, expected = map(int, re.search(r"(\d+)/(\d+) calls done", ends[0]).groups())
        assert done > 0 and expected > 0 and "calls/s" in ends[0]
        ended[stage] = counts(ends[0])
        asset_calls = ledger.filter(pl.col("asset") == f"{RC}/{stage}")
        assert ended[stage]["calls_made"] == asset_calls.height == done
        assert ended[stage]["calls_cached"] == ended[stage]["calls_failed"] == 0
        assert ended[stage]["prompt_tokens"] == asset_calls["prompt_tokens"].sum() > 0
        assert cost(ends[0]) == pytest.approx(asset_calls["cost_usd"].sum(), abs=1e-6) and cost(ends[0]) > 0

    summaries = [line for line in first if line.startswith("run summary: ")]
    assert len(summaries) == 1, first
    total = counts(summaries[0])
    assert total == {name: sum(stage[name] for stage in ended.values()) for name in COUNTS}
    assert total["calls_made"] == ledger.height and total["completion_tokens"] > 0
    assert cost(summaries[0]) == pytest.approx(ledger["cost_usd"].sum(), abs=1e-6)
    assert float(first_tags["agentinstruct/cost_usd"]) == cost(summaries[0])
    assert all(f"{stage}: calls_made {ended[stage]['calls_made']}," in summaries[0] for stage in STAGES)
    assert {name: int(first_tags[f"agentinstruct/{name}"]) for name in COUNTS} == total

    again, again_tags = run_lines(project, "obs")
    for stage in STAGES:
        starts, ends = stage_lines(again, stage)
        assert len(starts) == 1 and len(ends) == 1
        assert counts(ends[0]) == {
            **ended[stage],
            "calls_made": 0,
            "calls_cached": ended[stage]["calls_made"],
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }
    cached = {
        "calls_made": 0,
        "calls_cached": total["calls_made"],
        "calls_failed": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }
    summary = next(line for line in again if line.startswith("run summary: "))
    assert counts(summary) == cached and cost(summary) == 0
    assert {name: int(again_tags[f"agentinstruct/{name}"]) for name in COUNTS} == cached


def test_a_run_without_model_calls_has_no_summary(project: Project) -> None:
    project.add_batch("docs")
    register_batches(project.instance, ["docs"])
    result = (
        build_definitions(project.profile)
        .resolve_job_def(JOB_NAME)
        .execute_in_process(
            partition_key="docs", instance=project.instance, asset_selection=[dg.AssetKey("raw_documents")]
        )
    )
    assert result.success
    lines = messages(project.instance, result.run_id)
    assert not [line for line in lines if line.startswith("run summary") or " calls done" in line], lines
    assert not [tag for tag in project.instance.get_run_by_id(result.run_id).tags if "calls" in tag]


def request(text: str) -> LLMRequest:
    return LLMRequest(agent="test", role="seed", system="Write a question.", user=text, response_model=SeedInstruction)


def test_a_stage_whose_calls_fail_or_stop_says_so_in_its_end_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    llm = LLMSettings(provider="openai_compatible", models={"default": "stand-in-model"}, max_attempts=1)
    with StandinServer(StandinConfig(faults=(Fault("unauthorized", first_attempts=99),))) as server:
        engine = LLMEngine(llm, base_url=server.base_url, api_key="unused", label="rc/seed")
        engine.run(lambda: asyncio.gather(*(engine.call(request(f"passage {i}")) for i in range(3))), 3)

        async def stopped() -> None:
            await engine.call(request("one more"))
            raise ValueError("the stage gave up")

        with pytest.raises(ValueError):
            engine.run(stopped, 5)
    ends = [record.message for record in caplog.records if record.message.startswith("rc/seed: ")][1::2]
    assert "finished after" in ends[0] and "3/3 calls done" in ends[0]
    made = counts(ends[0])
    assert (made["calls_made"], made["calls_cached"], made["calls_failed"]) == (3, 0, 3)
    assert "stopped by ValueError" in ends[1] and "4/5 calls done" in ends[1]


def plain_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name != "PYTHONWARNINGS"}


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-c", "import agentinstruct_dagster.definitions"],
        [str(DAGSTER), "asset", "list", "-m", "agentinstruct_dagster.definitions"],
    ],
    ids=["import", "dagster-asset-list"],
)
def test_a_plain_process_start_prints_no_warning(command: list[str]) -> None:
    started = subprocess.run(command, capture_output=True, text=True, env=plain_environment(), timeout=300, check=True)
    assert "Warning" not in started.stderr, started.stderr


def test_dagster_preview_warnings_are_silenced_even_when_warnings_are_shown() -> None:
    """With every warning shown once (`-W default`), none of Dagster's preview or beta warnings for the features the
    project deliberately uses (partitioned asset checks, pools)."""
    command = [sys.executable, "-W", "default", "-c", "import agentinstruct_dagster.definitions"]
    shown = subprocess.run(command, capture_output=True, text=True, env=plain_environment(), timeout=300, check=True)
    assert "PreviewWarning" not in shown.stderr and "BetaWarning" not in shown.stderr, shown.stderr
