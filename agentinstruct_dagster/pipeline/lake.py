"""The lake resource: where every asset's Delta table, the call ledger and the inbox live."""

from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from agentinstruct_dagster.storage.delta import read_batches, read_partition, read_quarantine, table_exists
from agentinstruct_dagster.storage.paths import ledger_path, table_path
from agentinstruct_dagster.tables import QUARANTINE


class Lake(dg.ConfigurableResource):
    """The storage root of tables, quarantined rows and the call ledger, and the inbox of batch folders.

    The IO manager, the stages and the LLM resource's call ledger all use this one resource.
    """

    root: str = Field(description="Folder of every Delta table (absolute).")
    inbox: str = Field(description="Folder holding one folder per batch (absolute).")

    def table_path(self, key: dg.AssetKey | Sequence[str]) -> Path:
        return table_path(self.root, key)

    @property
    def ledger_path(self) -> Path:
        return ledger_path(self.root)

    def read(self, key: dg.AssetKey | Sequence[str], batch: str) -> pl.DataFrame:
        return read_partition(self.table_path(key), batch)

    def read_if_exists(self, key: dg.AssetKey | Sequence[str], batch: str, schema: pl.Schema) -> pl.DataFrame:
        """The batch's rows, or no rows when the asset has never been materialized."""
        path = self.table_path(key)
        return read_partition(path, batch) if table_exists(path) else pl.DataFrame(schema=schema)

    def read_batches_if_exists(
        self, key: dg.AssetKey | Sequence[str], batches: list[str], schema: pl.Schema
    ) -> pl.DataFrame:
        """The rows of these batches, or no rows when there are none or the asset was never materialized."""
        path = self.table_path(key)
        return read_batches(path, batches) if batches and table_exists(path) else pl.DataFrame(schema=schema)

    def read_quarantine(self, key: dg.AssetKey | Sequence[str], batch: str) -> pl.DataFrame:
        """The batch's quarantined rows of this asset (none when it never quarantined anything)."""
        path = self.table_path(key)
        rows = read_quarantine(path, batch) if table_exists(path) else pl.DataFrame()
        return rows if rows.width else pl.DataFrame(schema=QUARANTINE)
