"""The Dagster resource giving assets an LLM engine for the active profile (and the stand-in if chosen)."""

from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from agentinstruct_dagster.config.profiles import Profile, load_profile
from agentinstruct_dagster.llm.admission import Admission
from agentinstruct_dagster.llm.engine import LLMEngine
from agentinstruct_dagster.llm.ledger import CallLedger
from agentinstruct_dagster.storage.paths import ledger_path


class LLMResource(dg.ConfigurableResource):
    """Loads `resources/<profile>.yaml`; with `provider: standin` it serves the stand-in for the run.

    All engines it hands out during a run share one admission state (window and rate budgets).
    """

    profile: str
    fresh_calls: bool = False  # true: ignore the ledger's cached answers and call the model again

    _profile: Profile | None = PrivateAttr(default=None)
    _standin: Any = PrivateAttr(default=None)
    _admission: Admission | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._profile = load_profile(self.profile)
        self._admission = Admission.for_settings(self._profile.llm)
        if self._profile.llm.provider == "standin":
            from agentinstruct_dagster.standin.server import Fault, StandinConfig, StandinServer

            switches = self._profile.llm.standin
            faults = tuple(Fault(**fault.model_dump()) for fault in switches.faults)
            config = StandinConfig(**switches.model_dump(exclude={"faults"}), faults=faults)
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

    def engine(self, logger: Any = None, *, batch: str | None = None, asset: str = "llm") -> LLMEngine:
        """An engine for one asset; with a batch, calls go through (and are cached in) the call ledger."""
        profile = self.profile_settings
        base_url = self._standin.base_url if self._standin is not None else None
        ledger = None if batch is None else CallLedger(ledger_path(profile.storage.root_path), batch, asset)
        # The stand-in's port changes every run, so its URL is not part of what identifies a call.
        endpoint = "" if profile.llm.provider == "standin" else profile.llm.base_url or ""
        return LLMEngine(
            profile.llm,
            base_url=base_url,
            logger=logger,
            ledger=ledger,
            cache_scope=f"{profile.name}|{profile.llm.provider}|{endpoint}",
            fresh_calls=self.fresh_calls,
            label=asset,
            admission=self._admission,
        )
