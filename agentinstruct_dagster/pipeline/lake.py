"""The lake resource: where every asset's Delta table, the call ledger, the reports and the inbox live."""

from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from agentinstruct_dagster.config.profiles import StorageSettings
from agentinstruct_dagster.inbox import batch_folder
from agentinstruct_dagster.llm.ledger import CallLedger
from agentinstruct_dagster.storage.delta import (
    read_batches,
    read_partition,
    read_quarantine,
    table_exists,
    write_outcome,
    write_partition,
)
from agentinstruct_dagster.storage.lease import lease_root
from agentinstruct_dagster.storage.location import Location, as_location, storage_options
from agentinstruct_dagster.storage.paths import ledger_path, table_path
from agentinstruct_dagster.tables import QUARANTINE

AssetKeyLike = dg.AssetKey | Sequence[str]


class Lake(dg.ConfigurableResource):
    """The storage root of tables (kept and quarantined rows), call ledger and reports, and the inbox of batch
    folders: each a local folder or an object-store URI (`s3://`, `gs://`, `az://`, `abfss://`, `file://`).

    The IO manager, the stages, the reports and the LLM resource's call ledger all take their location and
    storage options from this one resource.
    """

    root: str = Field(description="Folder of every Delta table: an absolute path or an object-store URI.")
    inbox: str = Field(description="Folder holding one folder per batch: an absolute path or an object-store URI.")
    storage_options: dict[str, str] = Field(
        default={},
        description="Object store options (object_store keys, e.g. aws_endpoint_url, aws_region, conditional_put) "
        "over those of the environment. S3 roots get conditional_put: etag (safe concurrent commits) unless set "
        "here. Credentials belong in the environment: resource config is shown in the UI.",
    )

    @classmethod
    def for_storage(cls, storage: StorageSettings) -> "Lake":
        """The lake of a profile's `storage` section."""
        return cls(root=str(storage.root_path), inbox=str(storage.inbox_path), storage_options=storage.storage_options)

    @property
    def location(self) -> Location:
        return as_location(self.root)

    @property
    def inbox_location(self) -> Location:
        return as_location(self.inbox)

    @property
    def options(self) -> dict[str, str]:
        """The storage options every read and write of the lake uses: the root's defaults, then `storage_options`."""
        return storage_options(self.root, self.storage_options)

    def table_path(self, key: AssetKeyLike) -> Location:
        return table_path(self.root, key)

    @property
    def ledger_path(self) -> Location:
        return ledger_path(self.root)

    def call_ledger(self, batch: str, asset: str) -> CallLedger:
        """The call ledger's rows of one batch and asset."""
        return CallLedger(self.ledger_path, batch, asset, storage_options=self.options)

    def lease_root(self) -> Path:
        """The local folder of the batches' leases (`storage/lease.py`)."""
        return lease_root(self.root)

    def batch_folder(self, batch: str) -> Location:
        """The inbox folder of `batch` (BatchKeyError or BatchFolderError if it is not a usable one)."""
        return batch_folder(self.inbox, batch, self.options)

    def write(self, key: AssetKeyLike, frame: pl.DataFrame, batch: str) -> pl.DataFrame:
        """Replace the batch's rows; returns them as stored."""
        return write_partition(self.table_path(key), frame, batch, self.options)

    def write_outcome(
        self, key: AssetKeyLike, kept: pl.DataFrame, quarantined: pl.DataFrame, batch: str
    ) -> pl.DataFrame:
        """Replace the batch's kept and quarantined rows in one commit; returns the kept rows as stored."""
        return write_outcome(self.table_path(key), kept, quarantined, batch, self.options)

    def exists(self, key: AssetKeyLike) -> bool:
        return table_exists(self.table_path(key), self.options)

    def read(self, key: AssetKeyLike, batch: str) -> pl.DataFrame:
        return read_partition(self.table_path(key), batch, self.options)

    def read_batches(self, key: AssetKeyLike, batches: list[str]) -> pl.DataFrame:
        """The kept rows of these batches; FileNotFoundError when the asset has no table."""
        return read_batches(self.table_path(key), batches, self.options)

    def read_if_exists(self, key: AssetKeyLike, batch: str, schema: pl.Schema) -> pl.DataFrame:
        """The batch's rows, or no rows when the asset has never been materialized."""
        return self.read(key, batch) if self.exists(key) else pl.DataFrame(schema=schema)

    def read_batches_if_exists(self, key: AssetKeyLike, batches: list[str], schema: pl.Schema) -> pl.DataFrame:
        """The rows of these batches, or no rows when there are none or the asset was never materialized."""
        return self.read_batches(key, batches) if batches and self.exists(key) else pl.DataFrame(schema=schema)

    def read_quarantine(self, key: AssetKeyLike, batch: str) -> pl.DataFrame:
        """The batch's quarantined rows of this asset (none when it never quarantined anything)."""
        rows = read_quarantine(self.table_path(key), batch, self.options) if self.exists(key) else pl.DataFrame()
        return rows if rows.width else pl.DataFrame(schema=QUARANTINE)
