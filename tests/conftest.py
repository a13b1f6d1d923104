"""Shared fixtures: an isolated project (profile, inbox, lake, Dagster instance) in a temp dir."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

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
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    write_profile(profiles, tmp_path)
    monkeypatch.setenv("AGENTINSTRUCT_PROFILES_DIR", str(profiles))
    monkeypatch.setenv("AGENTINSTRUCT_PROFILE", "test")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        yield Project(profile=load_profile(), instance=instance)
