"""Text normalisation and hashed word n-grams, shared by dedup and decontamination.

Normal form: Unicode NFKC, casefolded, every run of characters that are not letters, digits or combining
marks (punctuation, symbols, whitespace) folded into one space, trimmed. Words are the space-separated
parts of the normal form.

Hashes do not depend on the machine, the run or any library's hash function: a word's hash is the first
8 bytes of its BLAKE2b digest; an n-gram's hash is a polynomial of its words' hashes (mod 2**64) passed
through the SplitMix64 finaliser, so the same words in the same order always give the same 64-bit value.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import polars as pl

SEPARATORS = r"[^\p{L}\p{N}\p{M}]+"
POLYNOMIAL = np.uint64(0x100000001B3)


def normalise(texts: Iterable[str | None]) -> pl.Series:
    """The normal form of each text (None counts as empty)."""
    folded = [unicodedata.normalize("NFKC", text or "").casefold() for text in texts]
    return pl.Series("normalised", folded, dtype=pl.String).str.replace_all(SEPARATORS, " ").str.strip_chars()


@dataclass(frozen=True)
class Words:
    """The words of many normalised texts back to back: text i is `hashes[offsets[i]:offsets[i + 1]]`."""

    hashes: np.ndarray
    offsets: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True)
class NGrams:
    """Hashed n-grams of many texts, sorted by text then position: `text`, `position` (first word; both
    int32), `hash` (uint64)."""

    text: np.ndarray
    position: np.ndarray
    hash: np.ndarray

    def offsets(self, text_count: int) -> np.ndarray:
        """Where each text's n-grams start in the arrays (length `text_count + 1`)."""
        return np.concatenate(([0], np.cumsum(np.bincount(self.text, minlength=text_count)))).astype(np.int64)


def word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def words(normalised: pl.Series) -> Words:
    """Hash the words of normalised texts; each distinct word is hashed once."""
    lengths = np.where((normalised == "").to_numpy(), 0, normalised.str.count_matches(" ").to_numpy() + 1)
    flat = normalised.str.split(" ").explode()
    flat = flat.filter(flat != "")
    vocabulary = flat.unique()
    hashes = pl.Series([word_hash(word) for word in vocabulary], dtype=pl.UInt64)
    flat_hashes = (
        flat.replace_strict(vocabulary, hashes, return_dtype=pl.UInt64).to_numpy().astype(np.uint64, copy=False)
    )
    return Words(flat_hashes, np.concatenate(([0], np.cumsum(lengths, dtype=np.int64))))


def finalise(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, in place: spreads the polynomial's bits over the whole word."""
    shifted = np.empty_like(values)
    for shift, multiplier in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        np.right_shift(values, np.uint64(shift), out=shifted)
        values ^= shifted
        values *= np.uint64(multiplier)
    np.right_shift(values, np.uint64(31), out=shifted)
    values ^= shifted
    return values


def ngrams(text_words: Words, n: int, *, whole_if_shorter: bool) -> NGrams:
    """Every window of `n` consecutive words of each text; a text of 1..n-1 words gives one n-gram of all
    its words when `whole_if_shorter` (its hash is that of the same words as a shorter window), else none."""
    hashes, offsets, lengths = text_words.hashes, text_words.offsets, text_words.lengths
    windows = max(hashes.size - n + 1, 0)
    window_hash = hashes[:windows].copy()
    for step in range(1, n):  # in place: temporaries of this size cost more than the arithmetic
        window_hash *= POLYNOMIAL
        window_hash += hashes[step : step + windows]
    text_of_word = np.repeat(np.arange(lengths.size, dtype=np.int32), lengths)[:windows]
    position = (np.arange(windows) - np.repeat(offsets[:-1], lengths)[:windows]).astype(np.int32)
    inside = np.repeat(lengths.astype(np.int32), lengths)[:windows] - position >= n
    text, position, value = text_of_word[inside], position[inside], window_hash[inside]
    if whole_if_shorter:
        short = np.flatnonzero((lengths > 0) & (lengths < n))
        short_hash = hashes[offsets[short]].copy()
        for step in range(1, n):
            longer = lengths[short] > step
            short_hash[longer] = short_hash[longer] * POLYNOMIAL + hashes[offsets[short[longer]] + step]
        at = np.searchsorted(text, short)  # short texts have no windows: slot each in by text order
        text, position, value = np.insert(text, at, short), np.insert(position, at, 0), np.insert(value, at, short_hash)
    return NGrams(text, position, finalise(value))
