"""The stand-in's Files and Batches API through the real `openai` client, over real HTTP on loopback."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import Batch
from pydantic import BaseModel

from agentinstruct_dagster.llm.engine import json_schema_format
from agentinstruct_dagster.standin.server import StandinConfig, StandinServer

ENDPOINT = "/v1/chat/completions"
ENDED = ("completed", "failed", "expired", "cancelled")


class Answer(BaseModel):
    instruction: str
    answer: str


def request(custom_id: str, text: str, model: str = "m", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}


def requests(count: int) -> list[dict[str, Any]]:
    return [request(f"q{index}", f"Why do tides rise, case {index}?") for index in range(count)]


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(record, ensure_ascii=False).encode() + b"\n" for record in records)


def connect(server: StandinServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)


def submit(client: openai.OpenAI, content: bytes, **extra: Any) -> Batch:
    upload = client.files.create(file=("requests.jsonl", content), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h", **extra)


def poll(client: openai.OpenAI, batch_id: str, timeout: float = 10) -> list[Batch]:
    """Every state seen, polling every 20 ms until the batch ends."""
    seen = [client.batches.retrieve(batch_id)]
    deadline = time.monotonic() + timeout
    while seen[-1].status not in ENDED and time.monotonic() < deadline:
        time.sleep(0.02)
        seen.append(client.batches.retrieve(batch_id))
    return seen


def lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    return [] if file_id is None else [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def online(client: openai.OpenAI, body: dict[str, Any]) -> dict[str, Any]:
    """What `/v1/chat/completions` answers for a body, as JSON."""
    return client.chat.completions.with_raw_response.create(**body).http_response.json()


@pytest.fixture(scope="module")
def server() -> Iterator[StandinServer]:
    with StandinServer(StandinConfig(batch_max_requests=3, batch_max_file_bytes=2_000)) as running:
        yield running


@pytest.fixture
def client(server: StandinServer) -> openai.OpenAI:
    return connect(server)


def test_batch_answers_are_the_online_answers(client: openai.OpenAI) -> None:
    records = [
        request("plain", "Tides rise and fall twice a day."),
        request("schema", "Write an instruction about tides.", response_format=json_schema_format(Answer)),
        request("unanswerable", "x", response_format={"type": "json_schema", "json_schema": {"schema": []}}),
    ]
    created = submit(client, jsonl(records), metadata={"stage": "seed"})
    assert (created.status, created.request_counts.total, created.metadata) == ("validating", 0, {"stage": "seed"})
    batch = poll(client, created.id)[-1]
    assert batch.status == "completed" and batch.model == "m" and batch.completed_at is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (3, 2, 1)
    output, errors = lines(client, batch.output_file_id), lines(client, batch.error_file_id)
    assert [line["custom_id"] for line in output] == ["plain", "schema"]
    for line, record in zip(output, records, strict=False):
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["response"]["body"] == online(client, record["body"])
    assert batch.usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output)
    [failure] = errors
    assert failure["custom_id"] == "unanswerable" and failure["error"] is None
    assert failure["response"]["status_code"] == 400
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**records[2]["body"])
    assert failure["response"]["body"]["error"]["message"] == refused.value.body["message"]
    output_file = client.files.retrieve(batch.output_file_id)
    assert (output_file.purpose, output_file.filename) == ("batch_output", f"{batch.id}_output.jsonl")


def test_files_upload_download_list_delete(client: openai.OpenAI) -> None:
    content = jsonl(requests(2)).replace(b"\n", b"\r\n") + "café ☕".encode()
    upload = client.files.create(file=("in.jsonl", content), purpose="batch")
    assert (upload.bytes, upload.filename, upload.purpose, upload.object) == (len(content), "in.jsonl", "batch", "file")
    assert upload.expires_at == upload.created_at + 30 * 24 * 3600
    assert client.files.retrieve(upload.id) == upload
    assert client.files.content(upload.id).read() == content
    assert upload.id in [listed.id for listed in client.files.list(purpose="batch")]
    assert client.files.delete(upload.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(upload.id)
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("in.jsonl", content), purpose="everything")  # type: ignore[arg-type]


def test_batches_list_newest_first_in_pages(client: openai.OpenAI) -> None:
    ids = [submit(client, jsonl(requests(1))).id for _ in range(3)]
    first = client.batches.list(limit=2)
    assert [batch.id for batch in first.data] == ids[::-1][:2] and first.has_more
    second = client.batches.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == ids[0]
    assert ids[::-1] == [batch.id for batch in client.batches.list(limit=2)][:3]


def test_a_batch_progresses_over_its_completion_time() -> None:
    with StandinServer(StandinConfig(batch_completion_seconds=0.8)) as server:
        client = connect(server)
        started = time.monotonic()
        batch = submit(client, jsonl(requests(40)))
        seen = poll(client, batch.id)
        elapsed = time.monotonic() - started
    statuses = [status for status, _ in itertools.groupby(state.status for state in seen)]
    assert statuses == ["validating", "in_progress", "finalizing", "completed"]
    assert elapsed >= 0.8
    progress = [state.request_counts.completed for state in seen if state.status == "in_progress"]
    assert progress == sorted(progress) and any(0 < done < 40 for done in progress)
    assert seen[-1].request_counts.completed == 40


def test_partial_failure_lands_the_same_requests_in_the_error_file() -> None:
    with StandinServer(StandinConfig(batch_failure_rate=0.3)) as server:
        client = connect(server)
        content = jsonl(requests(40))
        first, second = (poll(client, submit(client, content).id)[-1] for _ in range(2))
        errors = lines(client, first.error_file_id)
        output = lines(client, first.output_file_id)
        failed = {line["custom_id"] for line in errors}
        assert 0 < len(failed) < 40 and first.request_counts.failed == len(failed)
        assert failed == {line["custom_id"] for line in lines(client, second.error_file_id)}
        assert failed | {line["custom_id"] for line in output} == {f"q{index}" for index in range(40)}
        for line in errors:
            assert line["error"] is None and line["response"]["status_code"] == 500
            assert line["response"]["body"]["error"]["code"] == "server_error"
        assert first.status == "completed" and first.request_counts.completed == len(output)


def test_an_expired_batch_keeps_what_it_answered() -> None:
    config = StandinConfig(batch_completion_seconds=1.0, batch_expire_seconds=0.5)
    with StandinServer(config) as server:
        client = connect(server)
        batch = poll(client, submit(client, jsonl(requests(20))).id)[-1]
        assert batch.status == "expired" and batch.expired_at is not None and batch.completed_at is None
        output, errors = lines(client, batch.output_file_id), lines(client, batch.error_file_id)
    assert 0 < len(output) < 20 and len(output) + len(errors) == 20
    assert (batch.request_counts.completed, batch.request_counts.failed) == (len(output), len(errors))
    for line in errors:
        assert line["response"] is None and line["error"]["code"] == "batch_expired"


def test_a_batch_that_never_finishes_until_cancelled() -> None:
    config = StandinConfig(batch_completion_seconds=0.2, batch_never_finishes=True)
    with StandinServer(config) as server:
        client = connect(server)
        batch = submit(client, jsonl(requests(10)))
        time.sleep(0.5)
        stuck = client.batches.retrieve(batch.id)
        assert (stuck.status, stuck.request_counts.completed, stuck.request_counts.total) == ("in_progress", 5, 10)
        assert client.batches.cancel(batch.id).status == "cancelling"
        cancelled = poll(client, batch.id)[-1]
        assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
        assert [line["custom_id"] for line in lines(client, cancelled.output_file_id)] == [f"q{i}" for i in range(5)]
        assert cancelled.error_file_id is None
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(batch.id)


LINE = request("q0", "Why?")
BAD_FILES = {
    "not_json": (b"{not json\n", "invalid_json_line", 1),
    "duplicate_id": (jsonl([LINE, LINE]), "duplicate_custom_id", 2),
    "other_url": (jsonl([LINE, {**request("q1", "Why?"), "url": "/v1/embeddings"}]), "url_mismatch", 2),
    "other_model": (jsonl([LINE, request("q1", "Why?", model="other")]), "model_mismatch", 2),
    "get": (jsonl([{**LINE, "method": "GET"}]), "invalid_method", 1),
    "no_body": (jsonl([{key: value for key, value in LINE.items() if key != "body"}]), "missing_required_parameter", 1),
    "empty": (b"", "empty_file", None),
    "too_many": (jsonl(requests(4)), "too_many_tasks", None),
    "too_large": (jsonl([request("q0", "Why? " * 500)]), "file_too_large", None),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_input_file_fails_the_batch(client: openai.OpenAI, case: str) -> None:
    content, code, line = BAD_FILES[case]
    batch = poll(client, submit(client, content).id)[-1]
    assert batch.status == "failed" and batch.failed_at is not None and batch.in_progress_at is None
    [error] = batch.errors.data
    assert (error.code, error.line) == (code, line)
    assert batch.request_counts.total == 0 and batch.output_file_id is None and batch.error_file_id is None


def test_refused_create_calls(client: openai.OpenAI) -> None:
    content = jsonl(requests(1))
    upload = client.files.create(file=("requests.jsonl", content), purpose="batch")
    other = client.files.create(file=("notes.jsonl", content), purpose="user_data")
    create = client.batches.create
    with pytest.raises(openai.NotFoundError):
        create(input_file_id="file-missing", endpoint=ENDPOINT, completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        create(input_file_id=other.id, endpoint=ENDPOINT, completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        create(input_file_id=upload.id, endpoint=ENDPOINT, completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="metadata"):
        create(input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h", metadata={"k": "v" * 513})
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")


def test_enqueued_token_limit(client: openai.OpenAI) -> None:
    content = jsonl(requests(3))
    tokens = sum(online(client, line["body"])["usage"]["prompt_tokens"] for line in requests(3))
    config = StandinConfig(batch_completion_seconds=2.0, batch_enqueued_token_limit=tokens + tokens // 2)
    with StandinServer(config) as server:
        limited = connect(server)
        running = submit(limited, content)
        refused = poll(limited, submit(limited, content).id)[-1]
        assert refused.status == "failed" and refused.errors.data[0].code == "token_limit_exceeded"
        assert limited.batches.retrieve(running.id).status == "in_progress"
        limited.batches.cancel(running.id)
        assert poll(limited, running.id)[-1].status == "cancelled"
        assert limited.batches.retrieve(submit(limited, content).id).status in ("validating", "in_progress")


def test_batches_survive_a_restart_with_a_state_dir(client: openai.OpenAI, tmp_path: Path) -> None:
    config = StandinConfig(batch_completion_seconds=0.6, state_dir=str(tmp_path))
    with StandinServer(config) as first:
        batch = submit(connect(first), jsonl(requests(4)))
    with StandinServer(config) as second:
        restarted = connect(second)
        ended = poll(restarted, batch.id)[-1]
        assert ended.status == "completed" and ended.request_counts.completed == 4
        assert restarted.files.retrieve(batch.input_file_id).purpose == "batch"
        output = lines(restarted, ended.output_file_id)
    assert [line["response"]["body"] for line in output] == [online(client, line["body"]) for line in requests(4)]
    with StandinServer(StandinConfig()) as forgetful, pytest.raises(openai.NotFoundError):
        connect(forgetful).batches.retrieve(batch.id)
