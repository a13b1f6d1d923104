"""Bytes to text: the encoding of a text file detected and decoded, or why the bytes are not text.

A byte order mark decides first (UTF-8, UTF-16 or UTF-32, dropped from the text); without one, NUL bytes mean
binary, valid UTF-8 is UTF-8, and anything else is what charset-normalizer finds most plausible, if it recognises
the text's language (the decoded text is then coherent, not merely decodable). Encodings are named as Python
names them (`utf-8`, `utf-16`, `cp1252`, `iso8859-1`...); among encodings giving the same text, the commonest is
named. Text that is not decoded with confidence is `unknown_encoding`, with what to do.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from charset_normalizer import from_bytes

from agentinstruct_dagster.stages.documents import CONTROL, Rejection, excerpt

MAX_CONTROL_SHARE = 0.1
# Longest mark first: the UTF-32-LE mark starts with the UTF-16-LE one.
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Named in preference when several encodings decode the bytes to the same text.
COMMON_ENCODINGS = ("utf-8", "cp1252", "iso8859-1", "iso8859-15", "cp1251", "cp1250", "shift_jis", "gb18030")
RESAVE = "re-save it as UTF-8"


@dataclass(frozen=True)
class Decoded:
    text: str
    encoding: str


def decode_text(data: bytes, source: str) -> Decoded | Rejection:
    """The text of a file's bytes and the encoding it was read in, or why it is not text."""
    for mark, codec in BYTE_ORDER_MARKS:
        if data.startswith(mark):
            return _decode_marked(data, codec, source)
    if b"\x00" in data:
        return Rejection("binary", f"contains NUL bytes (first at byte {data.index(0)})", source, excerpt(data))
    try:
        return Decoded(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError as error:
        position = error.start
    match = from_bytes(data).best()
    if match is None or not match.percent_coherence:
        guess = f" (at best {_name(match.encoding)}, in no recognised language)" if match else ""
        detail = f"not UTF-8 (invalid at byte {position}) and no encoding detected with confidence{guess}: {RESAVE}"
        return Rejection("unknown_encoding", detail, source, excerpt(data[max(0, position - 100) :]))
    return Decoded(str(match), _preferred_name(match.could_be_from_charset))


def _decode_marked(data: bytes, codec: str, source: str) -> Decoded | Rejection:
    encoding = codecs.lookup(codec.removesuffix("-sig")).name
    try:
        return Decoded(data.decode(codec).removeprefix("\ufeff"), encoding)
    except UnicodeDecodeError as error:
        detail = f"starts with a {encoding} byte order mark but is not valid {encoding} ({error.reason}): {RESAVE}"
        return Rejection("unknown_encoding", detail, source, excerpt(data))


def _preferred_name(candidates: list[str]) -> str:
    names = [_name(candidate) for candidate in candidates]
    return next((name for name in COMMON_ENCODINGS if name in names), names[0])


def _name(encoding: str) -> str:
    return codecs.lookup(encoding).name


def checked_text(text: str, source: str) -> str | Rejection:
    """The normalised text (line breaks as \\n, outer whitespace stripped), or why it is not a document."""
    if "\x00" in text:
        return Rejection("binary", "contains NUL characters", source, excerpt(text))
    controls = sum(1 for _ in CONTROL.finditer(text))
    if controls > MAX_CONTROL_SHARE * len(text):
        detail = f"{controls} of {len(text)} characters are control characters: not text"
        return Rejection("binary", detail, source, excerpt(text))
    normalised = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    return normalised or Rejection("empty", f"empty or whitespace only ({len(text)} characters)", source)
