"""Benchmark contamination: candidate texts that share word n-grams with benchmark test items.

Benchmarks are the `.jsonl` and `.parquet` files directly in a folder (other files are ignored); a file's
stem is the benchmark's name. Each record (JSONL: one JSON object a line, blank lines skipped) is a test
item, of which these fields are read:

- the prompt, required: the first of `question`, `prompt`, `text`, `input` holding a non-empty string;
- `choices`, optional: a list of strings, or a mapping with a `text` list of strings (ARC's shape);
- `answer`, optional: a string (an answer given as an index into `choices` adds nothing: they are all read).

Every field is normalised like dedup (`ngrams.normalise`: NFKC, casefold, punctuation and whitespace
folded) and gives its n-grams of `ngram` consecutive words (13 by default, as in the GPT-3 and Llama
contamination studies). A prompt shorter than `ngram` words (and at least `min_words` long) is matched
whole: as that run of words anywhere in a candidate. Choices and answers shorter than `ngram` words are
not matched (a one-word answer would match almost anything). A candidate is contaminated by a benchmark
when at least `min_overlaps` of that benchmark's distinct n-grams occur in it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from agentinstruct_dagster.config.curation import DecontaminationSettings
from agentinstruct_dagster.quality.ngrams import Words, ngrams, normalise, words

PROMPT_FIELDS = ("question", "prompt", "text", "input")
BENCHMARK_SUFFIXES = (".jsonl", ".parquet")
RESULT_SCHEMA = {"id": pl.String, "benchmark": pl.String, "matched_ngram": pl.String, "overlaps": pl.UInt32}
GRAM_SCHEMA = {"hash": pl.UInt64, "length": pl.UInt8, "benchmark": pl.String}
CHUNK_ROWS = 200_000


class BenchmarkFileError(ValueError):
    """A benchmark file that cannot be read, naming the file (and line or record)."""


@dataclass(frozen=True)
class BenchmarkIndex:
    """The distinct hashed n-grams of every benchmark: `grams` has `hash`, `length` (words), `benchmark`."""

    settings: DecontaminationSettings
    grams: pl.DataFrame
    items: dict[str, int]


def load_benchmarks(folder: Path, settings: DecontaminationSettings | None = None) -> BenchmarkIndex:
    """Index every benchmark file in `folder`; a missing or empty folder gives an empty index."""
    settings = settings or DecontaminationSettings()
    files = sorted(path for path in folder.glob("*") if path.suffix in BENCHMARK_SUFFIXES and path.is_file())
    grams, items = [], {}
    for path in files:
        records = list(read_items(path))
        items[path.stem] = len(records)
        segments = [segment for record in records for segment in item_segments(record)]
        grams.append(segment_grams(segments, settings).with_columns(benchmark=pl.lit(path.stem)))
    frame = pl.concat(grams).unique() if grams else pl.DataFrame(schema=GRAM_SCHEMA)
    return BenchmarkIndex(settings, frame.cast(GRAM_SCHEMA).sort("benchmark", "length", "hash"), items)


def read_items(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a benchmark file, each checked for a prompt."""
    try:
        records = read_parquet(path) if path.suffix == ".parquet" else read_jsonl(path)
        for where, record in records:
            if prompt_of(record) is None:
                raise BenchmarkFileError(f"{path}: {where}: no prompt (a non-empty {'/'.join(PROMPT_FIELDS)})")
            yield record
    except (OSError, UnicodeDecodeError, pl.exceptions.PolarsError) as error:
        raise BenchmarkFileError(f"{path}: cannot be read as a benchmark file: {error}") from None


def read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise BenchmarkFileError(f"{path}: line {number}: not valid JSON: {error}") from None
            if not isinstance(record, dict):
                raise BenchmarkFileError(f"{path}: line {number}: expected a JSON object")
            yield f"line {number}", record


def read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    for number, record in enumerate(pl.read_parquet(path).iter_rows(named=True), start=1):
        yield f"record {number}", record


