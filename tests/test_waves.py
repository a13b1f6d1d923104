"""Every stage in flight: one step per stage computes it for every skill, side by side, in one window."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import yaml
from conftest import PASSAGES, Project, write_profile

from agentinstruct_dagster.config.profiles import load_profile
from agentinstruct_dagster.definitions import build_definitions, build_resources
from agentinstruct_dagster.project import project_dir
from agentinstruct_dagster.runs import run_batches
from agentinstruct_dagster.storage.delta import read_partition
from agentinstruct_dagster.storage.paths import ledger_path

SKILLS = ["reading_comprehension", "open_domain_qa", "fermi"]
STAGES = ["transformed_texts", "seed_instructions", "refined_instructions", "judged_instructions"]
WINDOW = 6


def test_skills_run_each_stage_side_by_side_in_one_shared_window(project: Project, tmp_path: Path) -> None:
    data = yaml.safe_load((tmp_path / "profiles" / "test.yaml").read_text())
    llm = {**data["llm"], "max_concurrency": WINDOW}
    # A provider-like cap at the window: more calls in flight than the one shared window allows get 429s.
    llm["standin"] = {"latency_seconds": 0.05, "max_in_flight": WINDOW, "cap_retry_after_seconds": 0.05}
    write_profile(tmp_path / "profiles", tmp_path, skills=SKILLS, llm=llm)
    profile = load_profile()
    project.add_batch("waves", PASSAGES)
    result = run_batches(build_definitions(profile), project.instance, ["waves"])["waves"]
    assert result.success

    stage_steps = [event.step_key for event in result.all_events if event.is_step_start]
    assert [step for step in stage_steps if step in STAGES] == STAGES  # one step per stage, all skills in it
    calls = read_partition(ledger_path(profile.storage.root_path), "waves")
    assert set(calls["asset"].str.split("/").list.first()) == set(SKILLS)
    # Nothing went over the cap: the skills shared one window of WINDOW calls.
    assert calls["attempts"].max() == 1 and calls["status"].unique().to_list() == ["ok"]
    # In every stage, some call of one skill was in flight while a call of another was (per-skill steps in
    # sequence would never overlap).
    started = pl.col("recorded_at") - pl.duration(microseconds=(pl.col("latency_seconds") * 1e6).cast(pl.Int64))
    for stage in STAGES:
        spans = (
            calls.filter(pl.col("asset").str.ends_with(stage))
            .select(skill=pl.col("asset").str.split("/").list.first(), start=started, end="recorded_at")
            .sort("start")
        )
        overlapping = spans.join(spans, how="cross").filter(
            (pl.col("skill") != pl.col("skill_right"))
            & (pl.col("start") < pl.col("end_right"))
            & (pl.col("start_right") < pl.col("end"))
        )
        assert overlapping.height, f"{stage}: no two skills had calls in flight at once"


def test_resources_show_the_profile_settings(project: Project) -> None:
    """The launchpad shows (and can override) real settings, not a profile name; the key stays an EnvVar."""
    resources = build_resources(load_profile(str(project_dir() / "resources" / "openai.yaml")))
    llm = resources["llm"]
    assert llm.settings.models["default"] and llm.settings.max_concurrency > 0
    assert llm.api_key.env_var_name == "OPENAI_API_KEY"  # an EnvVar: the key itself is never in the config
    assert resources["io_manager"].lake is resources["lake"] is llm.lake
    assert resources["generation"].sandbox.timeout_seconds > 0
