"""Running a Great Expectations suite from `expectations/<stage>.json` on one batch of a stage table.

GX is imported lazily (it takes seconds). It has no polars source, so frames go through pandas, and
list/struct columns (`goals`, `suggestions`, `messages`) are passed as JSON strings (`json.dumps` with
its default separators, e.g. `[{"role": "user", "content": "..."}]`): suites may only check them for
nulls or with regexes. Nulls stay nulls.
"""

from __future__ import annotations

import json
import logging
import math
import threading
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
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES_PER_FAILURE}


@dataclass(frozen=True)
class SuiteOutcome:
    """One suite's verdict on one frame; `failures` has an entry per failed expectation."""

    suite: str
    success: bool
    evaluated: int
    failed: int
    row_count: int
    failures: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def combined(cls, outcomes: list[SuiteOutcome]) -> SuiteOutcome:
        """One outcome for several validations (e.g. a gate suite run per skill)."""
        return cls(
            suite=", ".join(dict.fromkeys(outcome.suite for outcome in outcomes)),
            success=all(outcome.success for outcome in outcomes),
            evaluated=sum(outcome.evaluated for outcome in outcomes),
            failed=sum(outcome.failed for outcome in outcomes),
            row_count=sum(outcome.row_count for outcome in outcomes),
            failures=[failure for outcome in outcomes for failure in outcome.failures],
        )

    def summary(self) -> str:
        """The failures on one line: what a failed run's message names."""
        return f"{self.suite}: " + "; ".join(_failure_line(failure) for failure in self.failures)

    def markdown(self) -> str:
        """A summary line, then a bullet per failed expectation with its counts and examples."""
        if not self.failures:
            return f"All {self.evaluated} expectations of `{self.suite}` passed on {self.row_count} rows."
        failed = f"{self.failed} of {self.evaluated} expectations of `{self.suite}` failed"
        bullets = [f"- {_failure_line(failure, bold=True)}" for failure in self.failures]
        return "\n".join([f"{failed} on {self.row_count} rows:", *bullets])


def _failure_line(failure: dict[str, Any], bold: bool = False) -> str:
    """One failed expectation: its type and column, counts, a few failing values and the rows they are in."""
    where = f" on `{failure['column']}`" if failure["column"] else ""
    parts = []
    if failure["error"]:
        parts.append(f"error {_code(failure['error'])}")
    elif failure["unexpected_count"] is not None:
        parts.append(f"{failure['unexpected_count']} unexpected ({failure['unexpected_percent']}%)")
    elif failure["observed"] is not None and not failure["examples"]:
        parts.append(f"observed {_code(failure['observed'])}")
    if failure["examples"]:
        parts.append("e.g. " + ", ".join(_code(example) for example in failure["examples"]))
    if failure["example_ids"]:
        parts.append("rows " + ", ".join(_code(row_id) for row_id in failure["example_ids"]))
    kind = f"**{failure['type']}**" if bold else failure["type"]
    return f"{kind}{where}: " + "; ".join(parts or ["failed"])


def suite_path_for(stage: str) -> Path:
    """The suite file of a stage table, e.g. `expectations/seed_instructions.json`."""
    return expectations_dir() / f"{stage}.json"


def shape_suite_path(skill: str, shape: str) -> Path:
    """The suite a skill's shape check runs: the skill's own `expectations/skills/<skill>.json` if there is
    one, else its shape's `expectations/shapes/<shape>.json`."""
    override = expectations_dir() / "skills" / f"{skill}.json"
    return override if override.is_file() else expectations_dir() / "shapes" / f"{shape}.json"


