"""Auditing the lake: a batch's quarantined rows across every stage, and the lineage chain of any row id.

Generic over the pipeline's asset keys (in pipeline order) and the `parent_id` links between rows: a chain is
followed up through each row's parent to the source document and down through the rows derived from it until
the training pair, a quarantine row or a fork. Tables are read with lazy scans filtered on `batch`, `id` or
`parent_id`, so a trace reads only the rows of its chain.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from agentinstruct_dagster.storage.delta import scan, scan_quarantine, table_exists
from agentinstruct_dagster.storage.location import Location, as_location
from agentinstruct_dagster.storage.paths import table_path

QUARANTINE_COLUMNS = ["stage", "reason", "id", "parent_id", "detail", "source"]
# Row facts shown on a trace step's first line, when the row has them.
FACTS = ("agent", "model", "prompt_version", "round", "transformation", "instruction_type", "split", "score")
TEXT_WIDTH = 160


def shorten(text: str, width: int = 600) -> str:
    """`text` on one line, cut at a word boundary to at most `width` characters."""
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder=" …")


@dataclass(frozen=True)
class Table:
    """An asset's kept rows, or its quarantined rows; `position` is the asset's place in pipeline order."""

    key: dg.AssetKey
    position: int
    quarantine: bool = False

    @property
    def name(self) -> str:
        return ("quarantine/" if self.quarantine else "") + self.key.to_user_string()

    @property
    def skill(self) -> str | None:
        return self.key.path[0] if len(self.key.path) > 1 else None


@dataclass(frozen=True)
class Step:
    """One row of a lineage chain and the table holding it."""

    table: Table
    row: dict[str, Any]

    @property
    def id(self) -> str:
        return self.row["id"]

    @property
    def skill(self) -> str | None:
        return self.table.skill or self.row.get("skill")


@dataclass(frozen=True)
class Trace:
    """A row's chain, source document first; `forks` are the rows derived from the last step when there are
    several (the chain branches there); `other_batches` hold the same id too."""

    target: Step
    batch: str
    steps: list[Step]
    forks: list[Step]
    other_batches: list[str]


class UnknownBatchError(LookupError):
    """No table of the lake has a row of the batch."""


class LakeAudit:
    """Filtered lazy reads of every asset's kept and quarantined rows under a storage root (a local folder or an
    object-store URI, reached with `storage_options`)."""

    def __init__(
        self, root: str | Path, keys: Sequence[dg.AssetKey], storage_options: Mapping[str, str] | None = None
    ) -> None:
        self.root = as_location(root)
        self.storage_options = dict(storage_options or {})
        self.tables = [Table(key, position) for position, key in enumerate(keys)]
        self.quarantines = [Table(key, position, quarantine=True) for position, key in enumerate(keys)]
        self._scans: dict[Table, pl.LazyFrame | None] = {}

    def path(self, table: Table) -> Location:
        return table_path(self.root, table.key)

    def table(self, key: dg.AssetKey) -> Table:
        return next(table for table in self.tables if table.key == key)

    def scan(self, table: Table) -> pl.LazyFrame | None:
        """The table's lazy scan, or None when it has never been written."""
        if table not in self._scans:
            path, options = self.path(table), self.storage_options
            if not table_exists(path, options):
                self._scans[table] = None
            else:
                self._scans[table] = scan_quarantine(path, options) if table.quarantine else scan(path, options)
        return self._scans[table]

    def columns(self, table: Table) -> list[str]:
        lazy = self.scan(table)
        return [] if lazy is None else lazy.collect_schema().names()

    def rows(self, table: Table, predicate: pl.Expr, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """The table's rows matching `predicate` (only `columns` that exist, when given); none if no table."""
        lazy = self.scan(table)
        if lazy is None:
            return pl.DataFrame()
        lazy = lazy.filter(predicate)
        if columns is not None:
            lazy = lazy.select([name for name in columns if name in self.columns(table)])
        return lazy.collect()

    def partition(self, table: Table, batch: str, columns: Sequence[str] | None = None) -> pl.DataFrame:
        return self.rows(table, pl.col("batch") == batch, columns)

    def count(self, table: Table, batch: str) -> int:
        lazy = self.scan(table)
        return 0 if lazy is None else lazy.filter(pl.col("batch") == batch).select(pl.len()).collect().item()

    def has_batch(self, batch: str) -> bool:
        return any(self.count(table, batch) for table in [*self.tables, *self.quarantines])

    def known_batches(self) -> list[str]:
        found: set[str] = set()
        for table in [*self.tables, *self.quarantines]:
            lazy = self.scan(table)
            if lazy is not None:
                found.update(lazy.select(pl.col("batch").unique()).collect()["batch"].to_list())
        return sorted(found)

    def require_batch(self, batch: str) -> None:
        if not self.has_batch(batch):
            known = ", ".join(repr(name) for name in self.known_batches()) or "none"
            raise UnknownBatchError(f"no rows of batch {batch!r} in the lake at {self.root} (batches there: {known})")

    def quarantined(self, batch: str, columns: Sequence[str] = QUARANTINE_COLUMNS) -> pl.DataFrame:
        """Every stage's quarantine rows of the batch, in pipeline order."""
        parts = [self.partition(table, batch, columns) for table in self.quarantines]
        parts = [part for part in parts if part.height]
        return (
            pl.concat(parts, how="diagonal_relaxed")
            if parts
            else pl.DataFrame(schema=dict.fromkeys(columns, pl.String))
        )

    # --- lineage -------------------------------------------------------------------------------------------

    def chain_tables(self, skill: str | None, *, quarantine: bool = False) -> list[Table]:
        """The tables a skill's chain runs through (the skill's stages and the shared ones; all without skill)."""
        tables = self.quarantines if quarantine else self.tables
        return [table for table in tables if skill is None or table.skill in (None, skill)]

    def find(self, row_id: str, batch: str | None = None) -> list[Step]:
        """Every row with this id (one per batch holding it), stage tables before quarantine tables."""
        predicate = pl.col("id") == row_id
        if batch is not None:
            predicate &= pl.col("batch") == batch
        return [
            Step(table, row)
            for table in [*self.tables, *self.quarantines]
            for row in self.rows(table, predicate).iter_rows(named=True)
        ]

    def parent(self, step: Step, batch: str) -> Step | None:
        """The row `step` was derived from: in its own table or an earlier one. A `parent_id` naming a document
        (its `doc_id`, as ingestion's duplicates do) resolves to the document's first chunk."""
        parent_id = step.row.get("parent_id")
        if not parent_id:
            return None
        earlier = [table for table in reversed(self.chain_tables(step.skill)) if table.position <= step.table.position]
        in_batch = pl.col("batch") == batch
        for table in earlier:
            found = self.rows(table, (pl.col("id") == parent_id) & in_batch)
            if found.height:
                return Step(table, found.row(0, named=True))
        for table in earlier:
            columns = self.columns(table)
            if "doc_id" in columns and "parent_id" not in columns:
                found = self.rows(table, (pl.col("doc_id") == parent_id) & in_batch)
                if found.height:
                    return Step(table, found.row(0, named=True))
        return None

    def children(self, step: Step, batch: str) -> list[Step]:
        """Rows derived from `step` (kept or quarantined) in its own table or a later one."""
        predicate = (pl.col("parent_id") == step.id) & (pl.col("batch") == batch)
        later = [
            table
            for quarantine in (False, True)
            for table in self.chain_tables(step.skill, quarantine=quarantine)
            if table.position >= step.table.position and "parent_id" in self.columns(table)
        ]
        return [Step(table, row) for table in later for row in self.rows(table, predicate).iter_rows(named=True)]

    def trace(self, row_id: str, batch: str | None = None) -> Trace | None:
        """The chain of the row with this id (in `batch`, else in the first batch holding it), or None."""
        hits = self.find(row_id, batch)
        if not hits:
            return None
        batches = sorted({hit.row["batch"] for hit in hits})
        chosen = batch or batches[0]
        target = next(hit for hit in hits if hit.row["batch"] == chosen)
        steps = [target]
        seen = {target.id}
        while (parent := self.parent(steps[0], chosen)) is not None and parent.id not in seen:
            steps.insert(0, parent)
            seen.add(parent.id)
        while len(derived := self.children(steps[-1], chosen)) == 1 and derived[0].id not in seen:
            steps.append(derived[0])
            seen.add(derived[0].id)
        forks = derived if len(derived) > 1 else []
        return Trace(target, chosen, steps, forks, [name for name in batches if name != chosen])


# --- text --------------------------------------------------------------------------------------------------


def text_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as aligned plain-text columns (numbers right-aligned) under a header."""
    cells = [[str(value) for value in row] for row in rows]
    widths = [max(len(str(name)), *(len(row[index]) for row in cells)) for index, name in enumerate(columns)]
    numeric = [bool(rows) and all(isinstance(row[index], int | float) for row in rows) for index in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        padded = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(list(columns)), *(line(row) for row in cells)])


def quarantine_filter(frame: pl.DataFrame, reason: str | None = None, stage: str | None = None) -> pl.DataFrame:
    """Rows with this reason and of this stage: a full asset key (`skill/stage`), a skill or a stage name."""
    if reason:
        frame = frame.filter(pl.col("reason") == reason)
    if stage:
        frame = frame.filter((pl.col("stage") == stage) | pl.col("stage").str.split("/").list.contains(stage))
    return frame


def quarantine_counts(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows per stage and reason, stages in pipeline order (the frame's), most frequent reason first."""
    order = {stage: index for index, stage in enumerate(frame["stage"].unique(maintain_order=True))}
    counts = frame.group_by("stage", "reason").len("rows")
    return counts.sort(
        pl.col("stage").replace_strict(order, return_dtype=pl.Int64), "rows", "reason", descending=[False, True, False]
    )


def render_quarantine(batch: str, frame: pl.DataFrame, limit: int) -> str:
    """Counts per stage and reason, then the first `limit` rows (detail shortened)."""
    counts = quarantine_counts(frame)
    lines = [f"batch {batch!r}: {frame.height} quarantined row(s)", ""]
    lines.append(text_table(["rows", "stage", "reason"], counts.select("rows", "stage", "reason").rows()))
    shown = frame.head(limit)
    lines += ["", f"rows ({shown.height} of {frame.height}; --limit to change):"]
    rows = [
        [row["stage"], row["reason"], row["id"], row["parent_id"] or "-", shorten(row["detail"] or "", 80)]
        for row in shown.iter_rows(named=True)
    ]
    lines.append(text_table(["stage", "reason", "id", "parent_id", "detail"], rows))
    return "\n".join(lines)


def describe(step: Step) -> list[str]:
    """A step's lines: stage, id and provenance, then its key text shortened."""
    row = step.row
    facts = " · ".join(f"{name} {row[name]}" for name in FACTS if row.get(name) not in (None, ""))
    lines = [f"{step.table.name}  {step.id}" + (f"  ({facts})" if facts else "")]
    if step.table.quarantine:
        lines.append(f"rejected: {row['reason']}: {shorten(row['detail'] or '', TEXT_WIDTH)}")
        lines += [f"source: {row['source']}"] if row.get("source") else []
    elif "chunk_index" in row:
        lines.append(
            f"document {row['title']!r} ({row['source']}), chunk {row['chunk_index'] + 1} of {row['chunk_count']}, "
            f"chars {row['char_start']}-{row['char_end']} of {row['doc_chars']}"
        )
        lines.append(f"text: {shorten(row['text'], TEXT_WIDTH)}")
    elif row.get("messages"):
        for turn in row["messages"]:
            calls = ", ".join(call["function"]["name"] for call in turn["tool_calls"] or [])
            lines.append(f"[{turn['role']}] {shorten(turn['content'] or f'(calls {calls})', TEXT_WIDTH)}")
    elif row.get("scores"):
        lines.append(f"scores: {row['scores']}; {shorten(row.get('rationale') or '', TEXT_WIDTH)}")
    elif row.get("instruction"):
        lines += [f"{name}: {shorten(row[name] or '', TEXT_WIDTH)}" for name in ("instruction", "answer")]
    elif row.get("text"):
        lines.append(f"text: {shorten(row['text'], TEXT_WIDTH)}")
    return lines


def render_trace(trace: Trace, final: dg.AssetKey) -> str:
    """The chain as text, source first; the traced row marked `>`; where and why it stops, if before `final`."""
    target = trace.target
    where = f"quarantined in {target.table.key.to_user_string()}" if target.table.quarantine else target.table.name
    lines = [f"{target.id}: {where}, batch {trace.batch!r}"]
    if target.table.quarantine:
        lines.append(f"rejected because {target.row['reason']}: {target.row['detail']}")
    if trace.other_batches:
        lines.append(f"(the same id is in batch(es) {trace.other_batches}; choose one with --batch)")
    for number, step in enumerate(trace.steps, 1):
        marker = ">" if step == target else " "
        first, *rest = describe(step)
        lines += ["", f"{marker}{number:>2}  {first}", *(f"     {line}" for line in rest)]
    last = trace.steps[-1]
    if trace.forks:
        lines += ["", f"then {len(trace.forks)} rows derive from it:"]
        lines += [f"     {fork.table.name}  {fork.id}" for fork in trace.forks]
    elif last.table.key != final and not last.table.quarantine:
        lines += ["", f"the chain ends here: no later row derives from it (nothing reached {final.to_user_string()})"]
    return "\n".join(lines)
