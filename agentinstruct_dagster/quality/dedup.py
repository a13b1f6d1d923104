"""Exact and near-duplicate texts among new rows and against earlier ones.

Rows are ordered earlier rows first, then candidates, each by `id`; a row is kept unless it duplicates a
kept row before it in that order, so within the candidates the first by `id` is kept, and every earlier
row counts as kept (earlier rows are never compared with each other). An earlier row with the id of a
candidate is that candidate's own stored row and is ignored.

- **exact**: equal normal forms (see `ngrams.normalise`: NFKC, casefold, punctuation and whitespace
  folded); the duplicate points at the first row with that normal form, similarity 1.0.
- **near**: Jaccard similarity of the texts' sets of word n-grams (`ngram` words; a text shorter than
  that is one n-gram of all its words) at least `threshold`. Candidate pairs come from MinHash signatures
  (rensa's R-MinHash, fixed seed) split into LSH bands; each pair is then scored by its exact Jaccard
  similarity, so the reported similarity is exact and no pair below the threshold is reported. A row
  duplicating several kept rows points at the most similar one (ties: the first). A row whose normal
  form equals that of a near duplicate is a near duplicate of the same kept row, with the same similarity.
  Texts empty after normalisation only take part in exact matching.

Everything is a pure function of the rows and the settings: no machine, run or input-order dependence.
"""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import rensa

from agentinstruct_dagster.config.curation import DedupSettings
from agentinstruct_dagster.quality.ngrams import NGrams, ngrams, normalise, words

RESULT_SCHEMA = {"id": pl.String, "duplicate_of": pl.String, "kind": pl.String, "similarity": pl.Float64}
NEAR_SCHEMA = {"exact_of": pl.UInt32, "near_of": pl.UInt32, "similarity": pl.Float64}
MINHASH_SEED = 20240710
LSH_RECALL_AT_THRESHOLD = 0.95
BUCKET_PARTNERS = 64
SIGNATURE_CHUNK_ROWS = 100_000
BAND_POLYNOMIAL = np.uint64(0x100000001B3)


def find_duplicates(
    candidates: pl.DataFrame, earlier: pl.DataFrame | None = None, settings: DedupSettings | None = None
) -> pl.DataFrame:
    """One row per candidate that duplicates a kept row: `id`, `duplicate_of`, `kind` (exact|near), `similarity`.

    Both frames need columns `id` and `text`; candidate ids must be unique.
    """
    settings = settings or DedupSettings()
    rows = ordered_rows(candidates, earlier)
    representatives = rows.filter((pl.col("row") == pl.col("exact_of")) & (pl.col("normalised") != ""))
    near = near_duplicates(representatives, settings)
    return resolve(rows, near)


def find_exact_duplicates(candidates: pl.DataFrame, earlier: pl.DataFrame | None = None) -> pl.DataFrame:
    """`find_duplicates` without the near-duplicate search."""
    return resolve(ordered_rows(candidates, earlier), pl.DataFrame(schema=NEAR_SCHEMA))


def ordered_rows(candidates: pl.DataFrame, earlier: pl.DataFrame | None) -> pl.DataFrame:
    """Earlier rows then candidates, each by id, numbered `row`, with `normalised` text and `exact_of`
    (the first row of the same normal form)."""
    candidates = text_frame(candidates, "candidates")
    duplicated_ids = candidates.filter(pl.col("id").is_duplicated())["id"].unique().sort()
    if duplicated_ids.len():
        raise ValueError(f"candidate ids must be unique; repeated: {', '.join(duplicated_ids.head(5))}")
    earlier = text_frame(earlier, "earlier") if earlier is not None else candidates.clear()
    earlier = earlier.filter(~pl.col("id").is_in(candidates["id"].implode()))
    rows = (
        pl.concat([earlier.with_columns(earlier=True), candidates.with_columns(earlier=False)])
        .sort(["earlier", "id", "text"], descending=[True, False, False])
        .with_row_index("row")
    )
    rows = rows.with_columns(normalised=normalise(rows["text"]))
    return rows.with_columns(exact_of=pl.col("row").min().over("normalised"))


