"""The LLM engine against the stand-in: every failure class ends as a retried success or a classified
failure with its raw output, retries honour Retry-After, and the API key never leaks."""

import asyncio
import logging
import socket
import time

import dagster as dg
import pytest

from agentinstruct_dagster.config.profiles import LLMSettings
from agentinstruct_dagster.llm.engine import LLMEngine
from agentinstruct_dagster.llm.schemas import EditedInstruction, SeedInstruction, Suggestions, TransformedText
from agentinstruct_dagster.llm.types import LLMRequest, LLMResult
from agentinstruct_dagster.pipeline.llm_resource import LLMResource
from agentinstruct_dagster.standin.server import Fault, StandinConfig, StandinServer

FAKE_KEY = "sk-test-SECRET-abc123"


def settings(monkeypatch: pytest.MonkeyPatch, **overrides: object) -> LLMSettings:
    monkeypatch.setenv("FAKE_PROVIDER_KEY", FAKE_KEY)
    values = {
        "provider": "openai_compatible",
        "api_key_env": "FAKE_PROVIDER_KEY",
        "models": {"default": "stand-in-model"},
        "max_concurrency": 32,
        "timeout_seconds": 5,
        "max_attempts": 4,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.05,
    }
    return LLMSettings(**{**values, **overrides})


def request(text: str = "The Fresnel lens bent light into one beam.", model=SeedInstruction) -> LLMRequest:
    return LLMRequest(agent="test", role="seed", system="Write a question.", user=text, response_model=model)


def run_one(config: StandinConfig, llm: LLMSettings, req: LLMRequest | None = None) -> tuple[LLMResult, LLMEngine]:
    with StandinServer(config) as server:
        engine = LLMEngine(llm, base_url=server.base_url)
        return engine.run(lambda: engine.call(req or request())), engine


def test_every_schema_validates_and_results_keep_request_order(monkeypatch: pytest.MonkeyPatch) -> None:
    llm = settings(monkeypatch)
    with StandinServer(StandinConfig(latency_seconds=0.05)) as server:
        engine = LLMEngine(llm, base_url=server.base_url)
        models = [TransformedText, SeedInstruction, Suggestions, EditedInstruction]
        requests = [request(f"passage number {i}", models[i % 4]) for i in range(200)]
        results = engine.run(lambda: asyncio.gather(*(engine.call(req) for req in requests)))
    assert all(result.ok for result in results)
    assert [type(result.value) for result in results] == [req.response_model for req in requests]
    assert engine.usage.calls == engine.usage.succeeded == 200
    assert engine.usage.prompt_tokens == sum(result.prompt_tokens for result in results) > 0


@pytest.mark.parametrize(
    ("fault", "attempts"),
    [(Fault("server_error", first_attempts=2), 3), (Fault("slow", delay_seconds=2), 2)],
)
def test_transient_failures_are_retried_to_success(
    monkeypatch: pytest.MonkeyPatch, fault: Fault, attempts: int
) -> None:
    result, engine = run_one(StandinConfig(faults=(fault,)), settings(monkeypatch, timeout_seconds=0.5))
    assert result.ok and result.attempts == attempts
    assert engine.usage.retries == attempts - 1


def test_rate_limit_honours_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    config = StandinConfig(faults=(Fault("rate_limited", first_attempts=2, retry_after_seconds=0.2),))
    started = time.perf_counter()
    result, _ = run_one(config, settings(monkeypatch))
    assert result.ok and result.attempts == 3
    assert time.perf_counter() - started >= 0.4


def test_rate_limit_storm_ends_as_classified_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    config = StandinConfig(faults=(Fault("rate_limited", first_attempts=99, retry_after_seconds=0),))
    result, engine = run_one(config, settings(monkeypatch, max_attempts=3))
    assert not result.ok and result.error_class == "rate_limited" and result.attempts == 3
    assert engine.usage.errors == {"rate_limited": 1}


def test_invalid_output_is_repaired_once(monkeypatch: pytest.MonkeyPatch) -> None:
    result, engine = run_one(StandinConfig(faults=(Fault("malformed_json"),)), settings(monkeypatch))
    assert result.ok and engine.usage.repairs == 1 and result.attempts == 2


@pytest.mark.parametrize("kind", ["malformed_json", "schema_mismatch"])
def test_output_invalid_twice_fails_with_raw_output(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    result, engine = run_one(StandinConfig(faults=(Fault(kind, first_attempts=2),)), settings(monkeypatch))
    assert not result.ok and result.error_class == "invalid_output" and result.attempts == 2
    assert result.raw_output and engine.usage.repairs == 1


@pytest.mark.parametrize(
    ("kind", "error_class"),
    [
        ("truncated", "truncated"),
        ("empty", "empty_output"),
        ("refusal", "refusal"),
        ("content_filter", "content_filter"),
    ],
)
def test_unusable_answers_are_classified(monkeypatch: pytest.MonkeyPatch, kind: str, error_class: str) -> None:
    result, _ = run_one(StandinConfig(faults=(Fault(kind, first_attempts=9),)), settings(monkeypatch))
    assert not result.ok and result.error_class == error_class and result.error


def test_api_key_never_leaks(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    result, engine = run_one(StandinConfig(faults=(Fault("unauthorized", first_attempts=9),)), settings(monkeypatch))
    assert not result.ok and result.error_class == "auth" and result.attempts == 1
    everything = " ".join([repr(result), repr(engine), caplog.text, str(engine.usage.metadata())])
    assert "Bearer ***" in result.error
    assert FAKE_KEY not in everything


def test_unreachable_endpoint_is_a_connection_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = LLMEngine(settings(monkeypatch, max_attempts=2), base_url=f"http://127.0.0.1:{port}/v1")
    result = engine.run(lambda: engine.call(request()))
    assert not result.ok and result.error_class == "connection" and result.attempts == 2


def test_resource_serves_the_standin_for_the_run_only(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    @dg.asset
    def probe(llm: LLMResource) -> None:
        engine = llm.engine()
        seen["url"] = engine.base_url
        seen["result"] = engine.run(lambda: engine.call(request()))

    assert dg.materialize([probe], resources={"llm": LLMResource(profile="standin")}).success
    assert seen["result"].ok and seen["result"].model == "agentinstruct-standin"
    port = int(str(seen["url"]).rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as client, pytest.raises(OSError):
        client.connect(("127.0.0.1", port))
