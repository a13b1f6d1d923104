"""The catalogue and profiles load with clear errors naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentinstruct_dagster.config.catalogue import load_catalogue
from agentinstruct_dagster.config.errors import ConfigFileError
from agentinstruct_dagster.config.profiles import load_profile
from agentinstruct_dagster.project import catalogue_dir, profiles_dir

RC_FILE = catalogue_dir() / "reading_comprehension.yaml"


def test_reading_comprehension_is_complete() -> None:
    skill = load_catalogue()["reading_comprehension"]
    assert skill.split == "rc"
    assert len(skill.transformation.agents) == 9
    assert len(skill.seed.types) == 43
    assert sum(kind.named_in_paper for kind in skill.seed.types) == 14
    routed = {name for names in skill.seed.routing.values() for name in names}
    assert routed == set(skill.types_by_name)
    assert all(skill.types_for(agent.name) for agent in skill.transformation.agents)
    assert skill.refinement.rounds == 2
    assert {"make_unanswerable", "flip_answer", "harder_distractors"} <= {goal.name for goal in skill.refinement.goals}


def broken_copy(tmp_path: Path, edit, name: str = "reading_comprehension.yaml") -> Path:
    data = yaml.safe_load(RC_FILE.read_text())
    edit(data)
    (tmp_path / name).write_text(yaml.safe_dump(data))
    return tmp_path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["transformation"]["agents"][0].update(prompt="{text} {nonsense}"), "unknown placeholder"),
        (lambda d: d["seed"]["routing"]["poem"].append("no_such_type"), "unknown instruction type"),
        (lambda d: d["seed"]["types"].append(dict(d["seed"]["types"][0])), "declared twice"),
        (lambda d: d["refinement"].pop("editor_prompt"), "refinement.editor_prompt"),
        (lambda d: d["seed"].update(types_per_text=0), "seed.types_per_text"),
        (lambda d: d.pop("judge"), "field `judge`"),
        (lambda d: d["judge"].update(prompt="{instruction} {answer}"), "judge.prompt: must use"),
        (lambda d: d["judge"].update(min_mean_score=7), "judge.min_mean_score"),
        (lambda d: d["judge"]["criteria"].append(dict(d["judge"]["criteria"][0])), "judge.criteria"),
    ],
)
def test_broken_catalogue_names_file_and_field(tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(ConfigFileError, match=r"reading_comprehension\.yaml") as error:
        load_catalogue(broken_copy(tmp_path, edit))
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("skill", "edit", "message"),
    [
        ("multiple_choice", lambda d: d.pop("support_agents"), "needs exactly ['key_checker']"),
        ("tool_use", lambda d: d["support_agents"]["responder"].update(prompt="{apis}"), "support_agents.responder"),
        ("reading_comprehension", lambda d: d.update(shape="essay"), "shape"),
        ("reading_comprehension", lambda d: d.update(retrieval={"distractors": 2}), "retrieval: only skills"),
        ("fermi", lambda d: d["transformation"]["agents"][0].update(data_format="csv"), "data_format is only"),
    ],
)
def test_broken_shape_parts_name_file_and_field(tmp_path: Path, skill: str, edit, message: str) -> None:
    data = yaml.safe_load((catalogue_dir() / f"{skill}.yaml").read_text())
    edit(data)
    (tmp_path / f"{skill}.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigFileError, match=rf"{skill}\.yaml") as error:
        load_catalogue(tmp_path)
    assert message in str(error.value)


def test_every_skill_of_the_paper_is_in_the_catalogue() -> None:
    catalogue = load_catalogue()
    assert len(catalogue) == 17
    splits = {skill.split for skill in catalogue.values()}
    assert {"rc", "mcq", "code_", "rag", "fs_cot_flow", "follow_up", "struct2text_flow", "brain_teaser"} <= splits
    assert {skill.shape for skill in catalogue.values()} == {
        "qa", "mcq", "conversation", "tool_use", "web_agent", "code", "rag", "few_shot", "data_to_text"
    }
    narrow = {"reading_comprehension": 43, "text_modification": 18}
    for name, skill in catalogue.items():
        assert len(skill.seed.types) >= narrow.get(name, 10), name


def test_file_name_must_match_skill_and_yaml_must_parse(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="field `skill`"):
        load_catalogue(broken_copy(tmp_path, lambda d: None, name="renamed.yaml"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "oops.yaml").write_text("skill: [unclosed")
    with pytest.raises(ConfigFileError, match="not valid YAML"):
        load_catalogue(bad)


def test_profiles_load_and_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    names = sorted(path.stem for path in profiles_dir().glob("*.yaml"))
    assert names == ["azure", "local", "ollama", "openai", "s3", "standin", "vllm"]
    for name in names:
        assert load_profile(name).name == name
    openai_profile = load_profile("openai")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY is not set"):
        openai_profile.llm.api_key()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert openai_profile.llm.api_key() == "sk-from-env"
    assert openai_profile.llm.model_for("editor") == "gpt-4o"
    assert openai_profile.llm.model_for("seed") == "gpt-4o-mini"


def test_invalid_profile_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: bad\nllm:\n  provider: openai\n  models: {}\n")
    with pytest.raises(ConfigFileError, match=r"bad\.yaml.*llm\.models"):
        load_profile(str(tmp_path / "bad.yaml"))


def test_readme_skill_table_is_the_generated_one() -> None:
    from agentinstruct_dagster import catalogue_table
    from agentinstruct_dagster.project import project_dir

    readme = (project_dir() / "README.md").read_text()
    assert catalogue_table.markdown(list(load_catalogue().values())) in readme
