"""Storage on an object store: tables, quarantine, call ledger, reports, inbox and maintenance on s3://, against
moto's S3 server on loopback; concurrent writers of one table coordinated by S3 conditional puts."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from botocore.client import BaseClient
from conftest import PASSAGES, Project, isolated_project, upload
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from agentinstruct_dagster.audit import LakeAudit
from agentinstruct_dagster.config.profiles import IngestSettings, StorageSettings
from agentinstruct_dagster.definitions import build_definitions
from agentinstruct_dagster.inbox import BATCH_KEY_RULES, BatchFolderError, BatchKeyError, batch_folder, inbox_batches
from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.pipeline.maintenance import lake_maintenance_job
from agentinstruct_dagster.quality_report import report_paths
from agentinstruct_dagster.runs import run_batches
from agentinstruct_dagster.stages.ingest import ingest_batch
from agentinstruct_dagster.storage.delta import (
    append_rows,
    batches_in,
    read_all,
    read_partition,
    read_quarantine,
    write_partition,
)
from agentinstruct_dagster.storage.lease import lease_root
from agentinstruct_dagster.storage.location import as_location, storage_options, write_bytes
from agentinstruct_dagster.storage.maintenance import find_delta_tables
from agentinstruct_dagster.storage.paths import ledger_path, table_path
from agentinstruct_dagster.tables import QUARANTINE, frame

ODD_KEY = "café 中文 🚀 it's 100% done"
STAGE = ["reading_comprehension", "seed_instructions"]
DOCUMENTS = ["raw_documents"]
NO_RETENTION = {"ops": {"maintain_lake": {"config": {"retention_hours": 0, "enforce_retention": False}}}}
STAGES = ("transformed_texts", "seed_instructions", "refined_instructions", "judged_instructions")


def stored_keys(s3: BaseClient, bucket: str, prefix: str = "") -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def rows(batch: str, *ids: str) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": list(ids), "text": [f"text of {i}" for i in ids], "batch": [batch] * len(ids)},
        schema={"id": pl.String, "text": pl.String, "batch": pl.String},
    )


def ledger_row(request_hash: str) -> dict[str, object]:
    return {
        "request_hash": request_hash,
        "agent": "seed",
        "model": "agentinstruct-standin",
        "status": "ok",
        "error_class": None,
        "attempts": 1,
        "latency_seconds": 0.01,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": 0.0,
        "content": f"[stand-in] answer {request_hash}",
    }


def test_locations_options_and_lease_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert as_location("s3://bucket/lake/") == "s3://bucket/lake"
    assert as_location("file:///data/my%20lake") == Path("/data/my lake")
    assert table_path("s3://bucket/lake", STAGE) == "s3://bucket/lake/reading_comprehension/seed_instructions"
    assert table_path(tmp_path, STAGE) == tmp_path / "reading_comprehension" / "seed_instructions"
    assert ledger_path("gs://bucket") == "gs://bucket/llm_calls"
    with pytest.raises(ValueError, match="unsupported storage URI scheme 'http'"):
        as_location("http://host/lake")
    assert storage_options("s3://bucket/lake") == {"conditional_put": "etag"}
    assert storage_options("s3://b", {"AWS_CONDITIONAL_PUT": "dynamo:locks"}) == {"AWS_CONDITIONAL_PUT": "dynamo:locks"}
    assert storage_options("gs://bucket") == storage_options(tmp_path) == {}
    assert StorageSettings(root="s3://bucket/lake/").root_path == "s3://bucket/lake"
    assert StorageSettings(root="data/lake").root_path.is_absolute()
    with pytest.raises(ValueError, match="look like credentials"):
        StorageSettings(storage_options={"aws_secret_access_key": "x"})
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert lease_root(tmp_path / "lake") == tmp_path / "lake"
    on_s3 = lease_root("s3://bucket/lake")
    assert on_s3.parent == tmp_path / "home" / "lake_leases" and on_s3 != lease_root("s3://bucket/other")
    assert Lake(root="s3://bucket/lake", inbox="s3://bucket/inbox").lease_root() == on_s3


def test_tables_quarantine_ledger_and_audit_round_trip_on_s3(s3: BaseClient, bucket: str) -> None:
    lake = Lake(root=f"s3://{bucket}/lake", inbox=f"s3://{bucket}/inbox")
    assert lake.options == {"conditional_put": "etag"}
    assert not lake.exists(STAGE)
    assert lake.read_batches_if_exists(STAGE, ["plain"], QUARANTINE).height == 0  # never materialized
    quarantined = frame([{"id": "q1", "reason": "degenerate_text", "detail": "soup"}], QUARANTINE)
    lake.write_outcome(STAGE, rows("plain", "p1", "p2"), quarantined.clear(), "plain")
    lake.write_outcome(STAGE, rows(ODD_KEY, "o1"), quarantined, ODD_KEY)
    lake.write_outcome(STAGE, rows(ODD_KEY, "o2", "o3"), quarantined.with_columns(id=pl.lit("q2")), ODD_KEY)
    lake.write(DOCUMENTS, rows(ODD_KEY, "d1", "d2"), ODD_KEY)
    lake.write(DOCUMENTS, rows("plain", "d3"), "plain")
    lake.write(DOCUMENTS, rows(ODD_KEY, "d4"), ODD_KEY)

    assert lake.exists(STAGE) and lake.exists(DOCUMENTS)
    assert_frame_equal(lake.read(STAGE, ODD_KEY).sort("id"), rows(ODD_KEY, "o2", "o3"))
    assert_frame_equal(lake.read(STAGE, "plain").sort("id"), rows("plain", "p1", "p2"))
    assert lake.read_quarantine(STAGE, ODD_KEY)["id"].to_list() == ["q2"]
    assert lake.read_quarantine(STAGE, "plain").height == 0
    assert_frame_equal(
        lake.read_batches(DOCUMENTS, [ODD_KEY, "plain"]).sort("id"), rows("plain", "d3").vstack(rows(ODD_KEY, "d4"))
    )
    location = lake.table_path(STAGE)
    assert location == f"s3://{bucket}/lake/reading_comprehension/seed_instructions"
    assert batches_in(location) == sorted(["plain", ODD_KEY])  # credentials from the environment suffice
    assert read_quarantine(location, ODD_KEY, lake.options)["reason"].to_list() == ["degenerate_text"]
    assert DeltaTable(location).version() == 2  # one commit per outcome

    ledger = lake.call_ledger(ODD_KEY, "reading_comprehension/seed_instructions")
    ledger.record(**ledger_row("h1"))
    ledger.flush()
    append_rows(lake.ledger_path, pl.DataFrame([{**ledger_row("h2"), "batch": "plain"}]), lake.options)
    assert lake.call_ledger(ODD_KEY, "any").lookup("h1")["content"] == "[stand-in] answer h1"
    assert read_all(lake.ledger_path)["request_hash"].sort().to_list() == ["h1", "h2"]

    audit = LakeAudit(lake.root, [dg.AssetKey(DOCUMENTS), dg.AssetKey(STAGE)], lake.options)
    assert audit.known_batches() == sorted(["plain", ODD_KEY])
    assert audit.quarantined(ODD_KEY)["id"].to_list() == ["q2"]
    assert report_paths(lake.root, ODD_KEY) == (
        f"s3://{bucket}/lake/reports/{ODD_KEY}.html",
        f"s3://{bucket}/lake/reports/{ODD_KEY}.json",
    )
    keys = stored_keys(s3, bucket)
    assert {key.split("/")[1] for key in keys} == {"reading_comprehension", "raw_documents", "llm_calls"}
    assert any(key.startswith("lake/reading_comprehension/seed_instructions/_delta_log/") for key in keys)


def _write_rounds(table: str, batch: str, rounds: int, start: Barrier) -> None:
    start.wait()
    for round_number in range(rounds):
        ids = (f"{batch}-{round_number}-{i}" for i in range(3))
        write_partition(table, rows(batch, *ids), batch, storage_options(table))


def test_concurrent_writers_on_s3_lose_no_commit(bucket: str) -> None:
    """Processes writing their own batch of one s3 table at once: every commit lands (conditional puts make the
    losers of a race for a version retry), and every batch reads back its last write."""
    table, batches, rounds = f"s3://{bucket}/lake/table", ["left", "right", "up", "down"], 3
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(len(batches))
    workers = [context.Process(target=_write_rounds, args=(table, batch, rounds, start)) for batch in batches]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(180)
        assert worker.exitcode == 0
    assert len(DeltaTable(table).history()) == len(batches) * rounds
    for batch in batches:
        assert read_partition(table, batch)["id"].sort().to_list() == [f"{batch}-{rounds - 1}-{i}" for i in range(3)]


@pytest.fixture
def s3_project(s3: BaseClient, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    """The test project with its lake and inbox in the bucket."""
    storage = {"root": f"s3://{bucket}/lake", "inbox": f"s3://{bucket}/inbox"}
    with isolated_project(tmp_path, monkeypatch, storage=storage) as made:
        yield made


def stage_metadata(result: dg.ExecuteInProcessResult, name: str) -> dict[str, object]:
    """Each stage's value of one materialization metadata entry in the run."""
    events = result.get_asset_materialization_events()
    return {
        event.asset_key.path[-1]: event.materialization.metadata[name].value
        for event in events
        if event.asset_key.path[-1] in STAGES
    }


