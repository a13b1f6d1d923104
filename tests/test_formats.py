"""Reading real corpora: detected encodings, HTML main text, PDF text layers, source code chunked on definitions,
Hugging Face-style shards with a configurable text column; what cannot be read is quarantined with what to do."""

from __future__ import annotations

import io
import itertools
import shutil
from pathlib import Path

import polars as pl
import pytest
from pypdf import PdfReader, PdfWriter

from agentinstruct_dagster.config.profiles import IngestSettings
from agentinstruct_dagster.stages.ingest import IngestResult, ingest_batch
from agentinstruct_dagster.storage.delta import read_partition, write_outcome, write_partition
from agentinstruct_dagster.tables import RAW_DOCUMENTS

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
PDF_PAGES = [
    ["The Astrolabe", "An astrolabe is a model of the sky engraved in brass.", "Sailors used it to find latitude."],
    ["Reading the rete", "The rete is a pierced plate whose pointers mark the brightest stars."],
]


def minimal_pdf(pages: list[list[str]], title: str | None = None) -> bytes:
    """A valid PDF whose pages hold the given lines of ASCII text in Helvetica (a text layer), with a title."""
    font, first_page = 3, 4
    objects = {
        1: "<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{' '.join(f'{first_page + 2 * i} 0 R' for i in range(len(pages)))}]"
        f" /Count {len(pages)} >>",
        font: "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for index, lines in enumerate(pages):
        page, content = first_page + 2 * index, first_page + 2 * index + 1
        shown = " T* ".join(f"({pdf_string(line)}) Tj" for line in lines)
        stream = f"BT /F1 12 Tf 16 TL 72 720 Td {shown} ET"
        objects[page] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 {font} 0 R >> >>"
            f" /Contents {content} 0 R >>"
        )
        objects[content] = f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream"
    info = len(objects) + 1
    objects[info] = f"<< /Title ({title}) >>" if title else "<< >>"
    body, offsets = b"%PDF-1.4\n", {}
    for number, value in sorted(objects.items()):
        offsets[number] = len(body)
        body += f"{number} 0 obj\n{value}\nendobj\n".encode("ascii")
    xref = len(body)
    body += f"xref\n0 {info + 1}\n0000000000 65535 f \n".encode("ascii")
    body += "".join(f"{offsets[number]:010d} 00000 n \n" for number in range(1, info + 1)).encode("ascii")
    trailer = f"trailer\n<< /Size {info + 1} /Root 1 0 R /Info {info} 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    return body + trailer.encode("ascii")


