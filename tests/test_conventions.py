"""Dagster's own command lines on the project: plain `dagster` and `dg` commands, run from the root of a fresh copy
of the checkout (whose package is the one they load), against the test profile and a Dagster instance in a temp
dir; and the project's CLI, which prepares that instance and refuses a run without a batch in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from conftest import Project, isolated_project

from agentinstruct_dagster.pipeline.skill_assets import LLM_POOL
from agentinstruct_dagster.project import project_dir
from agentinstruct_dagster.runs import PARTITION_TAG, register_batches

CHECKOUT_ENTRIES = ["agentinstruct_dagster", "assets", "resources", "expectations", "pyproject.toml", "workspace.yaml"]
BIN = Path(sys.executable).parent
PROJECT_CLI = [sys.executable, "-c", "from agentinstruct_dagster.cli import main; main()"]


@dataclass
class Checkout:
    """A copy of the checkout, and the isolated project (profile, inbox, lake, instance) its commands use."""

    root: Path
    project: Project

    def run(self, *command: str | Path) -> subprocess.CompletedProcess[str]:
        """A command run in the copy's root, as a user would type it there (no activated virtualenv)."""
        environment = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
        return subprocess.run(
            [str(part) for part in command],
            cwd=self.root,
            env=environment,
            capture_output=True,
            text=True,
            timeout=180,
        )


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Checkout]:
    root = tmp_path / "checkout"
    for entry in CHECKOUT_ENTRIES:
        source = project_dir() / entry
        if source.is_dir():
            shutil.copytree(source, root / entry, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            root.mkdir(exist_ok=True)
            shutil.copy2(source, root / entry)
    with isolated_project(tmp_path, monkeypatch) as project:
        yield Checkout(root, project)


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert expected in result.stderr.strip().splitlines()[-1], result.stderr


def test_project_cli_prepares_the_instance_for_plain_dagster_commands(checkout: Checkout) -> None:
    result = checkout.run(*PROJECT_CLI, "instance")

    assert result.returncode == 0, result.stderr
    home = Path(os.environ["DAGSTER_HOME"])
    assert result.stdout.strip() == f"export DAGSTER_HOME={home}"
    settings = yaml.safe_load((home / "dagster.yaml").read_text())
    assert {"key": PARTITION_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in settings["concurrency"][
        "runs"
    ]["tag_concurrency_limits"]
    limit = checkout.project.instance.event_log_storage.get_concurrency_info(LLM_POOL).slot_count
    assert limit == checkout.project.profile.llm.parallel_runs


def test_plain_dagster_commands_load_the_project_from_its_root(checkout: Checkout) -> None:
    jobs = checkout.run(BIN / "dagster", "job", "list")  # a workspace command: reads [tool.dagster]
    assets = checkout.run(BIN / "dagster", "asset", "list", "-m", "agentinstruct_dagster.definitions")

    assert jobs.returncode == 0, jobs.stderr
    assert "Job: agentinstruct_pipeline" in jobs.stdout
    assert assets.returncode == 0, assets.stderr
    listed = set(assets.stdout.split())
    assert {"raw_documents", "reading_comprehension/seed_instructions", "training_set", "quality_report"} <= listed


def test_dg_lists_and_checks_the_definitions(checkout: Checkout) -> None:
    listed = checkout.run(BIN / "dg", "list", "defs", "--json")
    checked = checkout.run(BIN / "dg", "check", "defs")

    assert listed.returncode == 0, listed.stderr
    keys = {asset["asset_key"] for asset in json.loads(listed.stdout)["assets"]}
    assert {"raw_documents", "reading_comprehension/judged_instructions", "training_set"} <= keys
    assert checked.returncode == 0, checked.stderr
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr


def test_dg_launch_materializes_a_registered_batch(checkout: Checkout) -> None:
    project = checkout.project
    project.add_batch("conventions")
    register_batches(project.instance, ["conventions"])

    result = checkout.run(BIN / "dg", "launch", "--assets", "raw_documents", "--partition", "conventions")

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = pl.read_delta(str(project.lake / "raw_documents")).filter(pl.col("quarantined").is_null())
    assert rows["batch"].unique().to_list() == ["conventions"]
    assert rows["doc_id"].n_unique() == 2
    event = project.instance.get_latest_materialization_event(dg.AssetKey("raw_documents"))
    assert event is not None and event.asset_materialization.partition == "conventions"


def test_a_run_without_a_batch_is_one_clear_line(checkout: Checkout) -> None:
    no_batch = checkout.run(*PROJECT_CLI, "backfill")
    missing_folder = checkout.run(*PROJECT_CLI, "backfill", "--batch", "absent", "--in-process")

    assert_one_line_error(no_batch, "no batches: name them with --batch or use --missing")
    assert no_batch.returncode == 2
    assert_one_line_error(missing_folder, "no inbox folder for batch 'absent'")
    assert missing_folder.returncode == 1
