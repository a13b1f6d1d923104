"""What the pipeline asks of the LLM engine and what it gets back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from agentinstruct_dagster.config.profiles import ModelRole

T = TypeVar("T", bound=BaseModel)


@dataclass(frozen=True)
class LLMRequest(Generic[T]):
    """One structured-output chat call: the answer must validate against `response_model`."""

    agent: str
    role: ModelRole
    system: str
    user: str
    response_model: type[T]
    prompt_version: str = ""
    # Optional substance check of a validated answer: a reason it is unusable (degenerate...), or None.
    # The engine re-asks once with a fresh seed when it returns a reason; not part of the cache key.
    accept: Callable[[T], str | None] | None = None


@dataclass(frozen=True)
class LLMResult(Generic[T]):
    """The outcome of one request after retries and at most one repair re-ask.

    `value` is set on success; otherwise `error_class` names the failure (e.g. `invalid_output`,
    `rate_limited`, `server_error`, `timeout`, `connection`, `bad_request`) and `raw_output` keeps
    whatever the endpoint last returned. Messages never contain the API key.
    """

    value: T | None
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    attempts: int = 1
    error_class: str | None = None
    error: str | None = None
    raw_output: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.value is not None