def pdf_string(text: str) -> str:
    """`text` escaped for a PDF literal string."""
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def rewritten_pdf(data: bytes, **encryption: str) -> bytes:
    """`data` rewritten by pypdf, encrypted with `encryption` (user_password, owner_password) if given."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    if encryption:
        writer.encrypt(algorithm="AES-256", **encryption)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def scanned_pdf() -> bytes:
    """A PDF of one page without any text (as a scan without OCR is)."""
    writer = PdfWriter()
    writer.add_blank_page(width=612, height=792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def ingest(folder: Path, context_tokens: int = 8192, **settings: object) -> IngestResult:
    return ingest_batch(folder, "b", IngestSettings(**settings), context_tokens=context_tokens)


def by_source(frame: pl.DataFrame) -> dict[str, dict[str, object]]:
    return {row["source"]: row for row in frame.iter_rows(named=True)}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    shutil.copytree(FIXTURES, folder)
    return folder


def test_committed_pdf_sample_is_the_generated_one() -> None:
    assert (FIXTURES / "astrolabe.pdf").read_bytes() == minimal_pdf(PDF_PAGES, title="The Astrolabe Explained")


def test_each_format_is_read_with_its_encoding_language_and_title(corpus: Path) -> None:
    result = ingest(corpus, text_field="content", title_field="name", source_field="url")
    docs = by_source(result.documents.filter(pl.col("chunk_index") == 0))
    assert result.documents.schema == RAW_DOCUMENTS
    described = {source: (row["content_type"], row["encoding"], row["language"]) for source, row in docs.items()}
    assert described == {
        "astrolabe.pdf": ("pdf", None, None),
        "debounce.js": ("code", "utf-8", "javascript"),
        "https://example.org/abacus (shard.jsonl#L1)": ("jsonl", "utf-8", None),
        "https://example.org/slide-rule (shard.jsonl#L2)": ("jsonl", "utf-8", None),
        "marees_cp1252.txt": ("txt", "cp1252", None),
        "page.html": ("html", "utf-8", None),
        "starter_utf16.txt": ("txt", "utf-16", None),
        "token_bucket.py": ("code", "utf-8", "python"),
    }
    titles = {source: row["title"] for source, row in docs.items()}
    assert titles["page.html"] == "How a Water Clock Keeps Time"
    assert titles["astrolabe.pdf"] == "The Astrolabe Explained"
    assert titles["https://example.org/abacus (shard.jsonl#L1)"] == "The abacus"
    assert titles["https://example.org/slide-rule (shard.jsonl#L2)"] == "shard"
    assert titles["token_bucket.py"] == "token_bucket"
    assert docs["starter_utf16.txt"]["text"].startswith("Keeping a Sourdough Starter\n\nA sourdough starter")
    assert "\ufeff" not in docs["starter_utf16.txt"]["text"] and "“refresh”" in docs["starter_utf16.txt"]["text"]
    assert "Deux fois par jour, la mer monte" in docs["marees_cp1252.txt"]["text"]
    assert "marées de vives-eaux" in docs["marees_cp1252.txt"]["text"]
    assert docs["astrolabe.pdf"]["text"] == (
        "The Astrolabe\nAn astrolabe is a model of the sky engraved in brass.\nSailors used it to find latitude."
        "\n\nReading the rete\nThe rete is a pierced plate whose pointers mark the brightest stars."
    )
    shard = by_source(result.quarantine)["shard.jsonl#L3"]
    assert shard["reason"] == "malformed_record" and shard["detail"].startswith("no `content` field")
    assert result.quarantine.height == 1


def test_html_keeps_the_main_text_without_boilerplate(corpus: Path) -> None:
    page = by_source(ingest(corpus).documents)["page.html"]
    text = str(page["text"])
    assert text.startswith("# How a Water Clock Keeps Time\n\nA water clock, or clepsydra")
    assert "## The constant-head tank" in text and text.endswith("in the thirteenth century.")
    for boilerplate in ("Plan your visit", "Museum shop", "cookies", "Copyright", "Privacy policy", "analytics"):
        assert boilerplate not in text, boilerplate


def test_source_code_is_chunked_on_definitions(corpus: Path) -> None:
    docs = ingest(corpus, context_tokens=150, chunk_overlap_chars=50).documents  # chunks of at most 300 characters
    python = (corpus / "token_bucket.py").read_text().strip()
    chunks = docs.filter(pl.col("source") == "token_bucket.py")
    starts = chunks["char_start"].to_list()
    assert len(starts) > 3 and max(chunks["text"].str.len_chars()) <= 300
    # Chunks start at definitions; only a definition longer than a chunk (the class, wait_for) is split inside.
    heads = ("@dataclass", "# Waiting", "def burst", "async def")
    definitions = [0, *(python.index(line) for line in heads), len(python)]
    long_ones = [(start, end) for start, end in itertools.pairwise(definitions) if end - start > 300]
    inside = [start for start in starts if start not in definitions]
    assert inside and len(long_ones) == 2 and set(definitions[:-1]) <= set(starts)
    assert all(any(begin < start < end for begin, end in long_ones) for start in inside)
    for row in chunks.iter_rows(named=True):
        assert python[row["char_start"] : row["char_end"]] == row["text"]
    javascript = (corpus / "debounce.js").read_text().strip()
    js_starts = docs.filter(pl.col("source") == "debounce.js")["char_start"].to_list()
    assert javascript.index("// Runs `fn` once") in js_starts and javascript.index("/**\n * Runs") in js_starts
    js_heads = ("const DEFAULT", "// Runs", "/**", "class ", "module.")
    assert set(js_starts) <= {0, *(javascript.index(line) for line in js_heads)}


def test_a_file_that_fits_is_one_chunk_and_prose_is_unchanged(corpus: Path) -> None:
    docs = ingest(corpus).documents
    assert docs.filter(pl.col("source") == "token_bucket.py")["chunk_count"].to_list() == [1]
    assert (docs["chunk_count"] == 1).all()


def test_unreadable_variants_are_quarantined_with_what_to_do(tmp_path: Path) -> None:
    pdf = minimal_pdf(PDF_PAGES, title="Locked")
    (tmp_path / "locked.pdf").write_bytes(rewritten_pdf(pdf, user_password="secret", owner_password="owner"))
    (tmp_path / "owner_only.pdf").write_bytes(rewritten_pdf(pdf, user_password="", owner_password="owner"))
    (tmp_path / "scan.pdf").write_bytes(scanned_pdf())
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really a pdf")
    (tmp_path / "big.pdf").write_bytes(pdf + b"%" * 2_000)
    (tmp_path / "nav_only.html").write_text(
        "<html><head><title>Shop</title></head><body><nav><a href=/>Home</a> <a href=/a>About us</a></nav>"
        "<div class=cookie>We use cookies. Accept all cookies.</div><footer>Copyright 2024. Privacy policy.</footer>"
        "</body></html>"
    )
    (tmp_path / "short_latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00")
    (tmp_path / "archive.txt").write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00")
    (tmp_path / "report.docx").write_bytes(b"PK\x03\x04")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    (tmp_path / "script.py").write_bytes(b"\xff\xfe\x00\xd8")
    result = ingest(tmp_path, max_document_bytes=max(len(pdf) + 1_000, 2_000))
    rows = by_source(result.quarantine)
    expected = {
        "locked.pdf": ("encrypted_pdf", "qpdf --decrypt"),
        "scan.pdf": ("no_text_layer", "run OCR on it first"),
        "broken.pdf": ("malformed_pdf", "re-export it as PDF"),
        "big.pdf": ("oversize", "ingest.max_document_bytes"),
        "nav_only.html": ("no_main_text", "save its article as text"),
        "short_latin1.txt": ("unknown_encoding", "re-save it as UTF-8"),
        "image.txt": ("binary", "NUL bytes"),
        "archive.txt": ("binary", "NUL bytes"),
        "report.docx": ("unsupported_type", "save it as PDF or text"),
        "table.csv": ("unsupported_type", "convert it to .parquet or .jsonl"),
        "script.py": ("unknown_encoding", "re-save it as UTF-8"),
    }
    assert {source: row["reason"] for source, row in rows.items()} == {k: v[0] for k, v in expected.items()}
    for source, (_, advice) in expected.items():
        assert advice in rows[source]["detail"], (source, rows[source]["detail"])
    assert result.documents["source"].unique().to_list() == ["owner_only.pdf"]
    assert result.documents["title"].to_list() == ["Locked"]


def test_shard_columns_are_configurable(tmp_path: Path) -> None:
    frame = pl.DataFrame({"content": ["A parquet row of text."], "name": ["Row title"], "url": ["https://x.org/1"]})
    frame.write_parquet(tmp_path / "shard.parquet")
    pl.DataFrame({"text": ["Only a text column."]}).write_parquet(tmp_path / "plain.parquet")
    result = ingest(tmp_path, text_field="content", title_field="name", source_field="url")
    row = by_source(result.documents)["https://x.org/1 (shard.parquet#row0)"]
    assert (row["title"], row["text"], row["encoding"]) == ("Row title", "A parquet row of text.", None)
    detail = by_source(result.quarantine)["plain.parquet"]["detail"]
    assert detail.startswith("parquet has no `content` column (ingest.text_field")
    defaults = ingest(tmp_path)
    assert by_source(defaults.quarantine)["shard.parquet"]["detail"].startswith("parquet has no `text` column")


def test_a_lake_written_before_encoding_and_language_still_reads_and_rewrites(corpus: Path, tmp_path: Path) -> None:
    table = tmp_path / "lake" / "raw_documents"
    documents = ingest(corpus).documents
    old = documents.drop("encoding", "language").with_columns(pl.lit("old").alias("batch"))
    write_partition(table, old, "old")  # as the pipeline wrote it before the columns existed
    write_outcome(table, documents, ingest(corpus).quarantine, "new")
    assert read_partition(table, "old")["encoding"].is_null().all()
    assert read_partition(table, "new").sort("id")["encoding"].to_list() == documents.sort("id")["encoding"].to_list()
    write_outcome(table, documents.with_columns(pl.lit("old").alias("batch")), documents.clear(0), "old")
    rewritten = read_partition(table, "old")
    assert set(rewritten["language"].drop_nulls()) == {"python", "javascript"}
    assert rewritten.height == documents.height