def prompt_of(record: dict[str, Any]) -> str | None:
    texts = (record.get(key) for key in PROMPT_FIELDS)
    return next((text for text in texts if isinstance(text, str) and text.strip()), None)


def item_segments(record: dict[str, Any]) -> Iterator[tuple[str, bool]]:
    """(text, match whole if short) of each field read from a record."""
    yield prompt_of(record) or "", True
    choices = record.get("choices")
    if isinstance(choices, dict):
        choices = choices.get("text")
    choices = [choice for choice in choices if isinstance(choice, str)] if isinstance(choices, list) else []
    yield from ((choice, False) for choice in choices)
    if isinstance(record.get("answer"), str):
        yield record["answer"], False


def segment_grams(segments: list[tuple[str, bool]], settings: DecontaminationSettings) -> pl.DataFrame:
    """The hashed n-grams of the segments, with their length in words."""
    segment_words = words(normalise(text for text, _ in segments))
    lengths = segment_words.lengths
    whole = np.array([whole for _, whole in segments], dtype=bool)
    matched_whole = whole & (lengths >= settings.min_words) & (lengths < settings.ngram)
    grams = ngrams(segment_words, settings.ngram, whole_if_shorter=True)
    long_enough = lengths[grams.text] >= settings.ngram
    keep = long_enough | matched_whole[grams.text]
    return pl.DataFrame(
        {"hash": grams.hash[keep], "length": np.minimum(lengths[grams.text][keep], settings.ngram)},
        schema={"hash": pl.UInt64, "length": pl.UInt8},
    )


def contaminated(candidates: pl.DataFrame, index: BenchmarkIndex) -> pl.DataFrame:
    """One row per (candidate, benchmark) sharing at least `min_overlaps` n-grams: `id`, `benchmark`,
    `matched_ngram` (the candidate's first shared n-gram, normalised), `overlaps` (distinct shared n-grams).

    `candidates` needs columns `id` and `text`; they are matched `CHUNK_ROWS` at a time to bound memory.
    """
    missing = {"id", "text"} - set(candidates.columns)
    if missing:
        raise ValueError(f"candidates need columns id and text; missing: {', '.join(sorted(missing))}")
    if candidates.is_empty() or index.grams.is_empty():
        return pl.DataFrame(schema=RESULT_SCHEMA)
    chunks = [
        contaminated_chunk(candidates.slice(start, CHUNK_ROWS), index)
        for start in range(0, candidates.height, CHUNK_ROWS)
    ]
    return pl.concat(chunks).sort("id", "benchmark")


def contaminated_chunk(candidates: pl.DataFrame, index: BenchmarkIndex) -> pl.DataFrame:
    normalised = normalise(candidates["text"].cast(pl.String))
    candidate_words = words(normalised)
    lengths = index.grams["length"].unique().sort()
    hits = pl.concat([shared_grams(candidate_words, index, length) for length in lengths])
    found = (
        hits.sort("position", "length", descending=[False, True])
        .group_by("text", "benchmark")
        .agg(
            overlaps=pl.struct("hash", "length").n_unique().cast(pl.UInt32),
            position=pl.first("position"),
            length=pl.first("length"),
        )
        .filter(pl.col("overlaps") >= index.settings.min_overlaps)
    )
    matched = [
        " ".join(normalised[text].split(" ")[position : position + length])
        for text, position, length in found.select("text", "position", "length").iter_rows()
    ]
    return (
        found.with_columns(id=candidates["id"].cast(pl.String).gather(found["text"]), matched_ngram=pl.Series(matched))
        .select(*RESULT_SCHEMA)
        .cast(RESULT_SCHEMA)
    )


def shared_grams(candidate_words: Words, index: BenchmarkIndex, length: int) -> pl.DataFrame:
    """Where the candidates hold a benchmark n-gram of `length` words: text, position, hash, length, benchmark."""
    grams = ngrams(candidate_words, length, whole_if_shorter=False)
    found = pl.DataFrame({"text": grams.text, "position": grams.position, "hash": grams.hash})
    return found.join(index.grams.filter(pl.col("length") == length), on="hash")
