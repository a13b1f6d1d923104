"""Where the project's declarative folders and its data live.

Each declarative folder (`assets/` catalogue, `resources/` profiles, `expectations/` suites) is the first of: its own
environment variable; `$AGENTINSTRUCT_PROJECT_DIR/<folder>` when that exists; the folder of the source checkout this
package lives in; the copy bundled in the installed package (`_bundled/`, symlinks to the checkout's folders that
setuptools copies into the wheel). Never the cwd.
"""

from __future__ import annotations

import os
from pathlib import Path

from agentinstruct_dagster.config.errors import ConfigFileError

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_DIR = PACKAGE_DIR / "_bundled"
PROJECT_DIR_ENV_VAR = "AGENTINSTRUCT_PROJECT_DIR"


def checkout_dir() -> Path | None:
    """The source checkout holding this package (run from the repository or an editable install), if any."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() else None


def project_dir() -> Path:
    """The folder relative data paths of a profile (e.g. `storage.root: data/lake`) resolve against.

    `AGENTINSTRUCT_PROJECT_DIR` wins; otherwise the checkout this package lives in; otherwise (an installed package)
    the current directory, as for any command-line tool working on the folder it is run in.
    """
    configured = os.environ.get(PROJECT_DIR_ENV_VAR)
    if configured:
        return Path(configured).expanduser().resolve()
    return checkout_dir() or Path.cwd()


def declarative_dir(folder: str, env_var: str) -> Path:
    """`folder` (assets, resources or expectations) by the resolution order in the module docstring."""
    configured = os.environ.get(env_var)
    if configured:
        directory = Path(configured).expanduser().resolve()
        if not directory.is_dir():
            raise ConfigFileError(f"{env_var}={configured} is not a directory")
        return directory
    project = os.environ.get(PROJECT_DIR_ENV_VAR)
    checkout = checkout_dir()
    candidates = [
        Path(project).expanduser().resolve() / folder if project else None,
        checkout / folder if checkout else None,
    ]
    return next((path for path in candidates if path and path.is_dir()), BUNDLED_DIR / folder)


def catalogue_dir() -> Path:
    return declarative_dir("assets", "AGENTINSTRUCT_CATALOGUE_DIR")


def profiles_dir() -> Path:
    return declarative_dir("resources", "AGENTINSTRUCT_PROFILES_DIR")


def expectations_dir() -> Path:
    return declarative_dir("expectations", "AGENTINSTRUCT_EXPECTATIONS_DIR")


def sample_documents_dir() -> Path:
    return PACKAGE_DIR / "sample_documents"


def resolve(path: str | Path) -> Path:
    """A profile path: absolute as given, relative to the project folder otherwise."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else project_dir() / candidate
