"""The Kubernetes example (resources/kubernetes/, profile `s3`) checked offline: the instance config against Dagster's
and dagster-k8s's own schemas, the Helm values against the code and the instance, the profile by loading it and the
code server's Definitions by loading them as the chart starts them. What needs a cluster is not covered here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes.config_class import class_from_code_pointer
from dagster_k8s import K8sRunLauncher

from agentinstruct_dagster.config.profiles import PROFILE_ENV_VAR, load_profile
from agentinstruct_dagster.definitions import build_resources
from agentinstruct_dagster.project import profiles_dir, project_dir
from agentinstruct_dagster.runs import ONE_RUN_PER_BATCH, instance_settings
from agentinstruct_dagster.storage.location import is_object_store

KUBERNETES_DIR = profiles_dir() / "kubernetes"
CONFIGURABLE_SECTIONS = ("run_launcher", "run_coordinator")


def example_instance() -> dict[str, Any]:
    return yaml.safe_load((KUBERNETES_DIR / "dagster.yaml").read_text())


def helm_values() -> dict[str, Any]:
    return yaml.safe_load((KUBERNETES_DIR / "values.yaml").read_text())


def code_deployment(values: dict[str, Any]) -> dict[str, Any]:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def deployment_env(deployment: dict[str, Any]) -> dict[str, str]:
    return {variable["name"]: variable["value"] for variable in deployment["env"]}


def launcher_env(instance: dict[str, Any]) -> dict[str, str]:
    return dict(variable.split("=", 1) for variable in instance["run_launcher"]["config"]["env_vars"])


def snake_case(camel: dict[str, Any]) -> dict[str, Any]:
    return {re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(): value for key, value in camel.items()}


def test_instance_config_validates_against_dagster_and_its_classes() -> None:
    config, _ = dagster_instance_config(str(KUBERNETES_DIR))
    for section in CONFIGURABLE_SECTIONS:
        entry = config[section]
        configurable = class_from_code_pointer(entry["module"], entry["class"])
        result = validate_config(configurable.config_type(), entry.get("config", {}))
        assert result.success, f"{section}: {[error.message for error in result.errors]}"
    assert class_from_code_pointer(config["run_launcher"]["module"], config["run_launcher"]["class"]) is K8sRunLauncher
    assert "postgres" in config["storage"]


def test_instance_config_holds_the_settings_the_cli_writes() -> None:
    """`agentinstruct` adds nothing to it (so it leaves a mounted ConfigMap alone), and the `llm` pool's default
    limit is the profile's parallel_runs."""
    instance = example_instance()
    assert instance_settings(instance) == instance
    assert instance["concurrency"]["runs"]["tag_concurrency_limits"] == [ONE_RUN_PER_BATCH]
    parallel_runs = load_profile(launcher_env(instance)[PROFILE_ENV_VAR]).llm.parallel_runs
    assert instance["concurrency"]["pools"]["default_limit"] == parallel_runs


def test_s3_profile_keeps_lake_and_inbox_on_the_object_store(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load_profile("s3")
    assert is_object_store(profile.storage.root) and is_object_store(profile.storage.inbox)
    assert profile.llm.parallel_runs == 4
    monkeypatch.delenv(profile.llm.api_key_env, raising=False)
    resources = build_resources(profile)  # the key is read when a run starts, not when the code server loads
    assert resources["lake"].options["conditional_put"] == "etag"


def test_helm_values_run_the_definitions_with_the_instance_settings() -> None:
    values, instance = helm_values(), example_instance()
    deployment = code_deployment(values)
    module = tomllib.loads((project_dir() / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", module]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert deployment_env(deployment) == launcher_env(instance)
    assert deployment["envSecrets"] == [{"name": name} for name in instance["run_launcher"]["config"]["env_secrets"]]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    daemon = values["dagsterDaemon"]
    assert daemon["enabled"] and daemon["runCoordinator"] == {"enabled": True, "type": "QueuedRunCoordinator"}
    assert snake_case(daemon["runMonitoring"]) == instance["run_monitoring"]
    concurrency = values["concurrency"]
    assert concurrency["enabled"]
    assert snake_case(concurrency["pools"]) == instance["concurrency"]["pools"]
    assert concurrency["runs"]["tagConcurrencyLimits"] == instance["concurrency"]["runs"]["tag_concurrency_limits"]
    assert values["telemetry"] == instance["telemetry"]


def test_code_server_loads_the_definitions_as_deployed(tmp_path: Path) -> None:
    """What the chart's code server runs, with its environment and no key or cloud credentials."""
    deployment = code_deployment(helm_values())
    secret_free = {key: value for key, value in os.environ.items() if not key.startswith(("OPENAI_", "AWS_"))}
    environment = {**secret_free, **deployment_env(deployment), "DAGSTER_HOME": str(tmp_path)}
    dagster = Path(sys.executable).parent / "dagster"
    command = [str(dagster), "definitions", "validate", *deployment["dagsterApiGrpcArgs"]]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "All code locations passed validation" in result.stdout


def test_image_installs_the_locked_kubernetes_extra() -> None:
    pyproject = tomllib.loads((project_dir() / "pyproject.toml").read_text())
    locked = set((project_dir() / "requirements.lock").read_text().split())
    assert set(pyproject["project"]["optional-dependencies"]["k8s"]) <= locked
    dockerfile = (KUBERNETES_DIR / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -r requirements.lock" in dockerfile
    copied = [part for line in dockerfile.splitlines() if line.startswith("COPY ") for part in line.split()[1:-1]]
    assert copied and all((project_dir() / part).exists() for part in copied)
