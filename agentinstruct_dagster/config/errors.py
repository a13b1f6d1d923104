"""Loading declarative YAML files with errors that name the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigFileError(ValueError):
    """A catalogue or profile file that cannot be used, with the file and field at fault."""


def load_yaml_model(path: Path, model: type[M], *, what: str) -> M:
    if not path.is_file():
        raise ConfigFileError(f"{what} file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigFileError(f"{path}: not valid YAML: {_yaml_problem(error)}") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigFileError(f"{path}: invalid {what}: {validation_problems(error)}") from None


def validation_problems(error: ValidationError) -> str:
    """Each failed field of a pydantic error with its message, on one line."""
    return "; ".join(
        f"field `{'.'.join(str(part) for part in issue['loc']) or '<top>'}`: {issue['msg']}" for issue in error.errors()
    )


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What is wrong and where, on one line."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return " ".join(f"{problem}{where}".split())
