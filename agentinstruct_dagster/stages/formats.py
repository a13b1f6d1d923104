"""Readers of whole-file formats: a file's bytes (within `max_document_bytes`) to one Document, or a Rejection
whose detail says what to do.

- text (`.txt`, `.md`): encoding detected (`text_encoding`); a Markdown file's title is its first `# ` heading;
- HTML (`.html`, `.htm`): encoding detected, then the main text extracted by trafilatura (navigation, footers,
  cookie banners and other boilerplate removed; favouring precision), as Markdown; the title is the page's, from
  its metadata (`<title>`, Open Graph, its one `<h1>`...);
- PDF (`.pdf`): pypdf's text of each page, pages separated by a blank line; the title from the PDF's metadata; an
  encrypted PDF is read when its user password is empty;
- source code (`source_code.CODE_SUFFIXES`): encoding detected, the language named by pygments, chunk boundaries
  at top-level definitions.
A document without a title of its own is titled by its file's stem.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import trafilatura
from pypdf import PasswordType, PdfReader

from agentinstruct_dagster.stages.documents import Document, DocumentFile, Rejection, error_text, excerpt
from agentinstruct_dagster.stages.source_code import code_lexer, definition_starts, language_name
from agentinstruct_dagster.stages.text_encoding import checked_text, decode_text

MARKDOWN_TITLE = re.compile(r"^#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
OCR_HINT = "run OCR on it first (e.g. `ocrmypdf --sidecar out.txt in.pdf out.pdf`) and add the text instead"

# (the file's bytes, its path relative to the batch folder, the file) -> a document or why not.
Reader = Callable[[bytes, str, DocumentFile], Document | Rejection]


def read_text(kind: str) -> Reader:
    """The reader of plain text (`txt`) or Markdown (`md`)."""

    def read(data: bytes, source: str, file: DocumentFile) -> Document | Rejection:
        decoded = _decoded(data, source)
        if isinstance(decoded, Rejection):
            return decoded
        text, encoding = decoded
        title = _markdown_title(text) if kind == "md" else None
        return Document(source, kind, title or file.stem, text, encoding=encoding)

    return read


def read_html(data: bytes, source: str, file: DocumentFile) -> Document | Rejection:
    decoded = decode_text(data, source)
    if isinstance(decoded, Rejection):
        return decoded
    main = trafilatura.extract(decoded.text, output_format="markdown", include_comments=False, favor_precision=True)
    text = checked_text(main or "", source)
    if isinstance(text, Rejection):
        detail = "no main text found on the page (navigation, boilerplate or scripts only): save its article as text"
        return Rejection("no_main_text", detail, source, excerpt(decoded.text))
    metadata = trafilatura.extract_metadata(decoded.text)
    title = metadata.title if metadata and metadata.title else file.stem
    return Document(source, "html", title.strip(), text, encoding=decoded.encoding)


def read_pdf(data: bytes, source: str, file: DocumentFile) -> Document | Rejection:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            detail = "encrypted PDF (needs a password): save an unencrypted copy (e.g. `qpdf --decrypt`) and add that"
            return Rejection("encrypted_pdf", detail, source)
        pages = [page.extract_text() for page in reader.pages]
        title = reader.metadata.title if reader.metadata else None
    except Exception as error:  # pypdf raises many types on damaged files: the file is unreadable, not the batch
        detail = f"unreadable PDF ({error_text(error)}): re-export it as PDF, or save it as text"
        return Rejection("malformed_pdf", detail, source, excerpt(data))
    text = checked_text("\n\n".join(page.strip() for page in pages if page.strip()), source)
    if isinstance(text, Rejection):
        detail = f"no text layer in its {len(pages)} page(s) (a scan?): {OCR_HINT}"
        return Rejection("no_text_layer", detail, source)
    title = title.strip() if isinstance(title, str) else ""
    return Document(source, "pdf", title or file.stem, text)


def read_code(data: bytes, source: str, file: DocumentFile) -> Document | Rejection:
    decoded = _decoded(data, source)
    if isinstance(decoded, Rejection):
        return decoded
    text, encoding = decoded
    lexer = code_lexer(file.name, text)
    if lexer is None:
        detail = f"no programming language known for {file.name}: rename it with its language's suffix"
        return Rejection("unsupported_type", detail, source)
    return Document(
        source,
        "code",
        file.stem,
        text,
        encoding=encoding,
        language=language_name(lexer),
        boundaries=definition_starts(text, lexer),
    )


def _decoded(data: bytes, source: str) -> tuple[str, str] | Rejection:
    """The checked text of a file's bytes and their encoding, or why they are not text."""
    decoded = decode_text(data, source)
    if isinstance(decoded, Rejection):
        return decoded
    text = checked_text(decoded.text, source)
    return text if isinstance(text, Rejection) else (text, decoded.encoding)


def _markdown_title(text: str) -> str | None:
    match = MARKDOWN_TITLE.search(text)
    return match.group(1).strip() if match else None

