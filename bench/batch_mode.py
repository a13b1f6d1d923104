"""Batch mode against online mode on the sample batch: the cost at the openai profile's prices, and a resume.

`cost` runs the sample documents through every catalogue skill twice, each in a fresh throwaway project and
process (`agentinstruct backfill --in-process`): once online, once with `llm.mode: batch`. The stand-in answers both
(identically: it is not a model) as the model `gpt-4o-mini`, priced as in `resources/openai.yaml`; tokens and cost
are summed from the call ledger's call rows. `resume` kills a batch-mode run (SIGKILL) while one of its batches is in
progress, runs it again, and counts request lines submitted and answers collected before and after the kill.
Usage:

    .venv/bin/python bench/batch_mode.py cost [--skill NAME ...] [--completion-seconds 1]
    .venv/bin/python bench/batch_mode.py resume [--skill reading_comprehension] [--completion-seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from agentinstruct_dagster.llm.ledger import call_rows
from agentinstruct_dagster.project import profiles_dir, sample_documents_dir
from agentinstruct_dagster.storage.delta import read_all, table_exists
from agentinstruct_dagster.storage.paths import ledger_path

BATCH = "sample"
MODEL = "gpt-4o-mini"
FAST_BATCHES = {"collect_seconds": 0.2, "poll_seconds": 0.2}


def make_project(root: Path, mode: str, skills: list[str] | None, completion_seconds: float) -> dict[str, str]:
    """A stand-in profile that calls its model gpt-4o-mini at the openai profile's prices; the sample batch."""
    data = yaml.safe_load((profiles_dir() / "standin.yaml").read_text())
    prices = yaml.safe_load((profiles_dir() / "openai.yaml").read_text())["llm"]["prices"]
    data["name"] = "bench"
    data["llm"].update(
        models={"default": MODEL},
        prices={MODEL: prices[MODEL]},
        mode=mode,
        batch=FAST_BATCHES,
        standin={"batch_completion_seconds": completion_seconds},
    )
    data["storage"] = {"root": str(root / "lake"), "inbox": str(root / "inbox")}
    if skills:
        data["skills"] = skills
    (root / "profiles").mkdir(parents=True)
    (root / "profiles" / "bench.yaml").write_text(yaml.safe_dump(data))
    shutil.copytree(sample_documents_dir(), root / "inbox" / BATCH)
    return {
        **os.environ,
        "AGENTINSTRUCT_PROFILES_DIR": str(root / "profiles"),
        "AGENTINSTRUCT_PROFILE": "bench",
        "DAGSTER_HOME": str(root / "dagster_home"),
    }


def backfill(env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [str(Path(sys.executable).parent / "agentinstruct"), "backfill", "--in-process", "--batch", BATCH]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ledger(root: Path) -> pl.DataFrame:
    path = ledger_path(root / "lake")
    return read_all(path) if table_exists(path) else pl.DataFrame()


def batch_lines(root: Path) -> pl.DataFrame:
    rows = ledger(root)
    if rows.is_empty():
        return rows
    lines = rows.filter(pl.col("provider_batch_id").is_not_null())
    return lines.with_columns(line=pl.col("custom_id").str.replace(r"-\d+$", ""))


def cost_of_run(root: Path, mode: str, skills: list[str] | None, completion_seconds: float) -> dict[str, Any]:
    env = make_project(root, mode, skills, completion_seconds)
    started = time.monotonic()
    exit_code = backfill(env).wait()
    seconds = time.monotonic() - started
    calls = call_rows(ledger(root))
    return {
        "mode": mode,
        "exit_code": exit_code,
        "seconds": round(seconds, 1),
        "calls": calls.height,
        "prompt_tokens": int(calls["prompt_tokens"].sum()),
        "completion_tokens": int(calls["completion_tokens"].sum()),
        "cost_usd": round(float(calls["cost_usd"].sum()), 6),
        "provider_batches": batch_lines(root)["provider_batch_id"].n_unique() if mode == "batch" else 0,
    }


def cost(options: argparse.Namespace) -> None:
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as folder:
        for mode in ("online", "batch"):
            runs.append(cost_of_run(Path(folder) / mode, mode, options.skill, options.completion_seconds))
            print(json.dumps(runs[-1]))
    online, batch = runs
    print(json.dumps({"batch_cost_over_online": round(batch["cost_usd"] / online["cost_usd"], 4)}))


def open_batches(lines: pl.DataFrame) -> set[str]:
    if lines.is_empty():
        return set()
    submitted = set(lines.filter(pl.col("status") == "batch_submitted")["provider_batch_id"])
    return submitted - set(lines.filter(pl.col("status") != "batch_submitted")["provider_batch_id"])


def summary(lines: pl.DataFrame) -> dict[str, int]:
    submitted = lines.filter(pl.col("status") == "batch_submitted")
    answered = lines.filter(pl.col("status") == "batch_answered")
    return {
        "lines_submitted": submitted.height,
        "distinct_lines_submitted": submitted["line"].n_unique(),
        "answers_collected": answered.height,
        "distinct_answers_collected": answered["custom_id"].n_unique(),
        "provider_batches": submitted["provider_batch_id"].n_unique(),
    }


def resume(options: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as folder:
        root = Path(folder)
        env = make_project(root, "batch", options.skill, options.completion_seconds)
        started = time.monotonic()
        run = backfill(env)
        while (lines := batch_lines(root)).is_empty() or not (
            open_batches(lines) and (lines["status"] == "batch_answered").any()
        ):
            if run.poll() is not None:
                raise SystemExit("the run ended before a batch was in progress: raise --completion-seconds")
            time.sleep(0.1)
        run.send_signal(signal.SIGKILL)
        run.wait()
        killed_after = time.monotonic() - started
        before = batch_lines(root)
        in_progress = open_batches(before)
        started = time.monotonic()
        exit_code = backfill(env).wait()
        after = batch_lines(root)
        new = after.join(before.select("custom_id", "status"), on=["custom_id", "status"], how="anti")
        collected = set(new.filter(pl.col("status") == "batch_answered")["provider_batch_id"])
        print(
            json.dumps(
                {
                    "killed_after_seconds": round(killed_after, 1),
                    "batches_in_progress_at_kill": len(in_progress),
                    "lines_in_progress_at_kill": before.filter(
                        pl.col("provider_batch_id").is_in(list(in_progress))
                    ).height,
                    "before_kill": summary(before),
                    "rerun_exit_code": exit_code,
                    "rerun_seconds": round(time.monotonic() - started, 1),
                    "rerun_lines_submitted": new.filter(pl.col("status") == "batch_submitted").height,
                    "rerun_lines_resubmitted": new.filter(pl.col("status") == "batch_submitted")["line"]
                    .is_in(before["line"].to_list())
                    .sum(),
                    "in_progress_batches_collected_by_rerun": len(in_progress & collected),
                    "total": summary(after),
                }
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, default_seconds in (("cost", 1.0), ("resume", 3.0)):
        command = commands.add_parser(name)
        command.add_argument("--skill", action="append", help="only these skills (default: all for cost)")
        command.add_argument("--completion-seconds", type=float, default=default_seconds)
    options = parser.parse_args()
    if options.command == "resume" and not options.skill:
        options.skill = ["reading_comprehension"]
    {"cost": cost, "resume": resume}[options.command](options)


if __name__ == "__main__":
    main()
