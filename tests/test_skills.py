"""Every catalogue skill end to end in one run on the stand-in (real HTTP, Delta, Dagster, GX), then the
shape of each skill's rows, turns and export (the code sandbox has its own tests: test_sandbox.py)."""

from __future__ import annotations

import ast
import csv
import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from conftest import PASSAGES, Project, write_profile

from agentinstruct_dagster.config.catalogue import Skill, load_catalogue
from agentinstruct_dagster.config.profiles import load_profile
from agentinstruct_dagster.definitions import build_definitions
from agentinstruct_dagster.export import export_training_set
from agentinstruct_dagster.pipeline.stage_checks import shape_features
from agentinstruct_dagster.quality.gx_suites import shape_suite_path, validate_frame
from agentinstruct_dagster.runs import run_batches
from agentinstruct_dagster.shapes.web_agent import BROWSER_TOOLS
from agentinstruct_dagster.storage.delta import read_all, scan_quarantine
from agentinstruct_dagster.storage.paths import table_path

BATCH = "every skill"
CATALOGUE = load_catalogue()


def skill_of_shape(shape: str) -> Skill:
    return next(skill for skill in CATALOGUE.values() if skill.shape == shape)


@pytest.fixture(scope="module")
def every_skill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, dg.Definitions, bool]]:
    """One run of every catalogue skill on a batch of three documents."""
    tmp_path = tmp_path_factory.mktemp("every_skill")
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    write_profile(profiles, tmp_path, skills=None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AGENTINSTRUCT_PROFILES_DIR", str(profiles))
        patch.setenv("AGENTINSTRUCT_PROFILE", "test")
        patch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
        (tmp_path / "dagster_home").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
            project = Project(profile=load_profile(), instance=instance)
            project.add_batch(BATCH, PASSAGES)
            defs = build_definitions(project.profile)
            result = run_batches(defs, instance, [BATCH])[BATCH]
            yield project, defs, result.success


def table(project: Project, *key: str) -> pl.DataFrame:
    return read_all(table_path(project.lake, list(key)))


def pairs_of(project: Project, skill: Skill) -> list[dict]:
    training = table(project, "training_set")
    return training.filter(pl.col("skill") == skill.skill).to_dicts()


def test_the_run_succeeds_with_one_split_per_skill(every_skill) -> None:
    project, _, success = every_skill
    assert success
    training = table(project, "training_set")
    assert sorted(training["split"].unique()) == sorted(skill.split for skill in CATALOGUE.values())
    for skill in CATALOGUE.values():
        pairs = pairs_of(project, skill)
        assert pairs and all(pair["split"] == skill.split for pair in pairs)
        assert all(pair["messages"][-1]["role"] == "assistant" for pair in pairs)


def test_every_skill_shape_check_ran_and_passed(every_skill) -> None:
    project, _, _ = every_skill
    for skill in CATALOGUE.values():
        key = dg.AssetKey([skill.skill, "refined_instructions"])
        record = project.instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(key, f"gx_{skill.shape}_shape")]
        )
        execution = record[dg.AssetCheckKey(key, f"gx_{skill.shape}_shape")]
        assert execution.status.value == "SUCCEEDED", skill.skill


def test_mcq_keys_are_among_the_options_and_agreed_by_the_checker(every_skill) -> None:
    project, _, _ = every_skill
    skill = skill_of_shape("mcq")
    seeds = table(project, skill.skill, "seed_instructions")
    for row in seeds.iter_rows(named=True):
        item = json.loads(row["structured"])
        assert len(item["options"]) == 4 and item["answer_key"] in "ABCD"
        assert item["checker_key"] == item["answer_key"]
        assert row["answer"].startswith(item["answer_key"] + ".")
    disputed = scan_quarantine(table_path(project.lake, [skill.skill, "seed_instructions"])).collect()
    assert set(disputed["reason"]) <= {"shape_answer_key_disputed"}
    assert disputed.height + seeds.height == 3 * len(PASSAGES) * skill.transformation.agents_per_document