def engine_calls(result: dg.ExecuteInProcessResult) -> dict[str, int]:
    """Model calls made (not answered from the ledger) per stage of the run."""
    return {stage: engine["calls_made"] for stage, engine in stage_metadata(result, "engine").items()}


def test_the_pipeline_runs_end_to_end_on_s3(s3_project: Project, s3: BaseClient, bucket: str) -> None:
    batch, root = "shore notes", s3_project.profile.storage.root_path
    for index, text in enumerate(PASSAGES[:2]):
        s3.put_object(Bucket=bucket, Key=f"inbox/{batch}/doc{index}.txt", Body=text.encode())
    s3.put_object(Bucket=bucket, Key=f"inbox/{batch}/.DS_Store", Body=b"\x00\x01")
    assert root == f"s3://{bucket}/lake"
    defs = build_definitions(s3_project.profile)

    first = run_batches(defs, s3_project.instance, [batch])[batch]

    assert first.success
    pairs = read_partition(table_path(root, ["training_set"]), batch)
    assert pairs.height > 0 and set(pairs["batch"]) == {batch}
    assert read_quarantine(table_path(root, DOCUMENTS), batch)[["source", "reason"]].rows() == [
        (".DS_Store", "skipped_hidden")
    ]
    ledger = read_partition(ledger_path(root), batch)
    assert ledger.height == sum(stage_metadata(first, "calls_made").values()) > 0 and set(ledger["status"]) == {"ok"}
    keys = stored_keys(s3, bucket, "lake/")
    assert f"lake/reports/{batch}.html" in keys and any(key.startswith("lake/llm_calls/_delta_log/") for key in keys)
    report = json.loads(s3.get_object(Bucket=bucket, Key=f"lake/reports/{batch}.json")["Body"].read())
    assert report["batch"] == batch and report["totals"]["training_pairs"] == pairs.height
    assert not (Path(os.environ["DAGSTER_HOME"]).parent / "lake").exists()  # nothing of the lake went local

    again = run_batches(defs, s3_project.instance, [batch])[batch]

    assert again.success
    assert engine_calls(again) == dict.fromkeys(STAGES, 0)
    assert read_partition(ledger_path(root), batch).height == ledger.height
    assert read_partition(table_path(root, ["training_set"]), batch)["id"].sort().equals(pairs["id"].sort())


