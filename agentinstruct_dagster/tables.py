"""Column schemas of every Delta table the pipeline writes: one place, used by stages, IO and docs.

Every table is partitioned by `batch`. `structured` holds a shape's fields as JSON (options and key,
turns, APIs and calls, page and actions, code and its sandbox run...); `tools` holds a training row's
OpenAI function declarations as JSON. Both are null for plain instruction/answer pairs.

Every row has a stable content-hash `id`; derived rows keep the `id` of the row they came from in
`parent_id`, so a training pair traces back to its source document.
"""

from __future__ import annotations

import polars as pl

TOOL_CALL = pl.Struct(
    {"id": pl.String, "type": pl.String, "function": pl.Struct({"name": pl.String, "arguments": pl.String})}
)
# An OpenAI chat message: `tool_calls` on assistant turns that call tools, `tool_call_id` on tool turns.
MESSAGE = pl.Struct(
    {"role": pl.String, "content": pl.String, "tool_calls": pl.List(TOOL_CALL), "tool_call_id": pl.String}
)

LLM_PROVENANCE: dict[str, pl.DataType] = {
    "agent": pl.String,
    "prompt_version": pl.String,
    "model": pl.String,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
}

RAW_DOCUMENTS = pl.Schema(
    {
        "id": pl.String,
        "doc_id": pl.String,
        "batch": pl.String,
        "source": pl.String,
        "content_type": pl.String,
        "title": pl.String,
        "text": pl.String,
        "chunk_index": pl.Int64,
        "chunk_count": pl.Int64,
        "char_start": pl.Int64,
        "char_end": pl.Int64,
        "doc_chars": pl.Int64,
    }
)

TRANSFORMED_TEXTS = pl.Schema(
    {
        "id": pl.String,
        "parent_id": pl.String,
        "doc_id": pl.String,
        "batch": pl.String,
        "skill": pl.String,
        "text": pl.String,
        "structured": pl.String,
        **LLM_PROVENANCE,
    }
)

SEED_INSTRUCTIONS = pl.Schema(
    {
        "id": pl.String,
        "parent_id": pl.String,
        "doc_id": pl.String,
        "batch": pl.String,
        "skill": pl.String,
        "transformation": pl.String,
        "instruction_type": pl.String,
        "text": pl.String,
        "instruction": pl.String,
        "answer": pl.String,
        "structured": pl.String,
        **LLM_PROVENANCE,
    }
)

REFINED_INSTRUCTIONS = pl.Schema(
    {
        "id": pl.String,
        "parent_id": pl.String,
        "seed_id": pl.String,
        "doc_id": pl.String,
        "batch": pl.String,
        "skill": pl.String,
        "instruction_type": pl.String,
        "round": pl.Int64,
        "goals": pl.List(pl.String),
        "suggestions": pl.List(pl.String),
        "text": pl.String,
        "instruction": pl.String,
        "answer": pl.String,
        "structured": pl.String,
        **LLM_PROVENANCE,
    }
)

# Each refinement chain's final round that passed dedup, decontamination and the judge, with its scores.
JUDGED_INSTRUCTIONS = pl.Schema(
    {
        "id": pl.String,
        "parent_id": pl.String,
        "seed_id": pl.String,
        "doc_id": pl.String,
        "batch": pl.String,
        "skill": pl.String,
        "instruction_type": pl.String,
        "round": pl.Int64,
        "text": pl.String,
        "instruction": pl.String,
        "answer": pl.String,
        "structured": pl.String,
        "scores": pl.String,
        "score": pl.Float64,
        "rationale": pl.String,
        **LLM_PROVENANCE,
    }
)

TRAINING_SET = pl.Schema(
    {
        "id": pl.String,
        "parent_id": pl.String,
        "seed_id": pl.String,
        "doc_id": pl.String,
        "batch": pl.String,
        "skill": pl.String,
        "split": pl.String,
        "messages": pl.List(MESSAGE),
        "tools": pl.String,
    }
)

QUARANTINE = pl.Schema(
    {
        "id": pl.String,
        "batch": pl.String,
        "stage": pl.String,
        "reason": pl.String,
        "detail": pl.String,
        "parent_id": pl.String,
        "source": pl.String,
        "payload": pl.String,
    }
)


def frame(rows: list[dict[str, object]], schema: pl.Schema) -> pl.DataFrame:
    """Rows as a frame with exactly the given schema (an empty frame keeps its columns)."""
    return pl.DataFrame(rows, schema=schema)
