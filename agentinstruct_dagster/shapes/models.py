"""Structured outputs of the shapes' agents (sent as JSON-schema response formats).

Where a field must name something declared earlier (a tool, a page element), the model is built per
request with that set as an enum, so a schema-following endpoint cannot name anything else.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, Union

from pydantic import BaseModel, Field, create_model

from agentinstruct_dagster.llm.schemas import AgentOutput

PYTHON = {"contentMediaType": "text/x-python"}
KEYS = ("A", "B", "C", "D")
ParameterType = Literal["string", "integer", "number", "boolean"]
ElementRole = Literal["button", "link", "textbox", "checkbox", "combobox", "heading", "text", "image"]
BrowserAction = Literal["click", "type", "select", "scroll", "navigate", "submit"]


class McqItem(AgentOutput):
    question: str = Field(min_length=1, description="The question stem.")
    options: list[str] = Field(min_length=4, max_length=4, description="Four options, without letters.")
    answer_key: Literal["A", "B", "C", "D"] = Field(description="Letter of the correct option.")
    explanation: str = Field(min_length=1, description="Why the key is right and the distractors wrong.")


class McqEdit(McqItem):
    text: str = Field(min_length=1, description="The passage, edited if the suggestions require it.")


class KeyCheck(AgentOutput):
    answer_key: Literal["A", "B", "C", "D"] = Field(description="The option the checker finds correct.")
    reasoning: str = Field(min_length=1)


class Turn(AgentOutput):
    user: str = Field(min_length=1)
    assistant: str = Field(min_length=1)


class Dialogue(AgentOutput):
    turns: list[Turn] = Field(min_length=3, max_length=6, description="User/assistant exchanges in order.")


class DialogueEdit(Dialogue):
    text: str = Field(min_length=1, description="The passage, edited if the suggestions require it.")


class Parameter(AgentOutput):
    name: str = Field(min_length=1, description="snake_case parameter name.")
    type: ParameterType
    description: str = Field(min_length=1)
    required: bool


class ApiSpec(AgentOutput):
    name: str = Field(min_length=1, description="snake_case function name.")
    description: str = Field(min_length=1)
    parameters: list[Parameter] = Field(max_length=5)


class ApiCatalogue(AgentOutput):
    apis: list[ApiSpec] = Field(min_length=1, max_length=5, description="APIs built from the document.")


class ToolResult(AgentOutput):
    content: str = Field(min_length=1, description="The tool's response, as the API would return it (JSON).")


class FinalAnswer(AgentOutput):
    answer: str = Field(min_length=1, description="The assistant's final reply to the user.")


@lru_cache(maxsize=4096)
def tool_plan_model(apis: tuple[tuple[str, tuple[str, ...]], ...]) -> type[BaseModel]:
    """{request, calls[{tool, arguments[{name, value}]}]} for ((tool, parameter names), ...): each call is one
    declared API with its own parameter names (a union over the APIs), so it cannot name anything else.
    Cached, so one API set is one model class (and one cached response format)."""
    calls = []
    for tool, parameters in apis:
        argument = create_model(
            f"{tool}_argument",
            __base__=AgentOutput,
            name=(Literal[tuple(parameters)] if parameters else str, ...),  # type: ignore[valid-type]
            value=(str, Field(description="The argument's value, as a JSON literal or plain text.")),
        )
        calls.append(
            create_model(
                f"{tool}_call",
                __base__=AgentOutput,
                tool=(Literal[tool], ...),  # type: ignore[valid-type]
                arguments=(list[argument], Field(max_length=len(parameters))),  # type: ignore[valid-type]
            )
        )
    call = calls[0] if len(calls) == 1 else Union[tuple(calls)]  # noqa: UP007
    return create_model(
        "ToolPlan",
        __base__=AgentOutput,
        request=(str, Field(min_length=1, description="The user's message.")),
        calls=(list[call], Field(max_length=3, description="Calls in order; none if they cannot be made.")),  # type: ignore[valid-type]
    )


class PageElement(AgentOutput):
    role: ElementRole
    name: str = Field(min_length=1, description="Visible label or text of the element.")


class WebPage(AgentOutput):
    title: str = Field(min_length=1)
    url: str = Field(min_length=1, json_schema_extra={"format": "uri"})
    elements: list[PageElement] = Field(min_length=3, max_length=15, description="Elements, top to bottom.")


@lru_cache(maxsize=64)
def web_task_model(element_count: int) -> type[BaseModel]:
    """{task, actions[{action, element, value}], answer} with `element` limited to the page's numbers."""
    action = create_model(
        "Action",
        __base__=AgentOutput,
        action=(BrowserAction, ...),
        element=(Literal[tuple(range(1, element_count + 1))], Field(description="The element's number.")),  # type: ignore[valid-type]
        value=(str | None, Field(description="Text typed or option selected; null otherwise.")),
    )
    return create_model(
        "WebTask",
        __base__=AgentOutput,
        task=(str, Field(min_length=1, description="What the user asks the web agent to do.")),
        actions=(list[action], Field(min_length=1, max_length=6)),  # type: ignore[valid-type]
        answer=(str, Field(min_length=1, description="The agent's final message once the actions are done.")),
    )


class CodeTask(AgentOutput):
    instruction: str = Field(min_length=1)
    explanation: str = Field(min_length=1, description="How the solution works.")
    code: str = Field(min_length=1, description="Python solution, standard library only.", json_schema_extra=PYTHON)
    tests: str = Field(min_length=1, description="Python asserts run after the code.", json_schema_extra=PYTHON)


class CodeEdit(CodeTask):
    text: str = Field(min_length=1, description="The source text, edited if the suggestions require it.")


class WorkedExample(AgentOutput):
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1, description="A step-by-step worked answer.")


class FewShot(AgentOutput):
    examples: list[WorkedExample] = Field(min_length=2, max_length=4)
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1, description="Step by step, by the examples' method.")


class FewShotEdit(FewShot):
    text: str = Field(min_length=1, description="The source text, edited if the suggestions require it.")


class DataTable(AgentOutput):
    title: str = Field(min_length=1)
    columns: list[str] = Field(min_length=2, max_length=6)
    rows: list[list[str]] = Field(min_length=2, max_length=10, description="Cells per row, in column order.")
