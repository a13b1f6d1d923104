"""The flow catalogue: one YAML file per skill in `assets/`, validated at load time.

A skill file declares its transformation agents, its instruction taxonomy, the routing from
transformation to instruction types, the refinement goals and every prompt. Adding a skill or an
instruction type is editing YAML, never Python.
"""

from __future__ import annotations

import re
import string
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agentinstruct_dagster.config.errors import ConfigFileError, load_yaml_model
from agentinstruct_dagster.config.substance import SubstanceOverrides
from agentinstruct_dagster.project import catalogue_dir

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
ANY_TRANSFORMATION = "*"

Shape = Literal["qa", "mcq", "conversation", "tool_use", "web_agent", "code", "rag", "few_shot", "data_to_text"]
DataFormat = Literal["markdown", "json", "csv"]
# A Dagster asset owner: an email address or `team:name`.
Owner = Annotated[str, Field(pattern=r"^(team:[A-Za-z0-9_-]+|[^@\s]+@[^@\s]+\.[^@\s]+)$")]
# The support agents a shape needs, with the placeholders their prompts may use and must use.
SUPPORT_AGENTS: dict[str, dict[str, tuple[set[str], set[str]]]] = {
    "mcq": {"key_checker": ({"question", "options"}, {"question", "options"})},
    "tool_use": {
        "tool_simulator": ({"apis", "request", "call", "earlier"}, {"call"}),
        "responder": ({"apis", "request", "results"}, {"request", "results"}),
    },
}


