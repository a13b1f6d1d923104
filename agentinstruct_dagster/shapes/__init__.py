"""Shapes by name; a skill file's `shape` picks one."""

from __future__ import annotations

from agentinstruct_dagster.config.catalogue import Skill
from agentinstruct_dagster.shapes.base import QaShape
from agentinstruct_dagster.shapes.code import CodeShape
from agentinstruct_dagster.shapes.conversation import ConversationShape
from agentinstruct_dagster.shapes.data_to_text import DataToTextShape
from agentinstruct_dagster.shapes.few_shot import FewShotShape
from agentinstruct_dagster.shapes.mcq import McqShape
from agentinstruct_dagster.shapes.rag import RagShape
from agentinstruct_dagster.shapes.tool_use import ToolUseShape
from agentinstruct_dagster.shapes.web_agent import WebAgentShape

SHAPES = {
    shape.name: shape
    for shape in (
        QaShape,
        McqShape,
        ConversationShape,
        ToolUseShape,
        WebAgentShape,
        CodeShape,
        RagShape,
        FewShotShape,
        DataToTextShape,
    )
}


def shape_for(skill: Skill) -> QaShape:
    """The shape object a skill's stages use."""
    return SHAPES[skill.shape](skill)
