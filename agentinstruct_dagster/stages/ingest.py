"""Reading one inbox batch folder: documents in, chunks out, bad documents quarantined with a reason.

Files are read recursively, in order of their path relative to the batch folder:
- `.txt`, `.md`: one document each; `max_document_bytes` limits the file.
- `.jsonl`: one JSON object a line with a string `text` and optional `title`/`source`; blank lines are
  skipped; `max_document_bytes` limits each line, so a large file of small records is fine.
- `.parquet`: a string `text` column, optional `title`/`source` columns; one document a row (rows
  counted from 0), streamed in batches; `max_document_bytes` limits each row's text.

Every entry of the folder is accounted for, and nothing outside it is ever opened: the folder is walked with
`os.scandir` without following links. A regular file becomes documents or quarantine rows (reasons: empty,
binary, invalid_utf8, oversize, unsupported_type, malformed_record, duplicate). Every other entry is one
quarantine row, never read:
- `skipped_hidden`: a file or folder whose name starts with `.` or `_` (`.DS_Store`, `.git/`, `_drafts/`: OS,
  editor and tool droppings, not documents); a hidden folder is one row, its contents are not listed;
- `symlink_outside`: a link (to a file or a folder) whose real path leaves the batch folder;
- `dangling_symlink`, `symlink_loop` (a link that cannot be resolved, or a linked folder containing the link);
- `linked_folder`: a link to another folder of the batch, whose files are read where they are;
- `special_file`: a FIFO, socket or device (never opened: a FIFO would block);
- `unreadable`: a link whose target cannot be examined (e.g. permission denied).
A link to a regular file of the batch is read (as the link's path; dedup then collapses it with the file).

A batch folder on an object store (a URI, `storage/location.py`) is the objects below its prefix, listed and read
through deltalake's object store: there are no links or special files there; hidden entries, folder markers
aside, get the same one row per hidden file or folder, and every file the same reading rules.
"""

from __future__ import annotations

import errno
import io
import itertools
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from agentinstruct_dagster.config.profiles import IngestSettings
from agentinstruct_dagster.ids import content_id
from agentinstruct_dagster.inbox import HIDDEN_PREFIXES, BatchFolderError
from agentinstruct_dagster.storage.location import as_location, object_store
from agentinstruct_dagster.tables import QUARANTINE, RAW_DOCUMENTS, frame

