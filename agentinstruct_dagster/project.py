"""Where the project's declarative folders and its data live."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def project_dir() -> Path:
    """The folder holding `assets/`, `resources/` and `expectations/`.

    `AGENTINSTRUCT_PROJECT_DIR` wins; otherwise the checkout this package lives in; otherwise the cwd.
    """
    configured = os.environ.get("AGENTINSTRUCT_PROJECT_DIR")
    if configured:
        return Path(configured).resolve()
    checkout = PACKAGE_DIR.parent
    if (checkout / "assets").is_dir():
        return checkout
    return Path.cwd()


def catalogue_dir() -> Path:
    return Path(os.environ.get("AGENTINSTRUCT_CATALOGUE_DIR") or project_dir() / "assets")


def profiles_dir() -> Path:
    return Path(os.environ.get("AGENTINSTRUCT_PROFILES_DIR") or project_dir() / "resources")


def expectations_dir() -> Path:
    return Path(os.environ.get("AGENTINSTRUCT_EXPECTATIONS_DIR") or project_dir() / "expectations")


def sample_documents_dir() -> Path:
    return PACKAGE_DIR / "sample_documents"


def resolve(path: str | Path) -> Path:
    """A profile path: absolute as given, relative to the project folder otherwise."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else project_dir() / candidate
