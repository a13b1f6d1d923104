"""The built wheel carries the catalogue, profiles and suites, and an override folder wins over them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentinstruct_dagster.project import checkout_dir

BUILD_INPUTS = ["pyproject.toml", "README.md", "agentinstruct_dagster", "assets", "resources", "expectations"]

# Run by the installed package from an empty folder: what it loads from its bundled copies.
PROBE = """
import json
import agentinstruct_dagster
from agentinstruct_dagster.config.catalogue import load_catalogue
from agentinstruct_dagster.config.curation import load_curation
from agentinstruct_dagster.config.profiles import load_profile
from agentinstruct_dagster.project import catalogue_dir, profiles_dir
from agentinstruct_dagster.quality.gx_suites import load_suite_json, suite_path_for

suite = suite_path_for("seed_instructions")
print(json.dumps({
    "package": agentinstruct_dagster.__file__,
    "catalogue_dir": str(catalogue_dir()),
    "profiles_dir": str(profiles_dir()),
    "skills": sorted(load_catalogue()),
    "profile": load_profile("standin").name,
    "suite": str(suite),
    "suite_expectations": len(load_suite_json(suite)["expectations"]),
    "benchmarks": sorted(path.name for path in load_curation().decontamination.benchmarks_path.iterdir()),
}))
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the checkout (so no build/ lands in it), installed into a bare folder."""
    root = tmp_path_factory.mktemp("packaging")
    checkout = checkout_dir()
    assert checkout is not None, "the tests run from the source checkout"
    (root / "src").mkdir()
    for name in BUILD_INPUTS:
        source, target = checkout / name, root / "src" / name
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", root / "wheels", "."], cwd=root / "src", check=True
    )
    (wheel,) = (root / "wheels").glob("agentinstruct_dagster-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", root / "site", wheel], check=True)
    return root / "site"


def run_probe(site: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run PROBE in `cwd` with the installed package first on the path and no AGENTINSTRUCT_* variables but `env`."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("AGENTINSTRUCT_")}
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(site), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def probe(site: Path, cwd: Path, **env: str) -> dict:
    result = run_probe(site, cwd, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("decoy", [False, True], ids=["empty_cwd", "cwd_with_assets"])
def test_installed_package_loads_its_bundled_folders(site: Path, tmp_path: Path, decoy: bool) -> None:
    if decoy:  # a cwd that looks like a project is not one: only the variables point at a project
        (tmp_path / "cwd" / "assets").mkdir(parents=True)
        shutil.copy2(checkout_dir() / "assets" / "fermi.yaml", tmp_path / "cwd" / "assets")
    loaded = probe(site, tmp_path / "cwd")
    bundled = site / "agentinstruct_dagster" / "_bundled"
    assert Path(loaded["package"]).is_relative_to(site)
    assert Path(loaded["catalogue_dir"]) == bundled / "assets"
    assert Path(loaded["profiles_dir"]) == bundled / "resources"
    assert len(loaded["skills"]) == 17
    assert loaded["profile"] == "standin"
    assert Path(loaded["suite"]) == bundled / "expectations" / "seed_instructions.json"
    assert loaded["suite_expectations"] > 0
    assert "sample_benchmark.jsonl" in loaded["benchmarks"]
    assert not (bundled / "assets").is_symlink()


def test_catalogue_override_folder_wins(site: Path, tmp_path: Path) -> None:
    catalogue = tmp_path / "my_catalogue"
    catalogue.mkdir()
    shutil.copy2(checkout_dir() / "assets" / "fermi.yaml", catalogue)
    loaded = probe(site, tmp_path / "cwd", AGENTINSTRUCT_CATALOGUE_DIR=str(catalogue))
    assert loaded["skills"] == ["fermi"]
    assert Path(loaded["catalogue_dir"]) == catalogue
    assert Path(loaded["profiles_dir"]) == site / "agentinstruct_dagster" / "_bundled" / "resources"


def test_a_missing_override_folder_is_a_clear_error(site: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = run_probe(site, tmp_path / "cwd", AGENTINSTRUCT_PROFILES_DIR=str(missing))
    assert result.returncode != 0
    assert f"AGENTINSTRUCT_PROFILES_DIR={missing} is not a directory" in result.stderr
