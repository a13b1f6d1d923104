"""Structured outputs each agent role must return (sent as JSON-schema response formats)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AgentOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TransformedText(AgentOutput):
    text: str = Field(min_length=1, description="The document rewritten in the requested form.")


class SeedInstruction(AgentOutput):
    instruction: str = Field(min_length=1, description="The instruction or question for a student.")
    answer: str = Field(min_length=1, description="The correct, complete answer.")


class Suggestions(AgentOutput):
    suggestions: list[str] = Field(min_length=1, max_length=5, description="Concrete ways to change the task.")


class EditedInstruction(AgentOutput):
    text: str = Field(min_length=1, description="The passage, edited if the suggestions require it.")
    instruction: str = Field(min_length=1, description="The rewritten instruction.")
    answer: str = Field(min_length=1, description="The answer to the rewritten instruction.")
