"""Delta tables: one batch replaced per write in one commit, whatever the key; IO manager metadata."""

import multiprocessing
from multiprocessing.synchronize import Barrier
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from agentinstruct_dagster.pipeline.io_manager import DeltaIOManager, markdown_table
from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.storage.delta import (
    batches_in,
    read_all,
    read_batches,
    read_partition,
    read_quarantine,
    sql_string_literal,
    table_exists,
    write_outcome,
    write_partition,
)
from agentinstruct_dagster.tables import QUARANTINE, REFINED_INSTRUCTIONS, TRAINING_SET, frame

ODD_KEYS = [
    "it's a batch",
    'say "hi"',
    "back\\slash",
    "trailing backslash\\",
    "\\' OR '1'='1",
    "100% done",
    "a/b=c",
    "café 中文 🚀",
    "x' OR '1'='1",
    "trailing space ",
    "中文" * 40,
]


def rows(batch: str, *ids: str) -> pl.DataFrame:
    """Rows as stored for `batch` (the `batch` column is what write_partition sets)."""
    return pl.DataFrame(
        {"id": list(ids), "text": [f"text of {i}" for i in ids], "batch": [batch] * len(ids)},
        schema={"id": pl.String, "text": pl.String, "batch": pl.String},
    )


def assert_rows(actual: pl.DataFrame, expected: pl.DataFrame) -> None:
    assert_frame_equal(actual.sort("id"), expected.sort("id"))


def test_rewriting_a_batch_replaces_its_rows_only(tmp_path: Path) -> None:
    table = tmp_path / "table"
    assert not table_exists(table)
    write_partition(table, rows("a", "a1", "a2"), "a")
    write_partition(table, rows("b", "b1", "b2"), "b")
    write_partition(table, rows("whatever", "a3"), "a")
    assert table_exists(table)
    assert_rows(read_partition(table, "a"), rows("a", "a3"))
    assert_rows(read_partition(table, "b"), rows("b", "b1", "b2"))
    assert_rows(read_all(table), pl.concat([rows("a", "a3"), rows("b", "b1", "b2")]))


@pytest.mark.parametrize("key", ODD_KEYS)
def test_rewriting_an_odd_key_replaces_only_that_batch(tmp_path: Path, key: str) -> None:
    table = tmp_path / "table"
    write_partition(table, rows("other", "o1", "o2"), "other")
    write_partition(table, rows(key, "a1", "a2", "a3"), key)
    write_partition(table, rows(key, "b1"), key)
    assert_rows(read_partition(table, key), rows(key, "b1"))
    assert_rows(read_partition(table, "other"), rows("other", "o1", "o2"))
    assert read_all(table).height == 3
    assert batches_in(table) == sorted(["other", key])


def test_empty_frame_removes_a_batch_and_reads_span_batches(tmp_path: Path) -> None:
    table = tmp_path / "table"
    for batch in ("a", "b", "c"):
        write_partition(table, rows(batch, f"{batch}1", f"{batch}2"), batch)
    write_partition(table, rows("b").drop("batch"), "b")
    assert_rows(read_partition(table, "b"), rows("b"))
    assert_rows(read_batches(table, ["a", "c"]), pl.concat([rows("a", "a1", "a2"), rows("c", "c1", "c2")]))
    assert read_all(table).height == 4
    assert batches_in(table) == ["a", "c"]
    write_partition(tmp_path / "new", rows("x"), "x")
    assert_rows(read_all(tmp_path / "new"), rows("x"))


def rejected(generation: int, count: int) -> pl.DataFrame:
    rows = [{"id": f"q{generation}-{i}", "reason": "bad", "detail": f"generation {generation}"} for i in range(count)]
    return frame(rows, QUARANTINE)


