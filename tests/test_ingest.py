"""Ingestion of inbox folders: formats, quarantine reasons, duplicates, chunking invariants."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import polars as pl
import pytest

from agentinstruct_dagster.config.profiles import IngestSettings
from agentinstruct_dagster.project import sample_documents_dir
from agentinstruct_dagster.stages.ingest import ingest_batch, split_into_chunks

SETTINGS = IngestSettings()
TEXT = "Lighthouses guided ships along dangerous coasts for centuries."


def ingest(folder: Path, **settings: object):
    return ingest_batch(folder, "b", IngestSettings(**settings) if settings else SETTINGS, context_tokens=8192)


def reasons(result) -> dict[str, str]:
    return dict(zip(result.quarantine["source"], result.quarantine["reason"], strict=True))


def test_formats_titles_and_sources(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text(TEXT)
    (tmp_path / "notes.md").write_text("intro\n# The Heading\n\nBody text about tides.")
    (tmp_path / "bom.txt").write_bytes("\ufeffText with a byte order mark.".encode())
    records = [{"text": "First record.", "title": "One", "source": "https://example.org/1"}, {"text": "Second."}]
    (tmp_path / "records.jsonl").write_text("\n".join(json.dumps(record) for record in records))
    pl.DataFrame({"text": ["Parquet row."], "title": ["P"]}).write_parquet(tmp_path / "table.parquet")
    (tmp_path / ".hidden.txt").write_text("skipped")
    docs = ingest(tmp_path).documents
    by_source = {row["source"]: row for row in docs.iter_rows(named=True)}
    assert set(by_source) == {
        "plain.txt",
        "notes.md",
        "bom.txt",
        "https://example.org/1 (records.jsonl#L1)",
        "records.jsonl#L2",
        "table.parquet#row0",
    }
    assert by_source["notes.md"]["title"] == "The Heading"
    assert by_source["plain.txt"]["title"] == "plain"
    assert by_source["bom.txt"]["text"] == "Text with a byte order mark."
    assert by_source["records.jsonl#L2"]["title"] == "records"
    assert by_source["table.parquet#row0"]["content_type"] == "parquet"
    assert (docs["batch"] == "b").all() and docs["id"].n_unique() == docs.height


def test_every_quarantine_reason_has_a_detail(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text(TEXT)
    (tmp_path / "copy.txt").write_text(TEXT + "\n\n")
    (tmp_path / "empty.md").write_text(" \n\t")
    (tmp_path / "nul.txt").write_bytes(b"abc\x00def")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "big.txt").write_text("x" * 5_000)
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "mixed.jsonl").write_text('{"text": "Good line."}\nnot json\n[1, 2]\n{"text": "  "}\n')
    pl.DataFrame({"body": ["no text column"]}).write_parquet(tmp_path / "wrong.parquet")
    result = ingest(tmp_path, max_document_bytes=1_000)
    assert reasons(result) == {
        "good.txt": "duplicate",
        "empty.md": "empty",
        "nul.txt": "binary",
        "latin1.txt": "invalid_utf8",
        "big.txt": "oversize",
        "image.png": "unsupported_type",
        "mixed.jsonl#L2": "malformed_record",
        "mixed.jsonl#L3": "malformed_record",
        "mixed.jsonl#L4": "empty",
        "wrong.parquet": "malformed_record",
    }
    assert result.quarantine["detail"].str.len_chars().min() > 0
    assert result.quarantine["id"].n_unique() == result.quarantine.height
    assert sorted(result.documents["source"]) == ["copy.txt", "mixed.jsonl#L1"]
    assert result.duplicates == 1
    duplicate = result.quarantine.filter(pl.col("reason") == "duplicate").row(0, named=True)
    assert "copy.txt" in duplicate["detail"] and duplicate["parent_id"] == result.documents["doc_id"][0]


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="batch folder not found"):
        ingest(tmp_path / "nope")


def test_long_documents_are_chunked_with_offsets(tmp_path: Path) -> None:
    paragraphs = [f"Paragraph {i}. " + "Words in a sentence. " * 30 for i in range(40)]
    text = "\n\n".join(paragraphs).strip()
    (tmp_path / "long.txt").write_text(text)
    docs = ingest_batch(tmp_path, "b", SETTINGS, context_tokens=1024).documents
    assert docs.height > 1
    assert docs["chunk_count"].unique().to_list() == [docs.height]
    assert docs["chunk_index"].to_list() == list(range(docs.height))
    for row in docs.iter_rows(named=True):
        assert text[row["char_start"] : row["char_end"]] == row["text"]
        assert row["doc_chars"] == len(text)


def test_chunk_spans_cover_text_within_bounds() -> None:
    generator = random.Random(7)
    alphabet = ["word", "tide", ".", "\n\n", " ", "lighthouse", "!", "x" * 30]
    for _ in range(300):
        text = "".join(generator.choice(alphabet) + " " for _ in range(generator.randint(0, 400)))
        size = generator.randint(20, 400)
        overlap = generator.randint(0, size - 1)
        spans = split_into_chunks(text, size, overlap)
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
        for (start, end), (next_start, _) in itertools.pairwise(spans):
            assert start < next_start <= end
        assert all(0 < end - start <= size for start, end in spans if text)
    with pytest.raises(ValueError, match="overlap"):
        split_into_chunks("text", 10, 10)


def test_bundled_samples_ingest_cleanly() -> None:
    result = ingest(sample_documents_dir())
    assert result.quarantine.height == 0
    assert result.documents["doc_id"].n_unique() == 7
