"""What makes a green run trustworthy: the documented round becomes the pair, every MCQ item kept was checked
by an independent agent, stages share one admission window, curation (dedup across batches,
decontamination, the judge) quarantines with evidence, and batch gates fail runs that yield nothing usable.
Real HTTP to the stand-in, real Delta tables, real Dagster runs and checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from click.testing import CliRunner
from conftest import PASSAGES, Project, write_profile

from agentinstruct_dagster.cli import main
from agentinstruct_dagster.config.catalogue import load_catalogue
from agentinstruct_dagster.config.profiles import SandboxSettings, load_profile
from agentinstruct_dagster.definitions import build_definitions, build_resources
from agentinstruct_dagster.llm.engine import LLMEngine
from agentinstruct_dagster.pipeline.llm_resource import LLMResource
from agentinstruct_dagster.project import expectations_dir, project_dir
from agentinstruct_dagster.runs import run_batches
from agentinstruct_dagster.shapes import shape_for
from agentinstruct_dagster.shapes.base import Rejection, Support, Task
from agentinstruct_dagster.shapes.models import KEYS
from agentinstruct_dagster.standin.schema_instance import keyed_option
from agentinstruct_dagster.standin.server import StandinConfig, StandinServer
from agentinstruct_dagster.storage.delta import read_all, read_partition, read_quarantine
from agentinstruct_dagster.storage.paths import ledger_path, table_path

RC = "reading_comprehension"
# Enough documents for the stage gates' shares (computed from 10 rows on); distinct, so none collapses.
MANY_PASSAGES = [f"{PASSAGES[index % 3]} This is note number {index} of the collection." for index in range(12)]


def stage(project: Project, skill: str, name: str, batch: str) -> pl.DataFrame:
    return read_partition(table_path(project.lake, [skill, name]), batch)


def quarantine(project: Project, skill: str, name: str, batch: str) -> pl.DataFrame:
    path = table_path(project.lake, [skill, name])
    return read_quarantine(path, batch) if path.exists() else pl.DataFrame()


def use_profile(project: Project, tmp_path: Path, **overrides: object) -> None:
    """Rewrite the test profile with these top-level overrides and reload it."""
    write_profile(tmp_path / "profiles", tmp_path, **overrides)
    project.profile = load_profile()


def failed_checks(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {
        f"{item.asset_key.to_user_string()}:{item.check_name}": item.description or ""
        for item in result.get_asset_check_evaluations()
        if not item.passed
    }


def test_training_pairs_are_each_chains_final_round(project: Project) -> None:
    project.add_batch("rounds", PASSAGES)
    assert run_batches(build_definitions(project.profile), project.instance, ["rounds"])["rounds"].success
    refined = stage(project, RC, "refined_instructions", "rounds")
    judged = stage(project, RC, "judged_instructions", "rounds")
    pairs = read_partition(table_path(project.lake, ["training_set"]), "rounds")
    assert pairs.height == judged.height > 0
    final = refined.group_by("seed_id").agg(pl.col("round").max().alias("final"))
    chosen = pairs.join(judged, left_on="parent_id", right_on="id", suffix="_judged").join(
        refined, left_on="parent_id_judged", right_on="id", suffix="_refined"
    )
    assert chosen.height == pairs.height
    checked = chosen.join(final, on="seed_id")
    assert (checked["round_refined"] == checked["final"]).all()
    # No refinement round failed on the stand-in, so every pair is the last configured round.
    assert set(checked["round_refined"]) == {2}


def test_every_attempt_is_written_or_quarantined(project: Project, tmp_path: Path) -> None:
    llm = yaml.safe_load((project_dir() / "resources" / "standin.yaml").read_text())["llm"]
    use_profile(project, tmp_path, llm={**llm, "standin": {"faults": [{"kind": "malformed_json", "rate": 0.3}]}})
    project.add_batch("ledger", MANY_PASSAGES[:4])
    run_batches(build_definitions(project.profile), project.instance, ["ledger"])
    skill = load_catalogue()[RC]
    chunks = read_partition(table_path(project.lake, ["raw_documents"]), "ledger").height
    texts, seeds = (stage(project, RC, name, "ledger") for name in ("transformed_texts", "seed_instructions"))
    attempted = {
        "transformed_texts": chunks * skill.transformation.agents_per_document,
        "seed_instructions": texts.height * skill.seed.types_per_text,
        "judged_instructions": stage(project, RC, "refined_instructions", "ledger")["seed_id"].n_unique(),
    }
    for name, count in attempted.items():
        written, rejected = stage(project, RC, name, "ledger"), quarantine(project, RC, name, "ledger")
        assert written.height + rejected.height == count, name
    assert quarantine(project, RC, "transformed_texts", "ledger").height > 0 and seeds.height > 0


def test_every_kept_mcq_item_was_answered_by_the_key_checker(project: Project, tmp_path: Path) -> None:
    use_profile(project, tmp_path, skills=["multiple_choice"])
    project.add_batch("mcq", PASSAGES)
    run_batches(build_definitions(project.profile), project.instance, ["mcq"])
    calls = read_all(ledger_path(project.lake)).filter(pl.col("agent") == "key_checker", pl.col("status") == "ok")
    stages = ("seed_instructions", "refined_instructions")
    kept = pl.concat([stage(project, "multiple_choice", name, "mcq").select("structured") for name in stages])
    assert kept.height > 0
    # One checker call per item the seed agent or an editor wrote (kept or disputed), none fewer.
    disputed = pl.concat(
        [quarantine(project, "multiple_choice", name, "mcq") for name in stages],
        how="diagonal_relaxed",
    ).filter(pl.col("reason") == "shape_answer_key_disputed")
    assert calls.height >= kept.height + disputed.height
    for item in (json.loads(value) for value in kept["structured"]):
        assert item["checker_key"] == item["answer_key"]


def test_an_item_whose_key_the_checker_disputes_is_rejected_with_both_keys() -> None:
    skill = load_catalogue()["multiple_choice"]
    options = ["Fresnel's lens", "A coal fire", "An oil lamp", "A wood fire"]
    checker_key = keyed_option(list(KEYS), options)
    wrong = next(key for key in KEYS if key != checker_key)
    task = Task(
        "Lighthouses.",
        "Which light reached furthest?",
        f"{wrong}. It did.",
        {"question": "Which light reached furthest?", "options": options, "answer_key": wrong},
    )
    failures: list[str] = []
    with StandinServer(StandinConfig()) as server:
        engine = LLMEngine(load_profile("standin").llm, base_url=server.base_url)
        support = Support(skill, engine.call, SandboxSettings(), lambda result, agent: failures.append(agent))
        outcome = engine.run(lambda: shape_for(skill).complete(task, support))
    assert isinstance(outcome, Rejection) and outcome.reason == "answer_key_disputed" and not failures
    assert f"key {wrong}, the checker chose {checker_key}" in outcome.detail


def test_stages_of_a_dagster_run_share_one_admission_window() -> None:
    seen: list[object] = []

    @dg.asset
    def first(llm: LLMResource) -> None:
        seen.append(llm.engine(asset="first").admission)

    @dg.asset(deps=[first])
    def second(llm: LLMResource) -> None:
        seen.append(llm.engine(asset="second").admission)

    assert dg.materialize([first, second], resources={"llm": build_resources(load_profile("standin"))["llm"]}).success
    assert len(seen) == 2 and seen[0] is seen[1]


def test_duplicates_of_an_earlier_batch_are_quarantined_with_the_row_they_repeat(project: Project) -> None:
    defs = build_definitions(project.profile)
    project.add_batch("first", PASSAGES[:2])
    assert run_batches(defs, project.instance, ["first"])["first"].success
    project.add_batch("second", [PASSAGES[0], PASSAGES[2]])
    run_batches(defs, project.instance, ["second"])
    earlier = stage(project, RC, "judged_instructions", "first")
    duplicates = quarantine(project, RC, "judged_instructions", "second").filter(
        pl.col("reason").str.starts_with("duplicate_")
    )
    assert duplicates.height > 0
    repeated = {detail.split()[2] for detail in duplicates["detail"]}
    assert repeated <= set(earlier["id"])
    # What the first batch kept from the shared passage is not kept again; the new passage's items are.
    kept = stage(project, RC, "judged_instructions", "second")
    assert kept.height > 0 and not set(kept["instruction"]) & set(earlier["instruction"])
    # Re-running the first batch does not compare it with the later one: nothing of it becomes a duplicate.
    assert run_batches(defs, project.instance, ["first"])["first"].success
    assert (
        quarantine(project, RC, "judged_instructions", "first")
        .filter(pl.col("reason").str.starts_with("duplicate_"))
        .is_empty()
    )


def test_items_sharing_a_13_gram_with_a_benchmark_are_quarantined_with_its_name(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.add_batch("bench", PASSAGES[:2])
    defs = build_definitions(project.profile)
    assert run_batches(defs, project.instance, ["bench"])["bench"].success
    leaked = stage(project, RC, "judged_instructions", "bench").row(0, named=True)
    expectations = tmp_path / "expectations"
    shutil.copytree(expectations_dir(), expectations)
    item = {"question": leaked["instruction"], "choices": ["a", "b"], "answer": "a"}
    (expectations / "benchmarks" / "leaky_eval.jsonl").write_text(json.dumps(item) + "\n")
    monkeypatch.setenv("AGENTINSTRUCT_EXPECTATIONS_DIR", str(expectations))
    run_batches(defs, project.instance, ["bench"])
    hits = quarantine(project, RC, "judged_instructions", "bench").filter(pl.col("reason") == "contaminated")
    assert leaked["parent_id"] in set(hits["parent_id"])
    assert all("leaky_eval" in detail for detail in hits["detail"])
    assert leaked["parent_id"] not in set(stage(project, RC, "judged_instructions", "bench")["parent_id"])


@pytest.mark.parametrize("junk", ["digit_soup", "one_letter", "prompt_echo", "source_copy", "answer_equals_question"])
def test_a_junk_endpoint_yields_no_pair_and_a_failed_run_naming_the_gate(
    project: Project, tmp_path: Path, junk: str
) -> None:
    llm = yaml.safe_load((project_dir() / "resources" / "standin.yaml").read_text())["llm"]
    use_profile(project, tmp_path, llm={**llm, "standin": {"junk": junk}})
    project.add_batch("junk", MANY_PASSAGES)
    result = CliRunner().invoke(main, ["backfill", "--batch", "junk"])
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "gate" in result.output, result.output
    assert "agentinstruct run of batch 'junk': FAILED" in result.output
    if junk == "digit_soup":  # caught at the first stage, whose gate stops the run before anything is paid
        assert f"FAILED {RC}/transformed_texts:quarantine_gate" in result.output
        assert not table_path(project.lake, [RC, "seed_instructions"]).exists()
    pairs = (
        read_all(table_path(project.lake, ["training_set"]))
        if table_path(project.lake, ["training_set"]).exists()
        else pl.DataFrame({"batch": []})
    )
    assert pairs.filter(pl.col("batch") == "junk").is_empty()


def test_the_good_stand_in_passes_every_gate(project: Project) -> None:
    project.add_batch("good", PASSAGES)
    result = run_batches(build_definitions(project.profile), project.instance, ["good"])["good"]
    assert result.success and not failed_checks(result)
    names = {item.check_name for item in result.get_asset_check_evaluations()}
    assert {"quarantine_gate", "batch_gates"} <= names


def test_items_the_judge_scores_low_are_quarantined_with_scores_and_rationale(project: Project, tmp_path: Path) -> None:
    llm = yaml.safe_load((project_dir() / "resources" / "standin.yaml").read_text())["llm"]
    use_profile(project, tmp_path, llm={**llm, "standin": {"judge": "low"}})
    project.add_batch("harsh", MANY_PASSAGES[:4])
    result = run_batches(build_definitions(project.profile), project.instance, ["harsh"])["harsh"]
    assert not result.success and f"{RC}/judged_instructions:quarantine_gate" in failed_checks(result)
    assert stage(project, RC, "judged_instructions", "harsh").is_empty()
    rejected = quarantine(project, RC, "judged_instructions", "harsh")
    refined = stage(project, RC, "refined_instructions", "harsh")
    assert set(rejected["reason"]) == {"judge_low_score"}
    assert rejected.height == refined["seed_id"].n_unique()
    payload = json.loads(rejected["payload"][0])
    assert set(json.loads(payload["scores"]).values()) == {1} and payload["rationale"]
    assert rejected["detail"][0].startswith("mean 1.00 < 3.0")