def test_kept_and_quarantined_rows_are_replaced_in_one_commit(tmp_path: Path) -> None:
    table = tmp_path / "stage"
    write_outcome(table, rows("other", "o1"), rejected(0, 1), "other")
    for generation, (kept, flagged) in enumerate([(2, 1), (0, 3), (1, 0)], start=1):
        ids = [f"k{generation}-{i}" for i in range(kept)]
        stored = write_outcome(table, rows("x", *ids), rejected(generation, flagged), "x")
        assert_rows(stored, rows("x", *ids))
        assert_rows(read_partition(table, "x"), rows("x", *ids))
        assert read_quarantine(table, "x")["id"].to_list() == [f"q{generation}-{i}" for i in range(flagged)]
        assert read_quarantine(table, "x")["batch"].unique().to_list() in ([], ["x"])
    # One commit per outcome: at every version of the table, the batch's kept and quarantined rows come from
    # the same write, so a crash can never leave one write's rows beside another's quarantine.
    history = DeltaTable(str(table)).history()
    assert len(history) == 4
    for version in range(1, 4):
        everything = pl.DataFrame(DeltaTable(str(table), version=version).to_pyarrow_table())
        mine = everything.filter(pl.col("batch") == "x")
        generations = {row_id[1] for row_id in mine["id"].drop_nulls()} | {
            item["id"][1] for item in mine["quarantined"].drop_nulls()
        }
        assert generations == {str(version)}
    assert read_partition(table, "other")["id"].to_list() == ["o1"]
    assert read_quarantine(table, "other")["id"].to_list() == ["q0-0"]
    assert read_all(table).columns == ["id", "text", "batch"]


def test_batches_written_before_the_quarantine_column_stay_readable(tmp_path: Path) -> None:
    table = tmp_path / "stage"
    write_partition(table, rows("plain", "p1", "p2"), "plain")  # a table from before kept/quarantined outcomes
    write_outcome(table, rows("x", "x1"), rejected(1, 1), "x")
    assert_rows(read_partition(table, "plain"), rows("plain", "p1", "p2"))
    assert_rows(read_all(table), pl.concat([rows("plain", "p1", "p2"), rows("x", "x1")]))
    assert read_quarantine(table, "x")["id"].to_list() == ["q1-0"]


