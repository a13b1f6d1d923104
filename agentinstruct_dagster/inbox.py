"""The inbox: which names are batch keys, and where a batch's folder is (always directly inside the inbox).

Every entry point (the inbox sensor, the schedule, the CLI, `run_batches` and the `raw_documents` asset, which
is where a partition added in the UI first reaches the code) checks a key with `validate_batch_key` before
registering or reading anything, and finds the folder with `batch_folder`.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from pathlib import Path

MAX_BATCH_KEY_BYTES = 64
HIDDEN_PREFIXES = (".", "_")
BATCH_KEY_RULES = (
    f"a batch key is the name of one folder directly in the inbox: 1 to {MAX_BATCH_KEY_BYTES} bytes of UTF-8, "
    "no '/' or '\\', no control or format characters, no leading or trailing spaces, not '.' or '..' and "
    "not starting with '.' or '_' (hidden folders)"
)


class BatchKeyError(ValueError):
    """A batch key that cannot name an inbox folder: what is wrong and what is allowed."""


class BatchFolderError(ValueError):
    """A batch whose folder is missing, or is not a real folder directly inside the inbox."""


def validate_batch_key(key: str) -> str:
    """`key` unchanged if it is a usable batch key, else BatchKeyError saying what is wrong and what is allowed."""
    problem = _batch_key_problem(key)
    if problem:
        raise BatchKeyError(f"batch key {key!r} is not allowed: {problem}; {BATCH_KEY_RULES}")
    return key


def _batch_key_problem(key: str) -> str | None:
    if not key:
        return "it is empty"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_BATCH_KEY_BYTES:
        return f"it is {len(key.encode('utf-8', 'surrogatepass'))} bytes long"
    separator = next((char for char in key if char in "/\\"), None)
    if separator:
        return f"it contains the path separator {separator!r}"
    if key in (".", ".."):
        return "it names the inbox or its parent, not a folder in it"
    control = next((char for char in key if unicodedata.category(char).startswith("C")), None)
    if control:
        return f"it contains the control or format character U+{ord(control):04X}"
    if key != key.strip():
        return "it starts or ends with whitespace"
    if key.startswith(HIDDEN_PREFIXES):
        return f"it starts with {key[0]!r}, which marks a hidden folder"
    return None


def batch_folder(inbox: Path, key: str) -> Path:
    """The folder of batch `key`: a real folder (not a symbolic link) whose real path is directly inside the
    inbox's real path. BatchKeyError or BatchFolderError otherwise."""
    folder = inbox / validate_batch_key(key)
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        raise BatchFolderError(f"no inbox folder for batch {key!r} under {inbox}") from None
    if stat.S_ISLNK(mode):
        raise BatchFolderError(
            f"the inbox folder of batch {key!r} is a symbolic link ({folder} -> {os.readlink(folder)}); "
            "a batch must be a real folder inside the inbox"
        )
    if not stat.S_ISDIR(mode):
        raise BatchFolderError(f"the inbox entry of batch {key!r} is not a folder: {folder}")
    real = Path(os.path.realpath(folder))
    if real.parent != Path(os.path.realpath(inbox)):
        raise BatchFolderError(f"the folder of batch {key!r} resolves to {real}, outside the inbox {inbox}")
    return folder
