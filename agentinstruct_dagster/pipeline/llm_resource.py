"""The Dagster resource giving assets an LLM engine (and the stand-in, when the settings choose it), and
the run's summary of model calls once the run's last model stage is done."""

from collections import defaultdict
from typing import Any, get_args

import dagster as dg
from pydantic import Field, PrivateAttr

from agentinstruct_dagster.config.profiles import LLMSettings, ModelRole
from agentinstruct_dagster.llm.admission import Admission
from agentinstruct_dagster.llm.batch import Batcher
from agentinstruct_dagster.llm.engine import EngineUsage, LLMEngine, batch_transport
from agentinstruct_dagster.llm.ledger import CallLedger
from agentinstruct_dagster.pipeline.lake import Lake
from agentinstruct_dagster.storage.lease import lease_root

# A run tagged `agentinstruct/fresh_calls: true` ignores the ledger's cached answers and calls the model again.
FRESH_CALLS_TAG = "agentinstruct/fresh_calls"
# The run summary's totals are also run tags `agentinstruct/<count>` (calls_made, calls_cached, ...), shown on the
# run's page and searchable in the runs list.
SUMMARY_TAG_PREFIX = "agentinstruct/"
# The stand-in keeps its files and batches here (beside the lake's leases), so that the batches a killed run
# submitted can still be polled by the next run's stand-in.
STANDIN_STATE_FOLDER = "standin_state"


class LLMResource(dg.ConfigurableResource):
    """The model endpoint, models and limits (a profile's `llm` section), the API key, and the lake whose call
    ledger records and caches every call. All engines it hands out during a run share one admission state
    (window and rate budgets); with `provider: standin` it serves the stand-in for the run."""

    profile: str = Field(description="Name of the profile the settings come from; part of every call's cache key.")
    settings: LLMSettings
    api_key: str | None = Field(
        None, description="The API key (an EnvVar; never stored). Unset: the key-less stand-in or local server."
    )
    lake: Lake

    _admission: Admission | None = PrivateAttr(default=None)
    _standin: Any = PrivateAttr(default=None)
    _fresh_calls: bool = PrivateAttr(default=False)
    _ledgers: dict[str, CallLedger] = PrivateAttr(default_factory=dict)
    _batchers: dict[str, Batcher] = PrivateAttr(default_factory=dict)
    _engines: list[LLMEngine] = PrivateAttr(default_factory=list)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._admission = Admission.for_settings(self.settings)
        self._ledgers = {}
        self._batchers = {}
        self._engines = []
        run = context.dagster_run
        self._fresh_calls = run is not None and run.tags.get(FRESH_CALLS_TAG) == "true"
        if self.settings.provider == "standin":
            from agentinstruct_dagster.standin.server import Fault, StandinConfig, StandinServer

            switches = self.settings.standin
            faults = tuple(Fault(**fault.model_dump()) for fault in switches.faults)
            state_dir = str(lease_root(self.lake.root) / STANDIN_STATE_FOLDER) if self._batch_mode else None
            config = StandinConfig(**switches.model_dump(exclude={"faults"}), faults=faults, state_dir=state_dir)
            self._standin = StandinServer(config).start()

    @property
    def _batch_mode(self) -> bool:
        """Whether any role's calls go through the Batches API."""
        roles: tuple[ModelRole, ...] = get_args(ModelRole)
        return any(self.settings.mode_for(role) == "batch" for role in roles)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """The run is over (runs execute in one process, so this follows its last model stage): summarize its
        calls, then stop the stand-in."""
        if self._engines:
            self._report_summary(context)
            self._engines = []
        if self._standin is not None:
            self._standin.stop()
            self._standin = None

    def _report_summary(self, context: dg.InitResourceContext) -> None:
        """One INFO event with the run's totals and each stage's, and the totals as run tags."""
        total, per_stage = run_usage(self._engines)
        stages = "; ".join(f"{stage}: {usage.counts_text()}" for stage, usage in per_stage.items())
        context.log.info(f"run summary: {total.counts_text()}; per stage (all skills): {stages}")
        run = context.dagster_run
        if context.instance is not None and run is not None:
            tags = {f"{SUMMARY_TAG_PREFIX}{name}": str(value) for name, value in total.counts().items()}
            context.instance.add_run_tags(run.run_id, tags)

    def _ledger(self, batch: str) -> CallLedger:
        """The run's ledger of the batch, read once and shared by every engine of the run."""
        if batch not in self._ledgers:
            self._ledgers[batch] = self.lake.call_ledger(batch, "llm")
        return self._ledgers[batch]

    def _batcher(self, batch: str | None, ledger: CallLedger | None, base_url: str | None, scope: str) -> Batcher:
        """The run's batch transport of the batch, shared by every engine of the run (so parallel stages fill
        the same files); it resumes the batches the ledger saw submitted and not collected."""
        key = batch or ""
        if key not in self._batchers:
            settings = self.settings
            self._batchers[key] = batch_transport(
                settings,
                base_url or settings.base_url,
                self.api_key or settings.api_key(),
                ledger=ledger,
                scope=scope,
                fresh_calls=self._fresh_calls,
                metadata={"profile": self.profile, "lake_batch": key},
            )
        return self._batchers[key]

    def engine(self, logger: Any = None, *, batch: str | None = None, asset: str = "llm") -> LLMEngine:
        """An engine for one asset; with a batch, calls go through (and are cached in) the call ledger."""
        settings = self.settings
        base_url = self._standin.base_url if self._standin is not None else None
        ledger = None if batch is None else self._ledger(batch)
        # The stand-in's port changes every run, so its URL is not part of what identifies a call.
        endpoint = "" if settings.provider == "standin" else settings.base_url or ""
        scope = f"{self.profile}|{settings.provider}|{endpoint}"
        engine = LLMEngine(
            settings,
            base_url=base_url,
            api_key=self.api_key,
            logger=logger,
            ledger=ledger,
            cache_scope=scope,
            fresh_calls=self._fresh_calls,
            label=asset,
            admission=self._admission,
            batcher=self._batcher(batch, ledger, base_url, scope) if self._batch_mode else None,
        )
        self._engines.append(engine)
        return engine


def run_usage(engines: list[LLMEngine]) -> tuple[EngineUsage, dict[str, EngineUsage]]:
    """The engines' usage in all and per stage (the last part of an engine's asset label, over all skills)."""
    per_stage: defaultdict[str, EngineUsage] = defaultdict(EngineUsage)
    for engine in engines:
        stage = engine.label.rsplit("/", 1)[-1]
        per_stage[stage] = per_stage[stage] + engine.usage
    return sum(per_stage.values(), EngineUsage()), dict(per_stage)