def text_frame(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    missing = {"id", "text"} - set(frame.columns)
    if missing:
        raise ValueError(f"{name} needs columns id and text; missing: {', '.join(sorted(missing))}")
    return frame.select(pl.col("id").cast(pl.String), pl.col("text").cast(pl.String))


def near_duplicates(representatives: pl.DataFrame, settings: DedupSettings) -> pl.DataFrame:
    """For each candidate representative that is a near duplicate: its `row` (as `exact_of`), the kept
    row it duplicates (`near_of`) and their Jaccard similarity."""
    first_candidate = int(representatives["earlier"].sum())
    if representatives.height - first_candidate == 0 or representatives.height < 2:
        return pl.DataFrame(schema=NEAR_SCHEMA)
    shingles = ngrams(words(representatives["normalised"]), settings.ngram, whole_if_shorter=True)
    banding = lsh_bands(settings.threshold, settings.num_perm)
    colliding = colliding_texts(shingles, representatives.height, banding, settings.threshold)
    signatures = minhash_signatures(*shingle_sets(shingles, colliding, representatives.height), banding)
    pairs = candidate_pairs(signatures, banding, colliding, first_candidate)
    scored = jaccard(pairs, shingles, representatives.height).filter(pl.col("similarity") >= settings.threshold)
    kept_partner = keep_first(scored)
    global_row = representatives["row"]
    return pl.DataFrame(
        {
            "exact_of": global_row.gather(kept_partner["row"]),
            "near_of": global_row.gather(kept_partner["partner"]),
            "similarity": kept_partner["similarity"],
        },
        schema=NEAR_SCHEMA,
    )


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band): the most selective banding under which a pair at the threshold shares a
    band with probability at least `LSH_RECALL_AT_THRESHOLD` (more similar pairs are likelier still)."""
    for rows in range(num_perm, 1, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= LSH_RECALL_AT_THRESHOLD:
            return bands, rows
    return num_perm, 1


def shingle_sets(shingles: NGrams, texts: np.ndarray, text_count: int) -> tuple[np.ndarray, np.ndarray]:
    """The n-gram hashes of the given texts (ascending) back to back, and where each text's start."""
    chosen = np.zeros(text_count, dtype=bool)
    chosen[texts] = True
    counts = np.bincount(shingles.text, minlength=text_count)[texts]
    return shingles.hash[chosen[shingles.text]], np.concatenate(([0], np.cumsum(counts))).astype(np.uint64)


def minhash_matrix(hashes: np.ndarray, offsets: np.ndarray, length: int) -> rensa.RMinHashDigestMatrix:
    return rensa.RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, length, MINHASH_SEED)


def colliding_texts(shingles: NGrams, text_count: int, banding: tuple[int, int], threshold: float) -> np.ndarray:
    """The texts sharing an LSH band with another text: only these can be in a candidate pair. rensa does
    this in native code, which spares converting every signature to numpy."""
    bands, rows_per_band = banding
    matrix = minhash_matrix(*shingle_sets(shingles, np.arange(text_count), text_count), bands * rows_per_band)
    index = rensa.RMinHashLSH(threshold, bands * rows_per_band, bands)
    index.insert_matrix(matrix)
    return np.flatnonzero(np.array(index.query_duplicate_flags_matrix(matrix), dtype=bool))


def minhash_signatures(hashes: np.ndarray, offsets: np.ndarray, banding: tuple[int, int]) -> np.ndarray:
    """R-MinHash signatures of the n-gram sets, a (texts, bands x rows) uint32 matrix."""
    length = banding[0] * banding[1]
    text_count = offsets.size - 1
    signatures = np.empty((text_count, length), dtype=np.uint32)
    for start in range(0, text_count, SIGNATURE_CHUNK_ROWS):
        stop = min(start + SIGNATURE_CHUNK_ROWS, text_count)
        low, high = offsets[start], offsets[stop]
        matrix = minhash_matrix(hashes[low:high], offsets[start : stop + 1] - low, length)
        flat = itertools.chain.from_iterable(matrix.to_rows())
        signatures[start:stop] = np.fromiter(flat, dtype=np.uint32, count=(stop - start) * length).reshape(-1, length)
    return signatures


