"""The offline stand-in over real HTTP: schema-valid, deterministic, labelled, with switches."""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from agentinstruct_dagster.llm.engine import json_schema_format
from agentinstruct_dagster.standin.server import STANDIN_MODEL_ID, Fault, StandinConfig, StandinServer

LABEL = "[stand-in] "
TIDES = "Tides rise and fall twice a day."
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": TIDES}]


class Level(Enum):
    EASY = "easy"
    HARD = "hard"


class Option(BaseModel):
    letter: Literal["A", "B", "C", "D"]
    text: str = Field(min_length=5, max_length=60)


class Source(BaseModel):
    title: str
    year: int | None = Field(default=None, ge=1800, le=2100)


class Item(BaseModel):
    question: str
    options: list[Option] = Field(min_length=2, max_length=4)
    note: str | None = None
    level: Level
    score: int = Field(ge=1, le=5)
    weight: float = Field(gt=0, lt=1)
    tags: list[str] = Field(max_length=2)
    short: str = Field(min_length=30, max_length=40)
    source: Source | None
    created: datetime.datetime


class Tree(BaseModel):
    name: str
    children: list[Tree] = []


class Edited(BaseModel):
    instruction: str
    answer: str


@pytest.fixture(scope="module")
def server() -> Iterator[StandinServer]:
    with StandinServer() as running:
        yield running


@pytest.fixture
def client(server: StandinServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)


def ask(client: openai.OpenAI, messages: list[dict[str, str]] = MESSAGES, **extra: Any) -> str:
    response = client.chat.completions.create(model="any", messages=messages, **extra)
    return response.choices[0].message.content


def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    headers = {"content-type": "application/json"}
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_models_health_and_completion_shape(server: StandinServer, client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [(model.id, model.owned_by) for model in models] == [(STANDIN_MODEL_ID, "offline-stand-in")]
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health") as response:
        assert response.status == 200
    completion = client.chat.completions.create(model="gpt-whatever", messages=MESSAGES)
    assert completion.object == "chat.completion" and completion.model == "gpt-whatever"
    assert completion.system_fingerprint == "offline-stand-in"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content.startswith(LABEL) and "Tides" in choice.message.content
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_pydantic_schemas_get_valid_labelled_deterministic_instances(client: openai.OpenAI) -> None:
    content = ask(client, response_format=json_schema_format(Item))
    item = Item.model_validate_json(content)
    # Not strict mode: fields that are not required may be left out.
    loose = {"type": "json_schema", "json_schema": {"name": "Item", "schema": Item.model_json_schema()}}
    Item.model_validate_json(ask(client, response_format=loose))
    assert item.question.startswith(LABEL) and "Tides" in item.question
    assert all(option.text.startswith(LABEL) for option in item.options)
    assert len({item.question, *(option.text for option in item.options)}) == 1 + len(item.options)
    assert ask(client, response_format=json_schema_format(Item)) == content
    other = [*MESSAGES[:1], {"role": "user", "content": TIDES + "!"}]
    assert ask(client, other, response_format=json_schema_format(Item)) != content
    tree = Tree.model_validate_json(ask(client, response_format=json_schema_format(Tree)))
    assert tree.name.startswith(LABEL)


def test_editor_request_gets_a_new_instruction(client: openai.OpenAI) -> None:
    first = Edited.model_validate_json(ask(client, response_format=json_schema_format(Edited)))
    prompt = f"Make this harder.\nInstruction: {first.instruction}\nAnswer: {first.answer}"
    messages = [{"role": "system", "content": "You are an editor."}, {"role": "user", "content": prompt}]
    edited = Edited.model_validate_json(ask(client, messages, response_format=json_schema_format(Edited)))
    assert edited.instruction.startswith(LABEL) and edited.instruction != first.instruction
    assert edited.instruction != edited.answer


def test_plain_and_json_object_modes(client: openai.OpenAI) -> None:
    plain = ask(client)
    assert plain.startswith(LABEL) and plain == ask(client)
    assert 8 <= len(plain.removeprefix(LABEL).split()) <= 40
    document = json.loads(ask(client, response_format={"type": "json_object"}))
    assert list(document) == ["text"] and document["text"].startswith(LABEL)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"messages": []}', "messages"),
        (b'{"messages": ["hi"]}', "messages"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "response_format": "json"}', "response_format"),
        (
            b'{"messages": [{"role": "user", "content": "hi"}],'
            b' "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "widget"}}}}',
            "widget",
        ),
    ],
)
def test_invalid_requests_get_400(server: StandinServer, body: bytes, message: str) -> None:
    status, answer = post(f"{server.base_url}/chat/completions", body)
    assert status == 400
    assert answer["error"]["type"] == "invalid_request_error" and message in answer["error"]["message"]


def test_latency_applies_and_concurrent_calls_overlap() -> None:
    with StandinServer(StandinConfig(latency_seconds=0.3)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
        started = time.perf_counter()
        ask(client)
        assert time.perf_counter() - started >= 0.3

        async def many() -> float:
            create = openai.AsyncOpenAI(base_url=server.base_url, api_key="x").chat.completions.create
            started = time.perf_counter()
            await asyncio.gather(
                *(create(model="m", messages=[{"role": "user", "content": f"q{i}"}]) for i in range(20))
            )
            return time.perf_counter() - started

        assert 0.3 <= asyncio.run(many()) < 3


def test_several_servers_start_and_stop_quickly() -> None:
    started = time.perf_counter()
    servers = [StandinServer().start() for _ in range(3)]
    try:
        assert len({server.port for server in servers}) == 3
        for server in servers:
            assert ask(openai.OpenAI(base_url=server.base_url, api_key="x")).startswith(LABEL)
    finally:
        for server in servers:
            server.stop()
    assert time.perf_counter() - started < 3


def test_serve_forever_announces_itself_as_not_a_model() -> None:
    imports = "from agentinstruct_dagster.standin.server import StandinConfig, serve_forever"
    code = f"{imports}; serve_forever(StandinConfig(), port=0)"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "stand-in" in line and "NOT a model" in line
        base_url = line.split()[-1]
        assert ask(openai.OpenAI(base_url=base_url, api_key="x")).startswith(LABEL)
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def test_fault_switch_answers_the_first_attempts_then_recovers() -> None:
    config = StandinConfig(faults=(Fault("server_error", first_attempts=2),))
    with StandinServer(config) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                ask(client)
        assert ask(client).startswith(LABEL)
    with pytest.raises(ValueError, match="unknown fault"):
        Fault("meteor")


def test_the_standin_process_ends_with_the_process_that_started_it() -> None:
    """A caller killed with SIGKILL cannot stop its stand-in: the stand-in notices and exits by itself."""
    script = "from agentinstruct_dagster.standin.server import StandinServer; import os, signal\n"
    script += "server = StandinServer().start(); print(server._process.pid, flush=True)\n"
    script += "os.kill(os.getpid(), signal.SIGKILL)\n"
    caller = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    child = int(caller.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
        time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text().lower()
