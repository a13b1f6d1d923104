"""Substance thresholds: the parameters of the row rules that judge what agents wrote (quality/substance.py).

The defaults are data, `expectations/substance.yaml` (one block per rule). A skill file may override any
parameter under `substance:`; unknown rule or parameter names are an error naming the file and the field.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from agentinstruct_dagster.config.errors import ConfigFileError, load_yaml_model
from agentinstruct_dagster.project import expectations_dir

DEFAULTS_FILE = "substance.yaml"
OTHER_FIELDS = "default"  # the `min_words` entry for fields not named


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleSettings(Settings):
    enabled: bool = Field(description="false turns the rule off.")


class Shingled(RuleSettings):
    shingle_words: int = Field(ge=1, le=12, description="Word n-grams texts are compared by.")


Share = Annotated[float, Field(ge=0, le=1)]


class DegenerateText(RuleSettings):
    min_letter_share: Share = Field(description="Character soup: letters per non-space character below this.")
    soup_min_chars: int = Field(ge=1, description="... judged only from this many non-space characters.")
    ngram_words: int = Field(ge=1, le=12, description="Repetition: word n-grams counted.")
    max_ngram_share: Share = Field(description="... the most common n-gram's share of all n-grams above this.")
    min_distinct_word_ratio: Share = Field(description="... or distinct words per word below this.")
    repetition_min_words: int = Field(ge=1, description="... judged only from this many words.")
    word_min_letters: int = Field(ge=1, description="Too few words: a word has this many letters or more...")
    min_words: dict[str, Annotated[int, Field(ge=0)]] = Field(
        description=f"... and a field needs this many, by field name; `{OTHER_FIELDS}` for the others."
    )
    exempt_fields: list[str] = Field(description="Fields holding data or code, not prose (never judged).")

    @model_validator(mode="after")
    def _has_default(self) -> DegenerateText:
        if OTHER_FIELDS not in self.min_words:
            raise ValueError(f"min_words must have a `{OTHER_FIELDS}` entry")
        return self

    def words_needed(self, field: str) -> int:
        return self.min_words.get(field, self.min_words[OTHER_FIELDS])


class NearCopyOfSource(Shingled):
    max_jaccard: Share = Field(description="Jaccard similarity of shingle sets with the source at or above this.")
    except_agents: list[str] = Field(description="Transformation agents whose task is to return the source.")


class MuchShorterThanSource(RuleSettings):
    min_ratio: Share = Field(description="Output words per source word below this fail...")
    min_source_words: int = Field(ge=0, description="... applied only to sources of at least this many words,")
    source_words_cap: int = Field(ge=1, description="... counted up to this many (outputs have a length limit).")


class EchoesPrompt(Shingled):
    max_coverage: Share = Field(
        description="Share of the prompt's shingles, and of those not in the source it quotes, an output repeats."
    )
    min_prompt_shingles: int = Field(ge=1, description="Prompts with fewer shingles are not judged.")


class InstructionCopiesPassage(Shingled):
    max_coverage: Share = Field(description="Share of the passage's shingles the instruction repeats.")
    min_passage_shingles: int = Field(ge=1, description="Passages with fewer shingles are not judged.")


class InstructionCopiesAnswer(Shingled):
    max_containment: Share = Field(description="Share of the answer's shingles found in the instruction.")
    min_answer_words: int = Field(ge=1, description='Shorter answers ("42", "B") are not judged.')


class AnswerEqualsInstruction(Shingled):
    max_similarity: Share = Field(description="Jaccard similarity of answer and instruction at or above this.")


class EditIsNoOp(Shingled):
    max_similarity: Share = Field(description="Instruction AND answer this similar to the previous round's.")


class EditDestroysItem(RuleSettings):
    min_length_ratio: Share = Field(description="The instruction shrinks below this share of the previous one...")
    min_previous_words: int = Field(ge=1, description="... judged when the previous one had this many words.")
    content_word_min_letters: int = Field(
        ge=1, description="Content words (shared with passage or previous item) have this many letters or more,"
    )
    function_words: frozenset[str] = Field(description="... and are not one of these (lowercase).")


class Substance(Settings):
    """Every substance rule's parameters (merged: defaults file, then the skill's overrides)."""

    degenerate_text: DegenerateText
    near_copy_of_source: NearCopyOfSource
    much_shorter_than_source: MuchShorterThanSource
    echoes_prompt: EchoesPrompt
    instruction_copies_passage: InstructionCopiesPassage
    instruction_copies_answer: InstructionCopiesAnswer
    answer_equals_instruction: AnswerEqualsInstruction
    edit_is_no_op: EditIsNoOp
    edit_destroys_item: EditDestroysItem


def _optional(model: type[BaseModel]) -> type[BaseModel]:
    """The model with every field optional (None = keep the default), constraints and `extra=forbid` kept."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            kind = _optional(kind)
        elif info.metadata:
            kind = Annotated[(kind, *info.metadata)]
        fields[name] = (kind | None, Field(None, description=info.description))
    return create_model(f"{model.__name__}Override", __base__=Settings, **fields)


SubstanceOverrides: type[BaseModel] = _optional(Substance)


def defaults_path() -> Path:
    return expectations_dir() / DEFAULTS_FILE


def substance_thresholds(overrides: BaseModel | None = None) -> Substance:
    """The defaults file merged with a skill's overrides; cached until the file changes."""
    path = defaults_path()
    try:
        modified = os.stat(path).st_mtime_ns
    except FileNotFoundError:
        raise ConfigFileError(f"substance thresholds file not found: {path}") from None
    changes = overrides.model_dump_json(exclude_none=True) if overrides is not None else "{}"
    return _merged(str(path), modified, changes)


@lru_cache(maxsize=16)
def _defaults(path: str, modified: int) -> Substance:
    return load_yaml_model(Path(path), Substance, what="substance thresholds")


@lru_cache(maxsize=256)
def _merged(path: str, modified: int, changes: str) -> Substance:
    defaults = _defaults(path, modified)
    if changes == "{}":
        return defaults
    return Substance.model_validate(_deep_merge(defaults.model_dump(), json.loads(changes)))


def _deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _deep_merge(base[key], value) if isinstance(value, dict) else value
    return merged
