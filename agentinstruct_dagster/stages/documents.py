"""What reading a file yields: a Document, or a Rejection saying why (and what to do) it is not one."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import BinaryIO

EXCERPT_CHARS = 500
CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")  # control characters other than \t \n \v \f \r


@dataclass(frozen=True)
class Document:
    """A document's text with its origin; `boundaries` are the offsets where a chunk may start in preference
    (a source file's definitions), `encoding` the text encoding it was decoded from, `language` a source
    file's programming language."""

    source: str
    content_type: str
    title: str
    text: str
    encoding: str | None = None
    language: str | None = None
    boundaries: tuple[int, ...] = ()


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str
    source: str
    payload: str | None = None


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


def excerpt(content: str | bytes) -> str:
    """At most EXCERPT_CHARS characters of valid UTF-8, control characters replaced by U+FFFD."""
    if isinstance(content, bytes):
        content = content[: EXCERPT_CHARS * 4].decode("utf-8", "replace")
    return CONTROL.sub("\ufffd", content[:EXCERPT_CHARS])


def oversize_detail(size: int, limit: int) -> str:
    return f"{size} bytes, over the limit of {limit} (ingest.max_document_bytes)"


def error_text(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}"
