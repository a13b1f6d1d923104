"""Shared fixtures: an isolated project (profile, inbox, lake, Dagster instance) in a temp dir."""

from __future__ import annotations

import logging
import multiprocessing
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from queue import Queue

import boto3
import dagster as dg
import pytest
import yaml
from botocore.client import BaseClient

from agentinstruct_dagster.config.profiles import Profile, load_profile
from agentinstruct_dagster.project import project_dir

PASSAGES = [
    "Lighthouses guided ships along dangerous coasts for centuries. Early towers burned wood or coal, "
    "and later ones used oil lamps with reflectors. In 1822 Augustin Fresnel designed a lens that bent "
    "light into a strong horizontal beam, so a small flame could be seen more than twenty miles away.",
    "Composting turns kitchen scraps and garden waste into humus. A good pile mixes green material, rich "
    "in nitrogen, with brown material, rich in carbon, at roughly one part green to three parts brown. "
    "Turning the pile every week lets air in, and the microbes that need oxygen break it down faster.",
    "Tides rise and fall because the Moon's gravity pulls on the oceans more strongly on the near side of "
    "the Earth than on the far side. Twice a month, when Sun and Moon line up, spring tides are highest; "
    "when they stand at right angles, neap tides have the smallest range.",
]

RC = "reading_comprehension"
# The table keys of a one-skill (reading comprehension) pipeline, in order.
STAGE_TABLES = [
    ["raw_documents"],
    [RC, "transformed_texts"],
    [RC, "seed_instructions"],
    [RC, "refined_instructions"],
    [RC, "judged_instructions"],
    ["training_set"],
]


@dataclass
class Project:
    """A throwaway project: its profile, inbox, lake and Dagster instance."""

    profile: Profile
    instance: dg.DagsterInstance

    @property
    def inbox(self) -> Path:
        return self.profile.storage.inbox_path

    @property
    def lake(self) -> Path:
        return self.profile.storage.root_path

    def add_batch(self, name: str, texts: list[str] | None = None) -> Path:
        folder = self.inbox / name
        folder.mkdir(parents=True, exist_ok=True)
        for index, text in enumerate(texts if texts is not None else PASSAGES[:2]):
            (folder / f"doc{index}.txt").write_text(text, encoding="utf-8")
        return folder


def write_profile(directory: Path, tmp_path: Path, **overrides: object) -> None:
    data = yaml.safe_load((project_dir() / "resources" / "standin.yaml").read_text())
    data["name"] = "test"
    data["storage"] = {"root": str(tmp_path / "lake"), "inbox": str(tmp_path / "inbox")}
    data["schedule"] = {"inbox_settle_seconds": 0}
    data["skills"] = ["reading_comprehension"]  # keeps most tests to one skill; one test runs them all
    data.update(overrides)
    (directory / "test.yaml").write_text(yaml.safe_dump(data))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    with isolated_project(tmp_path, monkeypatch) as made:
        yield made


@contextmanager
def isolated_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: object) -> Iterator[Project]:
    """The test profile (with `overrides`) as the active one, and a Dagster instance, under `tmp_path`."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    write_profile(profiles, tmp_path, **overrides)
    monkeypatch.setenv("AGENTINSTRUCT_PROFILES_DIR", str(profiles))
    monkeypatch.setenv("AGENTINSTRUCT_PROFILE", "test")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        yield Project(profile=load_profile(), instance=instance)


REGION = "us-east-1"


def _serve(ports: Queue[int], stop: Event) -> None:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    ports.put(server.get_host_and_port()[1])
    stop.wait()
    server.stop()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, in a process of its own: deltalake holds the GIL in some calls
    (e.g. `is_deltatable`), so a server thread in the test's process could not answer them."""
    context = multiprocessing.get_context("spawn")
    ports, stop = context.Queue(), context.Event()
    server = context.Process(target=_serve, args=(ports, stop), daemon=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{ports.get(timeout=120)}"
    finally:
        stop.set()
        server.join(10)
        if server.is_alive():
            server.kill()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> BaseClient:
    """Credentials and endpoint in the environment, as in production; a client to set up and inspect buckets."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name=REGION)


@pytest.fixture
def bucket(s3: BaseClient) -> str:
    name = f"lake-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def upload(s3: BaseClient, bucket: str, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())