def placeholders(template: str) -> set[str]:
    """The `{name}` fields of a str.format template."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def check_template(template: str, allowed: set[str], required: set[str], where: str) -> None:
    try:
        used = placeholders(template)
    except ValueError as error:
        raise ValueError(f"{where}: malformed template ({error}); write literal braces as {{{{ and }}}}") from None
    unknown = used - allowed
    if unknown:
        raise ValueError(f"{where}: unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    missing = required - used
    if missing:
        raise ValueError(f"{where}: must use placeholder(s) {sorted(missing)}")


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TransformationAgent(Entry):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(min_length=1)
    prompt: str = Field(min_length=1, description="Template; placeholders: {text}, {title}.")
    data_format: DataFormat | None = Field(
        None, description="data_to_text skills only: how the extracted table is written (markdown by default)."
    )


class SupportAgent(Entry):
    """An agent a shape needs besides transformation, seed and refinement (e.g. MCQ's key checker)."""

    system_prompt: str = Field(min_length=1)
    prompt: str = Field(min_length=1)


class Retrieval(Entry):
    """rag skills: how many distractor chunks from other documents of the batch join each context."""

    distractors: int = Field(2, ge=0, le=8)
    chunk_chars: int = Field(1500, ge=200, le=20_000)


class InstructionType(Entry):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(min_length=1, description="What the seed agent of this type asks for.")
    named_in_paper: bool = False


class RefinementGoal(Entry):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(min_length=1)


class Transformation(Entry):
    prompt_version: str = Field(min_length=1)
    agents_per_document: int = Field(1, ge=1)
    system_prompt: str = Field(min_length=1)
    agents: list[TransformationAgent] = Field(min_length=1)


class SeedGeneration(Entry):
    prompt_version: str = Field(min_length=1)
    types_per_text: int = Field(3, ge=1)
    system_prompt: str = Field(min_length=1)
    prompt: str = Field(
        min_length=1,
        description="Template; placeholders: {text}, {type_name}, {type_description}, {transformation}.",
    )
    types: list[InstructionType] = Field(min_length=1)
    routing: dict[str, list[str]] = Field(
        description="Transformation agent -> instruction types that suit it; `*` is the fallback."
    )


class Refinement(Entry):
    prompt_version: str = Field(min_length=1)
    rounds: int = Field(2, ge=0, le=10)
    goals_per_round: int = Field(1, ge=1)
    goals: list[RefinementGoal] = Field(min_length=1)
    suggester_system_prompt: str = Field(min_length=1)
    suggester_prompt: str = Field(
        min_length=1, description="Template; placeholders: {text}, {instruction}, {answer}, {goals}, {round}."
    )
    editor_system_prompt: str = Field(min_length=1)
    editor_prompt: str = Field(
        min_length=1, description="Template; placeholders: {text}, {instruction}, {answer}, {suggestions}."
    )


class JudgeCriterion(Entry):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(min_length=1, description="What a 5 means, and what a 1 means.")


class Judge(Entry):
    """The LLM judge's rubric: every criterion scored 1-5; an item below either threshold is quarantined."""

    prompt_version: str = Field(min_length=1)
    system_prompt: str = Field(min_length=1)
    prompt: str = Field(
        min_length=1,
        description="Template; placeholders: {text}, {instruction}, {answer}, {instruction_type}, {criteria}.",
    )
    criteria: list[JudgeCriterion] = Field(min_length=1)
    min_mean_score: float = Field(3.0, ge=1, le=5, description="Items whose mean score is lower are quarantined.")
    min_criterion_score: int = Field(2, ge=1, le=5, description="Items with any criterion below this are too.")


class TrainingFormat(Entry):
    system_prompt: str | None = None
    user_template: str = Field("{text}\n\n{instruction}", description="Placeholders: {text}, {instruction}.")


class Skill(Entry):
    """One skill of the catalogue; it becomes one Dagster asset group."""

    skill: str = Field(pattern=NAME_PATTERN)
    title: str = Field(min_length=1)
    split: str = Field(pattern=NAME_PATTERN, description="Split name of this skill's rows in the training set.")
    description: str = Field(min_length=1)
    owners: list[Owner] = Field(
        default_factory=list,
        description="Owners of the skill's assets, shown in the Dagster UI: emails or `team:name`.",
    )
    shape: Shape = Field("qa", description="The structure of an instruction: fields asked of agents, turns.")
    transformation: Transformation
    seed: SeedGeneration
    refinement: Refinement
    support_agents: dict[str, SupportAgent] = Field(default_factory=dict)
    retrieval: Retrieval | None = None
    judge: Judge
    training: TrainingFormat = TrainingFormat()
    substance: SubstanceOverrides | None = Field(  # type: ignore[valid-type]
        None, description="Overrides of the substance rules' thresholds (defaults: expectations/substance.yaml)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Skill:
        agents = _unique([agent.name for agent in self.transformation.agents], "transformation.agents")
        types = _unique([kind.name for kind in self.seed.types], "seed.types")
        _unique([goal.name for goal in self.refinement.goals], "refinement.goals")
        for key, routed in self.seed.routing.items():
            if key != ANY_TRANSFORMATION and key not in agents:
                raise ValueError(f"seed.routing: `{key}` is not a transformation agent of this skill")
            unknown = [name for name in routed if name not in types]
            if unknown:
                raise ValueError(f"seed.routing.{key}: unknown instruction type(s) {unknown}")
            if not routed:
                raise ValueError(f"seed.routing.{key}: routes to no instruction type")
        unrouted = [name for name in agents if name not in self.seed.routing]
        if unrouted and ANY_TRANSFORMATION not in self.seed.routing:
            raise ValueError(f"seed.routing: agents {unrouted} have no route and there is no `*` fallback")
        for agent in self.transformation.agents:
            check_template(agent.prompt, {"text", "title"}, {"text"}, f"transformation.agents.{agent.name}.prompt")
        check_template(
            self.seed.prompt, {"text", "type_name", "type_description", "transformation"}, {"text"}, "seed.prompt"
        )
        check_template(
            self.refinement.suggester_prompt,
            {"text", "instruction", "answer", "goals", "round"},
            {"instruction", "goals"},
            "refinement.suggester_prompt",
        )
        check_template(
            self.refinement.editor_prompt,
            {"text", "instruction", "answer", "suggestions"},
            {"instruction", "suggestions"},
            "refinement.editor_prompt",
        )
        _unique([criterion.name for criterion in self.judge.criteria], "judge.criteria")
        check_template(
            self.judge.prompt,
            {"text", "instruction", "answer", "instruction_type", "criteria"},
            {"instruction", "answer", "criteria"},
            "judge.prompt",
        )
        check_template(self.training.user_template, {"text", "instruction"}, {"instruction"}, "training.user_template")
        self._check_shape_parts()
        return self

    def _check_shape_parts(self) -> None:
        needed = SUPPORT_AGENTS.get(self.shape, {})
        if set(self.support_agents) != set(needed):
            raise ValueError(
                f"support_agents: shape `{self.shape}` needs exactly {sorted(needed) or 'none'}, "
                f"the file declares {sorted(self.support_agents) or 'none'}"
            )
        for name, (allowed, required_fields) in needed.items():
            check_template(self.support_agents[name].prompt, allowed, required_fields, f"support_agents.{name}.prompt")
        if self.retrieval is not None and self.shape != "rag":
            raise ValueError(f"retrieval: only skills of shape `rag` use it, this one is `{self.shape}`")
        formatted = [agent.name for agent in self.transformation.agents if agent.data_format]
        if formatted and self.shape != "data_to_text":
            raise ValueError(f"transformation.agents {formatted}: data_format is only for shape `data_to_text`")

    @property
    def retrieval_settings(self) -> Retrieval:
        return self.retrieval or Retrieval()

    @cached_property
    def types_by_name(self) -> dict[str, InstructionType]:
        return {kind.name: kind for kind in self.seed.types}

    def types_for(self, agent: str) -> list[str]:
        """Instruction types that suit texts made by a transformation agent."""
        return list(self.seed.routing.get(agent) or self.seed.routing[ANY_TRANSFORMATION])


def _unique(names: list[str], where: str) -> set[str]:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{where}: `{name}` is declared twice")
        seen.add(name)
    return seen


def load_skill(path: Path) -> Skill:
    skill = load_yaml_model(path, Skill, what="skill catalogue")
    if skill.skill != re.sub(r"\.ya?ml$", "", path.name):
        raise ConfigFileError(f"{path}: field `skill` is {skill.skill!r} but the file is named {path.name}")
    return skill


def load_catalogue(directory: Path | None = None) -> dict[str, Skill]:
    """Every skill file in the catalogue folder, by skill name, in file-name order."""
    directory = directory or catalogue_dir()
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not files:
        raise ConfigFileError(f"no skill files (*.yaml) in the catalogue folder {directory}")
    skills = [load_skill(path) for path in files]
    splits = [skill.split for skill in skills]
    duplicated = sorted({split for split in splits if splits.count(split) > 1})
    if duplicated:
        raise ConfigFileError(f"{directory}: split name(s) {duplicated} used by more than one skill")
    return {skill.skill: skill for skill in skills}
