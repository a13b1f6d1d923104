"""Splitting a document into chunks that fit the model context, with their offsets."""

from __future__ import annotations

import itertools
import re

WHITESPACE = re.compile(r"\s+")
# Where a chunk may end, best first: after a paragraph break, a sentence end, any whitespace.
BREAKS = (
    re.compile(r"\n[ \t]*\n\s*"),
    re.compile(r"[.!?][\"'”’)\]]*\s+"),
    WHITESPACE,
)


def split_on_boundaries(text: str, boundaries: tuple[int, ...], max_chars: int, overlap: int) -> list[tuple[int, int]]:
    """Spans covering all of `text`, each at most `max_chars` long, that start at `boundaries` (a source file's
    definitions): as many whole segments between boundaries as fit go in one span, without overlap; a segment
    longer than `max_chars` is split by `split_into_chunks`. Without boundaries, that is `split_into_chunks`."""
    cuts = sorted({0, len(text), *(cut for cut in boundaries if 0 < cut < len(text))})
    spans: list[tuple[int, int]] = []
    start = 0
    for previous, cut in itertools.pairwise(cuts):
        if cut - start <= max_chars:
            continue
        if previous > start:
            spans.append((start, previous))
            start = previous
        if cut - start > max_chars:
            pieces = split_into_chunks(text[start:cut], max_chars, overlap)
            spans.extend((start + begin, start + end) for begin, end in pieces)
            start = cut
    if start < len(text) or not spans:
        spans.append((start, len(text)))
    return spans


def split_into_chunks(text: str, max_chars: int, overlap: int) -> list[tuple[int, int]]:
    """Spans `(start, end)` covering all of `text` in increasing order, each at most `max_chars` long, and
    each sharing up to `overlap` characters with the one before.

    A span ends at the start of a word after the last paragraph break, else sentence end, else whitespace
    in the back half of the room the overlap leaves it, and mid-word only when there is no whitespace
    there; a later span starts at a word where the overlap holds one.
    """
    if not 0 <= overlap < max_chars:
        raise ValueError(
            f"chunk overlap ({overlap}) must be at least 0 and smaller than the chunk size ({max_chars})"
        )
    spans: list[tuple[int, int]] = []
    start = 0
    while start + max_chars < len(text):
        limit = start + max_chars
        floor = start + overlap + max(1, (max_chars - overlap) // 2)
        end = next(
            (cut for pattern in BREAKS if (cut := _last_break(pattern, text, start, floor, limit))), limit
        )
        spans.append((start, end))
        start = _word_start(text, end - overlap, end)
    spans.append((start, len(text)))
    return spans


def _last_break(pattern: re.Pattern[str], text: str, start: int, floor: int, limit: int) -> int | None:
    """The last end of a match between `floor` and `limit` that is followed by a word (not more space)."""
    ends = (match.end() for match in pattern.finditer(text, start, limit))
    return max((end for end in ends if end >= floor and not text[end].isspace()), default=None)


def _word_start(text: str, position: int, end: int) -> int:
    """`position`, moved forward (not past `end`) to the start of a word if it is inside one."""
    if position == 0 or (text[position - 1].isspace() and not text[position].isspace()):
        return position
    match = WHITESPACE.search(text, position, end)
    return match.end() if match else position