def test_conversations_have_three_or_more_user_turns_in_order(every_skill) -> None:
    project, _, _ = every_skill
    for pair in pairs_of(project, skill_of_shape("conversation")):
        roles = [message["role"] for message in pair["messages"] if message["role"] != "system"]
        assert roles.count("user") >= 3
        assert roles == ["user", "assistant"] * (len(roles) // 2)


def assert_tool_turns(messages: list[dict], declared: set[str]) -> int:
    """Every tool call names a declared function with JSON-object arguments and is answered by its tool turn."""
    calls = 0
    for turn, following in itertools.pairwise(messages):
        for call in turn["tool_calls"] or []:
            calls += 1
            assert turn["role"] == "assistant" and call["type"] == "function"
            assert call["function"]["name"] in declared
            assert isinstance(json.loads(call["function"]["arguments"]), dict)
            assert following["role"] == "tool" and following["tool_call_id"] == call["id"]
    return calls


def test_tool_use_turns_call_declared_apis_and_keep_results(every_skill) -> None:
    project, _, _ = every_skill
    pairs = pairs_of(project, skill_of_shape("tool_use"))
    calls = 0
    for pair in pairs:
        declared = {tool["function"]["name"] for tool in json.loads(pair["tools"])}
        calls += assert_tool_turns(pair["messages"], declared)
    assert pairs and calls > 0


def test_web_agent_actions_are_browser_calls_on_page_elements(every_skill) -> None:
    project, _, _ = every_skill
    for pair in pairs_of(project, skill_of_shape("web_agent")):
        assert assert_tool_turns(pair["messages"], set(BROWSER_TOOLS)) >= 1
        page = next(message for message in pair["messages"] if message["role"] == "user")["content"]
        for turn in pair["messages"]:
            for call in turn["tool_calls"] or []:
                assert f"[{json.loads(call['function']['arguments'])['element']}] " in page


def test_code_rows_parse_and_passed_in_the_sandbox(every_skill) -> None:
    project, _, _ = every_skill
    refined = table(project, skill_of_shape("code").skill, "refined_instructions")
    assert refined.height > 0
    for row in refined.iter_rows(named=True):
        item = json.loads(row["structured"])
        ast.parse(item["code"]), ast.parse(item["tests"])
        assert item["execution"]["status"] == "passed" and item["execution"]["returncode"] == 0


def test_rag_answers_cite_the_relevant_chunk_among_distractors(every_skill) -> None:
    project, _, _ = every_skill
    seeds = table(project, skill_of_shape("rag").skill, "seed_instructions")
    for row in seeds.iter_rows(named=True):
        item = json.loads(row["structured"])
        assert item["chunks"] == len(PASSAGES) and len(item["distractor_ids"]) == len(PASSAGES) - 1
        assert f"[{item['relevant_chunk']}]" in row["answer"]
        assert all(f"[{number}] " in row["text"] for number in range(1, item["chunks"] + 1))


def test_few_shot_prompts_show_worked_examples_first(every_skill) -> None:
    project, _, _ = every_skill
    for pair in pairs_of(project, skill_of_shape("few_shot")):
        user = next(message for message in pair["messages"] if message["role"] == "user")
        assert "Example 1:" in user["content"] and "Example 2:" in user["content"]


def test_data_to_text_texts_hold_the_extracted_data(every_skill) -> None:
    project, _, _ = every_skill
    skill = skill_of_shape("data_to_text")
    texts = table(project, skill.skill, "transformed_texts")
    for row in texts.iter_rows(named=True):
        data = json.loads(row["structured"])
        title, written = row["text"].split("\n\n", 1)
        assert title == data["title"]
        if data["data_format"] == "json":
            assert [list(record) for record in json.loads(written)] == [data["columns"]] * len(data["rows"])
        elif data["data_format"] == "csv":
            assert list(csv.reader(io.StringIO(written))) == [data["columns"], *data["rows"]]
        else:
            assert written.splitlines()[1] == "|" + " --- |" * len(data["columns"])


def test_export_has_one_orca_file_per_split_with_tools_where_called(every_skill, tmp_path: Path) -> None:
    project, _, _ = every_skill
    files = export_training_set(table_path(project.lake, ["training_set"]), tmp_path)
    assert sorted(files) == sorted(skill.split for skill in CATALOGUE.values())
    for split, path in files.items():
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert records and all(set(record) <= {"messages", "tools"} for record in records)
        assert all(("tools" in record) == (split in ("tool_use", "web_agent")) for record in records)
        for record in records:
            for message in record["messages"]:
                assert "content" in message and set(message) <= {"role", "content", "tool_calls", "tool_call_id"}


def test_a_shape_suite_fails_on_rows_that_break_it(every_skill) -> None:
    project, _, _ = every_skill
    skill = skill_of_shape("mcq")
    refined = table(project, skill.skill, "seed_instructions").head(1).with_columns(round=pl.lit(1))
    broken = refined.with_columns(
        structured=pl.col("structured").str.replace('"checker_key": "[A-D]"', '"checker_key": "Z"')
    )
    assert validate_frame(shape_features(refined, skill), shape_suite_path(skill.skill, skill.shape)).success
    outcome = validate_frame(shape_features(broken, skill), shape_suite_path(skill.skill, skill.shape))
    assert not outcome.success and "key_agrees_with_checker" in outcome.markdown()


def test_every_skill_has_a_shape_suite() -> None:
    for skill in CATALOGUE.values():
        assert shape_suite_path(skill.skill, skill.shape).is_file(), skill.skill


def test_a_second_run_of_the_unchanged_batch_makes_no_model_call_in_any_skill(every_skill) -> None:
    project, defs, _ = every_skill
    again = run_batches(defs, project.instance, [BATCH])[BATCH]
    calls = {
        event.asset_key.to_user_string(): event.materialization.metadata["engine"].value["calls_made"]
        for event in again.get_asset_materialization_events()
        if "engine" in event.materialization.metadata
    }
    assert len(calls) == 4 * len(CATALOGUE)
    assert {asset: count for asset, count in calls.items() if count} == {}
