"""The LLM engine against the stand-in: every failure class ends as a retried success or a classified
failure with its raw output, retries honour Retry-After, and the API key never leaks."""

import asyncio
import logging
import socket
import time

import dagster as dg
import pytest

from agentinstruct_dagster.config.profiles import LLMSettings, load_profile
from agentinstruct_dagster.definitions import build_resources
from agentinstruct_dagster.llm.admission import AdaptiveLimiter, Admission, RateLimiter
from agentinstruct_dagster.llm.engine import LLMEngine
from agentinstruct_dagster.llm.ledger import CallLedger
from agentinstruct_dagster.llm.schemas import EditedInstruction, SeedInstruction, Suggestions, TransformedText
from agentinstruct_dagster.llm.types import LLMRequest, LLMResult
from agentinstruct_dagster.pipeline.llm_resource import LLMResource
from agentinstruct_dagster.standin.server import Fault, StandinConfig, StandinServer
from agentinstruct_dagster.storage.delta import read_all

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
    llm = settings(monkeypatch, prices={"stand-in-model": {"input_per_million": 1.0, "output_per_million": 2.0}})
    with StandinServer(StandinConfig(latency_seconds=0.05)) as server:
        engine = LLMEngine(llm, base_url=server.base_url)
        models = [TransformedText, SeedInstruction, Suggestions, EditedInstruction]
        requests = [request(f"passage number {i}", models[i % 4]) for i in range(200)]
        results = engine.run(lambda: asyncio.gather(*(engine.call(req) for req in requests)))
    assert all(result.ok for result in results)
    assert [type(result.value) for result in results] == [req.response_model for req in requests]
    assert engine.usage.calls_made == engine.usage.succeeded == 200
    assert engine.usage.prompt_tokens == sum(result.prompt_tokens for result in results) > 0
    expected_cost = (engine.usage.prompt_tokens * 1.0 + engine.usage.completion_tokens * 2.0) / 1e6
    assert engine.usage.cost_usd == pytest.approx(expected_cost) and expected_cost > 0


