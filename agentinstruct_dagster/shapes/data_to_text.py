"""Data to text: the transformation agent extracts a table; it is written as markdown, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from agentinstruct_dagster.config.catalogue import TransformationAgent
from agentinstruct_dagster.llm.schemas import SeedInstruction
from agentinstruct_dagster.shapes.base import QaShape, structure_of
from agentinstruct_dagster.shapes.models import DataTable


def distinct(names: list[str]) -> list[str]:
    """Column names made unique ("name", "name (2)", ...) so no JSON record loses a cell."""
    seen: set[str] = set()
    result = []
    for name in names:
        candidate, number = name, 2
        while candidate in seen:
            candidate, number = f"{name} ({number})", number + 1
        seen.add(candidate)
        result.append(candidate)
    return result


def fitted(rows: list[list[str]], width: int) -> list[list[str]]:
    """Rows padded with empty cells or cut to the column count."""
    return [[*(cell.strip() for cell in row[:width]), *[""] * (width - len(row))] for row in rows]


def written(table: dict[str, Any], data_format: str) -> str:
    columns, rows = table["columns"], table["rows"]
    if data_format == "json":
        return json.dumps([dict(zip(columns, row, strict=True)) for row in rows], ensure_ascii=False, indent=2)
    if data_format == "csv":
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([columns, *rows])
        return buffer.getvalue().strip()
    lines = [columns, ["---"] * len(columns), *rows]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)


class DataToTextShape(QaShape):
    name = "data_to_text"
    transform_model = DataTable
    edit_output = SeedInstruction  # editors rewrite the instruction and answer; the extracted data stays as built

    def transformed(self, value: Any, agent: TransformationAgent) -> tuple[str, dict[str, Any] | None]:
        columns = distinct([column.strip() or "column" for column in value.columns])
        table = {"title": value.title.strip(), "columns": columns, "rows": fitted(value.rows, len(columns))}
        data_format = agent.data_format or "markdown"
        return f"{table['title']}\n\n{written(table, data_format)}", {**table, "data_format": data_format}

    def features(self, row: dict[str, Any]) -> dict[str, Any]:
        table = structure_of(row)
        data_format = table.get("data_format")
        return {
            "data_format": data_format,
            "data_rows": len(table.get("rows", [])),
            "data_in_text": bool(table) and written(table, data_format) in row["text"],
            **super().features(row),
        }
