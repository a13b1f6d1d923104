"""The summary printed after a run: rows per stage, quarantine, checks, tokens, a sample pair."""

from __future__ import annotations

from datetime import datetime

import dagster as dg
import polars as pl

from agentinstruct_dagster.audit import shorten
from agentinstruct_dagster.config.profiles import Profile
from agentinstruct_dagster.llm.ledger import FAILED, call_rows
from agentinstruct_dagster.pipeline.report_asset import REPORT_KEY
from agentinstruct_dagster.quality_report import report_paths
from agentinstruct_dagster.storage.delta import read_partition, read_quarantine, table_exists
from agentinstruct_dagster.storage.location import Location
from agentinstruct_dagster.storage.paths import ledger_path, table_path

STANDIN_NOTICE = "LLM: offline stand-in on loopback (deterministic text, NOT a model; output is labelled [stand-in])"


def stage_keys(defs: dg.Definitions) -> list[dg.AssetKey]:
    """The keys of the assets stored as tables, in pipeline order (the order `build_definitions` lists them)."""
    return [key for assets_def in defs.assets or [] for key in assets_def.keys if key != REPORT_KEY]


def call_totals(root: Location, batch: str, since: datetime, result: dg.ExecuteInProcessResult) -> dict[str, float]:
    """The run's model calls from the call ledger (every call made since `since`, failed stages included):
    made, failed, tokens, cost; plus cache hits and retries from the materialized stages' metadata."""
    path = ledger_path(root)
    calls = call_rows(read_or_empty(path, batch))  # batch mode's request-line rows are not calls
    calls = calls.filter(pl.col("recorded_at") >= since) if calls.height else calls
    totals: dict[str, float] = {
        "calls": calls.height,
        "failed": int((calls["status"] == FAILED).sum()) if calls.height else 0,
        "tokens": int(calls["prompt_tokens"].sum() + calls["completion_tokens"].sum()) if calls.height else 0,
        "cost_usd": float(calls["cost_usd"].sum()) if calls.height else 0.0,
        "calls_cached": 0,
        "retries": 0,
    }
    for event in result.get_asset_materialization_events():
        engine = event.materialization.metadata.get("engine")
        if engine is not None:
            totals["calls_cached"] += engine.value["calls_cached"]
            totals["retries"] += engine.value["retries"]
    return totals


def read_or_empty(path: Location, batch: str, *, quarantined: bool = False) -> pl.DataFrame:
    """The batch's kept (or quarantined) rows; none when the table does not exist."""
    if not table_exists(path):
        return pl.DataFrame()
    return read_quarantine(path, batch) if quarantined else read_partition(path, batch)


def summarize(
    profile: Profile,
    defs: dg.Definitions,
    batch: str,
    result: dg.ExecuteInProcessResult,
    seconds: float,
    since: datetime,
) -> str:
    """The run's summary; `since` is when it started (its model calls are the ledger's rows from then on)."""
    root = profile.storage.root_path
    lines = [f"agentinstruct run of batch {batch!r}: {'SUCCESS' if result.success else 'FAILED'} in {seconds:.1f} s"]
    if profile.llm.provider == "standin":
        lines.append(STANDIN_NOTICE)
    else:
        lines.append(f"LLM: {profile.llm.provider} {profile.llm.base_url or ''} models {profile.llm.models}")
    keys = stage_keys(defs)
    width = max(len(key.to_user_string()) for key in keys)
    lines += ["", f"{'stage':{width}} {'rows':>6} {'quarantined':>12} {'prompt tok':>11} {'compl tok':>10}"]
    quarantined: list[pl.DataFrame] = []
    tokens = [0, 0]
    for key in keys:
        rows = read_or_empty(table_path(root, key), batch)
        rejected = read_or_empty(table_path(root, key), batch, quarantined=True)
        if rejected.height:
            quarantined.append(rejected)
        prompt = int(rows["prompt_tokens"].sum()) if "prompt_tokens" in rows.columns else 0
        completion = int(rows["completion_tokens"].sum()) if "completion_tokens" in rows.columns else 0
        tokens = [tokens[0] + prompt, tokens[1] + completion]
        name = key.to_user_string()
        lines.append(f"{name:{width}} {rows.height:>6} {rejected.height:>12} {prompt:>11} {completion:>10}")
    lines.append(f"tokens in kept rows: {tokens[0]} prompt + {tokens[1]} completion")
    usage = call_totals(root, batch, since, result)
    lines.append(
        f"model calls this run: {usage['calls']} made, {usage['calls_cached']} answered from the call ledger, "
        f"{usage['failed']} failed, {usage['retries']} retries; tokens paid {usage['tokens']}; "
        f"cost ${usage['cost_usd']:.4f}" + (" (the stand-in is free)" if profile.llm.provider == "standin" else "")
    )
    lines += ["", "quarantine (reason: rows, e.g.)"]
    if quarantined:
        everything = pl.concat(quarantined, how="diagonal_relaxed")
        for (reason,), group in everything.group_by("reason", maintain_order=True):
            example = group.row(0, named=True)
            lines.append(
                f"  {reason}: {group.height}, e.g. {example['stage']} {example['source']}: {example['detail']}"
            )
    else:
        lines.append("  none")
    evaluations = result.get_asset_check_evaluations()
    failed = [item for item in evaluations if not item.passed]
    lines += ["", f"checks: {len(evaluations) - len(failed)} passed, {len(failed)} failed"]
    lines += [
        f"  FAILED {item.asset_key.to_user_string()}:{item.check_name}"
        + (f": {shorten(item.description, 400)}" if item.description else "")
        for item in failed
    ]
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE" and event.step_failure_data is not None:
            failure = event.step_failure_data
            message = failure.user_failure_data.description if failure.user_failure_data else None
            message = message or (failure.error.message if failure.error else "failed")
            lines.append(f"  STEP FAILED {event.step_key}: {shorten(message, 400)}")
    pairs = read_or_empty(table_path(root, ["training_set"]), batch)
    lines += ["", f"training pairs: {pairs.height}"]
    if pairs.height:
        counts = pairs.group_by("split").len().sort("split").iter_rows()
        lines.append("  " + ", ".join(f"{split} {count}" for split, count in counts))
        sample = pairs.row(0, named=True)
        lines.append(f"sample pair (split {sample['split']}, id {sample['id']}):")
        for turn in sample["messages"]:
            calls = ", ".join(call["function"]["name"] for call in turn["tool_calls"] or [])
            lines.append(f"  [{turn['role']}] {shorten(turn['content'] or f'(calls {calls})')}")
    lines += [
        "",
        f"tables: {root} (quarantined rows too: .venv/bin/agentinstruct quarantine --batch {batch!r})",
        f"quality report: {report_paths(root, batch)[0]}"
        + ("" if result.success else f" (a failed run writes none: .venv/bin/agentinstruct report --batch {batch!r})"),
        "UI: make ui, then open http://127.0.0.1:3000 (lineage, partitions, checks, metadata)",
        "export: .venv/bin/agentinstruct export --out data/export",
    ]
    return "\n".join(lines)