@pytest.mark.parametrize(
    ("fault", "attempts"),
    [
        (Fault("server_error", first_attempts=2), 3),
        (Fault("slow", delay_seconds=2), 2),
        (Fault("connection_reset", first_attempts=2), 3),
    ],
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


def test_api_key_never_leaks(tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    outcomes = []
    engines = []
    # A document that holds the key: the stand-in's answer repeats the request's words, so the key with them.
    leaky = request(f"The deploy notes say the token is {FAKE_KEY} and it rotates weekly. " * 3)
    for fault, req in ((Fault("unauthorized"), request()), (Fault("server_error", first_attempts=2), leaky)):
        with StandinServer(StandinConfig(faults=(fault,))) as server:
            ledger = CallLedger(tmp_path / "ledger", "b", "asset")
            engine = LLMEngine(settings(monkeypatch), base_url=server.base_url, ledger=ledger)
            outcomes.append(engine.run(lambda engine=engine, req=req: engine.call(req)))
            engines.append(engine)
    first, second = outcomes
    assert "***" in second.value.model_dump_json()
    assert not first.ok and first.error_class == "auth" and first.attempts == 1
    assert "Bearer ***" in first.error
    assert second.ok and second.attempts == 3
    ledger_text = read_all(tmp_path / "ledger").write_json()
    everything = " ".join(
        [repr(first), repr(second), repr(engine), caplog.text, str(engine.usage.metadata()), ledger_text]
    )
    assert FAKE_KEY not in everything


def test_many_calls_through_random_faults_all_succeed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    faults = (Fault("server_error", first_attempts=0, rate=0.3), Fault("connection_reset", first_attempts=0, rate=0.1))
    with StandinServer(StandinConfig(faults=faults)) as server:
        engine = LLMEngine(settings(monkeypatch, max_attempts=10), base_url=server.base_url)
        requests = [request(f"passage {i}") for i in range(200)]
        results = engine.run(lambda: asyncio.gather(*(engine.call(req) for req in requests)))
    assert all(result.ok for result in results)
    assert engine.usage.succeeded == 200 and engine.usage.retries > 40


def test_adaptive_window_falls_under_a_429_storm_without_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    config = StandinConfig(latency_seconds=0.05, max_in_flight=8, cap_retry_after_seconds=0.02)
    with StandinServer(config) as server:
        engine = LLMEngine(settings(monkeypatch, max_attempts=50), base_url=server.base_url)
        requests = [request(f"passage {i}") for i in range(300)]
        results = engine.run(lambda: asyncio.gather(*(engine.call(req) for req in requests)))
    assert all(result.ok for result in results)
    assert engine.usage.overloads > 0 and engine.limiter.decreases > 0
    assert engine.limiter.window < 32


def test_adaptive_window_recovers_after_the_storm() -> None:
    limiter = AdaptiveLimiter(32, decrease_interval=0)
    for _ in range(60):
        limiter.overloaded()
    assert limiter.window == 1
    for _ in range(2000):
        limiter.succeeded()
    assert limiter.window == 32 and limiter.limit <= 32


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

    assert dg.materialize([probe], resources={"llm": build_resources(load_profile("standin"))["llm"]}).success
    assert seen["result"].ok and seen["result"].model == "agentinstruct-standin"
    port = int(str(seen["url"]).rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as client, pytest.raises(OSError):
        client.connect(("127.0.0.1", port))


def test_ledger_cache_hits_and_misses(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = settings(monkeypatch)

    def run(scope: str, req: LLMRequest, fresh: bool = False) -> LLMEngine:
        with StandinServer() as server:
            ledger = CallLedger(tmp_path / "ledger", "b", "asset")
            engine = LLMEngine(llm, base_url=server.base_url, ledger=ledger, cache_scope=scope, fresh_calls=fresh)
            assert engine.run(lambda: engine.call(req)).ok
        return engine

    base = request()
    assert run("profile-a", base).usage.calls_made == 1
    assert run("profile-a", base).usage.calls_cached == 1
    assert run("profile-b", base).usage.calls_made == 1, "a profile switch must miss the cache"
    new_version = LLMRequest(base.agent, base.role, base.system, base.user, base.response_model, "v2")
    assert run("profile-a", new_version).usage.calls_made == 1, "a prompt-version change must miss the cache"
    assert run("profile-a", base, fresh=True).usage.calls_made == 1
    assert read_all(tmp_path / "ledger")["request_hash"].n_unique() == 3


def test_progress_is_logged_at_a_steady_interval(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    caplog.set_level(logging.INFO)
    llm = settings(monkeypatch, progress_seconds=0.1, max_concurrency=2)
    with StandinServer(StandinConfig(latency_seconds=0.05)) as server:
        engine = LLMEngine(llm, base_url=server.base_url, label="rc/seed")
        requests = [request(f"passage {i}") for i in range(20)]
        engine.run(lambda: asyncio.gather(*(engine.call(req) for req in requests)), expected_calls=20)
    lines = [record.message for record in caplog.records if record.message.startswith("rc/seed:")]
    assert len(lines) >= 3
    assert "/20 calls done" in lines[-1] and "window 2" in lines[-1] and "calls/s" in lines[-1]


def test_rate_limits_hold_back_calls_over_the_budget() -> None:
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=600)

    async def spend() -> float:
        await limiter.admit(600)
        started = time.perf_counter()
        await limiter.admit(10)
        return time.perf_counter() - started

    assert asyncio.run(spend()) >= 0.9


def test_azure_provider_talks_the_azure_path_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    llm = settings(monkeypatch, provider="azure", api_version="2024-10-21", models={"default": "my-deployment"})
    with StandinServer() as server:
        engine = LLMEngine(llm, base_url=server.base_url.removesuffix("/v1"))
        result = engine.run(lambda: engine.call(request()))
    assert result.ok and result.model == "my-deployment"


def test_stages_of_a_run_share_one_admission_state(monkeypatch: pytest.MonkeyPatch) -> None:
    llm = settings(monkeypatch, max_attempts=50)
    admission = Admission.for_settings(llm)
    config = StandinConfig(latency_seconds=0.05, max_in_flight=4, cap_retry_after_seconds=0.02)
    with StandinServer(config) as server:
        first = LLMEngine(llm, base_url=server.base_url, admission=admission)
        requests = [request(f"passage {i}") for i in range(100)]
        assert all(first.run(lambda: asyncio.gather(*(first.call(req) for req in requests))))
        learned = admission.limiter.window
        second = LLMEngine(llm, base_url=server.base_url, admission=admission)
        assert second.limiter is first.limiter and learned < 32
        assert second.run(lambda: second.call(request("next stage"))).ok
    assert admission.limiter.in_flight == 0


def _keywords(schema: object) -> set[str]:
    """Every JSON-schema keyword used anywhere in `schema` (property and $defs names excluded)."""
    if isinstance(schema, list):
        return set().union(*(_keywords(item) for item in schema)) if schema else set()
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    for key, value in schema.items():
        children = value.values() if key in ("properties", "$defs") else [value]
        found |= set().union(*(_keywords(child) for child in children))
    return found


def test_portable_schemas_keep_only_the_common_subset_and_state_the_limits() -> None:
    from agentinstruct_dagster.llm.engine import PORTABLE_KEYWORDS, json_schema_format
    from agentinstruct_dagster.shapes.models import CodeTask, McqItem, tool_plan_model, web_task_model

    for model in (McqItem, CodeTask, tool_plan_model((("search", ("query",)), ("ping", ()))), web_task_model(4)):
        full = json_schema_format(model, "full")["json_schema"]["schema"]
        portable = json_schema_format(model, "portable")["json_schema"]["schema"]
        assert _keywords(portable) <= PORTABLE_KEYWORDS, model.__name__
        assert _keywords(full) - PORTABLE_KEYWORDS, model.__name__
    options = json_schema_format(McqItem, "portable")["json_schema"]["schema"]["properties"]["options"]
    assert "minItems 4" in options["description"] and "maxItems 4" in options["description"]
    assert load_profile("openai").llm.schema_dialect == "portable"
