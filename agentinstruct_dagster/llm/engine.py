"""The one admission layer for model calls: a sliding window of calls in flight, retries with backoff
and jitter that honour Retry-After, structured outputs validated with pydantic and one repair re-ask,
per-role sampling parameters and one fresh-seed retry of a truncated or unaccepted answer. Roles in batch
mode send their completions through the provider's Batches API (llm/batch.py) instead; only that transport
differs, validation, repair and reseed are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from functools import lru_cache, partial
from typing import Any, TypeVar

import openai
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ValidationError

from agentinstruct_dagster.config.profiles import CallMode, LLMSettings, Sampling, SchemaDialect
from agentinstruct_dagster.ids import content_id
from agentinstruct_dagster.llm.admission import AdaptiveLimiter, Admission
from agentinstruct_dagster.llm.batch import Batcher, LineFailed
from agentinstruct_dagster.llm.errors import OVERLOAD_STATUS, RETRYABLE_STATUS, status_class
from agentinstruct_dagster.llm.ledger import FAILED, OK, CallLedger
from agentinstruct_dagster.llm.types import LLMRequest, LLMResult

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")
REPAIR_PROMPT = (
    "Your previous answer could not be used: {problem}\n"
    "Answer again with only a JSON object that matches the required schema."
)


@dataclass
class EngineUsage:
    """Running totals of one engine, for asset metadata and progress lines."""

    calls_made: int = 0  # sent to the provider
    batch_calls: int = 0  # completions answered through a provider batch
    calls_cached: int = 0  # answered from the call ledger
    succeeded: int = 0
    calls_failed: int = 0
    retries: int = 0
    repairs: int = 0
    reseeds: int = 0
    overloads: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    def metadata(self) -> dict[str, Any]:
        values = {k: v for k, v in self.__dict__.items() if k != "errors"}
        return {**values, "cost_usd": round(self.cost_usd, 6), "errors": dict(self.errors)}

    def __add__(self, other: EngineUsage) -> EngineUsage:
        return EngineUsage(**{item.name: getattr(self, item.name) + getattr(other, item.name) for item in fields(self)})

    @property
    def done(self) -> int:
        """Calls answered: by the provider (successfully or not) or from the call ledger."""
        return self.succeeded + self.calls_failed + self.calls_cached

    def counts(self) -> dict[str, int | float]:
        """What progress lines and the run summary report, each named for what it counts (`batch_calls` only
        when some were made)."""
        return {
            "calls_made": self.calls_made,
            **({"batch_calls": self.batch_calls} if self.batch_calls else {}),
            "calls_cached": self.calls_cached,
            "calls_failed": self.calls_failed,
            "retries": self.retries,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }

    def counts_text(self) -> str:
        """`counts()` as `name value` pairs: easy to read and to parse."""
        return ", ".join(f"{name} {value}" for name, value in self.counts().items())


@dataclass
class _Tally:
    """What one request has cost so far, and the last content the endpoint returned."""

    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    raw: str | None = None

    def counts(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }


class CallFailed(Exception):
    """An endpoint failure that ends a request: its class, a key-free message and any raw output."""

    def __init__(self, error_class: str, message: str, raw_output: str | None = None) -> None:
        super().__init__(message)
        self.error_class, self.raw_output = error_class, raw_output


@lru_cache(maxsize=4096)
def json_schema_format(model: type[BaseModel], dialect: SchemaDialect = "full") -> dict[str, Any]:
    """An OpenAI strict-mode `response_format` for a pydantic model. The `portable` dialect keeps only the
    keywords every strict-mode provider accepts and states the rest in descriptions; pydantic still checks
    them on the answer (and a violation gets the repair re-ask)."""
    schema = _strict(model.model_json_schema())
    if dialect == "portable":
        schema = _portable(schema)
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": schema, "strict": True}}


def _portable(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_portable(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    kept: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "$defs"):
            kept[key] = {name: _portable(sub) for name, sub in value.items()}
        elif key == "const":
            kept["enum"] = [value]
        elif key in PORTABLE_KEYWORDS:
            kept[key] = _portable(value)
    dropped = {key: value for key, value in schema.items() if key in STATED_KEYWORDS}
    if dropped:
        stated = ", ".join(f"{key} {json.dumps(value)}" for key, value in dropped.items())
        kept["description"] = f"{schema.get('description', '')} ({stated})".strip()
    return kept


PORTABLE_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "anyOf",
    "$ref",
    "$defs",
    "description",
    "title",
}
# Constraints dropped by the portable dialect but written into the description for the model to follow.
STATED_KEYWORDS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "format",
    "pattern",
    "contentMediaType",
    "uniqueItems",
    "multipleOf",
)


def _strict(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if strict.get("type") == "object" and "properties" in strict:
        strict["additionalProperties"] = False
        strict["required"] = list(strict["properties"])
    return strict


def open_client(settings: LLMSettings, base_url: str | None, api_key: str) -> openai.AsyncOpenAI:
    """A client of the endpoint (Azure's for `provider: azure`), without the client's own retries."""
    common: dict[str, Any] = {"api_key": api_key, "timeout": settings.timeout_seconds, "max_retries": 0}
    if settings.provider == "azure":
        return openai.AsyncAzureOpenAI(azure_endpoint=base_url, api_version=settings.api_version, **common)
    return openai.AsyncOpenAI(base_url=base_url, **common)


def scrub_key(text: str, key: str) -> str:
    """`text` with the API key masked (keys too short to be real are left alone)."""
    return text.replace(key, "***") if key and len(key) >= 4 else text


def batch_transport(
    settings: LLMSettings,
    base_url: str | None,
    api_key: str,
    *,
    ledger: CallLedger | None,
    scope: str,
    fresh_calls: bool,
    metadata: dict[str, str] | None = None,
) -> Batcher:
    """The Batches API transport of an endpoint: discounted prices, the key scrubbed from answers, and (unless
    the calls are fresh) the ledger's submitted batches resumed."""
    return Batcher(
        settings.batch,
        partial(open_client, settings, base_url, api_key),
        ledger=ledger,
        scope=scope,
        parallel_runs=settings.parallel_runs,
        metadata=metadata,
        resume=not fresh_calls,
        cost=partial(settings.cost, batched=True),
        scrub=partial(scrub_key, key=api_key),
    )


def completion_arguments(
    model: str, messages: list[dict[str, str]], schema: type[BaseModel], sampling: Sampling, settings: LLMSettings
) -> dict[str, Any]:
    """The keyword arguments of `chat.completions.create` for one completion (provider extras in `extra_body`)."""
    arguments = {
        "model": model,
        "messages": messages,
        "response_format": json_schema_format(schema, settings.schema_dialect),
        "max_tokens": settings.max_output_tokens,
        **sampling.model_dump(exclude_none=True, exclude={"extra_body"}),
    }
    return {**arguments, "extra_body": sampling.extra_body} if sampling.extra_body else arguments


def completion_body(arguments: dict[str, Any]) -> dict[str, Any]:
    """The JSON body `chat.completions.create` sends for these arguments (a batch request line's body)."""
    body = dict(arguments)
    extras = body.pop("extra_body", {})
    return {**body, **extras}


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds a server asked us to wait (`retry-after-ms`, `retry-after` as seconds or an HTTP date)."""
    if headers is None:
        return None
    if milliseconds := headers.get("retry-after-ms"):
        try:
            return float(milliseconds) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class LLMEngine:
    """All model calls of a stage go through `call`: the ledger cache first, then admission (adaptive
    window of calls in flight, request and token rates), retries, validation and one repair."""

    def __init__(
        self,
        settings: LLMSettings,
        base_url: str | None = None,
        logger: Any = None,
        *,
        api_key: str | None = None,
        ledger: CallLedger | None = None,
        cache_scope: str = "",
        fresh_calls: bool = False,
        label: str = "llm",
        admission: Admission | None = None,
        batcher: Batcher | None = None,
    ) -> None:
        self.settings = settings
        self._api_key = api_key
        self.base_url = base_url or settings.base_url
        self.logger = logger or logging.getLogger(__name__)
        self.ledger, self.cache_scope, self.fresh_calls, self.label = ledger, cache_scope, fresh_calls, label
        self.usage = EngineUsage()
        self.admission = admission or Admission.for_settings(settings)
        self._batcher = batcher
        self._client: openai.AsyncOpenAI | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"LLMEngine(provider={self.settings.provider!r}, base_url={self.base_url!r})"

    def _scrub(self, text: str) -> str:
        return scrub_key(text, self._key)

    @property
    def _key(self) -> str:
        """The key given (a resource's EnvVar), else the one the settings name in the environment."""
        return self._api_key or self.settings.api_key()

    @property
    def limiter(self) -> AdaptiveLimiter:
        return self.admission.limiter

    @property
    def batcher(self) -> Batcher:
        """The batch transport: the run's shared one, or this engine's own (made when first needed)."""
        if self._batcher is None:
            self._batcher = batch_transport(
                self.settings,
                self.base_url,
                self._key,
                ledger=self.ledger,
                scope=self.cache_scope,
                fresh_calls=self.fresh_calls,
            )
        return self._batcher

    def _ensure_client(self) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = open_client(self.settings, self.base_url, self._key)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client, self._loop = None, None

    async def session(self, main: Callable[[], Awaitable[R]], expected_calls: int | None = None) -> R:
        """Await a coroutine of calls with ledger flushes and progress lines (one at the start, one every
        `progress_seconds`, one at the end, however short the stage); the client is closed at the end.
        Sessions of several engines share one event loop (and their admission state) side by side."""
        started = time.monotonic()
        expected = "an unknown number of" if expected_calls is None else str(expected_calls)
        self.logger.info(f"{self.label}: started, {expected} calls expected, {self._window_text()}")
        progress = asyncio.create_task(self._report_progress(expected_calls, started))
        state = "finished"
        try:
            async with self.ledger.flushing() if self.ledger is not None else contextlib.nullcontext():
                return await main()
        except BaseException as error:
            state = f"stopped by {type(error).__name__}"
            raise
        finally:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
            await self.aclose()
            self.logger.info(self.progress_line(expected_calls, time.monotonic() - started, state))

    def run(self, main: Callable[[], Awaitable[R]], expected_calls: int | None = None) -> R:
        """Run a session from sync code."""
        return asyncio.run(self.session(main, expected_calls))

    def progress_line(self, expected_calls: int | None, elapsed: float, state: str = "running") -> str:
        """Calls done of those expected, the window, the rate, and the engine's counts, tokens and cost."""
        usage = self.usage
        total = "" if expected_calls is None else f"/{expected_calls}"
        return (
            f"{self.label}: {state} after {elapsed:.1f} s, {usage.done}{total} calls done, "
            f"{usage.done / max(elapsed, 1e-9):.1f} calls/s, {self._window_text()}: {usage.counts_text()}"
        )

    def _window_text(self) -> str:
        return f"window {self.limiter.window} of at most {self.limiter.maximum} calls in flight"

    async def _report_progress(self, expected_calls: int | None, started: float) -> None:
        while True:
            await asyncio.sleep(self.settings.progress_seconds)
            self.logger.info(self.progress_line(expected_calls, time.monotonic() - started))

    def request_hash(self, model: str, request: LLMRequest[Any]) -> str:
        """What identifies a call for the cache: scope (profile), model, prompt version, messages, schema and
        the role's sampling parameters as configured (a fresh-seed retry inside the call does not change it)."""
        sampling = self.settings.sampling_for(request.role)
        # Parameters beyond temperature join the hash only when set, so older ledgers keep answering.
        beyond_temperature = sampling.model_dump(exclude_defaults=True, exclude={"temperature"})
        return content_id(
            self.cache_scope,
            model,
            request.prompt_version,
            request.system,
            request.user,
            json_schema_format(request.response_model, self.settings.schema_dialect),
            sampling.temperature,
            self.settings.max_output_tokens,
            *([beyond_temperature] if beyond_temperature else []),
        )

    async def call(self, request: LLMRequest[T]) -> LLMResult[T]:
        """One structured call: answered from the ledger if it succeeded before (as stored, `accept` is not
        asked again), else made for real."""
        model = self.settings.model_for(request.role)
        if self.ledger is None:
            return await self._call(model, request)
        request_hash = self.request_hash(model, request)
        cached = None if self.fresh_calls else self.ledger.lookup(request_hash)
        if cached is not None:
            self.usage.calls_cached += 1
            return LLMResult(
                value=request.response_model.model_validate_json(cached["content"]),
                model=model,
                prompt_tokens=cached["prompt_tokens"],
                completion_tokens=cached["completion_tokens"],
                attempts=0,
                cached=True,
            )
        started = time.monotonic()
        result = await self._call(model, request)
        self.ledger.record(
            asset=self.label,
            request_hash=request_hash,
            agent=request.agent,
            model=model,
            status=OK if result.ok else FAILED,
            error_class=result.error_class,
            attempts=result.attempts,
            latency_seconds=time.monotonic() - started,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cost_usd=result.cost_usd,
            content=result.value.model_dump_json() if result.value is not None else result.raw_output,
        )
        return result

    async def _call(self, model: str, request: LLMRequest[T]) -> LLMResult[T]:
        """Retried on transient failures, repaired once on invalid output, reseeded once on a truncated or
        unaccepted answer; failures become results."""
        tally = _Tally()
        self.usage.calls_made += 1
        try:
            value = await self._settled(model, request, tally)
        except CallFailed as failure:
            self.usage.calls_failed += 1
            self.usage.errors[failure.error_class] += 1
            self.logger.warning(f"{request.agent}: {failure.error_class}: {failure}")
            return LLMResult(
                value=None,
                model=model,
                error_class=failure.error_class,
                error=str(failure),
                raw_output=failure.raw_output if failure.raw_output is not None else tally.raw,
                **tally.counts(),
            )
        self.usage.succeeded += 1
        return LLMResult(value=value, model=model, **tally.counts())

    async def _settled(self, model: str, request: LLMRequest[T], tally: _Tally) -> T:
        """The answer, asked once more with a fresh seed if the first is truncated or `request.accept` rejects
        it; the second answer stands even if `accept` rejects it too (the stage's rules then quarantine it)."""
        sampling = self.settings.sampling_for(request.role)
        try:
            value = await self._answer(model, request, sampling, tally)
        except CallFailed as failure:
            if failure.error_class != "truncated":
                raise
            reason = str(failure)
        else:
            reason = request.accept(value) if request.accept is not None else None
            if reason is None:
                return value
        self.usage.reseeds += 1
        fresh = sampling.reseeded()
        self.logger.debug(f"{request.agent}: {reason}; asking once more with seed {fresh.seed}")
        return await self._answer(model, request, fresh, tally)

    async def _answer(self, model: str, request: LLMRequest[T], sampling: Sampling, tally: _Tally) -> T:
        """A validated answer, with one repair re-ask on invalid output; raises CallFailed."""
        messages: list[dict[str, str]] = [
            {"role": "system", "content": request.system},
            {"role": "user", "content": request.user},
        ]
        mode = self.settings.mode_for(request.role)
        for repair in (False, True):
            raw = await self._complete(model, messages, request.response_model, sampling, tally, mode)
            try:
                return request.response_model.model_validate_json(raw)
            except ValidationError as error:
                problem = self._scrub(_validation_summary(error))
                if repair:
                    raise CallFailed("invalid_output", problem, raw) from None
                self.usage.repairs += 1
                messages = [
                    *messages,
                    {"role": "assistant", "content": raw},
                    {"role": "user", "content": REPAIR_PROMPT.format(problem=problem)},
                ]
        raise AssertionError("unreachable")

    async def _complete(
        self,
        model: str,
        messages: list[dict[str, str]],
        schema: type[BaseModel],
        sampling: Sampling,
        tally: _Tally,
        mode: CallMode = "online",
    ) -> str:
        """The content of one completion, after retries; raises CallFailed for unusable answers."""
        if mode == "batch":
            return await self._complete_batched(model, messages, schema, sampling, tally)
        return await self._complete_online(model, messages, schema, sampling, tally)

    async def _complete_batched(
        self, model: str, messages: list[dict[str, str]], schema: type[BaseModel], sampling: Sampling, tally: _Tally
    ) -> str:
        """The content of one completion answered through a provider batch: a line that comes back without an
        answer is submitted again (or asked online, as `batch.retry` says) up to `batch.max_submissions` times."""
        settings = self.settings.batch
        body = completion_body(completion_arguments(model, messages, schema, sampling, self.settings))
        for submission in range(1, settings.max_submissions + 1):
            tally.attempts += 1
            try:
                answer = await self.batcher.complete(body, self.logger, self.label)
            except LineFailed as failure:
                if not failure.retryable or submission == settings.max_submissions:
                    suffix = f" after {submission} submissions" if failure.retryable else ""
                    raise CallFailed(failure.error_class, self._scrub(f"{failure}{suffix}")) from None
                self.usage.retries += 1
                self.logger.debug(f"{failure.error_class} in a batch; asking again ({settings.retry})")
                if settings.retry == "online":
                    return await self._complete_online(model, messages, schema, sampling, tally)
                continue
            self.usage.batch_calls += 1
            return self._content(model, ChatCompletion.model_validate(answer), tally, batched=True)
        raise AssertionError("unreachable")

    async def _complete_online(
        self, model: str, messages: list[dict[str, str]], schema: type[BaseModel], sampling: Sampling, tally: _Tally
    ) -> str:
        """The content of one completion asked online, after retries."""
        client = self._ensure_client()
        limiter, rates = self.admission.limiter, self.admission.rates
        settings = self.settings
        estimate = sum(len(message["content"]) for message in messages) // 4 + settings.max_output_tokens
        arguments = completion_arguments(model, messages, schema, sampling, settings)
        for attempt in range(1, settings.max_attempts + 1):
            tally.attempts += 1
            wait: float | None = None
            await rates.admit(estimate)
            try:
                async with limiter.slot():
                    response = await client.chat.completions.create(**arguments)
                limiter.succeeded()
                return self._content(model, response, tally)
            except openai.APIStatusError as error:
                error_class = status_class(error.status_code)
                if error.status_code not in RETRYABLE_STATUS:
                    raise CallFailed(error_class, self._scrub(f"HTTP {error.status_code}: {error.message}")) from None
                if error.status_code in OVERLOAD_STATUS:
                    self.usage.overloads += 1
                    limiter.overloaded()
                wait = retry_after_seconds(error.response.headers)
                message = f"HTTP {error.status_code}"
            except openai.APITimeoutError:
                error_class, message = "timeout", f"no answer within {settings.timeout_seconds} s"
            except openai.APIConnectionError as error:
                error_class, message = "connection", self._scrub(f"connection failed: {error}")
            if attempt == settings.max_attempts:
                raise CallFailed(error_class, f"{message} after {attempt} attempts")
            self.usage.retries += 1
            ceiling = min(settings.backoff_max_seconds, settings.backoff_base_seconds * 2**attempt)
            # A server that says when to come back is believed; otherwise exponential backoff, full jitter.
            delay = wait if wait is not None else random.uniform(0, ceiling)
            self.logger.debug(f"{error_class} ({message}), retry {attempt} in {delay:.2f} s")
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _content(self, model: str, response: Any, tally: _Tally, *, batched: bool = False) -> str:
        if response.usage is not None:
            prompt, completion = response.usage.prompt_tokens or 0, response.usage.completion_tokens or 0
            cost = self.settings.cost(model, prompt, completion, batched=batched)
            tally.prompt_tokens += prompt
            tally.completion_tokens += completion
            tally.cost_usd += cost
            self.usage.prompt_tokens += prompt
            self.usage.completion_tokens += completion
            self.usage.cost_usd += cost
        if not response.choices:
            raise CallFailed("empty_output", "the answer has no choices")
        choice = response.choices[0]
        # The answer is scrubbed once here, so no value, raw output, ledger row or table ever holds the key.
        content = None if choice.message.content is None else self._scrub(choice.message.content)
        if getattr(choice.message, "refusal", None):
            raise CallFailed("refusal", self._scrub(f"refused: {choice.message.refusal}"), content)
        if choice.finish_reason == "content_filter":
            raise CallFailed("content_filter", "stopped by the provider's content filter", content)
        if choice.finish_reason == "length":
            raise CallFailed("truncated", "the answer hit the output token limit", content)
        if not content or not content.strip():
            raise CallFailed("empty_output", "the answer is empty", content)
        tally.raw = content
        return content


def _validation_summary(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in issue['loc']) or 'answer'}: {issue['msg']}" for issue in error.errors()[:5]
    )