def make_documents(folder: Path) -> None:
    """A batch folder of every kind of entry an object store can hold."""
    files: dict[str, str | bytes] = {
        "doc.txt": PASSAGES[0],
        "copy.txt": PASSAGES[0],
        "notes.md": f"# Composting\n\n{PASSAGES[1]}",
        "sub/deeper/tides.txt": PASSAGES[2],
        "records.jsonl": '{"text": "A record.", "title": "One"}\nnot json\n{"text": "' + "long " * 200 + '"}\n',
        "empty.txt": "  \n",
        "binary.txt": b"\x00\x01\x02 binary",
        "latin1.txt": "café".encode("latin-1"),
        "big.txt": "word " * 200,
        "image.png": b"\x89PNG",
        ".DS_Store": b"\x00",
        "_drafts/a.txt": "draft",
        "_drafts/b.txt": "draft",
        "sub/.git/config": "[core]",
    }
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    pl.DataFrame({"text": ["Parquet row.", "Other row."], "title": ["P", None]}).write_parquet(folder / "t.parquet")


def test_an_inbox_on_s3_is_read_as_a_local_one(s3: BaseClient, bucket: str, tmp_path: Path) -> None:
    """The same documents give the same rows and the same quarantine from a local folder and from an s3 prefix."""
    local = tmp_path / "inbox" / ODD_KEY
    make_documents(local)
    inbox = f"s3://{bucket}/inbox"
    upload(s3, bucket, local, f"inbox/{ODD_KEY}")
    s3.put_object(Bucket=bucket, Key=f"inbox/{ODD_KEY}/sub/", Body=b"")  # a folder marker, as consoles make
    s3.put_object(Bucket=bucket, Key="inbox/.hidden/doc.txt", Body=b"x")
    s3.put_object(Bucket=bucket, Key="inbox/loose.txt", Body=b"x")
    settings = IngestSettings(max_document_bytes=600)

    folder = batch_folder(inbox, ODD_KEY)
    from_s3 = ingest_batch(folder, ODD_KEY, settings, context_tokens=1024)
    from_disk = ingest_batch(local, ODD_KEY, settings, context_tokens=1024)

    assert folder == f"{inbox}/{ODD_KEY}"
    assert_frame_equal(from_s3.documents, from_disk.documents)
    assert_frame_equal(from_s3.quarantine, from_disk.quarantine)
    assert (from_s3.files_read, from_s3.duplicates) == (from_disk.files_read, from_disk.duplicates) == (11, 1)
    reasons = dict(zip(from_s3.quarantine["source"], from_s3.quarantine["reason"], strict=True))
    assert {source: reasons[source] for source in (".DS_Store", "_drafts", "sub/.git")} == dict.fromkeys(
        (".DS_Store", "_drafts", "sub/.git"), "skipped_hidden"
    )
    assert inbox_batches(inbox, settle_seconds=0) == (
        [ODD_KEY],
        [f"batch key '.hidden' is not allowed: it starts with '.', which marks a hidden folder; {BATCH_KEY_RULES}"],
    )
    assert inbox_batches(inbox, settle_seconds=3600) == ([], inbox_batches(inbox, 0)[1])
    with pytest.raises(BatchFolderError, match="no inbox folder for batch 'missing'"):
        batch_folder(inbox, "missing")
    with pytest.raises(BatchFolderError, match="not a folder"):
        batch_folder(inbox, "loose.txt")
    with pytest.raises(BatchKeyError):
        batch_folder(inbox, "../inbox")
    with pytest.raises(FileNotFoundError, match="batch folder not found"):
        ingest_batch(f"{inbox}/missing", "missing", settings, context_tokens=1024)


