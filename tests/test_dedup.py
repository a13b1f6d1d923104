"""Dedup (exact and MinHash/LSH near duplicates) and benchmark decontamination on real frames and files."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from agentinstruct_dagster.config.curation import load_curation
from agentinstruct_dagster.project import sample_documents_dir
from agentinstruct_dagster.quality import decontamination
from agentinstruct_dagster.quality.decontamination import (
    BenchmarkFileError,
    DecontaminationSettings,
    contaminated,
    load_benchmarks,
)
from agentinstruct_dagster.quality.dedup import DedupSettings, find_duplicates, minhash_signatures, shingle_sets
from agentinstruct_dagster.quality.ngrams import ngrams, normalise, words

KEEPER = (
    "Explain why the lighthouse keeper wound the clockwork every few hours, polished the great lens each "
    "morning and logged the weather at dawn, and say what the harbour master later did with that log."
)
COMPOST = "Describe how a compost pile of greens and browns turns kitchen scraps into dark crumbly humus."


def frame(rows: dict[str, str]) -> pl.DataFrame:
    return pl.DataFrame({"id": list(rows), "text": list(rows.values())})


def shingle_jaccard(first: str, second: str, n: int = 3) -> float:
    """An independent reference: Jaccard similarity of word 3-gram sets after simple normalisation."""

    def shingles(text: str) -> set[tuple[str, ...]]:
        tokens = re.sub(r"[\W_]+", " ", text.casefold()).split()
        return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}

    a, b = shingles(first), shingles(second)
    return len(a & b) / len(a | b)


def as_rows(result: pl.DataFrame) -> dict[str, tuple[str, str, float]]:
    return {id_: (of, kind, round(sim, 6)) for id_, of, kind, sim in result.iter_rows()}


def test_exact_and_near_duplicates_within_a_batch() -> None:
    near = KEEPER.replace("at dawn", "at dusk")
    candidates = frame(
        {
            "a": KEEPER,
            "b": "  " + KEEPER.upper().replace(",", " ;") + "!!",  # same normal form
            "c": near,
            "d": COMPOST,
            "e": "Ｅｘｐｌａｉｎ" + KEEPER.removeprefix("Explain"),  # full-width letters: equal after NFKC
        }
    )
    result = find_duplicates(candidates)
    assert result.columns == ["id", "duplicate_of", "kind", "similarity"]
    assert as_rows(result) == {
        "b": ("a", "exact", 1.0),
        "c": ("a", "near", round(shingle_jaccard(KEEPER, near), 6)),
        "e": ("a", "exact", 1.0),
    }
    assert 0.8 <= shingle_jaccard(KEEPER, near) < 1


def test_pairs_below_the_threshold_are_left_alone() -> None:
    reworded = KEEPER.replace("polished the great lens each morning", "trimmed the wicks of every lamp at night")
    similarity = shingle_jaccard(KEEPER, reworded)
    assert 0.5 < similarity < 0.8
    candidates = frame({"a": KEEPER, "b": reworded})
    assert find_duplicates(candidates).is_empty()
    lenient = find_duplicates(candidates, settings=DedupSettings(threshold=0.5))
    assert as_rows(lenient) == {"b": ("a", "near", round(similarity, 6))}


def test_reported_similarity_is_the_exact_jaccard_and_never_below_the_threshold() -> None:
    rng = random.Random(5)
    rows: dict[str, str] = {}
    for pair in range(300):  # each base with a variant of 1-6 substituted words: Jaccard from about 0.5 to 0.9
        words = [f"w{rng.randrange(5000)}" for _ in range(40)]
        rows[f"base-{pair:03d}"] = " ".join(words)
        for position in rng.sample(range(40), rng.randint(1, 6)):
            words[position] = f"x{rng.randrange(5000)}"
        rows[f"variant-{pair:03d}"] = " ".join(words)
    reference = {
        f"variant-{pair:03d}": shingle_jaccard(rows[f"base-{pair:03d}"], rows[f"variant-{pair:03d}"])
        for pair in range(300)
    }
    assert min(reference.values()) < 0.6 and max(reference.values()) > 0.9
    result = find_duplicates(frame(rows))
    for id_, duplicate_of, kind, similarity in result.iter_rows():
        assert (duplicate_of, kind) == (id_.replace("variant", "base"), "near")
        assert similarity == pytest.approx(reference[id_]) and similarity >= 0.8
    assert {id_ for id_, similarity in reference.items() if similarity >= 0.9} <= set(result["id"])


def test_duplicates_of_earlier_rows_point_at_them() -> None:
    earlier = frame({"z-earlier": KEEPER, "y-earlier": COMPOST, "own": "a stored copy of a candidate"})
    candidates = frame(
        {
            "a-exact": KEEPER.lower(),  # a smaller id than the earlier row's: earlier rows still come first
            "b-near": KEEPER.replace("at dawn", "at dusk"),
            "c-new": "How does a Fresnel lens bend the scattered light of a lamp into one horizontal beam?",
            "own": "a stored copy of a candidate",  # the candidate's own earlier row is not a duplicate
        }
    )
    result = as_rows(find_duplicates(candidates, earlier))
    assert set(result) == {"a-exact", "b-near"}
    assert result["a-exact"] == ("z-earlier", "exact", 1.0)
    assert result["b-near"][:2] == ("z-earlier", "near")


def test_the_first_by_id_is_kept_and_chains_point_at_kept_rows() -> None:
    dusk = KEEPER.replace("at dawn", "at dusk")
    candidates = frame({"k3": dusk.upper(), "k1": KEEPER, "k2": dusk, "k0": COMPOST})
    result = as_rows(find_duplicates(candidates))
    similarity = round(shingle_jaccard(KEEPER, dusk), 6)
    # k2 is a near duplicate of k1; k3 has k2's normal form, so it also duplicates the kept k1
    assert result == {"k2": ("k1", "near", similarity), "k3": ("k1", "near", similarity)}


def synthetic(count: int, seed: int) -> pl.DataFrame:
    """Texts with exact and near duplicates of earlier ones, ids in random order."""
    rng = random.Random(seed)
    vocabulary = [f"word{index}" for index in range(400)]
    texts: list[str] = []
    for _ in range(count):
        if texts and rng.random() < 0.3:
            words = rng.choice(texts).split()
            if rng.random() < 0.5:
                words[rng.randrange(len(words))] = rng.choice(vocabulary)
            texts.append(" ".join(words) if rng.random() < 0.5 else " ".join(words).upper())
        else:
            texts.append(" ".join(rng.choices(vocabulary, k=rng.randint(25, 40))))
    return pl.DataFrame({"id": [f"{rng.getrandbits(64):016x}" for _ in texts], "text": texts})


def test_results_are_deterministic_and_independent_of_row_order() -> None:
    rows = synthetic(600, seed=3)
    first = find_duplicates(rows)
    assert first.height > 100 and set(first["kind"]) == {"exact", "near"}
    assert find_duplicates(rows).equals(first)
    assert find_duplicates(rows.reverse()).equals(first)
    assert find_duplicates(rows.sample(fraction=1.0, shuffle=True, seed=1)).equals(first)
    kept = set(rows["id"]) - set(first["id"])
    assert set(first["duplicate_of"]) <= kept
    earlier, batch = rows.slice(0, 300), rows.slice(300)
    against_earlier = find_duplicates(batch, earlier)
    assert find_duplicates(batch.reverse(), earlier.reverse()).equals(against_earlier)
    assert set(against_earlier["duplicate_of"]) <= set(earlier["id"]) | (set(batch["id"]) - set(against_earlier["id"]))


def test_hashes_and_signatures_are_fixed_values() -> None:
    """Pinned values: a change of machine, SIMD path or library version must not move them silently."""
    shingles = ngrams(words(normalise(["The keeper logged the weather at dawn."])), 3, whole_if_shorter=True)
    assert shingles.hash.tolist() == [
        14350645183051024853,
        5164248203618316299,
        9377380144095411455,
        14099909529945455328,
        8852249282193266903,
    ]
    signature = minhash_signatures(*shingle_sets(shingles, np.arange(1), 1), (2, 4))
    assert signature.tolist() == [
        [404676303, 326768387, 557297148, 2996774191, 2939843770, 3950465955, 2943882699, 1509112155]
    ]


def test_bad_candidate_frames_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="missing: text"):
        find_duplicates(pl.DataFrame({"id": ["a"]}))
    with pytest.raises(ValueError, match="repeated: a"):
        find_duplicates(frame({"a": "x"}).vstack(frame({"a": "y"})))
    assert find_duplicates(frame({})).is_empty()


def test_empty_texts_are_exact_duplicates_of_each_other_and_contaminate_nothing() -> None:
    empty = pl.DataFrame({"id": ["a", "b", "c", "d"], "text": [None, "", " ?! ", COMPOST]})
    assert as_rows(find_duplicates(empty)) == {"b": ("a", "exact", 1.0), "c": ("a", "exact", 1.0)}
    assert contaminated(empty.head(3), load_benchmarks(load_curation().decontamination.benchmarks_path)).is_empty()


def test_contamination_against_the_sample_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    index = load_benchmarks(load_curation().decontamination.benchmarks_path)
    assert index.items == {"sample_benchmark": 20}
    documents = {"tides.txt": (sample_documents_dir() / "tides.txt").read_text()}
    instructions = {
        "quotes-tides": "Read this and answer. " + documents["tides.txt"][:2500],
        "short-item": "Quiz time: which GAS do plants take in from the air, for photosynthesis? Explain.",
        "clean": "Write a limerick about a kettle that refuses to boil on Mondays.",
        "paraphrase": "Which gas, taken in from the air by plants, drives photosynthesis?",
    }
    result = contaminated(frame(instructions), index)
    assert result.columns == ["id", "benchmark", "matched_ngram", "overlaps"]
    hits = {id_: (benchmark, ngram, overlaps) for id_, benchmark, ngram, overlaps in result.iter_rows()}
    assert set(hits) == {"quotes-tides", "short-item"}
    benchmark, ngram, overlaps = hits["quotes-tides"]
    assert benchmark == "sample_benchmark" and len(ngram.split()) == 13 and overlaps > 1
    assert ngram in re.sub(r"[\W_]+", " ", documents["tides.txt"].casefold())
    assert hits["short-item"] == ("sample_benchmark", "which gas do plants take in from the air for photosynthesis", 1)
    monkeypatch.setattr(decontamination, "CHUNK_ROWS", 1)  # matched one candidate at a time: the same rows
    assert contaminated(frame(instructions), index).equals(result)


def test_contamination_settings_and_formats(tmp_path: Path) -> None:
    question = "Name the physicist who in 1822 designed a lens of concentric glass prisms for lighthouses"
    pl.DataFrame({"prompt": [question], "answer": ["Augustin Fresnel"]}).write_parquet(tmp_path / "lenses.parquet")
    keyed_choice = "the keeper wound the clockwork by hand every few hours so that the lens kept turning"
    worked_answer = "first count the flashes then time the period and finally look the character up on the chart"
    records = [
        {"input": "Pick one.", "choices": {"text": ["no", keyed_choice], "label": ["A", "B"]}, "answer": 0},
        {"text": "How does a navigator identify a light at night?", "answer": worked_answer},
    ]
    (tmp_path / "arc_like.jsonl").write_text("\n".join(json.dumps(record) for record in records) + "\n\n")
    (tmp_path / "notes.txt").write_text("not a benchmark")
    texts = {
        "prompt": f"Background: {question.lower()}? Answer briefly.",
        "choice": f"Story: {keyed_choice.upper()}.",
        "answer": f"Solution: {worked_answer}.",
        "too-short-prompt": "Pick one. Then pick one more and explain.",
        "short-answer": "Augustin Fresnel was born in 1788.",
    }
    index = load_benchmarks(tmp_path)
    assert index.items == {"arc_like": 2, "lenses": 1}
    found = contaminated(frame(texts), index)
    assert found.select("id", "benchmark", "overlaps").rows() == [
        ("answer", "arc_like", 5),  # 17 words: five 13-grams
        ("choice", "arc_like", 4),
        ("prompt", "lenses", 3),
    ]
    strict = load_benchmarks(tmp_path, DecontaminationSettings(min_overlaps=4))
    assert contaminated(frame(texts), strict)["id"].to_list() == ["answer", "choice"]
    assert load_benchmarks(tmp_path / "missing").grams.is_empty()
    assert contaminated(frame(texts), load_benchmarks(tmp_path / "missing")).is_empty()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("broken.jsonl", '{"question": "fine question here"}\n{"question": oops}\n', "line 2: not valid JSON"),
        ("no_prompt.jsonl", json.dumps({"choices": ["a", "b"]}) + "\n", "line 1: no prompt"),
        ("list.jsonl", "[1, 2]\n", "line 1: expected a JSON object"),
        ("latin1.jsonl", b'{"question": "caf\xe9"}\n', "cannot be read"),
        ("corrupt.parquet", b"PAR1 not really parquet", "cannot be read"),
    ],
)
def test_a_bad_benchmark_file_is_a_clear_error(tmp_path: Path, name: str, content: str | bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(BenchmarkFileError, match=re.escape(str(path)) + r".*" + message):
        load_benchmarks(tmp_path)
