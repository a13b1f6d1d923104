"""The inbox: which names are batch keys, and where a batch's folder is (always directly inside the inbox).

Every entry point (the inbox sensor, the schedule, the CLI, `run_batches` and the `raw_documents` asset, which
is where a partition added in the UI first reaches the code) checks a key with `validate_batch_key` before
registering or reading anything, and finds the folder with `batch_folder`.

The inbox is a local folder or an object-store URI (`storage/location.py`); on an object store a batch folder is
the objects under the prefix `<inbox>/<key>/` (there are no links there).
"""

from __future__ import annotations

import os
import stat
import time
import unicodedata
from collections.abc import Mapping
from pathlib import Path

import pyarrow.fs as pafs

from agentinstruct_dagster.storage.location import Location, as_location, join, object_store

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


def batch_folder(inbox: str | Path, key: str, storage_options: Mapping[str, str] | None = None) -> Location:
    """The folder of batch `key`: a real folder (not a symbolic link) whose real path is directly inside the
    inbox's real path (on an object store: a prefix holding objects). BatchKeyError or BatchFolderError otherwise."""
    location = as_location(inbox)
    if not isinstance(location, Path):
        return _stored_batch_folder(location, validate_batch_key(key), storage_options)
    inbox = location
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


def _stored_batch_folder(inbox: str, key: str, storage_options: Mapping[str, str] | None) -> str:
    found = object_store(inbox, storage_options).get_file_info(key).type
    if found == pafs.FileType.NotFound:
        raise BatchFolderError(f"no inbox folder for batch {key!r} under {inbox}")
    folder = join(inbox, key)
    if found != pafs.FileType.Directory:
        raise BatchFolderError(f"the inbox entry of batch {key!r} is not a folder: {folder}")
    return str(folder)


def inbox_batches(
    inbox: str | Path, settle_seconds: float, now: float | None = None, storage_options: Mapping[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """The settled batch folders of the inbox (nothing in them changed for `settle_seconds`), and for every other
    folder (or link) why it is not a batch."""
    location = as_location(inbox)
    now = time.time() if now is None else now
    if not isinstance(location, Path):
        return _stored_inbox_batches(location, settle_seconds, now, storage_options)
    if not location.is_dir():
        return [], []
    ready, refused = [], []
    for entry in sorted(os.scandir(location), key=lambda entry: entry.name):
        if not (entry.is_dir(follow_symlinks=False) or entry.is_symlink()):
            continue
        try:
            folder = batch_folder(location, entry.name)
        except ValueError as error:
            refused.append(str(error))
            continue
        if now - _newest_change(Path(folder)) >= settle_seconds:
            ready.append(entry.name)
    return ready, refused


def _newest_change(folder: Path) -> float:
    """The newest modification time of the folder and everything in it, links not followed."""
    times = [os.lstat(folder).st_mtime]
    for parent, names, files in os.walk(folder):
        times.extend(os.lstat(os.path.join(parent, name)).st_mtime for name in [*names, *files])
    return max(times)


def _stored_inbox_batches(
    inbox: str, settle_seconds: float, now: float, storage_options: Mapping[str, str] | None
) -> tuple[list[str], list[str]]:
    """`inbox_batches` on an object store: the top-level folders, settled when their newest object is."""
    listed = object_store(inbox, storage_options).get_file_info(
        pafs.FileSelector("", recursive=True, allow_not_found=True)
    )
    newest: dict[str, float] = {}
    for info in listed:
        name, separator, _ = info.path.partition("/")
        if separator and info.type == pafs.FileType.File:
            newest[name] = max(newest.get(name, 0.0), info.mtime.timestamp())
    ready, refused = [], []
    for name in sorted(newest):
        try:
            validate_batch_key(name)
        except BatchKeyError as error:
            refused.append(str(error))
            continue
        if now - newest[name] >= settle_seconds:
            ready.append(name)
    return ready, refused
