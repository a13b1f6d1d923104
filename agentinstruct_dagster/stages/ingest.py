"""Reading one inbox batch folder: documents in, chunks out, bad documents quarantined with a reason.

Files are read recursively, in order of their path relative to the batch folder. Formats, by suffix:
- `.txt`, `.md`: one document each. The encoding is detected (`text_encoding`: a byte order mark decides, else
  UTF-8, else charset-normalizer's confident guess: UTF-16/32 with a BOM, Latin-1, cp1252, ...) and recorded in
  `encoding`. A Markdown file's title is its first `# ` heading.
- `.html`, `.htm`: the page's main text, extracted by trafilatura without navigation, footers and other
  boilerplate (as Markdown); its title from the page (`<title>`, metadata). A page without main text is
  `no_main_text`.
- `.pdf`: the text layer of every page (pypdf), pages separated by a blank line; the title from the PDF's
  metadata. An encrypted PDF (`encrypted_pdf`) or one without a text layer, such as a scan (`no_text_layer`),
  is quarantined with what to do; a damaged one is `malformed_pdf`.
- source code (`.py`, `.js`, `.ts`, `.java`, `.go`, `.rs`, `.c`, `.cpp`, `.h`, `.rb`, `.sh`, ...:
  `source_code.CODE_SUFFIXES`): content type `code`, the language as pygments names it (lowercased) in `language`,
  chunks starting at top-level definitions where they fit (`source_code`, `chunking.split_on_boundaries`).
- `.jsonl`: one JSON object a line (UTF-8, as JSON Lines are) with a string text field and optional title and
  source fields (`ingest.text_field`, `title_field`, `source_field`: `text`, `title`, `source` by default, so
  Hugging Face shards with a `content` column need only `text_field: content`); blank lines are skipped;
  `max_document_bytes` limits each line, so a large file of small records is fine.
- `.parquet`: the same fields as columns, one document a row (rows counted from 0), streamed in batches;
  `max_document_bytes` limits each row's text.
For every other file, `max_document_bytes` limits the file. A file of any other type is `unsupported_type`,
with the supported types and how to convert it (e.g. a `.docx`: save it as PDF or text).

Every entry of the folder is accounted for, and nothing outside it is ever opened: the folder is walked with
`os.scandir` without following links. A regular file becomes documents or quarantine rows (reasons: empty,
binary, invalid_utf8 (a JSONL line), unknown_encoding, oversize, unsupported_type, malformed_record, no_main_text,
encrypted_pdf, no_text_layer, malformed_pdf, duplicate); each detail says what was found and, where the file can
be fixed, how. Every other entry is one quarantine row, never read:
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
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from agentinstruct_dagster.config.profiles import IngestSettings
from agentinstruct_dagster.ids import content_id
from agentinstruct_dagster.inbox import HIDDEN_PREFIXES, BatchFolderError
from agentinstruct_dagster.stages.chunking import split_on_boundaries
from agentinstruct_dagster.stages.documents import (
    EXCERPT_CHARS,
    Document,
    DocumentFile,
    Rejection,
    error_text,
    excerpt,
    oversize_detail,
)
from agentinstruct_dagster.stages.formats import Reader, read_code, read_html, read_pdf, read_text
from agentinstruct_dagster.stages.source_code import CODE_SUFFIXES
from agentinstruct_dagster.stages.text_encoding import checked_text
from agentinstruct_dagster.storage.location import as_location, object_store
from agentinstruct_dagster.tables import QUARANTINE, RAW_DOCUMENTS, frame

STAGE = "raw_documents"
CHARS_PER_TOKEN = 4
RECORD_TYPES = {".jsonl": "jsonl", ".parquet": "parquet"}
FILE_READERS: dict[str, Reader] = {
    ".txt": read_text("txt"),
    ".md": read_text("md"),
    ".html": read_html,
    ".htm": read_html,
    ".pdf": read_pdf,
    **dict.fromkeys(CODE_SUFFIXES, read_code),
}
SUPPORTED = ".txt, .md, .html, .htm, .pdf, .jsonl, .parquet and source code (.py, .js, .ts, .java, .go, .rs, ...)"
# What to do with common files of an unsupported type.
CONVERSION_HINTS = {
    **dict.fromkeys((".docx", ".doc", ".odt", ".rtf", ".pages"), "save it as PDF or text"),
    **dict.fromkeys((".pptx", ".ppt", ".odp", ".key", ".epub"), "export it as PDF"),
    **dict.fromkeys((".xlsx", ".xls", ".ods", ".csv", ".tsv"), "convert it to .parquet or .jsonl with a text column"),
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".webp"), "run OCR on it and add the text"),
    **dict.fromkeys((".zip", ".gz", ".tar", ".tgz", ".7z", ".bz2", ".xz"), "unpack it into the batch folder"),
    ".json": "write one record a line as .jsonl",
    ".xhtml": "rename it .html",
}
READ_BLOCK = 1 << 20
PARQUET_BATCH_ROWS = 1024
UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")


@dataclass(frozen=True)
class IngestResult:
    documents: pl.DataFrame
    quarantine: pl.DataFrame
    files_read: int
    duplicates: int


# A batch folder's files to read (relative path, file) in order of relative path, and its entries not read.
Scan = tuple[list[tuple[str, DocumentFile]], list[Rejection]]


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
        for item in _read_file(file, relative, settings):
            if isinstance(item, Rejection):
                rejected.append(_quarantine(batch, item, parent_id=None))
                continue
            doc_id = content_id("document", item.text)
            if doc_id in first_source:
                detail = f"same text as {first_source[doc_id]} (doc_id {doc_id})"
                duplicate = Rejection("duplicate", detail, item.source, excerpt(item.text))
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
            return Rejection("unreadable", f"link to {target}: {error_text(error)}", relative)
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
    spans = split_on_boundaries(document.text, document.boundaries, max_chars, overlap)
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
            "encoding": document.encoding,
            "language": document.language,
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


def _read_file(file: DocumentFile, relative: str, settings: IngestSettings) -> Iterator[Document | Rejection]:
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(file, relative, settings)
    elif suffix == ".parquet":
        yield from _read_parquet(file, relative, settings)
    elif suffix in FILE_READERS:
        yield _read_whole_file(file, relative, FILE_READERS[suffix], settings.max_document_bytes)
    else:
        yield Rejection("unsupported_type", _unsupported_detail(suffix), relative)


def _unsupported_detail(suffix: str) -> str:
    hint = CONVERSION_HINTS.get(suffix, "convert it to one of these")
    return f"file type {suffix or '(none)'} is not read; supported: {SUPPORTED}: {hint}"


def _read_whole_file(file: DocumentFile, relative: str, reader: Reader, limit: int) -> Document | Rejection:
    if file.size > limit:
        with file.open() as handle:
            head = handle.read(EXCERPT_CHARS)
        return Rejection("oversize", oversize_detail(file.size, limit), relative, excerpt(head))
    with file.open() as handle:
        return reader(handle.read(), relative, file)


def _read_jsonl(file: DocumentFile, relative: str, settings: IngestSettings) -> Iterator[Document | Rejection]:
    limit = settings.max_document_bytes
    for number, data, size in _lines(file, limit):
        source = f"{relative}#L{number}"
        if size > limit:
            yield Rejection("oversize", oversize_detail(size, limit), source, excerpt(data))
            continue
        line = _utf8_line(data, source)
        if isinstance(line, Rejection):
            yield line
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            yield Rejection("malformed_record", f"line is not JSON ({error})", source, excerpt(line))
            continue
        if not isinstance(record, dict):
            detail = f"line is a JSON {_json_type(record)}, not an object"
            yield Rejection("malformed_record", detail, source, excerpt(line))
            continue
        yield _record_document(record, Record(source, "jsonl", file.stem, line, "utf-8"), settings)


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


def _read_parquet(file: DocumentFile, relative: str, settings: IngestSettings) -> Iterator[Document | Rejection]:
    try:
        handle = file.open()
    except OSError as error:
        yield Rejection("malformed_record", f"unreadable parquet ({error_text(error)})", relative)
        return
    with handle:
        yield from _parquet_records(handle, file.stem, relative, settings)


def _parquet_records(
    handle: BinaryIO, stem: str, relative: str, settings: IngestSettings
) -> Iterator[Document | Rejection]:
    try:
        table = pq.ParquetFile(handle)
    except (pa.ArrowException, OSError) as error:
        yield Rejection("malformed_record", f"unreadable parquet ({error_text(error)})", relative)
        return
    schema, text_field = table.schema_arrow, settings.text_field
    if text_field not in schema.names:
        detail = f"parquet has no `{text_field}` column (ingest.text_field; columns: {schema.names})"
        yield Rejection("malformed_record", detail, relative)
        return
    text_type = schema.field(text_field).type
    if not _is_string(text_type):
        yield Rejection("malformed_record", f"parquet `{text_field}` column is {text_type}, not string", relative)
        return
    fields = (text_field, settings.title_field, settings.source_field)
    columns = [name for name in dict.fromkeys(fields) if name in schema.names]
    number = 0
    try:
        for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            for record in batch.to_pylist():
                source = f"{relative}#row{number}"
                number += 1
                raw = json.dumps(record, ensure_ascii=False, default=str)
                text = record[text_field]
                size = len(text.encode()) if isinstance(text, str) else 0
                if size > settings.max_document_bytes:
                    detail = oversize_detail(size, settings.max_document_bytes)
                    yield Rejection("oversize", detail, source, excerpt(raw))
                    continue
                yield _record_document(record, Record(source, "parquet", stem, raw), settings)
    except (pa.ArrowException, OSError) as error:
        detail = f"unreadable parquet after {number} rows ({error_text(error)})"
        yield Rejection("malformed_record", detail, relative)


def _is_string(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    return (
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_string_view(data_type)
    )


@dataclass(frozen=True)
class Record:
    """Where a JSONL or parquet record comes from: its source, file type, file stem, raw text and encoding."""

    source: str
    kind: str
    stem: str
    raw: str
    encoding: str | None = None


def _record_document(record: dict[str, Any], origin: Record, settings: IngestSettings) -> Document | Rejection:
    field, source = settings.text_field, origin.source
    text = record.get(field)
    if not isinstance(text, str):
        found = f"no `{field}` field" if field not in record else f"`{field}` is {_json_type(text)}"
        detail = f"{found}, needs a string (the text field is ingest.text_field)"
        return Rejection("malformed_record", detail, source, excerpt(origin.raw))
    checked = checked_text(text, source)
    if isinstance(checked, Rejection):
        return Rejection(checked.reason, checked.detail, source, excerpt(origin.raw))
    named_source, title = record.get(settings.source_field), record.get(settings.title_field)
    return Document(
        source=f"{named_source.strip()} ({source})" if _is_text(named_source) else source,
        content_type=origin.kind,
        title=title.strip() if _is_text(title) else origin.stem,
        text=checked,
        encoding=origin.encoding,
    )


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _json_type(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _utf8_line(data: bytes, source: str) -> str | Rejection:
    """A JSON line as strict UTF-8 (JSON Lines are UTF-8), a leading byte order mark dropped; NUL bytes mean binary."""
    if data.startswith(UTF16_MARKS):
        detail = "UTF-16 byte order mark: JSON Lines are UTF-8, re-save the file as UTF-8"
        return Rejection("invalid_utf8", detail, source, excerpt(data))
    if b"\x00" in data:
        return Rejection("binary", f"contains NUL bytes (first at byte {data.index(0)})", source, excerpt(data))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        detail = f"not valid UTF-8 ({error.reason} at byte {error.start}): JSON Lines are UTF-8, re-save it as UTF-8"
        return Rejection("invalid_utf8", detail, source, excerpt(data[max(0, error.start - 100) :]))
