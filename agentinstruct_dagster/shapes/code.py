"""Coding: a Python solution and asserts; both run in the sandbox and only passing code is kept."""

from __future__ import annotations

import ast
from typing import Any

from agentinstruct_dagster.sandbox import run_python
from agentinstruct_dagster.shapes.base import QaShape, Rejection, Support, Task, structure_of
from agentinstruct_dagster.shapes.models import CodeEdit, CodeTask


def parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


class CodeShape(QaShape):
    name = "code"
    seed_output = CodeTask
    edit_output = CodeEdit

    def task(self, value: Any, context: Task) -> Task:
        code, tests, explanation = value.code.strip(), value.tests.strip(), value.explanation.strip()
        return Task(
            text=getattr(value, "text", context.text).strip(),
            instruction=value.instruction.strip(),
            answer=f"{explanation}\n\n```python\n{code}\n```\n\nChecks:\n\n```python\n{tests}\n```",
            structured={"explanation": explanation, "code": code, "tests": tests},
        )

    async def complete(self, task: Task, support: Support) -> Task | Rejection:
        item = task.structured or {}
        limits = support.sandbox
        execution = await run_python(
            f"{item['code']}\n\n{item['tests']}\n",
            timeout_seconds=limits.timeout_seconds,
            memory_mb=limits.memory_mb,
            output_chars=limits.output_chars,
            max_output_bytes=limits.max_output_bytes,
        )
        if not execution.passed:
            detail = f"the code and its checks ended `{execution.status}`: {execution.stderr[-600:].strip()}"
            return Rejection(f"code_{execution.status}", detail, {**item, "execution": execution.record()})
        return task.with_structure(execution=execution.record())

    def features(self, row: dict[str, Any]) -> dict[str, Any]:
        item = structure_of(row)
        return {
            "code_parses": parses(item.get("code", "")),
            "tests_parse": parses(item.get("tests", "")),
            "tests_assert": "assert" in item.get("tests", ""),
            "execution_status": (item.get("execution") or {}).get("status"),
        }
