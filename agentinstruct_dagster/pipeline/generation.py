"""The generation resource: the seed of every deterministic choice, how documents are read, the code sandbox."""

import dagster as dg
from pydantic import Field

from agentinstruct_dagster.config.profiles import IngestSettings, SandboxSettings


class Generation(dg.ConfigurableResource):
    """A profile's `seed`, `ingest` and `sandbox` sections."""

    seed: int = Field(0, description="Seed of every deterministic choice (agents, types, goals).")
    ingest: IngestSettings = IngestSettings()
    sandbox: SandboxSettings = SandboxSettings()
