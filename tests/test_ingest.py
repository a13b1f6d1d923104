"""Ingestion of inbox folders: formats, titles, quarantine reasons, duplicates, chunking invariants."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import polars as pl
import pytest

from agentinstruct_dagster.config.profiles import IngestSettings
from agentinstruct_dagster.ids import content_id
from agentinstruct_dagster.project import sample_documents_dir
from agentinstruct_dagster.stages.chunking import split_into_chunks
from agentinstruct_dagster.stages.ingest import IngestResult, ingest_batch
from agentinstruct_dagster.tables import QUARANTINE, RAW_DOCUMENTS

TEXT = "Lighthouses guided ships along dangerous coasts for centuries."


def ingest(folder: Path, context_tokens: int = 8192, **settings: object) -> IngestResult:
    return ingest_batch(folder, "b", IngestSettings(**settings), context_tokens=context_tokens)


def by_source(frame: pl.DataFrame) -> dict[str, dict[str, object]]:
    return {row["source"]: row for row in frame.iter_rows(named=True)}


def write_jsonl(path: Path, *lines: object) -> None:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")


def test_formats_titles_and_sources(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text(TEXT)
    (tmp_path / "notes.md").write_text(
        "intro line\n#not a heading\n# The Heading #\n\nBody about tides.\n# Later"
    )
    (tmp_path / "bare.md").write_text("No heading in this markdown file.")
    write_jsonl(
        tmp_path / "records.jsonl",
        {"text": "First record.", "title": "One", "source": "https://example.org/1"},
        "",
        {"text": "Second record.", "title": "  ", "source": 7},
    )
    frame = pl.DataFrame(
        {"text": ["Parquet row.", "Other row."], "title": ["P", None], "source": [None, "s3://x"]}
    )
    frame.write_parquet(tmp_path / "table.parquet")
    (tmp_path / "nested" / "deeper").mkdir(parents=True)
    (tmp_path / "nested" / "deeper" / "inner.txt").write_text("Nested document.")
    for hidden in (".DS_Store", ".hidden.txt", "_draft.txt", "_archive/old.txt", ".git/config"):
        (tmp_path / hidden).parent.mkdir(exist_ok=True)
        (tmp_path / hidden).write_text("hidden")
    result = ingest(tmp_path)
    docs = by_source(result.documents)
    assert {source: row["title"] for source, row in docs.items()} == {
        "plain.txt": "plain",
        "notes.md": "The Heading",
        "bare.md": "bare",
        "https://example.org/1 (records.jsonl#L1)": "One",
        "records.jsonl#L3": "records",
        "table.parquet#row0": "P",
        "s3://x (table.parquet#row1)": "table",
        "nested/deeper/inner.txt": "inner",
    }
    assert {source: row["content_type"] for source, row in docs.items()} == {
        "plain.txt": "txt",
        "notes.md": "md",
        "bare.md": "md",
        "https://example.org/1 (records.jsonl#L1)": "jsonl",
        "records.jsonl#L3": "jsonl",
        "table.parquet#row0": "parquet",
        "s3://x (table.parquet#row1)": "parquet",
        "nested/deeper/inner.txt": "txt",
    }
    hidden = {".DS_Store", ".git", ".hidden.txt", "_archive", "_draft.txt"}
    assert dict(result.quarantine.select("source", "reason").iter_rows()) == dict.fromkeys(hidden, "skipped_hidden")
    assert result.files_read == 6 and result.duplicates == 0
    assert result.documents.schema == RAW_DOCUMENTS and result.quarantine.schema == QUARANTINE
    assert (result.documents["batch"] == "b").all() and result.documents["id"].n_unique() == len(docs)
    assert result.documents["source"].to_list() == sorted(docs)


def test_text_is_normalised_only_at_the_edges(tmp_path: Path) -> None:
    (tmp_path / "bom.txt").write_bytes(
        "\ufeff  Byte order mark.\r\n\r\nInner   spacing\rkept.\t\n\n".encode()
    )
    write_jsonl(tmp_path / "bom.jsonl", {"text": "Record after a BOM."})
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "bom.jsonl").read_bytes())
    docs = by_source(ingest(tmp_path).documents)
    text = "Byte order mark.\n\nInner   spacing\nkept."
    assert docs["bom.txt"]["text"] == text
    assert docs["bom.txt"]["doc_id"] == content_id("document", text)
    assert docs["bom.txt"]["doc_chars"] == len(text)
    assert docs["bom.jsonl#L1"]["text"] == "Record after a BOM."


def test_every_quarantine_reason_has_a_detail(tmp_path: Path) -> None:
    (tmp_path / "empty.md").write_text(" \n\t\r\n")
    (tmp_path / "nul.txt").write_bytes(b"abc\x00def")
    (tmp_path / "controls.txt").write_bytes(bytes(range(1, 9)) * 50 + b" a little text")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "utf16.txt").write_bytes("hello".encode("utf-16") + b"\x00\xd8")  # ends in half a surrogate
    (tmp_path / "big.txt").write_text("x" * 5_000)
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "Makefile").write_text("all:")
    (tmp_path / "garbage.parquet").write_bytes(b"not a parquet file")
    pl.DataFrame({"body": ["no text column"]}).write_parquet(tmp_path / "no_text.parquet")
    pl.DataFrame({"text": [1, 2]}).write_parquet(tmp_path / "int_text.parquet")
    pl.DataFrame({"text": ["Parquet good.", None, "y" * 2_000]}).write_parquet(tmp_path / "rows.parquet")
    result = ingest(tmp_path, max_document_bytes=1_000)
    rows = by_source(result.quarantine)
    expected = {
        "empty.md": ("empty", "whitespace only"),
        "nul.txt": ("binary", "NUL bytes"),
        "controls.txt": ("binary", "control characters"),
        "latin1.txt": ("unknown_encoding", "no encoding detected with confidence"),
        "utf16.txt": ("unknown_encoding", "utf-16 byte order mark but is not valid utf-16"),
        "big.txt": ("oversize", "5000 bytes, over the limit of 1000"),
        "image.png": ("unsupported_type", "file type .png is not read; supported: .txt, .md, .html"),
        "Makefile": ("unsupported_type", "file type (none)"),
        "garbage.parquet": ("malformed_record", "unreadable parquet"),
        "no_text.parquet": ("malformed_record", "no `text` column"),
        "int_text.parquet": ("malformed_record", "`text` column is int64"),
        "rows.parquet#row1": ("malformed_record", "`text` is null"),
        "rows.parquet#row2": ("oversize", "2000 bytes"),
    }
    assert {source: row["reason"] for source, row in rows.items()} == {k: v[0] for k, v in expected.items()}
    for source, (reason, detail) in expected.items():
        assert detail in rows[source]["detail"], (source, rows[source]["detail"])
        assert rows[source]["id"] == content_id("quarantine", "raw_documents", source, reason)
    assert (result.quarantine["stage"] == "raw_documents").all() and (result.quarantine["batch"] == "b").all()
    assert result.quarantine["parent_id"].is_null().all()
    payloads = [payload for payload in result.quarantine["payload"] if payload is not None]
    assert all(len(payload) <= 500 and "\x00" not in payload for payload in payloads)
    assert rows["latin1.txt"]["payload"] == "caf\ufffd au lait"
    assert all(rows[name]["detail"].endswith("re-save it as UTF-8") for name in ("latin1.txt", "utf16.txt"))
    assert rows["image.png"]["detail"].endswith("run OCR on it and add the text")
    assert rows["big.txt"]["payload"] == "x" * 500
    assert result.documents["source"].to_list() == ["rows.parquet#row0"]
    assert result.files_read == 12


def test_good_lines_of_a_bad_jsonl_file_still_ingest(tmp_path: Path) -> None:
    (tmp_path / "mixed.jsonl").write_bytes(
        b'{"text": "Good line one."}\n'
        b"not json\n"
        b"[1, 2]\n"
        b'{"title": "no text"}\n'
        b'{"text": 42}\n'
        b'{"text": "  "}\n'
        b'{"text": "caf\xe9"}\n'
        b'{"text": "' + b"z" * 3_000 + b'"}\n'
        b'{"text": "nul \\u0000 inside"}\n'
        b'\r\n{"text": "Good line eleven."}\r\n'
    )
    result = ingest(tmp_path, max_document_bytes=1_000)
    assert result.documents["source"].to_list() == ["mixed.jsonl#L1", "mixed.jsonl#L11"]
    assert result.documents["text"].to_list() == ["Good line one.", "Good line eleven."]
    details = {
        row["source"]: (row["reason"], row["detail"]) for row in result.quarantine.iter_rows(named=True)
    }
    assert details == {
        "mixed.jsonl#L2": ("malformed_record", details["mixed.jsonl#L2"][1]),
        "mixed.jsonl#L3": ("malformed_record", "line is a JSON list, not an object"),
        "mixed.jsonl#L4": ("malformed_record", "no `text` field, needs a string (the text field is ingest.text_field)"),
        "mixed.jsonl#L5": ("malformed_record", "`text` is int, needs a string (the text field is ingest.text_field)"),
        "mixed.jsonl#L6": ("empty", "empty or whitespace only (2 characters)"),
        "mixed.jsonl#L7": ("invalid_utf8", details["mixed.jsonl#L7"][1]),
        "mixed.jsonl#L8": ("oversize", "3012 bytes, over the limit of 1000 (ingest.max_document_bytes)"),
        "mixed.jsonl#L9": ("binary", "contains NUL characters"),
    }
    assert details["mixed.jsonl#L2"][1].startswith("line is not JSON")
    assert by_source(result.quarantine)["mixed.jsonl#L2"]["payload"] == "not json"


def test_duplicates_collapse_to_the_first_and_are_recorded(tmp_path: Path) -> None:
    (tmp_path / "b_copy.txt").write_text(f"\n  {TEXT}\r\n\n")
    (tmp_path / "a_first.md").write_text(TEXT)
    write_jsonl(
        tmp_path / "c.jsonl", {"text": "Unique."}, {"text": TEXT, "source": "web"}, {"text": "Unique."}
    )
    pl.DataFrame({"text": [TEXT]}).write_parquet(tmp_path / "d.parquet")
    result = ingest(tmp_path)
    doc_id = content_id("document", TEXT)
    assert result.documents["source"].to_list() == ["a_first.md", "c.jsonl#L1"]
    assert result.duplicates == 4
    duplicates = by_source(result.quarantine)
    assert set(duplicates) == {"b_copy.txt", "web (c.jsonl#L2)", "c.jsonl#L3", "d.parquet#row0"}
    assert (result.quarantine["reason"] == "duplicate").all()
    for source in ("b_copy.txt", "web (c.jsonl#L2)", "d.parquet#row0"):
        assert duplicates[source]["parent_id"] == doc_id
        assert duplicates[source]["detail"] == f"same text as a_first.md (doc_id {doc_id})"
        assert duplicates[source]["payload"] == TEXT
    assert duplicates["c.jsonl#L3"]["detail"].startswith("same text as c.jsonl#L1")


def test_oversize_file_is_not_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with (tmp_path / "huge.txt").open("wb") as handle:
        handle.write(b"word " * 1_000_000)
    write_jsonl(tmp_path / "lines.jsonl", {"text": "Before."}, {"text": "w" * 5_000_000}, {"text": "After."})

    def refuse(self: Path) -> bytes:
        raise AssertionError(f"read {self} whole")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    monkeypatch.setattr(Path, "read_text", refuse)
    result = ingest(tmp_path, max_document_bytes=1_000)
    rows = by_source(result.quarantine)
    assert rows["huge.txt"]["reason"] == rows["lines.jsonl#L2"]["reason"] == "oversize"
    assert rows["huge.txt"]["detail"].startswith("5000000 bytes")
    assert len(rows["huge.txt"]["payload"]) == 500 and len(rows["lines.jsonl#L2"]["payload"]) == 500
    assert result.documents["source"].to_list() == ["lines.jsonl#L1", "lines.jsonl#L3"]


def test_a_batch_of_only_bad_documents_still_returns(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "doc.docx").write_bytes(b"PK")
    result = ingest(tmp_path)
    assert result.documents.is_empty() and result.documents.schema == RAW_DOCUMENTS
    assert result.quarantine["reason"].to_list() == ["unsupported_type", "empty"]
    assert ingest(tmp_path).quarantine.equals(result.quarantine)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"batch folder not found: .*nope"):
        ingest(tmp_path / "nope")


def test_long_documents_are_chunked_with_offsets(tmp_path: Path) -> None:
    paragraphs = [f"Paragraph {i}. " + "Words in a sentence. " * 30 for i in range(40)]
    text = "\n\n".join(paragraphs).strip()
    (tmp_path / "long.txt").write_text(text)
    (tmp_path / "short.txt").write_text(TEXT)
    settings = IngestSettings(chunk_overlap_chars=100)
    docs = ingest_batch(tmp_path, "b", settings, context_tokens=1024).documents
    long = docs.filter(pl.col("source") == "long.txt")
    assert long.height > 1 and long["text"].str.len_chars().max() <= 1024 * 0.5 * 4
    assert long["chunk_count"].unique().to_list() == [long.height]
    assert long["chunk_index"].to_list() == list(range(long.height))
    assert long["id"].to_list() == [content_id("chunk", long["doc_id"][0], i) for i in range(long.height)]
    for row in long.iter_rows(named=True):
        assert text[row["char_start"] : row["char_end"]] == row["text"]
        assert row["doc_chars"] == len(text)
        assert row["char_end"] == len(text) or row["text"].endswith("\n\n")
    short = by_source(docs)["short.txt"]
    assert (short["chunk_index"], short["chunk_count"], short["char_start"], short["char_end"]) == (
        0,
        1,
        0,
        len(TEXT),
    )


def random_text(generator: random.Random) -> str:
    words = ["a", "tide", "lighthouse", "compost", "x" * generator.randint(1, 60)]
    separators = [" ", " ", " ", ". ", "! ", "\n", "\n\n", "  \n \n"]
    count = generator.randint(0, 300)
    return "".join(generator.choice(words) + generator.choice(separators) for _ in range(count))


def test_chunk_spans_cover_the_text_within_bounds() -> None:
    generator = random.Random(7)
    for _ in range(2_000):
        text = random_text(generator)
        size = generator.randint(1, 500)
        overlap = generator.randint(0, size - 1)
        spans = split_into_chunks(text, size, overlap)
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
        for (start, end), (next_start, next_end) in itertools.pairwise(spans):
            assert start < next_start <= end < next_end
            assert end - next_start <= overlap
        assert all(0 < end - start <= size for start, end in spans) or text == ""


def test_chunks_end_at_breaks_and_not_mid_word() -> None:
    generator = random.Random(11)
    for _ in range(500):
        words = [
            generator.choice(["sea", "lamp", "harbour", "keeper"]) for _ in range(generator.randint(50, 400))
        ]
        text = "".join(word + generator.choice([" ", " ", ". ", "\n\n"]) for word in words)
        size = generator.randint(40, 400)
        spans = split_into_chunks(text, size, generator.randint(0, size // 2))
        for _, end in spans[:-1]:
            assert text[end - 1].isspace(), "cut mid-word"
        for start, _ in spans[1:]:
            assert text[start - 1].isspace() and not text[start].isspace(), "overlap starts mid-word"
    paragraphs = "\n\n".join(["one two three four five six"] * 10)
    assert all(paragraphs[end - 2 : end] == "\n\n" for _, end in split_into_chunks(paragraphs, 100, 0)[:-1])


def test_chunk_edge_cases() -> None:
    assert split_into_chunks("", 10, 0) == [(0, 0)]
    assert split_into_chunks("x" * 10, 10, 3) == [(0, 10)]
    assert split_into_chunks("x" * 25, 10, 0) == [(0, 10), (10, 20), (20, 25)]
    assert split_into_chunks("x" * 12, 10, 9) == [(0, 10), (1, 11), (2, 12)]
    for size, overlap in ((10, 10), (10, 11), (10, -1), (0, 0)):
        with pytest.raises(ValueError, match="overlap"):
            split_into_chunks("text", size, overlap)


def test_bundled_samples_ingest_cleanly() -> None:
    result = ingest(sample_documents_dir())
    assert result.quarantine.is_empty()
    assert result.files_read == 13 and result.documents["doc_id"].n_unique() == 15
    assert set(result.documents["content_type"]) == {"txt", "md", "jsonl", "parquet", "html", "pdf", "code"}
    assert set(result.documents["encoding"].drop_nulls()) == {"utf-8", "utf-16"}
    assert result.documents["language"].drop_nulls().to_list() == ["python"]
    words = [len(text.split()) for text in result.documents["text"]]
    assert min(words) >= 100 and max(words) <= 1_500
    assert ingest(sample_documents_dir()).documents.equals(result.documents)
