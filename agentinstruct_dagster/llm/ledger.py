"""The call ledger: a Delta table of every model call, which is also the cache of successful answers.

Rows are buffered and appended in small commits (every `flush_seconds`), so a crash loses only the calls
of the last few seconds; a re-run finds every flushed success and does not pay for it again.

In batch mode the ledger also has a row per request line of a provider batch (`custom_id`, the content hash of
its body), with the batch's id, file ids and state: `batch_submitted` when the batch is created (flushed at
once), then `batch_answered` (the answer, paid) or `batch_error` (its failure class) when it is collected. A
re-run attaches to submitted batches instead of submitting again and reuses answered lines. Call rows have
status `ok` or `failed`; `call_rows` selects them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from agentinstruct_dagster.storage.delta import BATCH, append_rows, read_partition, table_exists

LEDGER = pl.Schema(
    {
        "request_hash": pl.String,
        "batch": pl.String,
        "asset": pl.String,
        "agent": pl.String,
        "model": pl.String,
        "status": pl.String,
        "error_class": pl.String,
        "attempts": pl.Int64,
        "latency_seconds": pl.Float64,
        "prompt_tokens": pl.Int64,
        "completion_tokens": pl.Int64,
        "cost_usd": pl.Float64,
        "content": pl.String,
        "recorded_at": pl.Datetime("us", "UTC"),
        "custom_id": pl.String,
        "provider_batch_id": pl.String,
        "input_file_id": pl.String,
        "output_file_id": pl.String,
        "error_file_id": pl.String,
        "batch_state": pl.String,
    }
)
OK = "ok"
FAILED = "failed"
BATCH_SUBMITTED = "batch_submitted"
BATCH_ANSWERED = "batch_answered"
BATCH_ERROR = "batch_error"
BATCH_LINE_STATUSES = (BATCH_SUBMITTED, BATCH_ANSWERED, BATCH_ERROR)


@dataclass(frozen=True)
class SubmittedLine:
    """A request line of a provider batch the ledger saw submitted but not collected."""

    custom_id: str
    provider_batch_id: str
    input_file_id: str
    model: str


def call_rows(ledger: pl.DataFrame) -> pl.DataFrame:
    """The rows of model calls (status ok or failed), without the rows of batch request lines."""
    return ledger.filter(pl.col("status").is_in([OK, FAILED])) if ledger.height else ledger


class CallLedger:
    """The ledger rows of one batch: cached successes to look up, new rows to append. The engines of a run
    share one ledger per batch (read once); each call's row names its asset (`asset` is the default)."""

    def __init__(
        self,
        path: str | Path,
        batch: str,
        asset: str,
        flush_seconds: float = 2.0,
        storage_options: Mapping[str, str] | None = None,
    ) -> None:
        """The ledger table at `path` (a local folder or an object-store URI reached with `storage_options`)."""
        self.path, self.batch, self.asset, self.flush_seconds = path, batch, asset, flush_seconds
        self.storage_options = dict(storage_options or {})
        self._buffer: list[dict[str, Any]] = []
        self._sessions = 0
        self._flusher: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._successes: dict[str, dict[str, Any]] = {}
        self._batch_lines = pl.DataFrame(schema=LEDGER)
        if table_exists(path, self.storage_options):
            rows = read_partition(path, batch, self.storage_options)
            done = rows.filter(pl.col("status") == OK)
            self._successes = {row["request_hash"]: row for row in done.iter_rows(named=True)}
            if "custom_id" in rows.columns:  # older ledgers have no batch lines
                self._batch_lines = rows.filter(pl.col("status").is_in(BATCH_LINE_STATUSES))

    def lookup(self, request_hash: str) -> dict[str, Any] | None:
        return self._successes.get(request_hash)

    def batch_answers(self) -> dict[str, dict[str, Any]]:
        """The answer body of every batch request line answered (and paid) before, by custom_id."""
        answered = self._batch_lines.filter(pl.col("status") == BATCH_ANSWERED)
        return {row["custom_id"]: json.loads(row["content"]) for row in answered.iter_rows(named=True)}

    def submitted_custom_ids(self) -> list[str]:
        """The custom_id of every request line submitted in a batch (once per submission)."""
        return self._batch_lines.filter(pl.col("status") == BATCH_SUBMITTED)["custom_id"].to_list()

    def submitted_lines(self) -> list[SubmittedLine]:
        """Request lines of provider batches submitted but never collected (a run stopped while they ran)."""
        lines = self._batch_lines
        collected = lines.filter(pl.col("status") != BATCH_SUBMITTED).select("custom_id", "provider_batch_id")
        open_lines = lines.filter(pl.col("status") == BATCH_SUBMITTED).join(
            collected, on=["custom_id", "provider_batch_id"], how="anti"
        )
        return [
            SubmittedLine(row["custom_id"], row["provider_batch_id"], row["input_file_id"], row["model"])
            for row in open_lines.unique(["custom_id", "provider_batch_id"]).iter_rows(named=True)
        ]

    def record(self, **row: Any) -> None:
        row = {"asset": self.asset, **row, BATCH: self.batch, "recorded_at": datetime.now(UTC)}
        self._buffer.append(row)
        if row["status"] == OK:
            self._successes[row["request_hash"]] = row

    def _drain(self) -> pl.DataFrame | None:
        rows, self._buffer = self._buffer, []
        return pl.DataFrame(rows, schema=LEDGER) if rows else None

    def flush(self) -> None:
        if (rows := self._drain()) is not None:
            append_rows(self.path, rows, self.storage_options)

    async def flush_now(self) -> None:
        """Write the buffered rows at once (drained on the event loop's thread, appended in a worker thread);
        raises if the append fails, with the rows put back."""
        if (rows := self._drain()) is not None:
            try:
                await asyncio.to_thread(append_rows, self.path, rows, self.storage_options)
            except Exception:
                self._buffer[:0] = rows.to_dicts()
                raise

    @asynccontextmanager
    async def flushing(self) -> AsyncIterator[None]:
        """While any session of the event loop uses the ledger: flush every `flush_seconds` (one flusher for
        them all, so one small commit at a time), and once more when the last session ends."""
        self._sessions += 1
        if self._flusher is None:
            self._stop = asyncio.Event()
            self._flusher = asyncio.create_task(self._flush_periodically(self._stop))
        try:
            yield
        finally:
            self._sessions -= 1
            if self._sessions == 0:
                # Detach the flusher before awaiting (a session starting meanwhile starts a flusher of its own), and
                # stop it between appends, never during one: an append cut off by a cancel could be lost unseen.
                flusher, self._flusher = self._flusher, None
                if flusher is not None:
                    self._stop.set()
                    await flusher
                await asyncio.to_thread(self.flush)

    async def _flush_periodically(self, stop: asyncio.Event) -> None:
        """Flush every `flush_seconds` until `stop` is set; a failed append puts its rows back, so the next flush
        (at the latest the last session's, which raises if it fails) writes them."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.flush_seconds)
            if (rows := self._drain()) is not None:
                try:
                    await asyncio.to_thread(append_rows, self.path, rows, self.storage_options)
                except Exception:
                    self._buffer[:0] = rows.to_dicts()
