"""Substance rules: junk a schema cannot catch goes to quarantine with the rule's name and its evidence; good
text (and legit short answers) passes; thresholds are data a skill file may override; the stand-in's junk and
judge switches; junk from the stand-in never reaches the refined instructions."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import polars as pl
import pytest
import yaml
from conftest import PASSAGES, Project, write_profile
from pydantic import BaseModel, Field

from agentinstruct_dagster.config.catalogue import load_skill
from agentinstruct_dagster.config.errors import ConfigFileError
from agentinstruct_dagster.config.profiles import SandboxSettings, load_profile
from agentinstruct_dagster.config.substance import Substance, substance_thresholds
from agentinstruct_dagster.definitions import build_definitions
from agentinstruct_dagster.llm.engine import LLMEngine, json_schema_format
from agentinstruct_dagster.llm.schemas import EditedInstruction, SeedInstruction
from agentinstruct_dagster.project import catalogue_dir, project_dir
from agentinstruct_dagster.quality.rules import first_failure
from agentinstruct_dagster.quality.substance import (
    answer_equals_instruction,
    degenerate_answer,
    degenerate_text,
    echoes_prompt,
    edit_destroys_item,
    edit_is_no_op,
    instruction_copies_answer,
    instruction_copies_passage,
    much_shorter_than_source,
    near_copy_of_source,
)
from agentinstruct_dagster.runs import run_batches
from agentinstruct_dagster.shapes.base import Support
from agentinstruct_dagster.shapes.models import CodeTask, FewShot, KeyCheck
from agentinstruct_dagster.stages import seed
from agentinstruct_dagster.standin.junk import passage
from agentinstruct_dagster.standin.server import StandinConfig, StandinServer
from agentinstruct_dagster.storage.delta import read_partition, read_quarantine, table_exists
from agentinstruct_dagster.storage.paths import table_path

SOUP = "2.1.1.1.1:2:222.109.0.133.318.17"
SOURCE = " ".join([*PASSAGES, *PASSAGES[::-1]])  # ~200 words
REWRITE = (
    "Ships once depended on coastal towers whose fires warned them off rocks. The French physicist Fresnel "
    "changed that in 1822 with a ringed lens that gathered a lamp's light into a beam visible from far out at "
    "sea, so keepers needed far less fuel to be seen over the horizon."
)
RC = "reading_comprehension"
STAGES = ("transformed_texts", "seed_instructions", "refined_instructions")
OFF = {"degenerate_text": {"enabled": False}}


@pytest.fixture(scope="module")
def thresholds() -> Substance:
    return substance_thresholds()


def failure(rule: Any, row: dict[str, Any]) -> str | None:
    found = first_failure({"parent_id": "parent-1", **row}, [rule])
    return found[1] if found else None


# degenerate_text


@pytest.mark.parametrize(
    ("field", "junk", "evidence"),
    [
        ("answer", SOUP, "letter share 0.00 < 0.3"),
        ("instruction", "B", "0 word(s) of 2+ letters, `instruction` needs 2"),
        ("text", "Tides rise.", "2 word(s) of 2+ letters, `text` needs 20"),
        ("answer", "the tide comes in " * 12, "of its 3-word n-grams > 0.2"),
        ("answer", " ".join(random.Random(0).choices(["tide", "moon", "sea", "ebb", "flow"], k=80)), "distinct words"),
    ],
)
def test_degenerate_text_catches_soup_lone_letters_and_loops(
    thresholds: Substance, field: str, junk: str, evidence: str
) -> None:
    detail = failure(degenerate_text(thresholds, [field]), {field: junk})
    assert detail and detail.startswith(f"{field}: ") and evidence in detail
    assert junk.split()[0] in detail  # the offending text, shortened


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("answer", "42"),
        ("answer", "B"),
        ("answer", "Paris"),
        ("answer", "In 1822, 3.5 m and 20 mi."),
        ("instruction", "What is 2+2?"),
        ("instruction", "Solve for x: 2x + 3 = 7."),
        ("text", REWRITE),
        ("text", SOURCE),
    ],
)
def test_degenerate_text_passes_legit_text(thresholds: Substance, field: str, text: str) -> None:
    assert failure(degenerate_text(thresholds, [field]), {field: text}) is None


def test_degenerate_answer_names_the_nested_field(thresholds: Substance) -> None:
    examples = [{"question": "What pulls the tides?", "answer": "The Moon."}, {"question": "B", "answer": "C"}]
    few_shot = FewShot.model_validate({"examples": examples, "question": "Why are spring tides high?", "answer": "A"})
    reason = degenerate_answer(few_shot, thresholds)
    assert reason == "degenerate_text: examples[1].question: 0 word(s) of 2+ letters, `question` needs 2: 'B'"
    fine = few_shot.model_copy(update={"examples": few_shot.examples[:1] * 2})
    assert degenerate_answer(fine, thresholds) is None
    code = CodeTask(instruction="Sum the list.", explanation="Adds them up.", code="x = [1, 2, 3]\n" * 5, tests=SOUP)
    assert degenerate_answer(code, thresholds) is None  # code and tests are exempt
    rows = {"_answer": SeedInstruction(instruction="Which lens?", answer=SOUP)}
    assert "SeedInstruction.answer: letter share" in failure(degenerate_text(thresholds), rows)


# transformation


def test_near_copy_of_source(thresholds: Substance) -> None:
    rule = near_copy_of_source(thresholds)
    lightly_edited = SOURCE.replace("Lighthouses", "Beacons").upper()
    detail = failure(rule, {"agent": "debate", "text": lightly_edited, "_source": SOURCE})
    assert detail.startswith("Jaccard 0.9") and "source parent-1 >= 0.8" in detail
    assert failure(rule, {"agent": "debate", "text": REWRITE, "_source": SOURCE}) is None
    assert failure(rule, {"agent": "identity", "text": SOURCE, "_source": SOURCE}) is None
    table = FewShot(examples=[{"question": "q", "answer": "a"}] * 2, question=SOURCE, answer="x")
    assert "Jaccard 1.00" in failure(rule, {"agent": "facts", "text": "table", "_source": SOURCE, "_answer": table})


def test_much_shorter_than_source(thresholds: Substance) -> None:
    rule = much_shorter_than_source(thresholds)
    long_source = " ".join([SOURCE] * 3)  # ~1000 words
    detail = failure(rule, {"text": REWRITE, "_source": long_source})
    assert detail and "of source parent-1's" in detail and "needs 0.1 of min(" in detail and ", 800) = 80" in detail
    assert failure(rule, {"text": " ".join([REWRITE] * 2), "_source": long_source}) is None
    assert failure(rule, {"text": "Fresnel's lens.", "_source": PASSAGES[0]}) is None  # a short source is not judged


def test_echoes_prompt(thresholds: Substance) -> None:
    rule = echoes_prompt(thresholds, ["instruction"])
    prompt = f"Passage:\n{SOURCE}\n\nWrite ONE question of type literal_comprehension about the passage above."
    detail = failure(rule, {"instruction": prompt, "_prompt": prompt, "_source": SOURCE})
    assert detail and detail.startswith("instruction repeats 1.00 of the prompt's word 5-grams")
    assert failure(rule, {"instruction": SOURCE, "_prompt": prompt, "_source": SOURCE}) is None
    assert failure(rule, {"instruction": "Who designed the lens?", "_prompt": prompt, "_source": SOURCE}) is None


# seed and refinement


def test_instruction_copies_passage(thresholds: Substance) -> None:
    rule = instruction_copies_passage(thresholds)
    detail = failure(rule, {"instruction": f"Read this: {SOURCE} What is it about?", "_source": SOURCE})
    assert detail and "1.00 of the word 5-grams of passage parent-1" in detail
    assert failure(rule, {"instruction": "Who designed the lens in 1822?", "_source": SOURCE}) is None


def test_instruction_copies_answer(thresholds: Substance) -> None:
    rule = instruction_copies_answer(thresholds)
    answer = "Fresnel's lens bent the light of a small flame into a strong horizontal beam."
    detail = failure(rule, {"instruction": f"Is this true? {answer}", "answer": answer})
    assert detail and detail.startswith("1.00 of the answer's word 5-grams are in the instruction")
    assert failure(rule, {"instruction": "Capital of France, is it Paris?", "answer": "Paris"}) is None
    assert failure(rule, {"instruction": "Who designed the lens?", "answer": answer}) is None


def test_answer_equals_instruction(thresholds: Substance) -> None:
    rule = answer_equals_instruction(thresholds)
    detail = failure(rule, {"instruction": "Who designed the lens?", "answer": "who DESIGNED the lens"})
    assert detail == "answer vs instruction: similarity 1.00 >= 0.9: 'who DESIGNED the lens'"
    shots = FewShot(
        examples=[{"question": "What pulls the tides?", "answer": "What pulls the tides?"}] * 2,
        question="Why are neap tides small?",
        answer="Sun and Moon pull at right angles.",
    )
    row = {"instruction": "Examples ...", "answer": shots.answer, "_answer": shots}
    assert failure(rule, row).startswith("WorkedExample.answer vs .question: similarity 1.00")
    assert failure(rule, {"instruction": "Who designed the lens?", "answer": "Augustin Fresnel."}) is None


def refined(instruction: str, answer: str, **context: str) -> dict[str, str]:
    previous = {"_previous_instruction": "Who designed the lens that made lighthouse beams visible far out?"}
    return {"instruction": instruction, "answer": answer, "_source": SOURCE, **previous, **context}


def test_edit_is_no_op(thresholds: Substance) -> None:
    rule = edit_is_no_op(thresholds)
    unchanged = "WHO designed the lens that made lighthouse beams visible far out"
    same = refined(unchanged, "Fresnel", _previous_answer="Fresnel.")
    assert failure(rule, same).startswith("instruction 1.00 and answer 1.00 similar to round parent-1")
    new_answer = refined(same["instruction"], "Augustin Fresnel, in 1822.", _previous_answer="Fresnel.")
    assert failure(rule, new_answer) is None


def test_edit_destroys_item(thresholds: Substance) -> None:
    rule = edit_destroys_item(thresholds)
    previous = (
        "In 1822 which French engineer designed the lens that let a small flame be seen from twenty miles out at sea?"
    )
    shrunk = refined("Who?", "Fresnel", _previous_instruction=previous, _previous_answer="Fresnel.")
    assert "shrank to 0.05 of round parent-1's (1 of 21 words) < 0.2: 'Who?'" in failure(rule, shrunk)
    unrelated = refined("Name a famous painting by Vermeer.", "Girl with a Pearl Earring", _previous_answer="Fresnel.")
    assert "shares no content word" in failure(rule, unrelated)
    harder = refined("Why could keepers burn less fuel after 1822?", "The lens focused light.", _previous_answer="x")
    assert failure(rule, harder) is None


# thresholds are data


def skill_file(tmp_path: Path, substance: Any) -> Path:
    data = yaml.safe_load((catalogue_dir() / f"{RC}.yaml").read_text())
    data["substance"] = substance
    path = tmp_path / f"{RC}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_skill_file_overrides_a_threshold(tmp_path: Path, thresholds: Substance) -> None:
    skill = load_skill(skill_file(tmp_path, {"degenerate_text": {"min_words": {"instruction": 6}}}))
    merged = substance_thresholds(skill.substance)
    assert merged.degenerate_text.words_needed("instruction") == 6
    assert merged.degenerate_text.words_needed("text") == thresholds.degenerate_text.words_needed("text") == 20
    row = {"instruction": "Who designed the lens?", "answer": "Fresnel.", "_source": SOURCE, "_prompt": "p"}
    assert first_failure(row, seed.rules_for(thresholds)) is None
    assert first_failure(row, seed.rules_for(merged))[0] == "degenerate_text"


@pytest.mark.parametrize(
    ("substance", "field"),
    [
        ({"degenerate_text": {"min_letter_ratio": 0.5}}, "substance.degenerate_text.min_letter_ratio"),
        ({"no_such_rule": {"enabled": False}}, "substance.no_such_rule"),
        ({"echoes_prompt": {"max_coverage": 2}}, "substance.echoes_prompt.max_coverage"),
    ],
)
def test_a_bad_override_names_the_file_and_field(tmp_path: Path, substance: Any, field: str) -> None:
    path = skill_file(tmp_path, substance)
    with pytest.raises(ConfigFileError, match=rf"{path}: invalid skill catalogue: field `{field}`"):
        load_skill(path)


def test_the_defaults_file_is_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTINSTRUCT_EXPECTATIONS_DIR", str(tmp_path))
    with pytest.raises(ConfigFileError, match=r"substance thresholds file not found: .*substance\.yaml"):
        substance_thresholds()


# the stand-in's switches


class JudgeVerdict(BaseModel):
    relevance: int = Field(ge=1, le=5)
    accuracy: int = Field(ge=1, le=5)
    rationale: str


def ask(server: StandinServer, model: type[BaseModel], user: str) -> Any:
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": user}]
    response = client.chat.completions.create(model="m", messages=messages, response_format=json_schema_format(model))
    return model.model_validate_json(response.choices[0].message.content)


EDITOR_PROMPT = f"Passage:\n{SOURCE}\n\nQuestion:\nWho designed the lens?\n\nRewrite the item, harder."


@pytest.mark.parametrize(
    ("junk", "expected"),
    [
        ("digit_soup", lambda text: len(text) >= 16 and not any(c.isalpha() for c in text)),
        ("one_letter", lambda text: len(text) == 1 and text.isupper()),
        ("prompt_echo", lambda text: text == EDITOR_PROMPT),
        ("source_copy", lambda text: text == SOURCE),
    ],
)
def test_junk_modes_fill_every_free_string(junk: str, expected: Any) -> None:
    with StandinServer(StandinConfig(junk=junk)) as server:
        edited = ask(server, EditedInstruction, EDITOR_PROMPT)
        code = ask(server, CodeTask, EDITOR_PROMPT)
    assert all(expected(text) for text in (edited.text, edited.instruction, edited.answer, code.explanation))
    compile(code.code, "code", "exec")  # code strings stay runnable Python


def test_answer_equals_question_mode_and_the_passage_of_a_prompt() -> None:
    with StandinServer(StandinConfig(junk="answer_equals_question")) as server:
        item = ask(server, SeedInstruction, EDITOR_PROMPT)
    assert item.answer == item.instruction and item.instruction.startswith("[stand-in] ")
    assert passage(f"Do this.\n\nTitle: T\nContent:\n{SOURCE}\n") == SOURCE
    assert passage(f"Passage (a poem):\n{SOURCE}\n\nWrite ONE question.\nMake it hard.") == SOURCE
    assert passage("no labels at all") == "no labels at all"
    with pytest.raises(ValueError, match="unknown junk mode"):
        StandinConfig(junk="gibberish")


@pytest.mark.parametrize(("judge", "scores"), [("high", (5, 5)), ("low", (1, 1))])
def test_judge_switch_sets_scores_of_judge_verdicts(judge: str, scores: tuple[int, int]) -> None:
    with StandinServer(StandinConfig(judge=judge, junk="digit_soup")) as server:
        verdict = ask(server, JudgeVerdict, EDITOR_PROMPT)
    assert (verdict.relevance, verdict.accuracy) == scores
    assert verdict.rationale.startswith("[stand-in] ")  # no junk in a judge's strings


def test_hashed_judge_scores_vary_and_the_command_line_sets_junk() -> None:
    with StandinServer(StandinConfig(judge="hashed")) as server:
        scores = {ask(server, JudgeVerdict, f"{EDITOR_PROMPT} {n}").relevance for n in range(12)}
    assert len(scores) > 1 and scores <= {1, 2, 3, 4, 5}
    code = "from agentinstruct_dagster.cli import main; main()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "standin", "--port", "0", "--junk", "one_letter"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = process.stdout.readline().split()[-1]
        client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
        response = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], response_format=json_schema_format(SeedInstruction)
        )
        assert set(json.loads(response.choices[0].message.content).values()) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


# the engine's re-ask of degenerate answers


@pytest.mark.parametrize(
    ("junk", "substance", "reseeds"), [("digit_soup", None, 1), ("digit_soup", OFF, 0), ("none", None, 0)]
)
def test_support_calls_re_ask_degenerate_answers_by_the_skills_thresholds(
    tmp_path: Path, junk: str, substance: Any, reseeds: int
) -> None:
    data = yaml.safe_load((catalogue_dir() / "multiple_choice.yaml").read_text())
    path = tmp_path / "multiple_choice.yaml"
    path.write_text(yaml.safe_dump({**data, "substance": substance}))
    skill = load_skill(path)
    with StandinServer(StandinConfig(junk=junk)) as server:
        engine = LLMEngine(load_profile("standin").llm, base_url=server.base_url)
        support = Support(skill=skill, call=engine.call, sandbox=SandboxSettings(), on_failure=lambda *_: None)
        check = engine.run(lambda: support.ask("key_checker", KeyCheck, question="Which lens?", options="A. B. C. D."))
    assert check is not None and engine.usage.reseeds == reseeds


# end to end on the stand-in


def rows_in(root: Path, stage: str, batch: str) -> int:
    path = table_path(root, [RC, stage])
    return read_partition(path, batch).height if table_exists(path) else 0


def quarantined(root: Path, batch: str) -> pl.DataFrame:
    frames = [
        read_quarantine(table_path(root, [RC, stage]), batch).with_columns(pl.lit(stage).alias("table"))
        for stage in STAGES
        if table_exists(table_path(root, [RC, stage]))
    ]
    return (
        pl.concat(frames)
        if frames
        else pl.DataFrame(schema={"reason": pl.String, "detail": pl.String, "table": pl.String})
    )


@pytest.mark.parametrize(
    ("junk", "rule", "first_stage"),
    [
        ("digit_soup", "degenerate_text", "transformed_texts"),
        ("one_letter", "degenerate_text", "transformed_texts"),
        ("prompt_echo", "echoes_prompt", "transformed_texts"),
        ("source_copy", "near_copy_of_source", "transformed_texts"),
        ("answer_equals_question", "answer_equals_instruction", "seed_instructions"),
    ],
)
def test_junk_never_reaches_refined_instructions(
    project: Project, tmp_path: Path, junk: str, rule: str, first_stage: str
) -> None:
    llm = yaml.safe_load((project_dir() / "resources" / "standin.yaml").read_text())["llm"]
    llm["standin"] = {**(llm.get("standin") or {}), "junk": junk}
    write_profile(tmp_path / "profiles", tmp_path, llm=llm)
    profile = load_profile("test")
    project.add_batch("junk", PASSAGES)
    result = run_batches(build_definitions(profile), project.instance, ["junk"])["junk"]  # may fail (batch gates)
    root = profile.storage.root_path
    if rule == "degenerate_text":  # the engine asked once more (the stand-in's junk again) before the rules
        [transformed] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == first_stage]
        metadata = transformed.materialization.metadata
        assert metadata["engine"].value["reseeds"] == metadata["calls_made"].value > 0
    assert rows_in(root, "refined_instructions", "junk") == 0
    assert rows_in(root, first_stage, "junk") == 0
    caught = quarantined(root, "junk").filter(pl.col("table") == first_stage)
    assert caught.height > 0 and set(caught["reason"]) == {f"rule_{rule}"}
    assert all(detail for detail in caught["detail"])


def test_good_stand_in_output_passes_the_substance_rules(project: Project) -> None:
    project.add_batch("good", PASSAGES)
    run_batches(build_definitions(project.profile), project.instance, ["good"])
    root = project.lake
    assert rows_in(root, "refined_instructions", "good") > 0
    reasons = quarantined(root, "good")["reason"].to_list()
    assert not [reason for reason in reasons if reason.startswith("rule_")]
    training = table_path(root, ["training_set"])
    assert table_exists(training) and read_partition(training, "good").height > 0
