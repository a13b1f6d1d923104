"""The Dagster resource giving assets an LLM engine for the active profile (and the stand-in if chosen)."""

from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from agentinstruct_dagster.config.profiles import Profile, load_profile
from agentinstruct_dagster.llm.engine import LLMEngine


class LLMResource(dg.ConfigurableResource):
    """Loads `resources/<profile>.yaml`; with `provider: standin` it serves the stand-in for the step."""

    profile: str

    _profile: Profile | None = PrivateAttr(default=None)
    _standin: Any = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._profile = load_profile(self.profile)
        if self._profile.llm.provider == "standin":
            from agentinstruct_dagster.standin.server import Fault, StandinConfig, StandinServer

            switches = self._profile.llm.standin
            faults = tuple(Fault(**fault.model_dump()) for fault in switches.faults)
            config = StandinConfig(latency_seconds=switches.latency_seconds, faults=faults)
            self._standin = StandinServer(config).start()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._standin is not None:
            self._standin.stop()
            self._standin = None

    @property
    def profile_settings(self) -> Profile:
        if self._profile is None:
            self._profile = load_profile(self.profile)
        return self._profile

    def engine(self, logger: Any = None) -> LLMEngine:
        base_url = self._standin.base_url if self._standin is not None else None
        return LLMEngine(self.profile_settings.llm, base_url=base_url, logger=logger)
