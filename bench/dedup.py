"""Dedup and decontamination at scale: speed, memory and accuracy on synthetic instructions.

Generates `--items` instructions deterministically (seeded): an opener ("Explain why", ...) and 35-60 words
drawn (Zipf-like) from the vocabulary of the bundled sample documents. 10 % are exact duplicates of an
earlier item in another surface form (upper case, extra punctuation or spaces), 10 % near duplicates (one
word of the source substituted, deleted or inserted: Jaccard similarity of word 3-grams >= 0.84), and
0.1 % of the other items quote a question of a generated benchmark. Rows are shuffled; ids follow
generation order, so a duplicate's source is the first of its group by id. Then times, in one process:

- exact dedup of all items (`find_exact_duplicates`);
- exact + near dedup of all items (`find_duplicates`: MinHash/LSH, default settings);
- a new batch (the last 10 % by id) against all the items before it as `earlier`;
- decontamination of all items against the benchmark file (`--benchmark-items` questions, 4 choices each).

Reports wall time, items/s (rows read: for the new batch, batch plus earlier), the process's peak RSS after
each phase (it includes the corpus itself), and
precision/recall: a reported duplicate is right when its `duplicate_of` is the item it was made from, a
contamination hit when the item quotes a benchmark question. Usage:

    .venv/bin/python bench/dedup.py [--items 1000000] [--benchmark-items 5000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

from agentinstruct_dagster.project import sample_documents_dir
from agentinstruct_dagster.quality.decontamination import contaminated, load_benchmarks
from agentinstruct_dagster.quality.dedup import find_duplicates, find_exact_duplicates
from agentinstruct_dagster.quality.ngrams import normalise
from agentinstruct_dagster.stages.text_encoding import decode_text

SEED = 8
OPENERS = (
    "Explain why",
    "Summarise the passage in which",
    "Write a question about how",
    "Rewrite for a child:",
    "List the steps by which",
    "Argue against the claim that",
    "Give three examples showing that",
    "In one paragraph, describe how",
    "Translate into plain English:",
    "What would happen if",
    "Compare and contrast the view that",
    "Write a short poem about how",
)
SHARES = {"original": 0.8, "exact": 0.1, "near": 0.1}
QUOTE_SHARE = 0.001
NEW_BATCH_SHARE = 0.1
ITEM_WORDS = (35, 60)
QUESTION_WORDS = (15, 30)


@dataclass
class Corpus:
    frame: pl.DataFrame  # id, text; rows shuffled
    source: dict[str, str]  # duplicate id -> id of the item it was made from
    kind: dict[str, str]  # duplicate id -> exact | near
    quotes: set[str]  # ids of items quoting a benchmark question
    questions: list[str]


class Words:
    """Zipf-like draws from the sample documents' vocabulary."""

    def __init__(self, rng: np.random.Generator) -> None:
        paths = sorted(path for path in sample_documents_dir().iterdir() if path.suffix in (".txt", ".md"))
        texts = [decode_text(path.read_bytes(), path.name).text for path in paths]
        words = normalise(texts).str.split(" ").explode().unique().sort()
        self.vocabulary = words.filter(words != "").to_numpy()
        weights = 1 / np.arange(1, self.vocabulary.size + 1) ** 0.8
        self.rng, self.weights = rng, weights / weights.sum()

    def rows(self, count: int, bounds: tuple[int, int]) -> list[np.ndarray]:
        lengths = self.rng.integers(*bounds, size=count, endpoint=True)
        flat = self.rng.choice(self.vocabulary.size, size=int(lengths.sum()), p=self.weights)
        return np.split(flat, np.cumsum(lengths)[:-1])

    def text(self, row: np.ndarray) -> str:
        return " ".join(self.vocabulary[row])

    def edited(self, row: np.ndarray) -> np.ndarray:
        """One word substituted (by another word), deleted or inserted."""
        position = int(self.rng.integers(1, row.size - 1))
        other = (row[position] + self.rng.integers(1, self.vocabulary.size)) % self.vocabulary.size
        operation = self.rng.integers(3)
        if operation == 0:
            return np.concatenate((row[:position], [other], row[position + 1 :]))
        if operation == 1:
            return np.delete(row, position)
        return np.insert(row, position, other)


def other_surface(rng: np.random.Generator, text: str) -> str:
    """The same normal form, written differently."""
    variants = (str.upper, lambda t: f"  {t}!!", lambda t: t.replace(" ", " -- ", 2), lambda t: t.title() + ".")
    return variants[rng.integers(len(variants))](text)


