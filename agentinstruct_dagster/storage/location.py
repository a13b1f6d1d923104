"""Where the lake and the inbox live: a local folder, or a folder (a key prefix) of an object store named by a URI.

A location is a `Path` for a local folder or file (given as a plain path or a `file://` URI) and a `str` URI for
an object store (`s3://bucket/prefix`, `gs://`, `az://`, `abfss://`, ...); parts below a root are joined with
`/` on URIs. Object stores are reached through deltalake's own object store, the one that writes the tables, so
one set of `storage_options` (object_store keys such as `aws_endpoint_url`, `aws_region`, `conditional_put`)
serves tables, call ledger, reports and inbox; credentials come from the environment (`AWS_ACCESS_KEY_ID`, ...),
and options given explicitly win over it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pyarrow.fs as pafs
from deltalake._internal import DeltaFileSystemHandler
from deltalake.fs import DeltaStorageHandler

Location = Path | str
OBJECT_STORE_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "adl", "azure", "abfs", "abfss"})
S3_SCHEMES = frozenset({"s3", "s3a"})
# Concurrent commits to one table on S3 are safe only if the object store writes a commit file with a conditional
# put (`If-None-Match: *`, fails if another writer created that version first); AWS S3 supports it since 2024.
# deltalake 1.x has no other coordination (its DynamoDB log store is gone), so S3 roots set it explicitly.
S3_COMMIT_DEFAULTS = {"conditional_put": "etag"}


def scheme(where: str | Path) -> str:
    """The URI scheme of `where` (lower case), or "" for a plain path."""
    if isinstance(where, Path) or "://" not in where:
        return ""
    return urlsplit(where).scheme.lower()


def as_location(where: str | Path) -> Location:
    """A plain path or `file://` URI as a Path; an object-store URI as given (without a trailing `/`).

    ValueError for a URI of another scheme, or a `file://` URI naming another host.
    """
    kind = scheme(where)
    if not kind:
        return Path(where)
    text = str(where)
    if kind == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{text}: a file:// URI must name a path on this machine, not host {parts.netloc!r}")
        return Path(unquote(parts.path))
    if kind not in OBJECT_STORE_SCHEMES:
        supported = ", ".join(f"{name}://" for name in sorted(OBJECT_STORE_SCHEMES | {"file"}))
        raise ValueError(f"{text}: unsupported storage URI scheme {kind!r} (use a local path or one of {supported})")
    return text.rstrip("/")


def is_object_store(where: str | Path) -> bool:
    return scheme(where) in OBJECT_STORE_SCHEMES


def join(root: str | Path, *parts: str) -> Location:
    """`root` with `parts` below it."""
    location = as_location(root)
    if isinstance(location, Path):
        return location.joinpath(*parts)
    return "/".join([location, *parts])


def location_uri(location: Location) -> str:
    """A location as a URI a user can copy or open: `file://` for a local path, the object-store URI otherwise."""
    return location.resolve().as_uri() if isinstance(location, Path) else location


def relative_name(root: str | Path, location: str | Path) -> str:
    """The `/`-separated path of `location` below `root`."""
    base, below = as_location(root), as_location(location)
    if isinstance(base, Path) and isinstance(below, Path):
        return below.relative_to(base).as_posix()
    prefix = f"{base}/"
    if not str(below).startswith(prefix):
        raise ValueError(f"{below} is not below {base}")
    return str(below)[len(prefix) :]


def storage_options(root: str | Path, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The options for a root: the scheme's defaults (S3: conditional put for safe concurrent commits), then
    `overrides` (object_store keys, with or without the `aws_`/`azure_`/`google_` prefix, any case)."""
    given = dict(overrides or {})
    defaults = S3_COMMIT_DEFAULTS if scheme(root) in S3_SCHEMES else {}
    named = {_option_name(key) for key in given}
    return {**{key: value for key, value in defaults.items() if key not in named}, **given}


def _option_name(key: str) -> str:
    name = key.lower()
    for prefix in ("aws_", "azure_", "google_"):
        name = name.removeprefix(prefix)
    return name


def object_store(root: str, options: Mapping[str, str] | None = None) -> pafs.FileSystem:
    """A pyarrow filesystem over the object-store folder `root` (paths relative to it), via deltalake."""
    return pafs.PyFileSystem(DeltaStorageHandler(root, dict(options or {})))


def write_bytes(location: str | Path, data: bytes, options: Mapping[str, str] | None = None) -> None:
    """Write a file (replacing it), creating local parent folders as needed."""
    where = as_location(location)
    if isinstance(where, Path):
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_bytes(data)
        return
    folder, name = where.rsplit("/", 1)
    # deltalake's raw output stream: through pyarrow's file wrapper (as `object_store(...).open_output_stream`)
    # a write hands it a pyarrow Buffer, which it refuses (it takes bytes). The object exists once closed.
    stream = DeltaFileSystemHandler(folder, dict(options or {})).open_output_stream(name, None)
    stream.write(data)
    stream.close()
