"""The one admission layer for model calls: a sliding window of calls in flight, retries with backoff
and jitter that honour Retry-After, structured outputs validated with pydantic and one repair re-ask.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai
from pydantic import BaseModel, ValidationError

from agentinstruct_dagster.config.profiles import LLMSettings
from agentinstruct_dagster.llm.types import LLMRequest, LLMResult

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
REPAIR_PROMPT = (
    "Your previous answer could not be used: {problem}\n"
    "Answer again with only a JSON object that matches the required schema."
)


@dataclass
class EngineUsage:
    """Running totals of one engine, for asset metadata."""

    calls: int = 0
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    repairs: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def metadata(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "errors"}, "errors": dict(self.errors)}


class CallFailed(Exception):
    """An endpoint failure that ends a request: its class, a key-free message and any raw output."""

    def __init__(self, error_class: str, message: str, raw_output: str | None = None) -> None:
        super().__init__(message)
        self.error_class, self.raw_output = error_class, raw_output


def json_schema_format(model: type[BaseModel]) -> dict[str, Any]:
    """An OpenAI strict-mode `response_format` for a pydantic model."""
    return {
        "type": "json_schema",
        "json_schema": {"name": model.__name__, "schema": _strict(model.model_json_schema()), "strict": True},
    }


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
    """All model calls of a stage go through `call`; at most `max_concurrency` are in flight at once."""

    def __init__(self, settings: LLMSettings, base_url: str | None = None, logger: Any = None) -> None:
        self.settings = settings
        self.base_url = base_url or settings.base_url
        self.logger = logger or logging.getLogger(__name__)
        self.usage = EngineUsage()
        self._client: openai.AsyncOpenAI | None = None
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"LLMEngine(provider={self.settings.provider!r}, base_url={self.base_url!r})"

    def _scrub(self, text: str) -> str:
        key = self._key
        return text.replace(key, "***") if key and len(key) >= 4 else text

    @property
    def _key(self) -> str:
        return self.settings.api_key()

    def _ensure_client(self) -> tuple[openai.AsyncOpenAI, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            common = {"api_key": self._key, "timeout": self.settings.timeout_seconds, "max_retries": 0}
            if self.settings.provider == "azure":
                self._client = openai.AsyncAzureOpenAI(
                    azure_endpoint=self.base_url, api_version=self.settings.api_version, **common
                )
            else:
                self._client = openai.AsyncOpenAI(base_url=self.base_url, **common)
            self._slots = asyncio.Semaphore(self.settings.max_concurrency)
            self._loop = loop
        assert self._slots is not None
        return self._client, self._slots

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client, self._slots, self._loop = None, None, None

    def run(self, main: Callable[[], Awaitable[R]]) -> R:
        """Run a coroutine of calls to completion from sync code, closing the client afterwards."""

        async def wrapped() -> R:
            try:
                return await main()
            finally:
                await self.aclose()

        return asyncio.run(wrapped())

    async def call(self, request: LLMRequest[T]) -> LLMResult[T]:
        """One structured call: retried on transient failures, repaired once on invalid output."""
        model = self.settings.model_for(request.role)
        messages: list[dict[str, str]] = [
            {"role": "system", "content": request.system},
            {"role": "user", "content": request.user},
        ]
        tally = {"attempts": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self.usage.calls += 1
        raw: str | None = None
        try:
            for repair in (False, True):
                raw = await self._complete(model, messages, request.response_model, tally)
                try:
                    value = request.response_model.model_validate_json(raw)
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
                    continue
                self.usage.succeeded += 1
                return LLMResult(value=value, model=model, **tally)
        except CallFailed as failure:
            self.usage.failed += 1
            self.usage.errors[failure.error_class] += 1
            self.logger.warning(f"{request.agent}: {failure.error_class}: {failure}")
            return LLMResult(
                value=None,
                model=model,
                error_class=failure.error_class,
                error=str(failure),
                raw_output=failure.raw_output if failure.raw_output is not None else raw,
                **tally,
            )
        raise AssertionError("unreachable")

    async def _complete(
        self, model: str, messages: list[dict[str, str]], schema: type[BaseModel], tally: dict[str, int]
    ) -> str:
        """The content of one completion, after retries; raises CallFailed for unusable answers."""
        client, slots = self._ensure_client()
        settings = self.settings
        for attempt in range(1, settings.max_attempts + 1):
            tally["attempts"] += 1
            wait: float | None = None
            try:
                async with slots:
                    response = await client.chat.completions.create(
                        model=model,
                        messages=messages,
                        response_format=json_schema_format(schema),
                        max_tokens=settings.max_output_tokens,
                        temperature=settings.temperature,
                    )
                return self._content(response, tally)
            except openai.APIStatusError as error:
                error_class = _status_class(error.status_code)
                if error.status_code not in RETRYABLE_STATUS:
                    raise CallFailed(error_class, self._scrub(f"HTTP {error.status_code}: {error.message}")) from None
                wait = retry_after_seconds(error.response.headers)
                message = f"HTTP {error.status_code}"
            except openai.APITimeoutError:
                error_class, message = "timeout", f"no answer within {settings.timeout_seconds} s"
            except openai.APIConnectionError as error:
                error_class, message = "connection", self._scrub(f"connection failed: {error}")
            if attempt == settings.max_attempts:
                raise CallFailed(error_class, f"{message} after {attempt} attempts")
            self.usage.retries += 1
            backoff = random.uniform(0, min(settings.backoff_max_seconds, settings.backoff_base_seconds * 2**attempt))
            self.logger.debug(f"{error_class} ({message}), retry {attempt} in {max(backoff, wait or 0):.2f} s")
            await asyncio.sleep(max(backoff, wait or 0.0))
        raise AssertionError("unreachable")

    def _content(self, response: Any, tally: dict[str, int]) -> str:
        if response.usage is not None:
            tally["prompt_tokens"] += response.usage.prompt_tokens or 0
            tally["completion_tokens"] += response.usage.completion_tokens or 0
            self.usage.prompt_tokens += response.usage.prompt_tokens or 0
            self.usage.completion_tokens += response.usage.completion_tokens or 0
        if not response.choices:
            raise CallFailed("empty_output", "the answer has no choices")
        choice = response.choices[0]
        content = choice.message.content
        if getattr(choice.message, "refusal", None):
            raise CallFailed("refusal", self._scrub(f"refused: {choice.message.refusal}"), content)
        if choice.finish_reason == "content_filter":
            raise CallFailed("content_filter", "stopped by the provider's content filter", content)
        if choice.finish_reason == "length":
            raise CallFailed("truncated", "the answer hit the output token limit", content)
        if not content or not content.strip():
            raise CallFailed("empty_output", "the answer is empty", content)
        return content


def _status_class(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    return {401: "auth", 403: "auth", 404: "not_found", 408: "timeout", 409: "conflict"}.get(status, "bad_request")


def _validation_summary(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in issue['loc']) or 'answer'}: {issue['msg']}" for issue in error.errors()[:5]
    )
