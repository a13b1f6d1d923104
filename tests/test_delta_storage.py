"""Delta tables: one batch replaced per write in one commit, whatever the key; IO manager metadata."""

import multiprocessing
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from agentinstruct_dagster.storage.delta import (
    batches_in,
    read_all,
    read_batches,
    read_partition,
    sql_string_literal,
    write_partition,
)
from agentinstruct_dagster.storage.io_manager import DeltaIOManager, markdown_table
from agentinstruct_dagster.tables import REFINED_INSTRUCTIONS, TRAINING_SET, frame

ODD_KEYS = [
    "it's a batch",
    'say "hi"',
    "back\\slash",
    "100% done",
    "a/b=c",
    "café 中文 🚀",
    "x' OR '1'='1",
    "trailing space ",
]


def rows(*ids: str) -> pl.DataFrame:
    return pl.DataFrame({"id": list(ids), "text": [f"text of {i}" for i in ids]})


def ids_of(table: Path, batch: str) -> list[str]:
    return sorted(read_partition(table, batch)["id"].to_list())


@pytest.mark.parametrize("key", ODD_KEYS)
def test_rewriting_an_odd_key_replaces_only_that_batch(tmp_path: Path, key: str) -> None:
    table = tmp_path / "table"
    write_partition(table, rows("o1", "o2"), "other")
    write_partition(table, rows("a1", "a2", "a3"), key)
    write_partition(table, rows("b1"), key)
    assert ids_of(table, key) == ["b1"]
    assert ids_of(table, "other") == ["o1", "o2"]
    assert read_all(table).height == 3
    assert batches_in(table) == sorted(["other", key])


def test_empty_frame_removes_a_batch_and_reads_span_batches(tmp_path: Path) -> None:
    table = tmp_path / "table"
    for batch in ("a", "b", "c"):
        write_partition(table, rows(f"{batch}1", f"{batch}2"), batch)
    write_partition(table, rows().head(0), "b")
    assert read_partition(table, "b").height == 0
    assert read_partition(table, "b").columns == ["id", "text", "batch"]
    assert sorted(read_batches(table, ["a", "c"])["id"].to_list()) == ["a1", "a2", "c1", "c2"]
    with pytest.raises(FileNotFoundError, match="no Delta table"):
        read_all(tmp_path / "missing")


def test_control_characters_in_keys_are_refused() -> None:
    assert sql_string_literal("it's") == "'it''s'"
    with pytest.raises(ValueError, match="control characters"):
        sql_string_literal("line\nbreak")


def test_nested_columns_round_trip(tmp_path: Path) -> None:
    pair = {"id": "p", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    write_partition(tmp_path / "training", frame([pair], TRAINING_SET), "b")
    assert read_all(tmp_path / "training")["messages"].to_list() == [pair["messages"]]
    refined = {"id": "r", "goals": ["flip_answer"], "suggestions": ["x", "y"], "round": 1}
    write_partition(tmp_path / "refined", frame([refined], REFINED_INSTRUCTIONS), "b")
    back = read_all(tmp_path / "refined").row(0, named=True)
    assert back["goals"] == ["flip_answer"] and back["suggestions"] == ["x", "y"]


def _write_many(table: str, batch: str) -> None:
    for round_number in range(5):
        write_partition(Path(table), rows(*(f"{batch}-{round_number}-{i}" for i in range(3))), batch)


def test_concurrent_writers_of_different_batches(tmp_path: Path) -> None:
    table = tmp_path / "table"
    write_partition(table, rows("seed"), "seed")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(str(table), batch)) for batch in ("left", "right")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    everything = read_all(table)
    assert everything.height == 7 and everything["id"].n_unique() == 7
    assert ids_of(table, "left") == [f"left-4-{i}" for i in range(3)]


def test_io_manager_writes_partitions_and_reports_metadata(tmp_path: Path) -> None:
    batches = dg.DynamicPartitionsDefinition(name="batches")

    @dg.asset(partitions_def=batches)
    def upstream(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return rows(*(f"{context.partition_key}|{i}" for i in range(4)))

    @dg.asset(partitions_def=batches)
    def downstream(upstream: pl.DataFrame) -> pl.DataFrame:
        return upstream.head(2)

    resources = {"io_manager": DeltaIOManager(root=str(tmp_path))}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("batches", ["plain", "it's odd"])
        for key in ("plain", "it's odd"):
            result = dg.materialize([upstream, downstream], partition_key=key, instance=instance, resources=resources)
            assert result.success
        metadata = result.asset_materializations_for_node("upstream")[0].metadata
    assert metadata["dagster/row_count"].value == 4
    assert [column.name for column in metadata["dagster/column_schema"].schema.columns] == ["id", "text", "batch"]
    assert "it's odd\\|0" in metadata["sample_rows"].value
    assert ids_of(tmp_path / "downstream", "plain") == ["plain|0", "plain|1"]
    assert read_all(tmp_path / "upstream").height == 8


def test_markdown_table_shortens_and_escapes() -> None:
    table = markdown_table(pl.DataFrame({"a": ["x" * 200], "b": [["l", "m"]]}), max_chars=20)
    assert table.splitlines()[0] == "| a | b |"
    assert "…" in table and '["l", "m"]' in table
    assert markdown_table(pl.DataFrame({"a": []})) == "_no rows_"