def load_suite_json(suite_path: Path) -> dict[str, Any]:
    """The suite file as a dict; a missing file, bad JSON or no `expectations` list names the file."""
    try:
        suite = json.loads(suite_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigFileError(f"expectation suite not found: {suite_path}") from None
    except ValueError as error:
        raise ConfigFileError(f"{suite_path}: not valid JSON: {error}") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise ConfigFileError(f"{suite_path}: an expectation suite needs an `expectations` list")
    return suite


_VALIDATION_LOCK = threading.Lock()


def validate_frame(frame: pl.DataFrame, suite_path: Path, index_column: str = "id") -> SuiteOutcome:
    """Validate every row of `frame` against the suite at `suite_path`; failing examples name their rows by
    `index_column` (when the frame has it)."""
    suite = _build_suite(load_suite_json(suite_path), suite_path)
    with _VALIDATION_LOCK:  # the GX context is shared by the process and not thread-safe
        return _validate(frame, suite, suite_path, index_column)


def _validate(frame: pl.DataFrame, suite: Any, suite_path: Path, index_column: str) -> SuiteOutcome:
    context = _context()
    name = f"{suite_path.stem}-{uuid.uuid4().hex}"
    source = context.data_sources.add_pandas(name)
    try:
        batch_definition = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": _flat(frame).to_pandas()})
        indexed = {"unexpected_index_column_names": [index_column]} if index_column in frame.columns else {}
        result = batch.validate(suite, result_format={**RESULT_FORMAT, **indexed})
    finally:
        context.data_sources.delete(name)
    failures = [_failure(item) for item in result.results if not item.success]
    return SuiteOutcome(
        suite=suite_path.stem,
        success=bool(result.success),
        evaluated=len(result.results),
        failed=len(failures),
        row_count=frame.height,
        failures=failures,
    )


@cache
def _context() -> Any:
    """One ephemeral GX context per process, without progress bars or info logs."""
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _build_suite(suite_json: dict[str, Any], suite_path: Path) -> Any:
    """The GX suite; unlike `ExpectationSuite(**json)`, which logs and drops them, bad expectations raise."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    expectations = []
    for number, item in enumerate(suite_json["expectations"], start=1):
        try:
            expectations.append(ExpectationConfiguration(**item).to_domain_obj())
        except Exception as error:
            kind = item.get("type") if isinstance(item, dict) else None
            raise ConfigFileError(f"{suite_path}: expectation #{number} ({kind}) is invalid: {error}") from None
    return gx.ExpectationSuite(
        name=str(suite_json.get("name") or suite_path.stem),
        expectations=expectations,
        meta=suite_json.get("meta"),
    )


def _flat(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with its list/struct columns as JSON strings (nulls stay null). Converted in Python, not with a
    polars UDF: a UDF runs on polars' thread pool and needs the GIL, which can deadlock with other threads."""
    return frame.with_columns(
        pl.Series(name, [None if value is None else json.dumps(value, ensure_ascii=False) for value in column])
        for name, dtype in frame.schema.items()
        if dtype.is_nested()
        for column in [frame[name].to_list()]
    )


def _failure(item: Any) -> dict[str, Any]:
    """Type, column(s), counts and a few failing values of one failed expectation result."""
    kwargs = item.expectation_config.kwargs
    columns = kwargs.get("column_list") or [kwargs[key] for key in ("column", "column_A", "column_B") if key in kwargs]
    details = item.result or {}
    percent = details.get("unexpected_percent")
    mismatched = (details.get("details") or {}).get("mismatched") or {}
    examples = details.get("partial_unexpected_list") or [
        f"{kind}: {column}" for kind, names in mismatched.items() for column in names
    ]
    observed = details.get("observed_value")
    indexed = details.get("partial_unexpected_index_list") or []
    index_names = details.get("unexpected_index_column_names") or []
    example_ids = [str(entry.get(index_names[0])) for entry in indexed if index_names and isinstance(entry, dict)]
    return {
        "type": item.expectation_config.type,
        "column": ", ".join(columns) or None,
        "unexpected_count": details.get("unexpected_count"),
        "unexpected_percent": None if percent is None else round(percent, 2),
        "examples": list(dict.fromkeys(_short(example) for example in examples))[:EXAMPLES_PER_FAILURE],
        "observed": None if observed is None else _short(observed),
        "error": _error_message(item.exception_info),
        "example_ids": list(dict.fromkeys(example_ids))[:EXAMPLES_PER_FAILURE],
    }


def _error_message(info: dict[str, Any] | None) -> str | None:
    """The exception message(s) of a result: GX nests them per metric, or not at all."""
    entries = [info] if info and "raised_exception" in info else list((info or {}).values())
    messages = {entry.get("exception_message") for entry in entries if entry.get("raised_exception")}
    return "; ".join(sorted(message for message in messages if message)) or None


def _short(value: Any) -> str:
    """A failing value as text of at most EXAMPLE_CHARS characters; NaN and None become `null`."""
    plain = _plain(value)
    text = plain if isinstance(plain, str) else json.dumps(plain, ensure_ascii=False, default=str)
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def _plain(value: Any) -> Any:
    """numpy scalars, arrays and tuples as plain Python values."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, tuple | list):
        return [_plain(part) for part in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _code(text: str) -> str:
    """`text` as inline markdown code on one line."""
    return "`" + " ".join(text.split()).replace("`", "'") + "`"
