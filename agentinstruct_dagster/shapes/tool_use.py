"""Tool use: APIs built from the document, a request, calls naming declared APIs, simulated results, a reply.

Each call is an assistant turn with `tool_calls` followed by a `tool` turn with the simulator's result, in
the OpenAI chat format; the declared APIs go in the training row's `tools`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel

from agentinstruct_dagster.config.catalogue import Skill, TransformationAgent
from agentinstruct_dagster.shapes.base import (
    Message,
    QaShape,
    Rejection,
    Support,
    Task,
    assistant,
    call_id,
    structure_of,
    tool_turn,
    user_and_system,
)
from agentinstruct_dagster.shapes.models import ApiCatalogue, FinalAnswer, ToolResult, tool_plan_model

JSON_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}


def identifier(name: str, taken: set[str], fallback: str) -> str:
    """A snake_case name of at most 48 characters, unique among `taken`."""
    base = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:48].strip("_") or fallback
    base = base if base[0].isalpha() else f"{fallback}_{base}"
    candidate, number = base, 2
    while candidate in taken:
        candidate, number = f"{base}_{number}", number + 1
    taken.add(candidate)
    return candidate


def function_specs(apis: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The APIs as OpenAI `tools` entries."""
    return [
        {
            "type": "function",
            "function": {
                "name": api["name"],
                "description": api["description"],
                "parameters": {
                    "type": "object",
                    "properties": {
                        p["name"]: {"type": JSON_TYPES[p["type"]], "description": p["description"]}
                        for p in api["parameters"]
                    },
                    "required": [p["name"] for p in api["parameters"] if p["required"]],
                },
            },
        }
        for api in apis
    ]


def shown_call(call: dict[str, Any]) -> str:
    return f"{call['tool']}({json.dumps(call['arguments'], ensure_ascii=False)})"


def shown_results(calls: list[dict[str, Any]], results: list[str]) -> str:
    """The calls answered so far with their results, one a line (the simulator sees earlier results)."""
    return "\n".join(f"{shown_call(call)} -> {result}" for call, result in zip(calls, results, strict=False))


def argument_value(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


class ToolUseShape(QaShape):
    name = "tool_use"
    transform_model = ApiCatalogue

    def transformed(self, value: Any, agent: TransformationAgent) -> tuple[str, dict[str, Any] | None]:
        names: set[str] = set()
        apis = []
        for api in value.apis:
            parameter_names: set[str] = set()
            parameters = [
                {**p.model_dump(), "name": identifier(p.name, parameter_names, "arg")} for p in api.parameters
            ]
            apis.append(
                {
                    "name": identifier(api.name, names, "api"),
                    "description": api.description.strip(),
                    "parameters": parameters,
                }
            )
        return json.dumps(function_specs(apis), ensure_ascii=False, indent=2), {"apis": apis}

    def seed_model(self, context: Task) -> type[BaseModel]:
        apis = (context.structured or {})["apis"]
        return tool_plan_model(tuple((api["name"], tuple(p["name"] for p in api["parameters"])) for api in apis))

    def edit_model(self, current: Task) -> type[BaseModel]:
        return self.seed_model(current)

    def task(self, value: Any, context: Task) -> Task:
        calls = [
            {"tool": call.tool, "arguments": {a.name: argument_value(a.value) for a in call.arguments}}
            for call in value.calls
        ]
        planned = "\n".join(f"- {shown_call(call)}" for call in calls) or "- none"
        return Task(
            text=context.text,
            instruction=f"{value.request.strip()}\n\nPlanned calls:\n{planned}",
            answer="",
            structured={"apis": (context.structured or {})["apis"], "request": value.request.strip(), "calls": calls},
        )

    async def complete(self, task: Task, support: Support) -> Task | Rejection:
        item = task.structured or {}
        results: list[str] = []
        for call in item["calls"]:
            result = await support.ask(
                "tool_simulator",
                ToolResult,
                apis=task.text,
                request=item["request"],
                call=shown_call(call),
                earlier=shown_results(item["calls"], results) or "(none)",
            )
            if result is None:
                return Rejection("tool_simulation_failed", f"the simulator failed on {call['tool']}", item)
            results.append(result.content.strip())
        shown = shown_results(item["calls"], results)
        reply = await support.ask(
            "responder", FinalAnswer, apis=task.text, request=item["request"], results=shown or "(no calls made)"
        )
        if reply is None:
            return Rejection("responder_failed", "the responder's call failed", item)
        return Task(
            task.text, task.instruction, reply.answer.strip(), {**item, "results": results}
        )

    def messages(self, row: dict[str, Any], skill: Skill) -> list[Message]:
        item = structure_of(row)
        messages = user_and_system(skill, row["text"], item["request"])
        for index, (call, result) in enumerate(zip(item["calls"], item["results"], strict=True)):
            identifier_ = call_id(row["id"], index)
            function = {"name": call["tool"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}
            messages += [
                assistant(None, [{"id": identifier_, "type": "function", "function": function}]),
                tool_turn(identifier_, result),
            ]
        return [*messages, assistant(row["answer"])]

    def tools(self, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        return function_specs(structure_of(row)["apis"])

    def features(self, row: dict[str, Any]) -> dict[str, Any]:
        item = structure_of(row)
        declared = {api["name"]: api for api in item.get("apis", [])}
        calls = item.get("calls", [])
        return {
            "declared_apis": len(declared),
            "tool_calls": len(calls),
            "calls_name_declared_apis": all(call["tool"] in declared for call in calls),
            "arguments_are_declared": all(
                set(call["arguments"]) <= {p["name"] for p in declared.get(call["tool"], {}).get("parameters", [])}
                for call in calls
            ),
            "results_per_call": len(item.get("results", [])) == len(calls),
        }
