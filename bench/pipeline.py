"""The whole pipeline against a slow stand-in: wall time of one `agentinstruct backfill` (start-up included)
as a share of the throughput bound, and how wall time and peak memory grow with the batch.

The bound is what a perfect client could do with the profile's window: calls x mean latency / window (the
stand-in's latency is lognormal with median `--latency` and sigma `--sigma`, mean median * e^(sigma^2/2)).
Calls are counted from the call ledger. Each run is a fresh throwaway project and process; peak memory is
the process's maximum RSS (`wait4`). Usage:

    .venv/bin/python bench/pipeline.py bound [--latency 1 --sigma 0.5 --window 64] [--in-process]
    .venv/bin/python bench/pipeline.py scaling [--documents 11 110 1100 --skill reading_comprehension]

Scaling runs `--in-process`, so that the peak RSS measured is the process that does the work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from agentinstruct_dagster.project import profiles_dir, sample_documents_dir
from agentinstruct_dagster.storage.delta import read_partition

BATCH = "bench"
WORDS_PER_DOCUMENT = 260


@dataclass
class Run:
    documents: int
    skills: str
    mode: str
    calls: int
    seconds: float
    peak_rss_mb: float
    exit_code: int
    bound_seconds: float | None = None

    @property
    def share_of_bound(self) -> float | None:
        return None if self.bound_seconds is None else self.bound_seconds / self.seconds


def synthetic_documents(count: int, folder: Path) -> None:
    """`count` distinct documents of sentences drawn (seeded) from the sample documents' vocabulary, so that
    no two of them (nor their stand-in answers) are near-duplicates."""
    text = " ".join(path.read_text(errors="ignore") for path in sample_documents_dir().glob("*.[mt][dx]*"))
    vocabulary = sorted(set(re.findall(r"[A-Za-z]{3,}", text)))
    draw = random.Random(0)
    folder.mkdir(parents=True)
    for number in range(count):
        sentences = []
        while sum(len(sentence.split()) for sentence in sentences) < WORDS_PER_DOCUMENT:
            words = draw.choices(vocabulary, k=draw.randint(8, 18))
            sentences.append(" ".join(words).capitalize() + ".")
        (folder / f"doc{number:05d}.txt").write_text(f"Document {number}\n\n" + " ".join(sentences) + "\n")


def run_pipeline(root: Path, settings: dict, documents: int | None, skills: list[str], in_process: bool) -> Run:
    """One `agentinstruct backfill` of the batch in a throwaway project (a daemon backfill, or `--in-process`);
    documents None: the samples. Peak memory is the command's process (with a daemon, not the run's)."""
    data = yaml.safe_load((profiles_dir() / "standin.yaml").read_text())
    data["name"] = "bench"
    data["llm"].update({key: value for key, value in settings.items() if key != "standin"})
    data["llm"]["standin"] = {**data["llm"].get("standin", {}), **settings.get("standin", {})}
    data["storage"] = {"root": str(root / "lake"), "inbox": str(root / "inbox")}
    (root / "profiles").mkdir(parents=True)
    (root / "profiles" / "bench.yaml").write_text(yaml.safe_dump(data))
    if documents is None:
        shutil.copytree(sample_documents_dir(), root / "inbox" / BATCH)
    else:
        synthetic_documents(documents, root / "inbox" / BATCH)
    env = {
        **os.environ,
        "AGENTINSTRUCT_PROFILES_DIR": str(root / "profiles"),
        "AGENTINSTRUCT_PROFILE": "bench",
        "DAGSTER_HOME": str(root / "home"),
    }
    command = [str(Path(sys.executable).parent / "agentinstruct"), "backfill", "--batch", BATCH]
    command += ["--in-process"] if in_process else []
    command += [argument for name in skills for argument in ("--skill", name)]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    ledger = read_partition(root / "lake" / "llm_calls", BATCH)
    calls = ledger.height
    if os.environ.get("BENCH_KEEP"):
        ledger.write_parquet(os.environ["BENCH_KEEP"])
    return Run(
        documents=documents or len(list((root / "inbox" / BATCH).iterdir())),
        skills=",".join(skills) or "all 17",
        mode="in-process" if in_process else "daemon backfill",
        calls=calls,
        seconds=round(seconds, 1),
        peak_rss_mb=round(usage.ru_maxrss / 1024, 1),
        exit_code=os.waitstatus_to_exitcode(status),
    )


def bound(options: argparse.Namespace) -> list[Run]:
    settings = {
        "max_concurrency": options.window,
        "timeout_seconds": 60,
        "standin": {"latency_seconds": options.latency, "latency_sigma": options.sigma},
    }
    mean_latency = options.latency * math.exp(options.sigma**2 / 2)
    with tempfile.TemporaryDirectory(prefix="agentinstruct-bench-") as folder:
        run = run_pipeline(Path(folder), settings, None, options.skill, options.in_process)
    run.bound_seconds = round(run.calls * mean_latency / options.window, 1)
    return [run]


def scaling(options: argparse.Namespace) -> list[Run]:
    settings = {"max_concurrency": options.window, "standin": {"latency_seconds": options.latency}}
    runs = []
    for count in options.documents:
        with tempfile.TemporaryDirectory(prefix="agentinstruct-bench-") as folder:
            runs.append(run_pipeline(Path(folder), settings, count, options.skill, in_process=True))
        print(json.dumps(asdict(runs[-1])), flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    latency_bound = commands.add_parser("bound", help="The samples, all skills, against a slow stand-in.")
    latency_bound.add_argument("--latency", type=float, default=1.0, help="Median stand-in latency (s).")
    latency_bound.add_argument("--sigma", type=float, default=0.5, help="Lognormal sigma of the latency.")
    latency_bound.add_argument("--window", type=int, default=64, help="The profile's max_concurrency.")
    latency_bound.add_argument("--skill", action="append", default=[], help="Only this skill (repeat).")
    latency_bound.add_argument("--in-process", action="store_true", help="backfill --in-process (no daemon).")
    growth = commands.add_parser("scaling", help="Synthetic batches of growing size.")
    growth.add_argument("--documents", type=int, nargs="+", default=[11, 110, 1100])
    growth.add_argument("--latency", type=float, default=0.05)
    growth.add_argument("--window", type=int, default=64)
    growth.add_argument("--skill", action="append", default=[], help="Only this skill (repeat).")
    options = parser.parse_args()
    runs = bound(options) if options.command == "bound" else scaling(options)
    for run in runs:
        share = f", {run.share_of_bound:.2f} of the bound ({run.bound_seconds} s)" if run.bound_seconds else ""
        print(
            f"{run.documents} documents, skills {run.skills}, {run.mode}: {run.calls} calls in {run.seconds} s{share}, "
            f"peak RSS {run.peak_rss_mb} MB, exit {run.exit_code}"
        )


if __name__ == "__main__":
    main()
