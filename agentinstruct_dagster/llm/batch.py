"""Batch mode's transport: chat-completion bodies go to the provider as JSONL request lines through the Files and
Batches API, and each caller gets back the answer body `/v1/chat/completions` would have given it.

One `Batcher` per run and lake batch is shared by the engines of all its stages, so parallel stages fill the same
files. Pending bodies are submitted once `collect_seconds` pass without a new one, or at once when a file is full
(`max_requests_per_file`, `max_file_bytes`); one file per model; a file that would take the model's unfinished
batches over `max_enqueued_tokens` waits until earlier batches end. Open batches are polled every `poll_seconds`
(one progress line per poll); an ended batch's output and error files are read, every line is recorded in the call
ledger (answered lines as paid, even if no caller waits for them any more) and its callers are answered. Lines of a
batch that expired, was cancelled or failed get `batch_expired`, `batch_cancelled` or `batch_failed`.

The ledger's submitted-but-not-collected lines (a run stopped while its batches ran) are polled and collected
again, not submitted again; its answered lines answer their bodies without a new request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai

from agentinstruct_dagster.config.profiles import BatchSettings
from agentinstruct_dagster.ids import content_id
from agentinstruct_dagster.llm.errors import RETRYABLE_STATUS, status_class
from agentinstruct_dagster.llm.ledger import BATCH_ANSWERED, BATCH_ERROR, BATCH_SUBMITTED, CallLedger, SubmittedLine

BATCH_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
# The class of a line a batch ended without answering, by the batch's final status.
END_CLASS = {
    "completed": "batch_failed",
    "expired": "batch_expired",
    "cancelled": "batch_cancelled",
    "failed": "batch_failed",
}
RETRYABLE_CLASSES = {"batch_expired", "batch_cancelled", "batch_failed"}
SUBMIT_ATTEMPTS = 5


class LineFailed(Exception):
    """A request line came back without an answer: the HTTP status its error line gives (None when the batch
    ended without answering it), its failure class and a message."""

    def __init__(self, status_code: int | None, error_class: str, message: str) -> None:
        super().__init__(message)
        self.status_code, self.error_class = status_code, error_class

    @property
    def retryable(self) -> bool:
        """Worth submitting again: a transient HTTP error, or a batch that ended without answering the line."""
        return (
            self.status_code in RETRYABLE_STATUS
            if self.status_code is not None
            else self.error_class in RETRYABLE_CLASSES
        )


def line_id(scope: str, body: dict[str, Any]) -> str:
    """What identifies a request line: the content hash of its body (and the endpoint scope), so one body is one
    line however many callers ask for it."""
    return content_id("batch-line", scope, body)


def custom_id(line: str, submission: int) -> str:
    """The line's `custom_id` in its `submission`-th batch (providers may draw per custom_id)."""
    return f"{line}-{submission}"


def line_of(custom: str) -> str:
    return custom.rsplit("-", 1)[0]


def prompt_tokens_estimate(body: dict[str, Any]) -> int:
    """An upper estimate of a body's prompt tokens, as enqueued-token limits count them."""
    return len(json.dumps(body["messages"])) // 4 + 1


@dataclass
class Line:
    """A pending request line: its body, the asset that asked for it, its estimated tokens and its JSONL."""

    line_id: str
    custom_id: str
    body: dict[str, Any]
    asset: str
    tokens: int
    data: bytes = b""

    def __post_init__(self) -> None:
        request = {"custom_id": self.custom_id, "method": "POST", "url": BATCH_ENDPOINT, "body": self.body}
        self.data = json.dumps(request, ensure_ascii=False).encode() + b"\n"


@dataclass
class OpenBatch:
    """A submitted provider batch and its lines (custom_id to line id)."""

    id: str
    input_file_id: str
    model: str
    lines: dict[str, str]
    tokens: int = 0
    status: str = "validating"
    counts: str = ""


@dataclass
class _State:
    pending: dict[str, Line] = field(default_factory=dict)  # by line id, in arrival order
    submitted: dict[str, str] = field(default_factory=dict)  # line id -> id of the open batch holding it
    waiters: defaultdict[str, list[asyncio.Future[dict[str, Any]]]] = field(default_factory=lambda: defaultdict(list))
    open: dict[str, OpenBatch] = field(default_factory=dict)


