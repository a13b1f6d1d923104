"""The stand-in's Files and Batches API, shaped like OpenAI's Batch API as the `openai` client calls it.

`POST /v1/files` takes a multipart upload; `GET /v1/files[/{id}[/content]]` and `DELETE /v1/files/{id}` list,
describe, download and delete. `POST /v1/batches` starts a batch over an uploaded JSONL file of
`{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}` lines; `GET /v1/batches[/{id}]` and
`POST /v1/batches/{id}/cancel` list, poll and cancel it. A bad input file fails the batch with OpenAI's error
codes (`invalid_json_line`, `duplicate_custom_id`, `url_mismatch`, `model_mismatch`, `empty_file`,
`too_many_tasks`, and `missing_required_parameter`, `invalid_method`, `file_too_large`); a request whose body
the stand-in cannot answer fails alone, with the 400 `/v1/chat/completions` gives it, in the error file.

A batch's course is a function of the clock, fixed when it is created: validating for the first tenth of
`batch_completion_seconds`, then in progress (its requests answered evenly, in file order, until nine tenths),
finalizing, completed. Cancelling takes a tenth of that time too. On completion, expiry or cancellation the
answered requests go to the output file, exactly as `/v1/chat/completions` answers them, and the failed ones
(and on expiry the unanswered ones, `batch_expired`) to the error file; unanswered requests of a cancelled
batch are in neither. Files and batches live in the server's memory, so a restarted stand-in forgets them,
unless `state_dir` is set: then they are also written there (records as JSON, contents by their sha256)
and read back at start, and a batch's clock keeps running while no stand-in serves, like a provider's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from agentinstruct_dagster.standin.server import StandinConfig

BATCH_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
WINDOW_SECONDS = 24 * 3600
BATCH_FILE_SECONDS = 30 * 24 * 3600  # OpenAI keeps files of purpose `batch` for 30 days by default
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
VALIDATING, PROCESSING_ENDS, CANCELLING = 0.1, 0.9, 0.1  # shares of batch_completion_seconds
METADATA_KEYS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512
UNFINISHED = ("validating", "in_progress", "finalizing")
EXPIRED_ERROR = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}
INJECTED_FAILURE = {
    "error": {
        "message": "stand-in: injected batch request failure",
        "type": "server_error",
        "param": None,
        "code": "server_error",
    }
}

Respond = Callable[[Any], tuple[int, dict[str, Any]]]


class ApiError(Exception):
    """An API call answered with an HTTP error in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param

    def response(self) -> JSONResponse:
        error = {"message": str(self), "type": "invalid_request_error", "param": self.param, "code": None}
        return JSONResponse({"error": error}, status_code=self.status)


@dataclass(frozen=True)
class Outcome:
    """One request's answer: what `/v1/chat/completions` says to its body, or the injected failure."""

    custom_id: str
    status_code: int
    body: dict[str, Any]

    @property
    def succeeded(self) -> bool:
        return self.status_code == 200

    def tokens(self, kind: str) -> int:
        return int(self.body.get("usage", {}).get(kind, 0))


