"""Running a Great Expectations suite from `expectations/<stage>.json` on one batch of a stage table.

GX is imported lazily (it takes seconds) and has no polars source, so frames go through pandas; nested
list/struct columns are passed as JSON strings, which the suites treat as opaque values.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl

from agentinstruct_dagster.config.errors import ConfigFileError
from agentinstruct_dagster.project import expectations_dir

EXAMPLES_PER_FAILURE = 5
EXAMPLE_CHARS = 200


@dataclass(frozen=True)
class SuiteOutcome:
    suite: str
    success: bool
    evaluated: int
    failed: int
    row_count: int
    failures: list[dict[str, Any]] = field(default_factory=list)

    def markdown(self) -> str:
        if not self.failures:
            return f"All {self.evaluated} expectations of `{self.suite}` passed on {self.row_count} rows."
        lines = [f"{self.failed} of {self.evaluated} expectations of `{self.suite}` failed on {self.row_count} rows:"]
        for failure in self.failures:
            where = f" `{failure['column']}`" if failure.get("column") else ""
            examples = ", ".join(f"`{example}`" for example in failure["examples"]) or "-"
            lines.append(
                f"- **{failure['expectation']}**{where}: {failure['unexpected_count']} unexpected; e.g. {examples}"
            )
        return "\n".join(lines)


def suite_path_for(stage: str) -> Path:
    return expectations_dir() / f"{stage}.json"


def load_suite_json(suite_path: Path) -> dict[str, Any]:
    try:
        suite = json.loads(suite_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigFileError(f"expectation suite not found: {suite_path}") from None
    except ValueError as error:
        raise ConfigFileError(f"{suite_path}: not valid JSON: {error}") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise ConfigFileError(f"{suite_path}: an expectation suite needs an `expectations` list")
    return suite


@cache
def _context() -> Any:
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _flat(frame: pl.DataFrame) -> pl.DataFrame:
    nested = [name for name, dtype in frame.schema.items() if dtype.is_nested()]
    return frame.with_columns(
        pl.col(name).map_elements(
            lambda value: json.dumps(value.to_list() if isinstance(value, pl.Series) else value, ensure_ascii=False),
            return_dtype=pl.String,
        )
        for name in nested
    )


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def validate_frame(frame: pl.DataFrame, suite_path: Path) -> SuiteOutcome:
    """Validate every row of `frame` against the suite; failures keep counts and a few failing values."""
    import great_expectations as gx

    suite_json = load_suite_json(suite_path)
    context = _context()
    name = f"{suite_path.stem}-{uuid.uuid4().hex[:8]}"
    source = context.data_sources.add_pandas(name)
    batch_definition = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = gx.ExpectationSuite(**{**suite_json, "name": name})
    try:
        batch = batch_definition.get_batch(batch_parameters={"dataframe": _flat(frame).to_pandas()})
        result = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5})
    finally:
        context.data_sources.delete(name)
    failures = []
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        details = item.result or {}
        failures.append(
            {
                "expectation": config.type,
                "column": config.kwargs.get("column"),
                "unexpected_count": details.get("unexpected_count", details.get("observed_value")),
                "unexpected_percent": details.get("unexpected_percent"),
                "examples": [
                    _short(value) for value in details.get("partial_unexpected_list", [])[:EXAMPLES_PER_FAILURE]
                ],
            }
        )
    return SuiteOutcome(
        suite=suite_path.stem,
        success=bool(result.success),
        evaluated=len(result.results),
        failed=len(failures),
        row_count=frame.height,
        failures=failures,
    )