def test_missing_tables_and_control_characters(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        read_partition(tmp_path / "missing", "a")
    assert sql_string_literal("it's") == "'it''s'"
    for key in ("line\nbreak", "nul\x00", "del\x7f"):
        with pytest.raises(ValueError, match="control characters"):
            write_partition(tmp_path / "table", rows(key, "r"), key)
    assert not table_exists(tmp_path / "table")


def test_new_columns_and_odd_folder_names(tmp_path: Path) -> None:
    table = tmp_path / "lake folder é#" / "table"
    write_partition(table, rows("a", "a1"), "a")
    write_partition(table, rows("b", "b1").with_columns(score=pl.lit(2, dtype=pl.Int64)), "b")
    assert_rows(read_partition(table, "a"), rows("a", "a1").with_columns(score=pl.lit(None, dtype=pl.Int64)))
    assert read_partition(table, "b")["score"].to_list() == [2]


def test_nested_columns_round_trip(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a | b\nc"}]
    pairs = frame(
        [{"id": "p", "batch": "b", "messages": messages}, {"id": "q", "batch": "b", "messages": []}],
        TRAINING_SET,
    )
    write_partition(tmp_path / "training", pairs, "b")
    assert_frame_equal(read_partition(tmp_path / "training", "b").sort("id"), pairs)
    refined = {"id": "r", "batch": "b", "goals": ["flip_answer"], "suggestions": ["x", "y"], "round": 1}
    refined = frame(
        [refined, {"id": "s", "batch": "b", "goals": [], "suggestions": None}], REFINED_INSTRUCTIONS
    )
    write_partition(tmp_path / "refined", refined, "b")
    assert_frame_equal(read_all(tmp_path / "refined"), refined)


def _write_many(table: str, batch: str, writer: int, start: Barrier) -> None:
    start.wait()
    for round_number in range(5):
        write_partition(
            Path(table), rows(batch, *(f"{batch}-{writer}-{round_number}-{i}" for i in range(3))), batch
        )


def test_concurrent_writers(tmp_path: Path) -> None:
    """Writers of different batches, and of the same batch (whose commits conflict and are retried)."""
    table = tmp_path / "table"
    context = multiprocessing.get_context("spawn")
    jobs = [("left", 0), ("right", 0), ("left", 1), ("right", 1)]
    start = context.Barrier(len(jobs))
    workers = [context.Process(target=_write_many, args=(str(table), *job, start)) for job in jobs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    everything = read_all(table)
    assert everything.height == 6 and everything["id"].n_unique() == 6
    for batch in ("left", "right"):
        last = {tuple(read_partition(table, batch)["id"].sort())}
        assert last <= {tuple(f"{batch}-{writer}-4-{i}" for i in range(3)) for writer in (0, 1)}


def test_io_manager_writes_partitions_and_reports_metadata(tmp_path: Path) -> None:
    batches = dg.DynamicPartitionsDefinition(name="batches")

    @dg.asset(partitions_def=batches)
    def upstream(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return pl.DataFrame({"id": [f"{context.partition_key}|{i}" for i in range(4)], "text": ["a\nb"] * 4})

    @dg.asset(partitions_def=batches)
    def downstream(upstream: pl.DataFrame) -> pl.DataFrame:
        return upstream.head(2)

    odd = 'say "hi" it\'s'
    resources = {"io_manager": DeltaIOManager(lake=Lake(root=str(tmp_path), inbox=str(tmp_path)))}
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batches", ["plain", odd])
    for key in ("plain", odd):
        result = dg.materialize(
            [upstream, downstream], partition_key=key, instance=instance, resources=resources
        )
        assert result.success
    materialization = result.asset_materializations_for_node("upstream")[0]
    metadata = materialization.metadata
    assert materialization.partition == odd
    assert metadata["dagster/row_count"].value == 4
    assert [column.name for column in metadata["dagster/column_schema"].schema.columns] == [
        "id",
        "text",
        "batch",
    ]
    assert metadata["dagster/uri"].value == (tmp_path / "upstream").resolve().as_uri()
    # Content first, ids last and cut to 8 characters, the batch (the partition) left out, text on one line.
    assert metadata["sample_rows"].records[0].data == {"text": "a b", "id": 'say "hi"…'}
    assert sorted(read_partition(tmp_path / "downstream", odd)["id"]) == [f"{odd}|0", f"{odd}|1"]
    assert batches_in(tmp_path / "downstream") == sorted(["plain", odd])
    assert read_all(tmp_path / "upstream").height == 8


def test_io_manager_refuses_unpartitioned_outputs_and_missing_inputs(tmp_path: Path) -> None:
    manager = DeltaIOManager(lake=Lake(root=str(tmp_path), inbox=str(tmp_path)))
    with pytest.raises(ValueError, match="partitioned assets only"):
        manager.handle_output(dg.build_output_context(asset_key=dg.AssetKey("x")), rows("a", "r"))
    with pytest.raises(FileNotFoundError, match=r"asset nope has no Delta table at .*nope"):
        manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("nope"), partition_key="a"))


def test_markdown_table_shortens_and_escapes() -> None:
    table = markdown_table(
        pl.DataFrame({"a|b": ["x" * 200, "p|q\nr"], "l": [["l", "m"], []], "n": [1, None]}), max_chars=20
    )
    assert table.splitlines() == [
        "| a\\|b | l | n |",
        "|---|---|---|",
        '| xxxxxxxxxxxxxxxxxxx… | ["l", "m"] | 1 |',
        "| p\\|q\\nr | [] | null |",
    ]
    assert markdown_table(pl.DataFrame({"a": range(9)})).count("\n") == 4
    assert markdown_table(pl.DataFrame({"a": []})) == "_no rows_"