@dataclass
class FileRecord:
    """A file's OpenAI fields plus the sha256 of its content."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    expires_at: int | None
    sha256: str

    def view(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        del fields["sha256"]
        return {**fields, "object": "file", "status": "processed", "status_details": None}


@dataclass
class BatchRecord:
    """What a batch was asked and its course, fixed at creation (times are Unix seconds as floats)."""

    id: str
    input_file_id: str
    input_sha256: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    model: str | None
    errors: list[dict[str, Any]]
    created_at: float
    processing_from: float
    processing_until: float
    finishes_at: float
    expires_at: float
    cancel_seconds: float
    stalls: bool
    failure_rate: float
    cancelling_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    done: bool = False

    def status(self, now: float) -> str:
        if self.errors:
            return "validating" if now < self.processing_from else "failed"
        if self.cancelling_at is not None:
            return "cancelling" if now < self.cancelling_at + self.cancel_seconds else "cancelled"
        if now >= self.expires_at and (self.stalls or self.finishes_at > self.expires_at):
            return "expired"
        if now < self.processing_from:
            return "validating"
        if self.stalls or now < self.processing_until:
            return "in_progress"
        return "finalizing" if now < self.finishes_at else "completed"

    def work_ends(self, now: float) -> float:
        """When answering requests stops (or now, if it has not)."""
        return min(now, self.expires_at, math.inf if self.cancelling_at is None else self.cancelling_at)

    def answered(self, total: int, now: float) -> int:
        """How many requests (the first ones, in file order) are answered at `now`."""
        end = self.work_ends(now)
        if self.errors or end < self.processing_from:
            return 0
        span = self.processing_until - self.processing_from
        share = 1.0 if span <= 0 or end >= self.processing_until else (end - self.processing_from) / span
        return min(total // 2 if self.stalls else total, math.floor(total * share))

    def timestamps(self, status: str, now: float) -> dict[str, int | None]:
        def at(moment: float | None, applies: bool) -> int | None:
            return int(moment) if applies and moment is not None else None

        cancelled_at = None if self.cancelling_at is None else self.cancelling_at + self.cancel_seconds
        return {
            "created_at": int(self.created_at),
            "expires_at": int(self.expires_at),
            "in_progress_at": at(self.processing_from, not self.errors and self.work_ends(now) >= self.processing_from),
            "finalizing_at": at(self.processing_until, status in ("finalizing", "completed")),
            "completed_at": at(self.finishes_at, status == "completed"),
            "failed_at": at(self.processing_from, status == "failed"),
            "expired_at": at(self.expires_at, status == "expired"),
            "cancelling_at": at(self.cancelling_at, True),
            "cancelled_at": at(cancelled_at, status == "cancelled"),
        }


def _problem(code: str, message: str, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "line": line, "param": param}


def _shape_problem(number: int, request: Any) -> dict[str, Any] | None:
    """Why a parsed input line is not a request of a chat completion batch, or None."""
    if not isinstance(request, dict):
        return _problem("invalid_json_line", "This line is not parseable as valid JSON.", number)
    for name, kind in (("custom_id", str), ("method", str), ("url", str), ("body", dict)):
        if not isinstance(request.get(name), kind):
            return _problem("missing_required_parameter", f"Missing required parameter: '{name}'.", number, name)
    if request["method"] != "POST":
        return _problem("invalid_method", "The method of each request must be POST.", number, "method")
    if request["url"] != BATCH_ENDPOINT:
        message = "The URL provided for this request does not match the batch endpoint."
        return _problem("url_mismatch", message, number, "url")
    return None


def _json(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def input_problems(content: bytes, max_requests: int, max_bytes: int) -> tuple[list[dict[str, Any]], str | None]:
    """The problems of a batch input file (each with its 1-based line) and the model of its requests."""
    if len(content) > max_bytes:
        return [_problem("file_too_large", f"The input file has {len(content)} bytes; the limit is {max_bytes}.")], None
    lines = content.removesuffix(b"\n").split(b"\n") if content.strip() else []
    if not lines:
        return [_problem("empty_file", "The batch input file is empty.")], None
    if len(lines) > max_requests:
        message = f"The batch input file has {len(lines)} requests; the limit is {max_requests}."
        return [_problem("too_many_tasks", message)], None
    problems, seen, models = [], set(), []
    for number, line in enumerate(lines, 1):
        request = _json(line)
        problem = _shape_problem(number, request)
        if problem is None and request["custom_id"] in seen:
            message = "The custom_id for this request is a duplicate of another request; it must be unique."
            problem = _problem("duplicate_custom_id", message, number, "custom_id")
        elif problem is None and models and request["body"].get("model") != models[0]:
            message = "The model for this request does not match the model of the other requests in the batch."
            problem = _problem("model_mismatch", message, number, "body.model")
        if problem is not None:
            problems.append(problem)
        elif not models:
            models.append(request["body"].get("model"))
        if problem is None:
            seen.add(request["custom_id"])
    return problems, (models or [None])[0]


def _injected(custom_id: str, rate: float) -> bool:
    draw = int(hashlib.sha256(f"batch_failure:{custom_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return draw < rate


def outcomes(content: bytes, failure_rate: float, respond: Respond) -> list[Outcome]:
    """Every request's outcome, in file order (the file must be valid)."""
    answers = []
    for line in content.removesuffix(b"\n").split(b"\n"):
        request = json.loads(line)
        status, body = respond(request["body"])
        if status == 200 and _injected(request["custom_id"], failure_rate):
            status, body = 500, INJECTED_FAILURE
        answers.append(Outcome(request["custom_id"], status, body))
    return answers


def _result_line(batch_id: str, outcome: Outcome, answered: bool) -> dict[str, Any]:
    key = hashlib.sha256(f"{batch_id}:{outcome.custom_id}".encode()).hexdigest()[:24]
    if not answered:
        return {"id": f"batch_req_{key}", "custom_id": outcome.custom_id, "response": None, "error": EXPIRED_ERROR}
    response = {"status_code": outcome.status_code, "request_id": f"req_{key}", "body": outcome.body}
    return {"id": f"batch_req_{key}", "custom_id": outcome.custom_id, "response": response, "error": None}


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(record, ensure_ascii=False).encode() + b"\n" for record in records)


