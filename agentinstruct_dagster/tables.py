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
        "encoding": pl.String,  # the text encoding a file was read in (utf-8, utf-16, cp1252...); null for pdf, parquet
        "language": pl.String,  # a source file's programming language as pygments names it, lowercased; else null
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


# What each column of the tables holds (the UI's column schemas). A name means the same in every table it is in;
# `parent_id` names the row each row came from (a document chunk, transformed text, seed, round or judged row).
COLUMN_DESCRIPTIONS: dict[str, str] = {
    "id": "Stable content hash of the row (use it with `agentinstruct trace ID`).",
    "parent_id": "Id of the row this one came from (the previous stage's row, or the previous refinement round).",
    "seed_id": "Id of the seed instruction that started this refinement chain.",
    "doc_id": "Content hash of the source document (shared by its chunks; exact duplicates collapse).",
    "batch": "Batch (inbox folder, Dagster partition) the row belongs to.",
    "skill": "Catalogue skill (asset group) that produced the row.",
    "split": "Training-set split of the row's skill.",
    "source": "Raw documents: the file's path in the batch folder (after a record's own `source`, if it has one). "
    "Quarantine: the file or the agent whose output was rejected.",
    "content_type": "How the document was read: the file's format (txt, md, jsonl, parquet, ...).",
    "encoding": "Text encoding detected for the file (e.g. utf-8, cp1252); null for pdf and parquet.",
    "language": "Programming language of a source-code file; null for prose.",
    "title": "Document title: the record's or file's own title, else the file name.",
    "text": "Raw documents: the chunk's text. Later stages: the transformed text the row was written from.",
    "chunk_index": "Position of the chunk in its document, from 0.",
    "chunk_count": "Number of chunks of its document.",
    "char_start": "Offset of the chunk's first character in the document.",
    "char_end": "Offset after the chunk's last character in the document.",
    "doc_chars": "Length of the whole document in characters.",
    "structured": "The shape's fields as JSON (options and key, turns, APIs and calls, page and actions, code and its "
    "sandbox run, table); null for plain instruction/answer pairs.",
    "transformation": "Transformation agent that wrote the text the seed instruction was made from.",
    "instruction_type": "Instruction type of the skill's taxonomy.",
    "instruction": "The instruction (question or task) as the user would send it.",
    "answer": "The answer to the instruction.",
    "round": "Refinement round, from 1; each chain's final round goes on to curation.",
    "goals": "Refinement goals of this round (harder, trickier, unanswerable, ...).",
    "suggestions": "The suggester's suggestions the editor applied in this round.",
    "scores": "The judge's scores as JSON, criterion -> 1-5.",
    "score": "Mean of the judge's criterion scores (1-5).",
    "rationale": "The judge's reasons for its scores.",
    "messages": "Chat turns in the OpenAI format: role, content, tool_calls, tool_call_id.",
    "tools": "OpenAI function declarations of the pair as JSON; null without tool calls.",
    "agent": "Agent (catalogue prompt) that wrote the row.",
    "prompt_version": "Version of the catalogue prompt that wrote the row (part of the cache key).",
    "model": "Model that answered (agentinstruct-standin is the offline stand-in, not a model).",
    "prompt_tokens": "Prompt tokens of the model call that wrote the row.",
    "completion_tokens": "Completion tokens of the model call that wrote the row.",
    "quarantined": "Null for kept rows; for a quarantined row: its stage, reason, detail, parent_id, source, payload.",
    "stage": "Asset that quarantined the row (`skill/stage`, or `raw_documents`).",
    "reason": "Why the row was quarantined: the rule, check or failure class.",
    "detail": "The evidence: the rule's figures, the check's outcome or the error.",
    "payload": "The rejected row or raw model output as JSON.",
}
