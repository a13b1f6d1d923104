"""The inbox: which names are batch keys, and where a batch's folder is (always directly inside the inbox).

Every entry point (the inbox sensor, the schedule, the CLI, `run_batches` and the `raw_documents` asset, which
is where a partition added in the UI first reaches the code) checks a key with `validate_batch_key` before
registering or reading anything, and finds the folder with `batch_folder`.

The inbox is a local folder or an object-store URI (`storage/location.py`); on an object store a batch folder is
the objects under the prefix `<inbox>/<key>/` (there are no links there).

`list_inbox` lists every batch folder with a fingerprint of its listing (no file is read), which the inbox sensor
compares with the one the batch last ran at, and when it last changed, which tells whether it has settled.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from agentinstruct_dagster.storage.location import Location, as_location, join, object_store

MAX_BATCH_KEY_BYTES = 64
FINGERPRINT_HEX_DIGITS = 12  # 48 bits: only states of one batch are compared, and the sensor cursor stays small
HIDDEN_PREFIXES = (".", "_")
BATCH_KEY_RULES = (
    f"a batch key is the name of one folder directly in the inbox: 1 to {MAX_BATCH_KEY_BYTES} bytes of UTF-8, "
    "no '/' or '\\', no control or format characters, no leading or trailing spaces, not '.' or '..' and "
    "not starting with '.' or '_' (hidden folders)"
)
MISSING_FOLDER_HINT = (
    "put the folder back, or, if the batch is registered and gone for good, unregister it: "
    "`agentinstruct forget <batch>`, or in the Dagster UI the asset raw_documents, its '⋯' menu, Delete partitions"
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
        raise BatchFolderError(f"no inbox folder for batch {key!r} under {inbox}; {MISSING_FOLDER_HINT}") from None
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
        raise BatchFolderError(f"no inbox folder for batch {key!r} under {inbox}; {MISSING_FOLDER_HINT}")
    folder = join(inbox, key)
    if found != pafs.FileType.Directory:
        raise BatchFolderError(f"the inbox entry of batch {key!r} is not a folder: {folder}")
    return str(folder)


@dataclass(frozen=True)
class InboxFolder:
    """A usable batch folder of the inbox: its key, a fingerprint of its listing and when it last changed."""

    name: str
    fingerprint: str
    changed: float

    def settled(self, settle_seconds: float, now: float) -> bool:
        """Nothing in the folder changed for `settle_seconds`."""
        return now - self.changed >= settle_seconds


@dataclass(frozen=True)
class InboxListing:
    """The inbox's usable batch folders, settled or not, and for every other folder (or link) why it is none."""

    folders: list[InboxFolder]
    refused: dict[str, str]


def list_inbox(inbox: str | Path, storage_options: Mapping[str, str] | None = None) -> InboxListing:
    """Every folder directly in the inbox, listed without reading a file: a usable one with its fingerprint, any
    other with the reason it is not a batch. An inbox that does not exist yet is empty."""
    location = as_location(inbox)
    if not isinstance(location, Path):
        return _list_stored_inbox(location, storage_options)
    if not location.is_dir():
        return InboxListing([], {})
    folders, refused = [], {}
    for entry in sorted(os.scandir(location), key=lambda entry: entry.name):
        if not (entry.is_dir(follow_symlinks=False) or entry.is_symlink()):
            continue
        try:
            folder = Path(batch_folder(location, entry.name))
        except ValueError as error:
            refused[entry.name] = str(error)
            continue
        folders.append(_local_folder(entry.name, folder))
    return InboxListing(folders, refused)


def inbox_batches(
    inbox: str | Path, settle_seconds: float, now: float | None = None, storage_options: Mapping[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """The settled batch folders of the inbox (nothing in them changed for `settle_seconds`), and for every other
    folder (or link) why it is not a batch."""
    listing = list_inbox(inbox, storage_options)
    now = time.time() if now is None else now
    settled = [folder.name for folder in listing.folders if folder.settled(settle_seconds, now)]
    return settled, list(listing.refused.values())


def fingerprint(entries: Iterable[tuple[str, int, int]]) -> str:
    """A short hash of a folder's listing: (relative path, size, mtime in ns) of each file, link or special file
    in it. Any file added, removed, renamed, resized or touched changes it; nothing is read, and the same listing
    gives the same hash on every machine and at every tick."""
    listing = json.dumps(sorted(entries), separators=(",", ":"))
    return hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest()[:FINGERPRINT_HEX_DIGITS]


def _local_folder(name: str, folder: Path) -> InboxFolder:
    """The fingerprint of a local batch folder (walked without following links) and its newest change, the
    folders' own modification times included (a deleted file changes only its folder's)."""
    changes = [os.lstat(folder).st_mtime]
    entries = []
    for parent, names, files in os.walk(folder):
        for entry in [*names, *files]:
            path = os.path.join(parent, entry)
            status = os.lstat(path)
            changes.append(status.st_mtime)
            if not stat.S_ISDIR(status.st_mode):
                entries.append((Path(path).relative_to(folder).as_posix(), status.st_size, status.st_mtime_ns))
    return InboxFolder(name, fingerprint(entries), max(changes))


def _list_stored_inbox(inbox: str, storage_options: Mapping[str, str] | None) -> InboxListing:
    """`list_inbox` on an object store, in one listing: the top-level prefixes holding objects."""
    listed = object_store(inbox, storage_options).get_file_info(
        pafs.FileSelector("", recursive=True, allow_not_found=True)
    )
    objects: dict[str, list[pafs.FileInfo]] = {}
    for info in listed:
        name, separator, _ = info.path.partition("/")
        if separator and info.type == pafs.FileType.File:
            objects.setdefault(name, []).append(info)
    folders, refused = [], {}
    for name in sorted(objects):
        try:
            validate_batch_key(name)
        except BatchKeyError as error:
            refused[name] = str(error)
            continue
        entries = [(info.path.partition("/")[2], info.size, info.mtime_ns) for info in objects[name]]
        changed = max(info.mtime.timestamp() for info in objects[name])
        folders.append(InboxFolder(name, fingerprint(entries), changed))
    return InboxListing(folders, refused)