def test_maintenance_compacts_and_vacuums_the_tables_of_an_s3_lake(s3: BaseClient, bucket: str) -> None:
    lake = Lake(root=f"s3://{bucket}/lake", inbox=f"s3://{bucket}/inbox")
    with pytest.raises(FileNotFoundError, match="nothing is stored there"):
        find_delta_tables(lake.location, lake.options)
    for version, batch in enumerate(["a", "b", "a"]):
        lake.write_outcome(STAGE, rows(batch, f"{batch}{version}"), frame([{"id": f"q{version}"}], QUARANTINE), batch)
    for batch in ["a", "b", "c"]:
        lake.write(DOCUMENTS, rows(batch, f"{batch}-doc"), batch)
    for call in range(3):
        ledger = lake.call_ledger("a", "reading_comprehension/seed_instructions")
        ledger.record(**ledger_row(f"h{call}"))
        ledger.flush()
    write_bytes(f"{lake.root}/reports/a.html", b"<html></html>")  # not a table
    tables = sorted([lake.table_path(STAGE), lake.table_path(DOCUMENTS), lake.ledger_path])
    assert find_delta_tables(lake.location, lake.options) == tables
    keys = {table: "request_hash" if table == lake.ledger_path else "id" for table in tables}
    before = {table: read_all(table).sort(keys[table]) for table in tables}

    with dg.instance_for_test() as instance:
        result = lake_maintenance_job.execute_in_process(
            instance=instance, resources={"lake": lake}, run_config=NO_RETENTION, raise_on_error=False
        )

    assert result.success
    for table in tables:
        live = DeltaTable(table).file_uris()
        prefix = table.removeprefix(f"s3://{bucket}/") + "/"
        stored = [key for key in stored_keys(s3, bucket, prefix) if "/_delta_log/" not in key]
        assert len(live) == 1 and [f"s3://{bucket}/{key}" for key in stored] == live  # compacted, rest vacuumed
        assert f"{prefix}_delta_log/_last_checkpoint" in stored_keys(s3, bucket, prefix)
        assert_frame_equal(read_all(table).sort(keys[table]), before[table])
