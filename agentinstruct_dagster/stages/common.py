"""What every LLM stage shares: its result, provenance columns, and where failures go."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.config.profiles import SandboxSettings
from agentinstruct_dagster.llm.engine import LLMEngine
from agentinstruct_dagster.llm.types import LLMRequest, LLMResult
from agentinstruct_dagster.quality.rules import Rule, first_failure, quarantine_row
from agentinstruct_dagster.shapes.base import Rejection, Support
from agentinstruct_dagster.tables import QUARANTINE, frame


@dataclass
class StageOutput:
    """Rows that passed, rows quarantined with their reasons, and the stage's model calls: those sent to the
    provider (`calls_made`, with their tokens) and those answered from the call ledger (`calls_cached`)."""

    stage: str
    batch: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    calls_made: int = 0
    calls_cached: int = 0
    calls_failed: int = 0
    prompt_tokens_paid: int = 0
    completion_tokens_paid: int = 0

    def count(self, *results: LLMResult[Any]) -> None:
        for result in results:
            self.calls_failed += not result.ok
            if result.cached:
                self.calls_cached += 1
                continue
            self.calls_made += 1
            self.prompt_tokens_paid += result.prompt_tokens
            self.completion_tokens_paid += result.completion_tokens

    @property
    def calls(self) -> int:
        """Every call the stage needed, made or answered from the call ledger."""
        return self.calls_made + self.calls_cached

    def reject(self, reason: str, detail: str, *, parent_id: str | None, source: str | None, payload: Any) -> None:
        """Quarantine what a stage could not keep, with its reason, the evidence and its parent's id."""
        self.quarantined.append(
            quarantine_row(
                stage=self.stage,
                batch=self.batch,
                reason=reason,
                detail=detail,
                parent_id=parent_id,
                source=source,
                payload=payload,
            )
        )

    def reject_failed_call(self, result: LLMResult[Any], *, agent: str, parent_id: str) -> None:
        self.reject(
            f"llm_{result.error_class}",
            f"{agent}: {result.error}",
            parent_id=parent_id,
            source=agent,
            payload=result.raw_output,
        )

    def reject_task(self, rejection: Rejection, *, parent_id: str, source: str) -> None:
        self.reject(
            f"shape_{rejection.reason}",
            rejection.detail,
            parent_id=parent_id,
            source=source,
            payload=rejection.payload,
        )

    def support(self, skill: Skill, engine: LLMEngine, sandbox: SandboxSettings, *, parent_id: str) -> Support:
        """Support for one task's extra work: calls counted here, failed calls quarantined under `parent_id`."""

        async def call(request: LLMRequest[Any]) -> LLMResult[Any]:
            result = await engine.call(request)
            self.count(result)
            return result

        def on_failure(result: LLMResult[Any], agent: str) -> None:
            self.reject_failed_call(result, agent=agent, parent_id=parent_id)

        return Support(skill=skill, call=call, sandbox=sandbox, on_failure=on_failure)

    def admit(self, row: dict[str, Any], rules: list[Rule]) -> bool:
        """Keep the row if it passes every rule, else quarantine it with the rule's name."""
        failure = first_failure(row, rules)
        clean = {key: value for key, value in row.items() if not key.startswith("_")}
        if failure is None:
            self.rows.append(clean)
            return True
        rule, detail = failure
        self.reject(f"rule_{rule}", detail, parent_id=row.get("parent_id"), source=row.get("agent"), payload=clean)
        return False

    @property
    def failure_rate(self) -> float:
        return self.calls_failed / self.calls if self.calls else 0.0

    def quarantine_frame(self) -> pl.DataFrame:
        return frame(self.quarantined, QUARANTINE)

    def metadata(self) -> dict[str, Any]:
        reasons = Counter(row["reason"] for row in self.quarantined)
        return {
            "calls_made": self.calls_made,
            "calls_cached": self.calls_cached,
            "calls_failed": self.calls_failed,
            "prompt_tokens_paid": self.prompt_tokens_paid,
            "completion_tokens_paid": self.completion_tokens_paid,
            "quarantined_rows": len(self.quarantined),
            "quarantine_reasons": dict(sorted(reasons.items())),
        }


def provenance(result: LLMResult[Any], *, agent: str, prompt_version: str) -> dict[str, Any]:
    return {
        "agent": agent,
        "prompt_version": prompt_version,
        "model": result.model,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
    }


def to_json(value: Any) -> str | None:
    """A shape's structure as the `structured` column (None stays null)."""
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)
