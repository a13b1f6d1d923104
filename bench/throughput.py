"""Throughput of the LLM engine vs a plain sliding-window AsyncOpenAI client, against the stand-in.

Each client run gets a freshly started stand-in in its own process (same seed, so the same latency draws)
and makes the same calls from this process; the clients alternate, `--repeat` times each, and the median
run of each is reported. Usage:

    .venv/bin/python bench/throughput.py [--calls 2000] [--concurrency 64] [--scenario steady ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import openai

from agentinstruct_dagster.config.profiles import LLMSettings
from agentinstruct_dagster.llm.engine import LLMEngine, json_schema_format
from agentinstruct_dagster.llm.schemas import SeedInstruction
from agentinstruct_dagster.llm.types import LLMRequest

SCENARIOS = {
    # name: (stand-in flags, bound in calls/s given the configured concurrency)
    "steady": (["--latency", "0.2"], lambda c: c / 0.2),
    "heavy_tail": (["--latency", "0.2", "--sigma", "1"], lambda c: c / (0.2 * 2.718281828**0.5)),
    "provider_cap": (["--latency", "0.2", "--cap", "32", "--cap-retry-after", "0.1"], lambda c: 32 / 0.2),
}


@dataclass
class Measurement:
    client: str
    calls: int
    succeeded: int
    failed: int
    seconds: float
    cpu_seconds: float

    @property
    def calls_per_second(self) -> float:
        return self.succeeded / self.seconds


def median(runs: list[Measurement]) -> Measurement:
    return sorted(runs, key=lambda run: run.calls_per_second)[len(runs) // 2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_standin(flags: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [str(Path(sys.executable).parent / "agentinstruct"), "standin", "--port", str(port), *flags]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return process, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the stand-in did not start")


def with_standin(flags: list[str], run):
    """A fresh stand-in per client, so both see the same seeded latency sequence."""
    process, base_url = start_standin(flags)
    try:
        return run(base_url)
    finally:
        process.kill()
        process.wait()


def prompts(count: int) -> list[str]:
    return [f"Passage {index}: the lighthouse keeper logged the weather at dawn." for index in range(count)]


def measure(client: str, calls: int, run) -> Measurement:
    cpu, started = time.process_time(), time.perf_counter()
    succeeded = asyncio.run(run())
    return Measurement(
        client, calls, succeeded, calls - succeeded, time.perf_counter() - started, time.process_time() - cpu
    )


def engine_run(base_url: str, texts: list[str], concurrency: int) -> Measurement:
    settings = LLMSettings(
        provider="openai_compatible",
        models={"default": "bench"},
        max_concurrency=concurrency,
        timeout_seconds=30,
        max_attempts=30,
        backoff_base_seconds=0.05,
        backoff_max_seconds=1,
        progress_seconds=3600,
    )
    engine = LLMEngine(settings, base_url=base_url)

    async def run() -> int:
        requests = [LLMRequest("bench", "seed", "Write a question.", text, SeedInstruction) for text in texts]
        results = await asyncio.gather(*(engine.call(request) for request in requests))
        await engine.aclose()
        return sum(result.ok for result in results)

    return measure("engine", len(texts), run)


def plain_run(base_url: str, texts: list[str], concurrency: int) -> Measurement:
    """The baseline: AsyncOpenAI with its default retries and a semaphore as a sliding window."""

    async def run() -> int:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="bench")
        slots = asyncio.Semaphore(concurrency)
        response_format = json_schema_format(SeedInstruction)

        async def one(text: str) -> bool:
            async with slots:
                try:
                    response = await client.chat.completions.create(
                        model="bench",
                        messages=[
                            {"role": "system", "content": "Write a question."},
                            {"role": "user", "content": text},
                        ],
                        response_format=response_format,
                    )
                except openai.APIError:
                    return False
            SeedInstruction.model_validate_json(response.choices[0].message.content)
            return True

        outcomes = await asyncio.gather(*(one(text) for text in texts))
        await client.close()
        return sum(outcomes)

    return measure("plain AsyncOpenAI", len(texts), run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS))
    parser.add_argument("--repeat", type=int, default=3, help="Runs per client; the median run is reported.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    results = []
    for name in args.scenario or list(SCENARIOS):
        flags, bound = SCENARIOS[name]
        plains, engines = [], []
        for _ in range(args.repeat):  # alternate the clients so that machine noise hits both alike
            plains.append(with_standin(flags, lambda url: plain_run(url, prompts(args.calls), args.concurrency)))
            engines.append(with_standin(flags, lambda url: engine_run(url, prompts(args.calls), args.concurrency)))
        plain, engine = median(plains), median(engines)
        limit = bound(args.concurrency)
        row = {
            "scenario": name,
            "bound_calls_per_s": round(limit, 1),
            "engine": {**asdict(engine), "calls_per_s": round(engine.calls_per_second, 1)},
            "plain": {**asdict(plain), "calls_per_s": round(plain.calls_per_second, 1)},
            "engine_vs_plain": round(engine.calls_per_second / max(plain.calls_per_second, 1e-9), 3),
            "engine_vs_bound": round(engine.calls_per_second / limit, 3),
            "engine_cpu_ms_per_call": round(1000 * engine.cpu_seconds / args.calls, 3),
            "plain_cpu_ms_per_call": round(1000 * plain.cpu_seconds / args.calls, 3),
        }
        results.append(row)
        print(
            f"{name:13} bound {limit:6.1f}/s | engine {engine.calls_per_second:6.1f}/s ({engine.failed} failed) | "
            f"plain {plain.calls_per_second:6.1f}/s ({plain.failed} failed) | engine/plain "
            f"{row['engine_vs_plain']:.2f} | engine/bound {row['engine_vs_bound']:.2f} | "
            f"CPU ms/call engine {row['engine_cpu_ms_per_call']:.2f} plain {row['plain_cpu_ms_per_call']:.2f}",
            flush=True,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