STAGE = "raw_documents"
CONTENT_TYPES = {".txt": "txt", ".md": "md", ".jsonl": "jsonl", ".parquet": "parquet"}
CHARS_PER_TOKEN = 4
EXCERPT_CHARS = 500
READ_BLOCK = 1 << 20
PARQUET_BATCH_ROWS = 1024
MAX_CONTROL_SHARE = 0.1
CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")  # control characters other than \t \n \v \f \r
UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")
WHITESPACE = re.compile(r"\s+")
MARKDOWN_TITLE = re.compile(r"^#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
# Where a chunk may end, best first: after a paragraph break, a sentence end, any whitespace.
BREAKS = (
    re.compile(r"\n[ \t]*\n\s*"),
    re.compile(r"[.!?][\"'”’)\]]*\s+"),
    WHITESPACE,
)


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


@dataclass(frozen=True)
class DocumentFile:
    """A regular file to read: its name (the suffix gives its type, the stem a default title), its size in bytes
    and how to open it (binary, seekable, from the start)."""

    name: str
    size: int
    open: Callable[[], BinaryIO]

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @classmethod
    def local(cls, path: Path) -> DocumentFile:
        return cls(path.name, path.stat().st_size, partial(path.open, "rb"))


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str
    source: str
    payload: str | None = None


# A batch folder's files to read (relative path, file) in order of relative path, and its entries not read.
Scan = tuple[list[tuple[str, DocumentFile]], list[Rejection]]


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


def ingest_batch(
    batch_dir: str | Path,
    batch: str,
    settings: IngestSettings,
    context_tokens: int,
    storage_options: Mapping[str, str] | None = None,
) -> IngestResult:
    """Read, validate, deduplicate and chunk every document of one batch folder (local, or an object-store URI
    reached with `storage_options`)."""
    location = as_location(batch_dir)
    if isinstance(location, Path):
        files, not_read = _scan_folder(location)
    else:
        files, not_read = _scan_objects(location, storage_options)
    chunk_chars = int(context_tokens * settings.chunk_fraction_of_context * CHARS_PER_TOKEN)
    rows: list[dict[str, Any]] = []
    first_source: dict[str, str] = {}
    rejected = [_quarantine(batch, item, parent_id=None) for item in not_read]
    for relative, file in files:
        for item in _read_file(file, relative, settings.max_document_bytes):
            if isinstance(item, Rejection):
                rejected.append(_quarantine(batch, item, parent_id=None))
                continue
            doc_id = content_id("document", item.text)
            if doc_id in first_source:
                detail = f"same text as {first_source[doc_id]} (doc_id {doc_id})"
                duplicate = Rejection("duplicate", detail, item.source, _excerpt(item.text))
                rejected.append(_quarantine(batch, duplicate, parent_id=doc_id))
                continue
            first_source[doc_id] = item.source
            rows.extend(_chunk_rows(item, doc_id, batch, chunk_chars, settings.chunk_overlap_chars))
    return IngestResult(
        documents=frame(rows, RAW_DOCUMENTS).sort("source", "chunk_index"),
        quarantine=frame(rejected, QUARANTINE).sort("source", "reason"),
        files_read=len(files),
        duplicates=sum(row["reason"] == "duplicate" for row in rejected),
    )


def _scan_folder(batch_dir: Path) -> Scan:
    """(relative path, file to read) of every document file in order of relative path, and a Rejection for
    every other entry; links are resolved but never followed out of the batch folder, and nothing is opened."""
    if batch_dir.is_symlink():
        raise BatchFolderError(f"batch folder is a symbolic link, not read: {batch_dir}")
    if not batch_dir.is_dir():
        raise FileNotFoundError(f"batch folder not found: {batch_dir}")
    root = Path(os.path.realpath(batch_dir))
    files: list[tuple[str, DocumentFile]] = []
    not_read: list[Rejection] = []
    folders = [batch_dir]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                path = Path(entry.path)
                relative = path.relative_to(batch_dir).as_posix()
                mode = entry.stat(follow_symlinks=False).st_mode
                found = _classify(path, relative, mode, root)
                if isinstance(found, Rejection):
                    not_read.append(found)
                elif stat.S_ISDIR(mode):
                    folders.append(path)
                else:
                    files.append((relative, DocumentFile.local(found)))
    return sorted(files, key=lambda item: item[0]), not_read


def _scan_objects(batch_dir: str, options: Mapping[str, str] | None) -> Scan:
    """`_scan_folder` for a batch folder on an object store: its objects (folder markers skipped) in order of
    relative path; a hidden file or folder (at any depth) is one Rejection, its objects are not read."""
    store = object_store(batch_dir, options)
    listed = store.get_file_info(pafs.FileSelector("", recursive=True, allow_not_found=True))
    folders = {info.path for info in listed if info.type == pafs.FileType.Directory}
    objects = [info for info in listed if info.type == pafs.FileType.File and info.path not in folders]
    if not objects:
        raise FileNotFoundError(f"batch folder not found (no object under it): {batch_dir}")
    files: list[tuple[str, DocumentFile]] = []
    hidden: dict[str, str] = {}
    for info in sorted(objects, key=lambda info: info.path):
        parts = info.path.split("/")
        depth = next((index for index, part in enumerate(parts) if part.startswith(HIDDEN_PREFIXES)), None)
        if depth is not None:
            hidden.setdefault("/".join(parts[: depth + 1]), "file" if depth == len(parts) - 1 else "folder")
            continue
        opener = partial(_open_object, store, info.path)
        files.append((info.path, DocumentFile(parts[-1], info.size, opener)))
    not_read = [
        Rejection("skipped_hidden", f"hidden {kind} (name starts with '.' or '_'): not read", relative)
        for relative, kind in hidden.items()
    ]
    return files, not_read


def _open_object(store: pafs.FileSystem, path: str) -> BinaryIO:
    """An object as a buffered binary file (pyarrow's own has no `readline`)."""
    return io.BufferedReader(store.open_input_file(path), READ_BLOCK)


def _classify(path: Path, relative: str, mode: int, root: Path) -> Path | Rejection:
    """The path to read or descend into, or why the entry is not read."""
    if path.name.startswith(HIDDEN_PREFIXES):
        kind = "folder" if stat.S_ISDIR(mode) else "file"
        return Rejection("skipped_hidden", f"hidden {kind} (name starts with '.' or '_'): not read", relative)
    if stat.S_ISLNK(mode):
        return _link_target(path, relative, root)
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return path
    return _special_file(mode, relative)


def _link_target(link: Path, relative: str, root: Path) -> Path | Rejection:
    """The real path of a link to a regular file inside the batch folder, or why the link is not followed."""
    target = os.readlink(link)
    try:
        mode = os.stat(link).st_mode
    except FileNotFoundError:
        return Rejection("dangling_symlink", f"link to {target}, which does not exist: not read", relative)
    except OSError as error:
        if error.errno != errno.ELOOP:
            return Rejection("unreadable", f"link to {target}: {_error_text(error)}", relative)
        return Rejection("symlink_loop", f"link to {target} never resolves (a loop of links): not read", relative)
    real = Path(os.path.realpath(link))
    if not real.is_relative_to(root):
        detail = f"link to {target} ({real}), outside the batch folder: not read"
        return Rejection("symlink_outside", detail, relative)
    if stat.S_ISDIR(mode):
        if Path(os.path.realpath(link.parent)).is_relative_to(real):
            return Rejection("symlink_loop", f"link to {target}, a folder containing the link: not followed", relative)
        inside = real.relative_to(root).as_posix()
        return Rejection(
            "linked_folder", f"link to {target}, the batch's folder {inside}: its files are read there", relative
        )
    return real if stat.S_ISREG(mode) else _special_file(mode, relative)


def _special_file(mode: int, relative: str) -> Rejection:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device"}
    kind = next((name for test, name in kinds.items() if test(mode)), "a block device")
    return Rejection("special_file", f"{kind}, not a regular file: not opened", relative)


def _chunk_rows(
    document: Document, doc_id: str, batch: str, max_chars: int, overlap: int
) -> list[dict[str, Any]]:
    spans = split_into_chunks(document.text, max_chars, overlap)
    return [
        {
            "id": content_id("chunk", doc_id, index),
            "doc_id": doc_id,
            "batch": batch,
            "source": document.source,
            "content_type": document.content_type,
            "title": document.title,
            "text": document.text[start:end],
            "chunk_index": index,
            "chunk_count": len(spans),
            "char_start": start,
            "char_end": end,
            "doc_chars": len(document.text),
        }
        for index, (start, end) in enumerate(spans)
    ]


def _quarantine(batch: str, rejection: Rejection, parent_id: str | None) -> dict[str, Any]:
    return {
        "id": content_id("quarantine", STAGE, rejection.source, rejection.reason),
        "batch": batch,
        "stage": STAGE,
        "reason": rejection.reason,
        "detail": rejection.detail,
        "parent_id": parent_id,
        "source": rejection.source,
        "payload": rejection.payload,
    }


def _read_file(file: DocumentFile, relative: str, limit: int) -> Iterator[Document | Rejection]:
    suffix = file.suffix.lower()
    kind = CONTENT_TYPES.get(suffix)
    if kind is None:
        supported = ", ".join(CONTENT_TYPES)
        yield Rejection(
            "unsupported_type", f"file type {suffix or '(none)'} is not one of {supported}", relative
        )
    elif kind == "jsonl":
        yield from _read_jsonl(file, relative, limit)
    elif kind == "parquet":
        yield from _read_parquet(file, relative, limit)
    else:
        yield _read_text_file(file, relative, kind, limit)


def _read_text_file(file: DocumentFile, relative: str, kind: str, limit: int) -> Document | Rejection:
    if file.size > limit:
        with file.open() as handle:
            head = handle.read(EXCERPT_CHARS)
        return Rejection("oversize", _oversize_detail(file.size, limit), relative, _excerpt(head))
    with file.open() as handle:
        decoded = _decode(handle.read(), relative)
    if isinstance(decoded, Rejection):
        return decoded
    text = _checked_text(decoded, relative)
    if isinstance(text, Rejection):
        return text
    title = _markdown_title(text) if kind == "md" else None
    return Document(source=relative, content_type=kind, title=title or file.stem, text=text)


def _read_jsonl(file: DocumentFile, relative: str, limit: int) -> Iterator[Document | Rejection]:
    for number, data, size in _lines(file, limit):
        source = f"{relative}#L{number}"
        if size > limit:
            yield Rejection("oversize", _oversize_detail(size, limit), source, _excerpt(data))
            continue
        line = _decode(data, source)
        if isinstance(line, Rejection):
            yield line
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            yield Rejection("malformed_record", f"line is not JSON ({error})", source, _excerpt(line))
            continue
        if not isinstance(record, dict):
            detail = f"line is a JSON {_json_type(record)}, not an object"
            yield Rejection("malformed_record", detail, source, _excerpt(line))
            continue
        yield _record_document(record, source, "jsonl", file.stem, line)


def _lines(file: DocumentFile, limit: int) -> Iterator[tuple[int, bytes, int]]:
    """(line number, content, content bytes) of each non-blank line; a line over `limit` bytes is cut short
    (its size still counts all of it), so a huge line is never held in memory."""
    with file.open() as handle:
        for number in itertools.count(1):
            data = tail = handle.readline(limit + 2)
            if not data:
                return
            size = len(data)
            while not tail.endswith(b"\n") and (tail := handle.readline(READ_BLOCK)):
                size += len(tail)
            content = data.rstrip(b"\r\n")
            if content.strip():
                yield number, content, size - (len(tail) - len(tail.rstrip(b"\r\n")))


def _read_parquet(file: DocumentFile, relative: str, limit: int) -> Iterator[Document | Rejection]:
    try:
        handle = file.open()
    except OSError as error:
        yield Rejection("malformed_record", f"unreadable parquet ({_error_text(error)})", relative)
        return
    with handle:
        yield from _parquet_records(handle, file.stem, relative, limit)


def _parquet_records(handle: BinaryIO, stem: str, relative: str, limit: int) -> Iterator[Document | Rejection]:
    try:
        table = pq.ParquetFile(handle)
    except (pa.ArrowException, OSError) as error:
        yield Rejection("malformed_record", f"unreadable parquet ({_error_text(error)})", relative)
        return
    schema = table.schema_arrow
    if "text" not in schema.names:
        yield Rejection(
            "malformed_record", f"parquet has no `text` column (columns: {schema.names})", relative
        )
        return
    text_type = schema.field("text").type
    if not _is_string(text_type):
        yield Rejection("malformed_record", f"parquet `text` column is {text_type}, not string", relative)
        return
    columns = [name for name in ("text", "title", "source") if name in schema.names]
    number = 0
    try:
        for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            for record in batch.to_pylist():
                source = f"{relative}#row{number}"
                number += 1
                raw = json.dumps(record, ensure_ascii=False, default=str)
                size = len(record["text"].encode()) if isinstance(record["text"], str) else 0
                if size > limit:
                    yield Rejection("oversize", _oversize_detail(size, limit), source, _excerpt(raw))
                    continue
                yield _record_document(record, source, "parquet", stem, raw)
    except (pa.ArrowException, OSError) as error:
        detail = f"unreadable parquet after {number} rows ({_error_text(error)})"
        yield Rejection("malformed_record", detail, relative)


def _is_string(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    return (
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_string_view(data_type)
    )


def _record_document(
    record: dict[str, Any], source: str, kind: str, stem: str, raw: str
) -> Document | Rejection:
    text = record.get("text")
    if not isinstance(text, str):
        found = "no `text` field" if "text" not in record else f"`text` is {_json_type(text)}"
        return Rejection("malformed_record", f"{found}, needs a string", source, _excerpt(raw))
    checked = _checked_text(text, source)
    if isinstance(checked, Rejection):
        return Rejection(checked.reason, checked.detail, source, _excerpt(raw))
    origin, title = record.get("source"), record.get("title")
    return Document(
        source=f"{origin.strip()} ({source})" if isinstance(origin, str) and origin.strip() else source,
        content_type=kind,
        title=title.strip() if isinstance(title, str) and title.strip() else stem,
        text=checked,
    )


def _json_type(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _decode(data: bytes, source: str) -> str | Rejection:
    """Strict UTF-8 with a leading byte order mark dropped; NUL bytes mean binary."""
    if data.startswith(UTF16_MARKS):
        return Rejection(
            "invalid_utf8", "UTF-16 byte order mark; save the file as UTF-8", source, _excerpt(data)
        )
    if b"\x00" in data:
        return Rejection(
            "binary", f"contains NUL bytes (first at byte {data.index(0)})", source, _excerpt(data)
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        detail = f"not valid UTF-8 ({error.reason} at byte {error.start})"
        return Rejection("invalid_utf8", detail, source, _excerpt(data[max(0, error.start - 100) :]))


def _checked_text(text: str, source: str) -> str | Rejection:
    """The normalised text (line breaks as \\n, outer whitespace stripped), or why it is not a document."""
    if "\x00" in text:
        return Rejection("binary", "contains NUL characters", source, _excerpt(text))
    controls = sum(1 for _ in CONTROL.finditer(text))
    if controls > MAX_CONTROL_SHARE * len(text):
        detail = f"{controls} of {len(text)} characters are control characters: not text"
        return Rejection("binary", detail, source, _excerpt(text))
    normalised = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    return normalised or Rejection("empty", f"empty or whitespace only ({len(text)} characters)", source)


def _markdown_title(text: str) -> str | None:
    match = MARKDOWN_TITLE.search(text)
    return match.group(1).strip() if match else None


def _oversize_detail(size: int, limit: int) -> str:
    return f"{size} bytes, over the limit of {limit} (ingest.max_document_bytes)"


def _error_text(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}"


def _excerpt(content: str | bytes) -> str:
    """At most EXCERPT_CHARS characters of valid UTF-8, control characters replaced by U+FFFD."""
    if isinstance(content, bytes):
        content = content[: EXCERPT_CHARS * 4].decode("utf-8", "replace")
    return CONTROL.sub("\ufffd", content[:EXCERPT_CHARS])
