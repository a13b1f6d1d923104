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
    ],
)
def test_broken_catalogue_names_file_and_field(tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(ConfigFileError, match=r"reading_comprehension\.yaml") as error:
        load_catalogue(broken_copy(tmp_path, edit))
    assert message in str(error.value)


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
    assert names == ["azure", "ollama", "openai", "standin", "vllm"]
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
