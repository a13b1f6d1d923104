"""Curation settings, `expectations/curation.yaml`: how final rounds are deduplicated and checked against
benchmark files before the judge sees them. Thresholds are data; the defaults below serve library callers."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agentinstruct_dagster.config.errors import load_yaml_model
from agentinstruct_dagster.project import expectations_dir

Column = Literal["text", "instruction", "answer"]


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DedupSettings(Settings):
    """How alike two texts must be to count as duplicates."""

    threshold: float = Field(
        0.8, gt=0, le=1, description="Jaccard similarity of word n-gram sets from which texts are near duplicates."
    )
    ngram: int = Field(3, ge=1, le=32, description="Words per n-gram (shingle).")
    num_perm: int = Field(
        128, ge=16, le=1024, description="MinHash values per text; LSH uses bands x rows of them (more: sharper)."
    )


class DecontaminationSettings(Settings):
    """How much of a benchmark item a text must share to count as contaminated."""

    ngram: int = Field(13, ge=1, le=64, description="Words per n-gram.")
    min_overlaps: int = Field(1, ge=1, description="Distinct shared n-grams with one benchmark that flag a text.")
    min_words: int = Field(4, ge=1, description="Shorter prompts (in words) are not matched at all.")


class DedupSection(DedupSettings):
    fields: list[Column] = Field(min_length=1, description="Columns joined into the text compared.")


class DecontaminationSection(DecontaminationSettings):
    fields: list[Column] = Field(min_length=1, description="Columns joined into the text checked.")
    benchmarks: str = Field(description="Folder of benchmark files (.jsonl/.parquet), relative to expectations/.")

    @property
    def benchmarks_path(self) -> Path:
        return expectations_dir() / self.benchmarks

    def matching(self) -> DecontaminationSettings:
        return DecontaminationSettings(**self.model_dump(exclude={"fields", "benchmarks"}))


class Curation(Settings):
    dedup: DedupSection
    decontamination: DecontaminationSection


def curation_path() -> Path:
    return expectations_dir() / "curation.yaml"


def load_curation() -> Curation:
    return load_yaml_model(curation_path(), Curation, what="curation settings")