class Batcher:
    """The batch transport of one run and lake batch (see the module's docstring)."""

    def __init__(
        self,
        settings: BatchSettings,
        client_factory: Callable[[], openai.AsyncOpenAI],
        *,
        ledger: CallLedger | None = None,
        scope: str = "",
        parallel_runs: int = 1,
        metadata: dict[str, str] | None = None,
        resume: bool = True,
        cost: Callable[[str, int, int], float] = lambda model, prompt, completion: 0.0,
        scrub: Callable[[str], str] = str,
    ) -> None:
        """`client_factory` opens a client of the endpoint; `cost` prices a model's tokens (discounted); `scrub`
        removes the API key from answers before they reach the ledger; `metadata` goes with every batch."""
        self.settings, self.ledger, self.scope, self.cost, self.scrub = settings, ledger, scope, cost, scrub
        self.metadata = {key: value[:512] for key, value in (metadata or {}).items()}
        tokens = settings.max_enqueued_tokens
        self.token_budget = None if tokens is None else max(1, tokens // parallel_runs)
        self.logger: Any = logging.getLogger(__name__)
        self._client_factory = client_factory
        self._client: openai.AsyncOpenAI | None = None
        self._worker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._last_new = 0.0
        self._submit_after = 0.0
        self._submit_failures = 0
        self._state = _State()
        self._answers: dict[str, dict[str, Any]] = {}
        self._assets: dict[str, str] = {}  # the asset that asked for each line, for its ledger rows
        self.files_submitted = 0
        self._submissions: Counter[str] = Counter()  # by line id, over runs
        if ledger is not None and resume:
            self._answers = {line_of(custom): body for custom, body in ledger.batch_answers().items()}
            self._submissions.update(line_of(custom) for custom in ledger.submitted_custom_ids())
            self._attach(ledger.submitted_lines())

    def _attach(self, lines: list[SubmittedLine]) -> None:
        """Poll and collect the open lines of a stopped run's batches, instead of submitting them again."""
        for line in lines:
            batch = self._state.open.setdefault(
                line.provider_batch_id, OpenBatch(line.provider_batch_id, line.input_file_id, line.model, {})
            )
            batch.lines[line.custom_id] = line_of(line.custom_id)
            self._state.submitted[line_of(line.custom_id)] = batch.id

    async def complete(self, body: dict[str, Any], logger: Any = None, asset: str = "llm") -> dict[str, Any]:
        """The answer body for a chat-completion request body; LineFailed if its line came back without one.
        Progress lines go to the logger of the latest caller."""
        if logger is not None:
            self.logger = logger
        line = line_id(self.scope, body)
        if line in self._answers:
            return self._answers[line]
        state = self._state
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        state.waiters[line].append(waiter)
        self._assets.setdefault(line, asset)
        if line not in state.pending and line not in state.submitted:
            submission = custom_id(line, self._submissions[line] + 1)
            state.pending[line] = Line(line, submission, body, asset, prompt_tokens_estimate(body))
            self._last_new = time.monotonic()
        self._ensure_worker()
        self._wake.set()
        try:
            return await waiter
        finally:
            waiting = state.waiters.get(line, [])
            if waiter in waiting:
                waiting.remove(waiter)
            if not waiting:
                state.waiters.pop(line, None)
                state.pending.pop(line, None)  # nobody waits for it: not submitted

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._work())

    async def _work(self) -> None:
        """Submit and poll while any caller waits; the client lives as long as this task."""
        self._client = self._client_factory()
        next_poll = 0.0
        try:
            while self._state.waiters:
                now = time.monotonic()
                if self._state.pending and now >= self._submit_after:
                    await self._submit_ready(now)
                if self._state.open and now >= next_poll:
                    await self._poll()
                    next_poll = time.monotonic() + self.settings.poll_seconds
                await self._sleep(next_poll)
        except Exception as error:  # a bug or an unusable provider answer: every caller learns it, none hangs
            for waiters in self._state.waiters.values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
            raise
        finally:
            client, self._client = self._client, None
            await client.close()

    async def _sleep(self, next_poll: float) -> None:
        moments = [next_poll] if self._state.open else []
        if self._state.pending:
            moments.append(max(self._last_new + self.settings.collect_seconds, self._submit_after))
        timeout = max(0.0, min(moments) - time.monotonic()) if moments else None
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    # Submitting

    async def _submit_ready(self, now: float) -> None:
        """Submit a file per model while one is full, or all pending lines once the quiet time has passed."""
        quiet = now - self._last_new >= self.settings.collect_seconds
        for model in list(dict.fromkeys(line.body["model"] for line in self._state.pending.values())):
            while True:
                lines, full = self._next_file(model)
                if not lines or not (full or quiet):
                    break
                if not await self._submit(model, lines):
                    return
            if lines == [] and self._open_of(model) and self._free_tokens(model) is not None:
                # The enqueued-token budget is spent: wait for earlier batches to end (checked after polls).
                self._submit_after = time.monotonic() + self.settings.poll_seconds

    def _next_file(self, model: str) -> tuple[list[Line], bool]:
        """The pending lines of `model` for the next file, and whether a limit cut it short."""
        settings, budget = self.settings, self._free_tokens(model)
        lines: list[Line] = []
        size = tokens = 0
        for line in self._state.pending.values():
            if line.body["model"] != model:
                continue
            if len(lines) == settings.max_requests_per_file or size + len(line.data) > settings.max_file_bytes:
                return lines, True
            if budget is not None and tokens + line.tokens > budget:
                if not lines and not self._open_of(model):
                    self._fail([line.line_id], None, "token_limit", "the request alone exceeds max_enqueued_tokens")
                return lines, bool(lines)
            lines.append(line)
            size, tokens = size + len(line.data), tokens + line.tokens
        return lines, False

    def _open_of(self, model: str) -> list[OpenBatch]:
        return [batch for batch in self._state.open.values() if batch.model == model]

    def _free_tokens(self, model: str) -> int | None:
        if self.token_budget is None:
            return None
        return self.token_budget - sum(batch.tokens for batch in self._open_of(model))

    async def _submit(self, model: str, lines: list[Line]) -> bool:
        """Upload a file and create its batch; the lines are in the ledger (flushed) before polling starts.
        False when the provider refused for now (retried after a back-off)."""
        assert self._client is not None
        try:
            upload = await self._client.files.create(
                file=(f"agentinstruct-{lines[0].custom_id}.jsonl", b"".join(line.data for line in lines)),
                purpose="batch",
            )
            # A crash between upload and create leaves an orphan file and no batch: the lines are submitted again.
            created = await self._client.batches.create(
                input_file_id=upload.id,
                endpoint=BATCH_ENDPOINT,
                completion_window=COMPLETION_WINDOW,
                metadata={**self.metadata, "assets": ",".join(sorted({line.asset for line in lines}))[:512]},
            )
        except openai.APIError as error:
            return self._submit_failed(lines, error)
        self._submit_failures = 0
        batch = OpenBatch(
            created.id, upload.id, model, {line.custom_id: line.line_id for line in lines}, sum(x.tokens for x in lines)
        )
        self._state.open[batch.id] = batch
        for line in lines:
            del self._state.pending[line.line_id]
            self._state.submitted[line.line_id] = batch.id
            self._submissions[line.line_id] += 1
        self.files_submitted += 1
        self.logger.info(f"batch {batch.id}: submitted {len(lines)} requests of {model} in file {upload.id}")
        if self.ledger is not None:
            for line in lines:
                self._record(line.custom_id, batch, BATCH_SUBMITTED, state=created.status)
            await self.ledger.flush_now()
        return True

    def _submit_failed(self, lines: list[Line], error: openai.APIError) -> bool:
        status = getattr(error, "status_code", None)
        error_class = "connection" if status is None else status_class(status)
        self._submit_failures += 1
        if (status is None or status in RETRYABLE_STATUS) and self._submit_failures < SUBMIT_ATTEMPTS:
            delay = min(30.0, 0.5 * 2**self._submit_failures)
            self.logger.warning(f"batch submission failed ({error_class}); trying again in {delay:.1f} s")
            self._submit_after = time.monotonic() + delay
            return False
        self._submit_failures = 0
        self._fail([line.line_id for line in lines], status, error_class, f"batch submission failed: {error.message}")
        return True

    # Polling and collecting

    async def _poll(self) -> None:
        """Poll every open batch once; collect those that ended. A failed poll or download is tried at the next."""
        assert self._client is not None
        for batch in list(self._state.open.values()):
            try:
                seen = await self._client.batches.retrieve(batch.id)
                results = await self._results(seen) if seen.status in END_CLASS else None
            except openai.NotFoundError:
                self._lost(batch)
                continue
            except openai.APIError as error:
                self.logger.warning(f"batch {batch.id}: poll failed ({error.message}); polling again later")
                continue
            batch.status = seen.status
            counts = seen.request_counts
            batch.counts = "" if counts is None else f"{counts.completed}/{counts.total} done, {counts.failed} failed"
            if results is not None:
                await self._collect(batch, seen, results)
        self.logger.info(self.progress_line())

    def progress_line(self) -> str:
        """Each open batch's state and request counts, and the requests waiting to be submitted."""
        states = "; ".join(f"{batch.id} {batch.status} {batch.counts}".strip() for batch in self._state.open.values())
        return f"batches: {len(self._state.open)} open ({states or 'none'}), {len(self._state.pending)} pending"

    async def _results(self, seen: Any) -> dict[str, dict[str, Any]]:
        """The lines of an ended batch's output and error files, by custom_id."""
        assert self._client is not None
        results: dict[str, dict[str, Any]] = {}
        for file_id in (seen.output_file_id, seen.error_file_id):
            if file_id:
                content = await self._client.files.content(file_id)
                for text in content.text.splitlines():
                    if text.strip():
                        record = json.loads(text)
                        results[record["custom_id"]] = record
        return results

    def _lost(self, batch: OpenBatch) -> None:
        """The provider does not know the batch (any more): its lines are failed, to be submitted again."""
        self._close(batch)
        for custom in batch.lines:
            self._record(custom, batch, BATCH_ERROR, state="unknown", error_class="batch_failed")
        self._fail(list(batch.lines.values()), None, "batch_failed", f"the provider does not know batch {batch.id}")

    def _close(self, batch: OpenBatch) -> None:
        del self._state.open[batch.id]
        for line in batch.lines.values():
            self._state.submitted.pop(line, None)

    async def _collect(self, batch: OpenBatch, seen: Any, results: dict[str, dict[str, Any]]) -> None:
        """Answer and record every line of an ended batch; lines in neither file get the batch's end class."""
        self._close(batch)
        files = {"output_file_id": seen.output_file_id, "error_file_id": seen.error_file_id}
        problems = (
            "; ".join(f"{problem.code}: {problem.message}" for problem in (seen.errors.data or []))
            if seen.errors
            else ""
        )
        for custom, line in batch.lines.items():
            record = results.get(custom) or {}
            response, error = record.get("response") or {}, record.get("error") or {}
            if response.get("status_code") == 200:
                self._answered(custom, batch, response["body"], seen.status, files)
                continue
            if response:  # an error line: the HTTP answer the request got
                status: int | None = int(response["status_code"])
                error_class = status_class(status)
                message = str((response.get("body") or {}).get("error", {}).get("message", ""))
            else:
                status = None
                error_class = "batch_expired" if error.get("code") == "batch_expired" else END_CLASS[seen.status]
                message = error.get("message") or problems or f"the batch ended {seen.status} without answering it"
            self._record(custom, batch, BATCH_ERROR, state=seen.status, error_class=error_class, **files)
            self._fail([line], status, error_class, f"batch {batch.id} {seen.status}: {message}")
        self.logger.info(f"batch {batch.id}: {seen.status}, {len(batch.lines)} requests collected")
        if self.ledger is not None:
            await self.ledger.flush_now()

    def _answered(
        self, custom: str, batch: OpenBatch, body: dict[str, Any], state: str, files: dict[str, str | None]
    ) -> None:
        line = line_of(custom)
        self._answers[line] = body
        usage = body.get("usage") or {}
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        self._record(
            custom,
            batch,
            BATCH_ANSWERED,
            state=state,
            content=self.scrub(json.dumps(body, ensure_ascii=False)),
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=self.cost(batch.model, prompt, completion),
            **files,
        )
        for waiter in self._state.waiters.pop(line, []):
            if not waiter.done():
                waiter.set_result(body)

    def _fail(self, lines: list[str], status: int | None, error_class: str, message: str) -> None:
        for line in lines:
            self._state.pending.pop(line, None)
            for waiter in self._state.waiters.pop(line, []):
                if not waiter.done():
                    waiter.set_exception(LineFailed(status, error_class, message))

    def _record(self, custom: str, batch: OpenBatch, status: str, *, state: str, **values: Any) -> None:
        if self.ledger is not None:
            self.ledger.record(
                asset=self._assets.get(line_of(custom), "llm"),
                request_hash=None,
                agent="batch",
                model=batch.model,
                status=status,
                custom_id=custom,
                provider_batch_id=batch.id,
                input_file_id=batch.input_file_id,
                batch_state=state,
                **values,
            )
