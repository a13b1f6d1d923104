"""Web agent: a simulated page (numbered accessibility tree), a task, browser actions as tool calls.

Each action is an assistant tool call to the browser function of its name, answered by a `tool` turn
with the simulated browser's observation; the final assistant turn reports back to the user.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from agentinstruct_dagster.config.catalogue import Skill, TransformationAgent
from agentinstruct_dagster.shapes.base import (
    Message,
    QaShape,
    Task,
    assistant,
    call_id,
    structure_of,
    tool_turn,
    user_and_system,
)
from agentinstruct_dagster.shapes.models import WebPage, web_task_model

ELEMENT = {"type": "integer", "description": "The element's number in the page tree."}
VALUE = {"type": "string", "description": "Text to type or option to select."}
BROWSER_TOOLS = {
    "click": ("Click an element.", {"element": ELEMENT}),
    "type": ("Type text into a textbox.", {"element": ELEMENT, "value": VALUE}),
    "select": ("Select an option of a combobox.", {"element": ELEMENT, "value": VALUE}),
    "scroll": ("Scroll until an element is in view.", {"element": ELEMENT}),
    "navigate": ("Follow a link element to its page.", {"element": ELEMENT}),
    "submit": ("Submit the form an element belongs to.", {"element": ELEMENT}),
}
OBSERVATIONS = {
    "click": "clicked",
    "type": "typed into",
    "select": "selected in",
    "scroll": "scrolled to",
    "navigate": "followed",
    "submit": "submitted the form of",
}


def page_tree(page: dict[str, Any]) -> str:
    lines = [f"Page: {page['title']} ({page['url']})"]
    lines += [f'[{n}] {element["role"]} "{element["name"]}"' for n, element in enumerate(page["elements"], 1)]
    return "\n".join(lines)


def browser_tools() -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": description,
                "parameters": {"type": "object", "properties": properties, "required": list(properties)},
            },
        }
        for name, (description, properties) in BROWSER_TOOLS.items()
    ]


class WebAgentShape(QaShape):
    name = "web_agent"
    transform_model = WebPage

    def transformed(self, value: Any, agent: TransformationAgent) -> tuple[str, dict[str, Any] | None]:
        page = {
            "title": value.title.strip(),
            "url": value.url.strip(),
            "elements": [{"role": e.role, "name": " ".join(e.name.split())} for e in value.elements],
        }
        return page_tree(page), {"page": page}

    def seed_model(self, context: Task) -> type[BaseModel]:
        return web_task_model(len((context.structured or {})["page"]["elements"]))

    def edit_model(self, current: Task) -> type[BaseModel]:
        return self.seed_model(current)

    def task(self, value: Any, context: Task) -> Task:
        actions = [{"action": a.action, "element": a.element, "value": a.value} for a in value.actions]
        steps = "\n".join(
            f"{n}. {a['action']} [{a['element']}]" + (f" {json.dumps(a['value'])}" if a["value"] else "")
            for n, a in enumerate(actions, 1)
        )
        return Task(
            text=context.text,
            instruction=value.task.strip(),
            answer=f"Actions:\n{steps}\n\n{value.answer.strip()}",
            structured={"page": (context.structured or {})["page"], "actions": actions, "reply": value.answer.strip()},
        )

    def messages(self, row: dict[str, Any], skill: Skill) -> list[Message]:
        item = structure_of(row)
        elements = item["page"]["elements"]
        messages = user_and_system(skill, row["text"], row["instruction"])
        for index, action in enumerate(item["actions"]):
            arguments = {"element": action["element"]}
            if "value" in BROWSER_TOOLS[action["action"]][1]:
                arguments["value"] = action["value"] or ""
            identifier = call_id(row["id"], index)
            element = elements[action["element"] - 1]
            observation = (
                f'{OBSERVATIONS[action["action"]]} [{action["element"]}] {element["role"]} "{element["name"]}"'
            )
            function = {"name": action["action"], "arguments": json.dumps(arguments, ensure_ascii=False)}
            messages += [
                assistant(None, [{"id": identifier, "type": "function", "function": function}]),
                tool_turn(identifier, observation),
            ]
        return [*messages, assistant(item["reply"])]

    def tools(self, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        return browser_tools()

    def features(self, row: dict[str, Any]) -> dict[str, Any]:
        item = structure_of(row)
        elements, actions = len(item.get("page", {}).get("elements", [])), item.get("actions", [])
        return {
            "page_elements": elements,
            "actions": len(actions),
            "actions_target_page_elements": all(1 <= action["element"] <= elements for action in actions),
            "actions_are_browser_tools": all(action["action"] in BROWSER_TOOLS for action in actions),
        }
