"""Model behaviour in the engine, over real HTTP to the stand-in with every request body recorded: a truncated
or unaccepted answer is asked once more with a fresh seed, per-role sampling parameters reach the wire and
the cache key, and neither the retry nor a cached answer changes what the ledger holds."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

import pydantic
import pytest
import uvicorn
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response

from agentinstruct_dagster.config.profiles import LLMSettings, load_profile
from agentinstruct_dagster.llm.engine import LLMEngine
from agentinstruct_dagster.llm.ledger import CallLedger
from agentinstruct_dagster.llm.schemas import SeedInstruction
from agentinstruct_dagster.llm.types import LLMRequest, LLMResult
from agentinstruct_dagster.project import profiles_dir
from agentinstruct_dagster.standin.server import Fault, StandinConfig, completion_content, create_app
from agentinstruct_dagster.storage.delta import read_all

SAMPLING_KEYS = ("temperature", "top_p", "seed", "top_k", "min_p", "repeat_penalty")


class BodyRecorder(BaseHTTPMiddleware):
    """Keeps the JSON body of every POST before the stand-in answers it."""

    def __init__(self, app: Any, bodies: list[dict[str, Any]]) -> None:
        super().__init__(app)
        self.bodies = bodies

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.method == "POST":
            self.bodies.append(json.loads(await request.body()))
        return await call_next(request)


class RecordingStandin:
    """The stand-in app behind a body recorder, served on a free loopback port for one `with` block."""

    def __init__(self, config: StandinConfig | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        app = BodyRecorder(create_app(config or StandinConfig()), self.bodies)
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/v1"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", loop="asyncio"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def __enter__(self) -> RecordingStandin:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "the recording stand-in did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._socket.close()


class Rejecter:
    """An `accept` check that rejects the first `times` answers it sees, counting how often it is asked."""

    def __init__(self, times: int) -> None:
        self.times, self.asked = times, 0

    def __call__(self, answer: SeedInstruction) -> str | None:
        self.asked += 1
        return "degenerate: the answer repeats itself" if self.asked <= self.times else None


def settings(**overrides: Any) -> LLMSettings:
    values = {
        "provider": "openai_compatible",
        "models": {"default": "stand-in-model"},
        "timeout_seconds": 5,
        "max_attempts": 3,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.05,
    }
    return LLMSettings(**{**values, **overrides})


def request(role: str = "seed", accept: Rejecter | None = None) -> LLMRequest[SeedInstruction]:
    return LLMRequest(
        agent="test",
        role=role,
        system="Write a question about the passage.",
        user="The Fresnel lens bent the light of a small flame into one strong beam.",
        response_model=SeedInstruction,
        accept=accept,
    )


def call(
    server: RecordingStandin, llm: LLMSettings, req: LLMRequest, ledger: CallLedger | None = None
) -> tuple[LLMResult, LLMEngine]:
    engine = LLMEngine(llm, base_url=server.base_url, ledger=ledger)
    return engine.run(lambda: engine.call(req)), engine


def standin_answer(body: dict[str, Any]) -> SeedInstruction:
    """What the stand-in answers (without faults) to this body."""
    return SeedInstruction.model_validate_json(completion_content(body))


def without_seed(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "seed"}


@pytest.mark.parametrize(("configured_seed", "seeds_sent"), [(11, [11, 12]), (None, [None, 1])])
def test_truncated_answer_is_asked_once_more_with_a_fresh_seed(
    caplog: pytest.LogCaptureFixture, configured_seed: int | None, seeds_sent: list[int | None]
) -> None:
    caplog.set_level(logging.DEBUG)
    llm = settings(sampling={"default": {"seed": configured_seed}})
    with RecordingStandin(StandinConfig(faults=(Fault("truncated", first_attempts=1),))) as server:
        result, engine = call(server, llm, request())
    first, second = server.bodies
    assert result.ok and result.attempts == 2 and engine.usage.reseeds == 1 and engine.usage.calls_failed == 0
    assert [first.get("seed"), second.get("seed")] == seeds_sent
    assert without_seed(first) == without_seed(second), "the retry changes only the seed"
    assert result.value == standin_answer(second)
    assert f"asking once more with seed {seeds_sent[1]}" in caplog.text


def test_answer_truncated_twice_fails_as_truncated_after_two_attempts() -> None:
    with RecordingStandin(StandinConfig(faults=(Fault("truncated", first_attempts=9),))) as server:
        result, engine = call(server, settings(), request())
    assert not result.ok and result.error_class == "truncated" and result.attempts == 2 and result.raw_output
    assert len(server.bodies) == 2 and server.bodies[0].get("seed") != server.bodies[1].get("seed")
    assert engine.usage.reseeds == 1 and dict(engine.usage.errors) == {"truncated": 1}


def test_rejected_answer_is_asked_once_more_and_the_second_answer_stands_unchecked() -> None:
    accept = Rejecter(times=99)
    with RecordingStandin() as server:
        result, engine = call(server, settings(sampling={"default": {"seed": 3}}), request(accept=accept))
    first, second = server.bodies
    assert [first["seed"], second["seed"]] == [3, 4]
    assert result.ok and result.attempts == 2 and engine.usage.reseeds == 1 and accept.asked == 1
    assert result.value == standin_answer(second) != standin_answer(first)


def test_accepted_answer_is_not_asked_again() -> None:
    accept = Rejecter(times=0)
    with RecordingStandin() as server:
        result, engine = call(server, settings(), request(accept=accept))
    assert result.ok and len(server.bodies) == 1 and accept.asked == 1 and engine.usage.reseeds == 0


def test_cached_answer_is_returned_unchecked_under_the_hash_of_the_request(tmp_path) -> None:
    llm = settings(sampling={"default": {"seed": 3}})
    with RecordingStandin() as server:
        first, engine = call(server, llm, request(accept=Rejecter(times=1)), CallLedger(tmp_path, "b", "asset"))
        assert len(server.bodies) == 2
        accept = Rejecter(times=99)
        cached, again = call(server, llm, request(accept=accept), CallLedger(tmp_path, "b", "asset"))
        assert len(server.bodies) == 2, "a re-run of an unchanged request makes no call"
    assert cached.cached and cached.value == first.value and accept.asked == 0
    assert again.usage.calls_cached == 1 and again.usage.calls_made == again.usage.reseeds == 0
    ledger = read_all(tmp_path)
    assert ledger.height == 1 and SeedInstruction.model_validate_json(ledger["content"][0]) == first.value
    untroubled_hash = engine.request_hash("stand-in-model", request())
    assert ledger["request_hash"][0] == untroubled_hash, "the retry must not change the request hash"


def test_role_sampling_reaches_the_wire() -> None:
    llm = settings(
        temperature=0.3,
        sampling={
            "default": {"top_p": 0.9, "seed": 5, "extra_body": {"top_k": 40, "min_p": 0.05}},
            "judge": {"temperature": 0.0, "extra_body": {"repeat_penalty": 1.1}},
        },
    )
    with RecordingStandin() as server:
        assert all(call(server, llm, request(role))[0].ok for role in ("seed", "judge"))
        assert call(server, settings(temperature=0.3), request())[0].ok
    seed_role, judge_role, plain = ({key: body.get(key) for key in SAMPLING_KEYS} for body in server.bodies)
    assert seed_role == dict(temperature=0.3, top_p=0.9, seed=5, top_k=40, min_p=0.05, repeat_penalty=None)
    assert judge_role == {**seed_role, "temperature": 0.0, "repeat_penalty": 1.1}
    assert plain == dict.fromkeys(SAMPLING_KEYS) | {"temperature": 0.3}, "the old `temperature` key still works"


def test_sampling_parameters_are_part_of_the_request_hash(tmp_path) -> None:
    def request_hash(role: str = "seed", **overrides: Any) -> str:
        return LLMEngine(settings(**overrides)).request_hash("stand-in-model", request(role))

    variants = [
        request_hash(),
        request_hash(temperature=0.2),
        request_hash(sampling={"default": {"top_p": 0.9}}),
        request_hash(sampling={"default": {"top_p": 0.8}}),
        request_hash(sampling={"default": {"seed": 1}}),
        request_hash(sampling={"default": {"extra_body": {"top_k": 40}}}),
        request_hash(sampling={"seed": {"temperature": 0.1}}),
    ]
    assert len(set(variants)) == len(variants)
    assert request_hash(sampling={"default": {"temperature": 0.7}}) == request_hash(), "same parameters, same hash"
    assert request_hash("editor", sampling={"seed": {"temperature": 0.1}}) == request_hash("editor")

    with RecordingStandin() as server:
        for top_p in (0.9, 0.8, 0.9):
            call(server, settings(sampling={"default": {"top_p": top_p}}), request(), CallLedger(tmp_path, "b", "a"))
    assert [body["top_p"] for body in server.bodies] == [0.9, 0.8], "a changed top_p misses the cache"


def test_profiles_validate_their_sampling() -> None:
    with pytest.raises(pydantic.ValidationError, match="must not set seed, temperature"):
        settings(sampling={"default": {"extra_body": {"temperature": 1.5, "seed": 2, "top_k": 5}}})
    with pytest.raises(pydantic.ValidationError, match=r"unknown role\(s\) \['writer'\]"):
        settings(sampling={"writer": {"temperature": 0.1}})
    for path in sorted(profiles_dir().glob("*.yaml")):
        load_profile(path.stem).llm.sampling_for("judge")
    assert load_profile("vllm").llm.sampling_for("judge").temperature == 0
