"""The offline stand-in over real HTTP: schema-valid, deterministic, labelled, with switches."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field

from agentinstruct_dagster.llm.engine import json_schema_format
from agentinstruct_dagster.standin.server import STANDIN_MODEL_ID, Fault, StandinConfig, StandinServer


class Option(BaseModel):
    letter: Literal["A", "B", "C", "D"]
    text: str = Field(min_length=5, max_length=60)


class Item(BaseModel):
    question: str
    options: list[Option] = Field(min_length=2, max_length=4)
    note: str | None = None
    score: int = Field(ge=1, le=5)
    tags: list[str]


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Tides rise and fall twice a day."}]


def ask(client: openai.OpenAI, **extra: object) -> str:
    response = client.chat.completions.create(model="any", messages=MESSAGES, **extra)
    return response.choices[0].message.content


def test_models_schema_instances_determinism_and_label() -> None:
    with StandinServer() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
        assert [model.id for model in client.models.list().data] == [STANDIN_MODEL_ID]
        content = ask(client, response_format=json_schema_format(Item))
        item = Item.model_validate_json(content)
        assert item.question.startswith("[stand-in] ")
        assert "Tides" in content
        assert ask(client, response_format=json_schema_format(Item)) == content
        plain = ask(client)
        assert plain.startswith("[stand-in] ") and plain != content


def test_invalid_requests_get_400() -> None:
    with StandinServer() as server:
        for body in (b"not json", b'{"messages": []}'):
            request = urllib.request.Request(f"{server.base_url}/chat/completions", data=body, method="POST")
            with pytest.raises(urllib.error.HTTPError) as error:
                urllib.request.urlopen(request)
            assert error.value.code == 400


def test_latency_applies_and_concurrent_calls_overlap() -> None:
    with StandinServer(StandinConfig(latency_seconds=0.3)) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x")

        async def many() -> float:
            started = time.perf_counter()
            await asyncio.gather(
                *(
                    client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q{i}"}])
                    for i in range(20)
                )
            )
            return time.perf_counter() - started

        elapsed = asyncio.run(many())
        assert 0.3 <= elapsed < 3


def test_fault_switch_answers_the_first_attempts_then_recovers() -> None:
    config = StandinConfig(faults=(Fault("server_error", first_attempts=2),))
    with StandinServer(config) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                ask(client)
        assert ask(client).startswith("[stand-in]")
    with pytest.raises(ValueError, match="unknown fault"):
        Fault("meteor")