def make_corpus(items: int, benchmark_items: int) -> Corpus:
    rng = np.random.default_rng(SEED)
    words = Words(rng)
    kinds = rng.choice(list(SHARES), size=items, p=list(SHARES.values()))
    kinds[0] = "original"
    originals = np.flatnonzero(kinds == "original")
    source = originals[(rng.random(items) * np.searchsorted(originals, np.arange(items))).astype(np.int64)]
    rows = words.rows(items, ITEM_WORDS)
    openers = rng.integers(len(OPENERS), size=items)
    made = set()
    for index in np.flatnonzero(kinds == "near"):
        rows[index], openers[index] = words.edited(rows[source[index]]), openers[source[index]]
        while (key := rows[index].tobytes()) in made:  # two identical edits would be exact duplicates
            rows[index] = words.edited(rows[source[index]])
        made.add(key)
    texts = [f"{OPENERS[opener]} {words.text(row)}" for opener, row in zip(openers, rows, strict=True)]
    for index in np.flatnonzero(kinds == "exact"):
        texts[index] = other_surface(rng, texts[source[index]])
    questions = [words.text(row) for row in words.rows(benchmark_items, QUESTION_WORDS)]
    duplicates = np.flatnonzero(kinds != "original")
    unused = np.setdiff1d(originals, source[duplicates])
    quoting = rng.choice(unused, size=max(1, int(items * QUOTE_SHARE)), replace=False)
    for index in quoting:
        texts[index] += f" As the test asked: {questions[rng.integers(len(questions))]}?"
    ids = [f"item-{index:08d}" for index in range(items)]
    return Corpus(
        pl.DataFrame({"id": ids, "text": texts}).sample(fraction=1.0, shuffle=True, seed=SEED),
        {ids[index]: ids[source[index]] for index in duplicates},
        {ids[index]: str(kinds[index]) for index in duplicates},
        {ids[index] for index in quoting},
        questions,
    )


def write_benchmark(folder: Path, corpus: Corpus) -> None:
    rng = np.random.default_rng(SEED + 1)
    with (folder / "synthetic_mcq.jsonl").open("w", encoding="utf-8") as out:
        for question in corpus.questions:
            choices = [f"Option {letter} {rng.integers(1000)}" for letter in "ABCD"]
            out.write(json.dumps({"question": question, "choices": choices, "answer": int(rng.integers(4))}) + "\n")


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def timed(name: str, items: int, run: Callable[[], pl.DataFrame]) -> tuple[dict, pl.DataFrame]:
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    row = {"phase": name, "items": items, "seconds": round(seconds, 1), "items_per_s": round(items / seconds)}
    return {**row, "peak_rss_mb": peak_rss_mb(), "found": result.height}, result


def duplicate_accuracy(found: pl.DataFrame, truth: dict[str, str]) -> dict:
    right = sum(truth.get(id_) == of for id_, of in found.select("id", "duplicate_of").iter_rows())
    return {"known": len(truth), "right": right, **rates(right, found.height, len(truth))}


def contamination_accuracy(found: pl.DataFrame, quotes: set[str]) -> dict:
    right = len(set(found["id"]) & quotes)
    return {"known": len(quotes), "right": right, **rates(right, found.height, len(quotes))}


def rates(right: int, found: int, known: int) -> dict:
    return {"precision": round(right / max(found, 1), 4), "recall": round(right / max(known, 1), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--benchmark-items", type=int, default=5000)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    started = time.perf_counter()
    corpus = make_corpus(args.items, args.benchmark_items)
    print(f"generated {args.items} items in {time.perf_counter() - started:.1f} s, peak RSS {peak_rss_mb()} MB")
    frame, ordered = corpus.frame, corpus.frame.sort("id")
    cut = int(args.items * (1 - NEW_BATCH_SHARE))
    batch, earlier = ordered.slice(cut), ordered.slice(0, cut)
    exact_truth = {id_: of for id_, of in corpus.source.items() if corpus.kind[id_] == "exact"}
    batch_truth = {id_: of for id_, of in corpus.source.items() if id_ >= batch["id"][0]}
    results = []
    with tempfile.TemporaryDirectory() as folder:
        write_benchmark(Path(folder), corpus)
        phases = [
            (
                "exact",
                frame.height,
                lambda: find_exact_duplicates(frame),
                partial(duplicate_accuracy, truth=exact_truth),
            ),
            (
                "exact + near",
                frame.height,
                lambda: find_duplicates(frame),
                partial(duplicate_accuracy, truth=corpus.source),
            ),
            (
                f"new batch of {batch.height} vs {earlier.height} earlier",
                frame.height,
                lambda: find_duplicates(batch, earlier),
                partial(duplicate_accuracy, truth=batch_truth),
            ),
            (
                f"decontamination vs {args.benchmark_items} questions",
                frame.height,
                lambda: contaminated(frame, load_benchmarks(Path(folder))),
                partial(contamination_accuracy, quotes=corpus.quotes),
            ),
        ]
        for name, items, run, score in phases:
            row, found = timed(name, items, run)
            results.append({**row, **score(found)})
            print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
