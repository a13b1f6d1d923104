"""Reading one inbox batch folder: documents in, chunks out, bad documents quarantined with a reason.

Supported: `.txt`, `.md`, `.jsonl` (a `text` field, optional `title`/`source`) and `.parquet` (a `text`
column). Hidden files and names starting with `.` or `_` are skipped (editor and OS droppings).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from agentinstruct_dagster.config.profiles import IngestSettings
from agentinstruct_dagster.ids import content_id
from agentinstruct_dagster.quality.rules import quarantine_row
from agentinstruct_dagster.tables import QUARANTINE, RAW_DOCUMENTS, frame

STAGE = "raw_documents"
TEXT_SUFFIXES = {".txt": "txt", ".md": "md"}
RECORD_SUFFIXES = {".jsonl": "jsonl", ".parquet": "parquet"}
CHARS_PER_TOKEN = 4
EXCERPT_CHARS = 500
BREAKS = (re.compile(r"\n\s*\n"), re.compile(r"[.!?][\"')\]]?\s"), re.compile(r"\s"))


@dataclass(frozen=True)
class IngestResult:
    documents: pl.DataFrame
    quarantine: pl.DataFrame
    files_read: int
    duplicates: int


@dataclass(frozen=True)
class Document:
    source: str
    content_type: str
    title: str
    text: str


class Rejected(Exception):
    def __init__(self, reason: str, detail: str, payload: str | None = None, source: str | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.payload, self.source = reason, detail, payload, source


def split_into_chunks(text: str, max_chars: int, overlap: int) -> list[tuple[int, int]]:
    """Spans covering `text`, each at most `max_chars`, cut at paragraph, sentence or word breaks."""
    if overlap >= max_chars:
        raise ValueError(f"chunk overlap ({overlap}) must be smaller than the chunk size ({max_chars})")
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + max_chars, len(text))
        if end < len(text):
            window = text[start:end]
            floor = max(1, (max_chars - overlap) // 2)
            for pattern in BREAKS:
                cuts = [match.end() for match in pattern.finditer(window) if match.end() > floor]
                if cuts:
                    end = start + cuts[-1]
                    break
        spans.append((start, end))
        if end >= len(text):
            return spans
        start = max(end - overlap, start + 1)


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _decode(data: bytes) -> str:
    if b"\x00" in data:
        raise Rejected("binary", "contains NUL bytes", data[:EXCERPT_CHARS].decode("utf-8", "replace"))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise Rejected(
            "invalid_utf8",
            f"not valid UTF-8 ({error.reason} at byte {error.start})",
            data[:EXCERPT_CHARS].decode("utf-8", "replace"),
        ) from None
    controls = sum(1 for char in text if ord(char) < 32 and char not in "\n\r\t\f")
    if text and controls / len(text) > 0.1:
        raise Rejected("binary", f"{controls} control characters in {len(text)}", text[:EXCERPT_CHARS])
    return text


def _checked(text: str) -> str:
    text = _normalise(text)
    if not text:
        raise Rejected("empty", "empty or whitespace only")
    return text


def _markdown_title(text: str, fallback: str) -> str:
    heading = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), "")
    return heading or fallback


def _records(path: Path, relative: str) -> Iterator[Document | Rejected]:
    kind = RECORD_SUFFIXES[path.suffix.lower()]
    if kind == "jsonl":
        lines = _decode(path.read_bytes()).split("\n")
        items = ((f"{relative}#L{number}", line) for number, line in enumerate(lines, 1) if line.strip())
        for source, line in items:
            try:
                record = json.loads(line)
            except ValueError as error:
                yield Rejected("malformed_record", f"not JSON ({error})", line[:EXCERPT_CHARS], source)
                continue
            yield _record_document(record, source, kind, path.stem, line)
        return
    try:
        table = pl.read_parquet(path)
    except Exception as error:
        yield Rejected("malformed_record", f"unreadable parquet ({type(error).__name__})")
        return
    if "text" not in table.columns:
        yield Rejected("malformed_record", "parquet file has no `text` column")
        return
    for number, record in enumerate(table.iter_rows(named=True)):
        source = f"{relative}#row{number}"
        yield _record_document(record, source, kind, path.stem, json.dumps(record, default=str))


def _record_document(record: object, source: str, kind: str, stem: str, raw: str) -> Document | Rejected:
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        return Rejected("malformed_record", "needs an object with a string `text`", raw[:EXCERPT_CHARS], source)
    try:
        text = _checked(record["text"])
    except Rejected as rejected:
        return Rejected(rejected.reason, rejected.detail, raw[:EXCERPT_CHARS], source)
    origin = record.get("source")
    return Document(
        source=f"{origin} ({source})" if isinstance(origin, str) and origin else source,
        content_type=kind,
        title=str(record.get("title") or stem),
        text=text,
    )


def _read(path: Path, relative: str, settings: IngestSettings) -> Iterator[Document | Rejected]:
    size = path.stat().st_size
    if size > settings.max_document_bytes:
        yield Rejected("oversize", f"{size} bytes, limit {settings.max_document_bytes}")
        return
    suffix = path.suffix.lower()
    if suffix in RECORD_SUFFIXES:
        yield from _records(path, relative)
        return
    if suffix not in TEXT_SUFFIXES:
        yield Rejected("unsupported_type", f"unsupported file type {suffix or '(none)'}")
        return
    text = _checked(_decode(path.read_bytes()))
    kind = TEXT_SUFFIXES[suffix]
    title = _markdown_title(text, path.stem) if kind == "md" else path.stem
    yield Document(source=relative, content_type=kind, title=title, text=text)


def _documents(batch_dir: Path, settings: IngestSettings) -> Iterator[tuple[str, Document | Rejected]]:
    files = sorted(
        path
        for path in batch_dir.rglob("*")
        if path.is_file() and not any(part.startswith((".", "_")) for part in path.relative_to(batch_dir).parts)
    )
    for path in files:
        relative = path.relative_to(batch_dir).as_posix()
        try:
            for item in _read(path, relative, settings):
                yield relative, item
        except Rejected as rejected:
            yield relative, rejected


def ingest_batch(batch_dir: Path, batch: str, settings: IngestSettings, context_tokens: int) -> IngestResult:
    """Read, validate, deduplicate and chunk every document of one batch folder."""
    if not batch_dir.is_dir():
        raise FileNotFoundError(f"batch folder not found: {batch_dir}")
    chunk_chars = int(context_tokens * settings.chunk_fraction_of_context * CHARS_PER_TOKEN)
    rows: list[dict[str, object]] = []
    rejected: list[dict[str, object]] = []
    seen: dict[str, str] = {}
    files: set[str] = set()
    duplicates = 0
    for relative, item in _documents(batch_dir, settings):
        files.add(relative)
        if isinstance(item, Rejected):
            rejected.append(_quarantine(batch, item.reason, item.detail, item.source or relative, None, item.payload))
            continue
        doc_id = content_id("document", item.text)
        if doc_id in seen:
            duplicates += 1
            detail = f"same text as {seen[doc_id]} (doc_id {doc_id})"
            rejected.append(_quarantine(batch, "duplicate", detail, item.source, doc_id, item.text[:EXCERPT_CHARS]))
            continue
        seen[doc_id] = item.source
        spans = split_into_chunks(item.text, chunk_chars, settings.chunk_overlap_chars)
        for index, (start, end) in enumerate(spans):
            rows.append(
                {
                    "id": content_id("chunk", doc_id, index),
                    "doc_id": doc_id,
                    "batch": batch,
                    "source": item.source,
                    "content_type": item.content_type,
                    "title": item.title,
                    "text": item.text[start:end],
                    "chunk_index": index,
                    "chunk_count": len(spans),
                    "char_start": start,
                    "char_end": end,
                    "doc_chars": len(item.text),
                }
            )
    return IngestResult(
        documents=frame(rows, RAW_DOCUMENTS).sort("source", "chunk_index"),
        quarantine=frame(rejected, QUARANTINE).sort("source"),
        files_read=len(files),
        duplicates=duplicates,
    )


def _quarantine(
    batch: str, reason: str, detail: str, source: str, parent_id: str | None, payload: str | None
) -> dict[str, object]:
    return quarantine_row(
        stage=STAGE, batch=batch, reason=reason, detail=detail, parent_id=parent_id, source=source, payload=payload
    )