def _form(content_type: str, payload: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename, content)."""
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(400, "The upload must be multipart/form-data.")
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + payload)
    fields = {}
    for part in message.iter_parts() if isinstance(message, EmailMessage) and message.is_multipart() else []:
        name = part.get_param("name", header="content-disposition")
        fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


def _page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """A cursor page of objects, newest first, after the object with id `after`."""
    ids = [item["id"] for item in items]
    start = ids.index(after) + 1 if after in ids else 0
    data = items[start : start + limit]
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": start + limit < len(items)}


def _limit(request: Request, default: int, most: int) -> int:
    try:
        limit = int(request.query_params.get("limit", default))
    except ValueError:
        raise ApiError(400, "`limit` must be an integer.", "limit") from None
    if not 1 <= limit <= most:
        raise ApiError(400, f"`limit` must be between 1 and {most}.", "limit")
    return limit


class Store:
    """Records and contents on disk under `state_dir` (nothing without one); writes are atomic."""

    def __init__(self, state_dir: str | None) -> None:
        self.root = Path(state_dir) if state_dir else None
        for folder in ("files", "batches", "contents") if self.root else ():
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def _write(self, path: Path, data: bytes) -> None:
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        os.replace(partial, path)

    def put(self, folder: str, name: str, data: bytes) -> None:
        if self.root and not (folder == "contents" and (self.root / folder / name).exists()):
            self._write(self.root / folder / name, data)

    def remove(self, folder: str, name: str) -> None:
        if self.root:
            (self.root / folder / name).unlink(missing_ok=True)

    def read_all(self, folder: str) -> dict[str, bytes]:
        paths = sorted((self.root / folder).iterdir()) if self.root else []
        return {path.name: path.read_bytes() for path in paths if path.suffix != ".partial"}


class BatchApi:
    """Files and batches of one stand-in (see the module's docstring); `respond` answers a request body."""

    def __init__(self, config: StandinConfig, respond: Respond) -> None:
        self.config, self.respond = config, respond
        self.store = Store(config.state_dir)
        self.contents = self.store.read_all("contents")
        self.files = {name: FileRecord(**json.loads(data)) for name, data in self.store.read_all("files").items()}
        records = (BatchRecord(**json.loads(data)) for data in self.store.read_all("batches").values())
        self.batches = {record.id: record for record in sorted(records, key=lambda record: record.created_at)}
        self.outcomes: dict[str, list[Outcome]] = {}

    def routes(self) -> list[Route]:
        def endpoint(handler: Callable[..., Any]) -> Callable[[Request], Any]:
            async def handle(request: Request) -> Response:
                try:
                    return await handler(request, **request.path_params)
                except ApiError as error:
                    return error.response()

            return handle

        return [
            Route("/v1/files", endpoint(self.upload), methods=["POST"]),
            Route("/v1/files", endpoint(self.list_files), methods=["GET"]),
            Route("/v1/files/{file_id}", endpoint(self.retrieve_file), methods=["GET"]),
            Route("/v1/files/{file_id}", endpoint(self.delete_file), methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", endpoint(self.file_content), methods=["GET"]),
            Route("/v1/batches", endpoint(self.create_batch), methods=["POST"]),
            Route("/v1/batches", endpoint(self.list_batches), methods=["GET"]),
            Route("/v1/batches/{batch_id}", endpoint(self.retrieve_batch), methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", endpoint(self.cancel_batch), methods=["POST"]),
        ]

    # Files

    def _add_file(self, content: bytes, filename: str, purpose: str, expires_at: int | None) -> FileRecord:
        sha256 = hashlib.sha256(content).hexdigest()
        file_id, created_at = f"file-{uuid.uuid4().hex[:24]}", int(time.time())
        record = FileRecord(file_id, len(content), created_at, filename, purpose, expires_at, sha256)
        self.contents[sha256] = content
        self.store.put("contents", sha256, content)
        self.files[record.id] = record
        self.store.put("files", record.id, json.dumps(dataclasses.asdict(record)).encode())
        return record

    def _file(self, file_id: str) -> FileRecord:
        if file_id not in self.files:
            raise ApiError(404, f"No such File object: {file_id}", "id")
        return self.files[file_id]

    async def upload(self, request: Request) -> Response:
        fields = _form(request.headers.get("content-type", ""), await request.body())
        filename, content = fields.get("file", (None, b""))
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if filename is None:
            raise ApiError(400, "Missing required parameter: 'file'.", "file")
        if purpose not in FILE_PURPOSES:
            raise ApiError(400, f"`purpose` must be one of {', '.join(FILE_PURPOSES)}.", "purpose")
        seconds = fields.get("expires_after[seconds]", (None, b""))[1]
        lifetime = int(seconds) if seconds.isdigit() else BATCH_FILE_SECONDS if purpose == "batch" else None
        expires_at = None if lifetime is None else int(time.time()) + lifetime
        return JSONResponse(self._add_file(content, filename, purpose, expires_at).view())

    async def list_files(self, request: Request) -> Response:
        purpose = request.query_params.get("purpose")
        files = [record.view() for record in self.files.values() if purpose in (None, record.purpose)]
        files.sort(key=lambda view: view["created_at"], reverse=request.query_params.get("order", "desc") == "desc")
        return JSONResponse(_page(files, request.query_params.get("after"), _limit(request, 10_000, 10_000)))

    async def retrieve_file(self, _: Request, file_id: str) -> Response:
        return JSONResponse(self._file(file_id).view())

    async def delete_file(self, _: Request, file_id: str) -> Response:
        """Forget the file; its content stays while it may be the input of a batch (it is shared by sha256)."""
        self._file(file_id)
        del self.files[file_id]
        self.store.remove("files", file_id)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    async def file_content(self, _: Request, file_id: str) -> Response:
        return Response(self.contents[self._file(file_id).sha256], media_type="application/octet-stream")

    # Batches

    def _batch(self, batch_id: str) -> BatchRecord:
        if batch_id not in self.batches:
            raise ApiError(404, f"No such Batch object: {batch_id}", "id")
        return self.batches[batch_id]

    def _save(self, record: BatchRecord) -> None:
        self.store.put("batches", record.id, json.dumps(dataclasses.asdict(record)).encode())

    def _outcomes(self, record: BatchRecord) -> list[Outcome]:
        if record.id not in self.outcomes:
            content = self.contents[record.input_sha256]
            self.outcomes[record.id] = outcomes(content, record.failure_rate, self.respond)
        return self.outcomes[record.id]

    def _enqueued_tokens(self, model: str | None, now: float) -> int:
        """Prompt tokens of the model's unfinished batches."""
        unfinished = (
            record
            for record in self.batches.values()
            if record.model == model and not record.errors and record.status(now) in UNFINISHED
        )
        return sum(outcome.tokens("prompt_tokens") for record in unfinished for outcome in self._outcomes(record))

    async def create_batch(self, request: Request) -> Response:
        try:
            asked = json.loads(await request.body())
        except ValueError:
            raise ApiError(400, "The request body is not JSON.") from None
        record = self._new_batch(asked if isinstance(asked, dict) else {})
        if not record.errors:
            content = self.contents[record.input_sha256]
            self.outcomes[record.id] = await asyncio.to_thread(outcomes, content, record.failure_rate, self.respond)
            record.errors = self._token_limit_problems(record)
        self.batches[record.id] = record
        self._save(record)
        return JSONResponse(self._view(record, record.created_at, "validating"))

    def _new_batch(self, asked: dict[str, Any]) -> BatchRecord:
        """A validating batch for a create call's parameters; ApiError for parameters OpenAI refuses at once."""
        if asked.get("endpoint") != BATCH_ENDPOINT:
            raise ApiError(400, f"`endpoint` must be {BATCH_ENDPOINT}: the stand-in batches only those.", "endpoint")
        if asked.get("completion_window") != COMPLETION_WINDOW:
            raise ApiError(400, f"`completion_window` must be {COMPLETION_WINDOW!r}.", "completion_window")
        metadata = asked.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict)
            and len(metadata) <= METADATA_KEYS
            and all(isinstance(value, str) and len(value) <= METADATA_VALUE_CHARS for value in metadata.values())
            and all(len(key) <= METADATA_KEY_CHARS for key in metadata)
        ):
            raise ApiError(400, "`metadata` takes up to 16 string keys (64 chars) and values (512).", "metadata")
        input_file = self._file(str(asked.get("input_file_id")))
        if input_file.purpose != "batch":
            raise ApiError(400, f"File {input_file.id} has purpose {input_file.purpose!r}, not 'batch'.")
        config, now = self.config, time.time()
        content = self.contents[input_file.sha256]
        errors, model = input_problems(content, config.batch_max_requests, config.batch_max_file_bytes)
        duration = config.batch_completion_seconds
        return BatchRecord(
            id=f"batch_{uuid.uuid4().hex[:24]}",
            input_file_id=input_file.id,
            input_sha256=input_file.sha256,
            endpoint=BATCH_ENDPOINT,
            completion_window=COMPLETION_WINDOW,
            metadata=metadata,
            model=model,
            errors=errors,
            created_at=now,
            processing_from=now + VALIDATING * duration,
            processing_until=now + PROCESSING_ENDS * duration,
            finishes_at=now + duration,
            expires_at=now + (WINDOW_SECONDS if config.batch_expire_seconds is None else config.batch_expire_seconds),
            cancel_seconds=CANCELLING * duration,
            stalls=config.batch_never_finishes,
            failure_rate=config.batch_failure_rate,
        )

    def _token_limit_problems(self, record: BatchRecord) -> list[dict[str, Any]]:
        limit = self.config.batch_enqueued_token_limit
        tokens = sum(outcome.tokens("prompt_tokens") for outcome in self.outcomes[record.id])
        if limit is None or self._enqueued_tokens(record.model, record.created_at) + tokens <= limit:
            return []
        message = (
            f"Enqueued token limit reached for {record.model} in organization stand-in. Limit: {limit:,} enqueued"
            " tokens. Please try again once some in_progress batches have been completed."
        )
        return [_problem("token_limit_exceeded", message)]

    def _view(self, record: BatchRecord, now: float, status: str | None = None) -> dict[str, Any]:
        """The Batch object at `now` (in `status` if given); a batch seen ended for the first time gets its
        output and error files."""
        status = status or record.status(now)
        answers = [] if record.errors else self._outcomes(record)
        answered = answers[: record.answered(len(answers), now)] if status != "validating" else []
        if status in ("completed", "expired", "cancelled") and not record.done:
            self._write_results(record, answers, len(answered), expired=status == "expired")
        unanswered = len(answers) - len(answered) if status == "expired" else 0
        succeeded = [outcome for outcome in answered if outcome.succeeded]
        input_tokens = sum(outcome.tokens("prompt_tokens") for outcome in succeeded)
        output_tokens = sum(outcome.tokens("completion_tokens") for outcome in succeeded)
        return {
            "id": record.id,
            "object": "batch",
            "endpoint": record.endpoint,
            "errors": {"object": "list", "data": record.errors} if status == "failed" else None,
            "input_file_id": record.input_file_id,
            "completion_window": record.completion_window,
            "status": status,
            "output_file_id": record.output_file_id,
            "error_file_id": record.error_file_id,
            **record.timestamps(status, now),
            "request_counts": {
                "total": 0 if status in ("validating", "failed") else len(answers),
                "completed": len(succeeded),
                "failed": len(answered) - len(succeeded) + unanswered,
            },
            "metadata": record.metadata,
            "model": record.model,
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
        }

    def _write_results(self, record: BatchRecord, answers: list[Outcome], answered: int, expired: bool) -> None:
        output = [_result_line(record.id, outcome, True) for outcome in answers[:answered] if outcome.succeeded]
        errors = [_result_line(record.id, outcome, True) for outcome in answers[:answered] if not outcome.succeeded]
        if expired:
            errors += [_result_line(record.id, outcome, False) for outcome in answers[answered:]]
        expires_at = int(time.time()) + BATCH_FILE_SECONDS
        for lines, suffix, field in ((output, "output", "output_file_id"), (errors, "error", "error_file_id")):
            if lines:
                file = self._add_file(_jsonl(lines), f"{record.id}_{suffix}.jsonl", "batch_output", expires_at)
                setattr(record, field, file.id)
        record.done = True
        self._save(record)

    async def retrieve_batch(self, _: Request, batch_id: str) -> Response:
        return JSONResponse(self._view(self._batch(batch_id), time.time()))

    async def list_batches(self, request: Request) -> Response:
        now = time.time()
        views = [self._view(record, now) for record in reversed(self.batches.values())]
        return JSONResponse(_page(views, request.query_params.get("after"), _limit(request, 20, 100)))

    async def cancel_batch(self, _: Request, batch_id: str) -> Response:
        record, now = self._batch(batch_id), time.time()
        status = record.status(now)
        if status not in ("validating", "in_progress"):
            raise ApiError(409, f"Cannot cancel a batch with status {status!r}.")
        record.cancelling_at = now
        self._save(record)
        return JSONResponse(self._view(record, now))