def candidate_pairs(
    signatures: np.ndarray, banding: tuple[int, int], texts: np.ndarray, first_candidate: int
) -> pl.DataFrame:
    """Pairs of `texts` (`row`, `partner` < `row`) whose signatures share a band, for candidate rows. In a
    bucket (band and its values) each row is paired with the first `BUCKET_PARTNERS` rows only, so a huge
    cluster stays linear."""
    bands, rows_per_band = banding
    banded = signatures.reshape(texts.size, bands, rows_per_band)
    keys = np.zeros((texts.size, bands), dtype=np.uint64)
    for column in range(rows_per_band):
        keys *= BAND_POLYNOMIAL
        keys += banded[:, :, column]
    entries = pl.DataFrame(
        {
            "band": np.tile(np.arange(bands, dtype=np.uint16), texts.size),
            "key": keys.ravel(),
            "row": np.repeat(texts.astype(np.uint32), bands),
        }
    )
    bucket = ["band", "key"]
    shared = entries.filter(pl.len().over(bucket) > 1)
    heads = shared.filter(pl.col("row").rank("ordinal").over(bucket) <= BUCKET_PARTNERS).rename({"row": "partner"})
    return (
        shared.filter(pl.col("row") >= first_candidate)
        .join(heads, on=bucket)
        .filter(pl.col("partner") < pl.col("row"))
        .select("row", "partner")
        .unique()
    )


def jaccard(pairs: pl.DataFrame, shingles: NGrams, text_count: int) -> pl.DataFrame:
    """The pairs with the exact Jaccard similarity of their n-gram sets."""
    involved = np.zeros(text_count, dtype=bool)
    involved[pairs["row"].to_numpy()] = True
    involved[pairs["partner"].to_numpy()] = True
    mask = involved[shingles.text]
    sets = pl.DataFrame({"row": shingles.text[mask].astype(np.uint32), "hash": shingles.hash[mask]}).unique()
    sizes = sets.group_by("row").len("size")
    shared = (
        pairs.join(sets, on="row")
        .join(sets.rename({"row": "partner"}), on=["partner", "hash"])
        .group_by("row", "partner")
        .len("shared")
    )
    return (
        pairs.join(shared, on=["row", "partner"], how="left")
        .with_columns(pl.col("shared").fill_null(0))
        .join(sizes, on="row")
        .join(sizes.rename({"row": "partner", "size": "partner_size"}), on="partner")
        .select(
            "row",
            "partner",
            similarity=pl.col("shared") / (pl.col("size") + pl.col("partner_size") - pl.col("shared")),
        )
    )


def keep_first(scored: pl.DataFrame) -> pl.DataFrame:
    """Walk rows in order; a row duplicating a kept row is dropped, pointing at its most similar kept row."""
    dropped: dict[int, tuple[int, float]] = {}
    ordered = scored.sort(["row", "similarity", "partner"], descending=[False, True, False])
    for row, partner, similarity in ordered.select("row", "partner", "similarity").iter_rows():
        if row not in dropped and partner not in dropped:
            dropped[row] = (partner, similarity)
    return pl.DataFrame(
        {
            "row": list(dropped),
            "partner": [partner for partner, _ in dropped.values()],
            "similarity": [similarity for _, similarity in dropped.values()],
        },
        schema={"row": pl.UInt32, "partner": pl.UInt32, "similarity": pl.Float64},
    )


def resolve(rows: pl.DataFrame, near: pl.DataFrame) -> pl.DataFrame:
    """The candidates that duplicate a kept row, by id."""
    ids = rows.select(target=pl.col("row"), duplicate_of=pl.col("id"))
    return (
        rows.filter(~pl.col("earlier"))
        .join(near, on="exact_of", how="left")
        .filter((pl.col("row") != pl.col("exact_of")) | pl.col("near_of").is_not_null())
        .with_columns(
            kind=pl.when(pl.col("near_of").is_null()).then(pl.lit("exact")).otherwise(pl.lit("near")),
            target=pl.coalesce("near_of", "exact_of"),
            similarity=pl.col("similarity").fill_null(1.0),
        )
        .join(ids, on="target")
        .select("id", "duplicate_of", "kind", "similarity")
        .sort("id")
        .cast(RESULT_SCHEMA)
    )
