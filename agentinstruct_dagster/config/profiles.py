"""Resource profiles: `resources/<name>.yaml` says which LLM endpoint, models, limits and storage a run uses.

Secrets never live in a profile: it names the environment variable that holds the API key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, cast, get_args

import dagster as dg
from pydantic import ConfigDict, Field, field_validator

from agentinstruct_dagster.config.errors import ConfigFileError, load_yaml_model
from agentinstruct_dagster.project import profiles_dir, resolve
from agentinstruct_dagster.standin.junk import StandinJudge, StandinJunk
from agentinstruct_dagster.storage.location import Location, as_location

DEFAULT_PROFILE = "standin"
PROFILE_ENV_VAR = "AGENTINSTRUCT_PROFILE"

SchemaDialect = Literal["full", "portable"]
ModelRole = Literal["transformation", "seed", "suggester", "editor", "support", "judge"]
# Request body keys the engine sets itself: `extra_body` may not override them.
ENGINE_BODY_KEYS = frozenset({"model", "messages", "response_format", "max_tokens", "temperature", "top_p", "seed"})


class StrictModel(dg.Config):
    """A profile section: unknown keys are refused, values are frozen, and as a Dagster `Config` it can be a
    field of a resource (the launchpad shows and overrides it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StandinFault(StrictModel):
    """An injected fault: the first `first_attempts` attempts at each request get it, and with `rate` > 0
    every later attempt with that probability."""

    kind: str
    first_attempts: int = Field(1, ge=0)
    rate: float = Field(0.0, ge=0, le=1)
    retry_after_seconds: float | None = Field(None, ge=0)
    delay_seconds: float = Field(5.0, ge=0)


class StandinSettings(StrictModel):
    """Switches of the offline stand-in server, used when `provider: standin`."""

    latency_seconds: float = Field(0.0, ge=0)
    latency_sigma: float = Field(0.0, ge=0, description="> 0: lognormal latency with median latency_seconds.")
    max_in_flight: int | None = Field(None, ge=1, description="Provider-like cap, answered with 429.")
    cap_retry_after_seconds: float = Field(0.1, ge=0)
    faults: list[StandinFault] = Field(default_factory=list)
    junk: StandinJunk = Field(
        "none", description="Schema-valid junk in every free string (standin/junk.py), for the substance rules."
    )
    judge: StandinJudge = Field(
        "high", description="Scores of `JudgeVerdict` answers: every integer at its maximum, minimum, or hashed."
    )
    batch_completion_seconds: float = Field(0.0, ge=0, description="Batches API: create to completed.")
    batch_failure_rate: float = Field(0.0, ge=0, le=1, description="Share of batched requests failing with a 500.")
    batch_expire_seconds: float | None = Field(None, ge=0, description="A batch not done by then expires (24 h).")
    batch_never_finishes: bool = Field(False, description="Batches stay in progress until cancelled or expired.")
    batch_max_requests: int = Field(50_000, ge=1, description="Requests per batch input file.")
    batch_max_file_bytes: int = Field(200 * 1024 * 1024, ge=1, description="Bytes per batch input file.")
    batch_enqueued_token_limit: int | None = Field(
        None, ge=1, description="Prompt tokens of a model's unfinished batches; over it a batch fails."
    )


class Price(StrictModel):
    input_per_million: float = Field(ge=0, description="USD per million prompt tokens.")
    output_per_million: float = Field(ge=0, description="USD per million completion tokens.")


class Sampling(StrictModel):
    """Sampling parameters of one role's calls; unset ones fall back to the `default` role's."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, description="Sampling seed; the one fresh-seed retry of a request uses seed + 1.")
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="Provider extras added to the request body, e.g. llama.cpp/vLLM `top_k`, `min_p`, "
        "`repeat_penalty` / `repetition_penalty`.",
    )

    @field_validator("extra_body")
    @classmethod
    def _leaves_engine_keys_alone(cls, extra_body: dict[str, Any]) -> dict[str, Any]:
        if clashes := sorted(ENGINE_BODY_KEYS & set(extra_body)):
            raise ValueError(f"must not set {', '.join(clashes)}: the engine sends those itself")
        return extra_body

    def reseeded(self) -> Sampling:
        """The same parameters with a fresh, deterministic seed, for the one retry of a degenerate answer."""
        return self.model_copy(update={"seed": (self.seed or 0) + 1})


CallMode = Literal["online", "batch"]


class BatchSettings(StrictModel):
    """How model calls in `batch` mode go through the provider's Files and Batches API (llm/batch.py)."""

    collect_seconds: float = Field(
        2.0, ge=0, description="Quiet time after the last new request before the pending ones are submitted."
    )
    poll_seconds: float = Field(30.0, gt=0, description="How often open batches are polled.")
    max_requests_per_file: int = Field(50_000, ge=1, description="Requests per batch input file (OpenAI: 50,000).")
    max_file_bytes: int = Field(200 * 1024 * 1024, ge=1, description="Bytes per batch input file (OpenAI: 200 MB).")
    max_enqueued_tokens: int | None = Field(
        None,
        ge=1,
        description="Prompt tokens a model's unfinished batches may hold (the provider's enqueued token limit), "
        "divided among `parallel_runs`; a file that would exceed it waits until earlier batches end.",
    )
    discount: float = Field(
        0.5, ge=0, le=1, description="Batch price discount: batch calls cost prices × (1 - discount)."
    )
    retry: CallMode = Field(
        "batch", description="Where requests missing from an ended batch are asked again: a next batch or online."
    )
    max_submissions: int = Field(
        3, ge=1, le=50, description="Submissions of one request before it fails with its last failure class."
    )


class LLMSettings(StrictModel):
    provider: Literal["standin", "openai", "azure", "openai_compatible"]
    base_url: str | None = None
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key.")
    api_version: str | None = Field(None, description="Azure OpenAI API version.")
    models: dict[str, str] = Field(description="Model per agent role; `default` is required.")
    context_tokens: int = Field(8192, gt=256)
    max_output_tokens: int = Field(1024, gt=0)
    schema_dialect: SchemaDialect = Field(
        "full",
        description="`portable` sends only the JSON-schema keywords every strict-mode provider accepts (OpenAI, "
        "Azure) and states length/count/format limits in descriptions; `full` sends the whole schema (vLLM, "
        "llama.cpp, the stand-in).",
    )
    temperature: float = Field(0.7, ge=0, le=2, description="Temperature of roles `sampling` gives none.")
    sampling: dict[str, Sampling] = Field(
        default_factory=dict,
        description="Sampling per role (`default` or a model role); a role falls back to `default`, then to "
        "`temperature`.",
    )
    max_concurrency: int = Field(16, ge=1, le=4096, description="Calls in flight at once, across parallel runs.")
    parallel_runs: int = Field(
        1,
        ge=1,
        le=256,
        description="Runs (batches) whose model stages may call the provider at once: the limit of the Dagster "
        "pool `llm`. Each gets an equal share of max_concurrency, requests_per_minute and tokens_per_minute, so "
        "together they stay within one provider budget.",
    )
    timeout_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(6, ge=1, le=50)
    backoff_base_seconds: float = Field(0.5, ge=0)
    backoff_max_seconds: float = Field(30.0, ge=0)
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    max_failure_rate: float = Field(
        0.5, ge=0, le=1, description="A stage whose share of failed calls is higher fails with a clear message."
    )
    progress_seconds: float = Field(10.0, gt=0, description="How often long stages log their progress.")
    prices: dict[str, Price] = Field(default_factory=dict, description="Price per model name.")
    standin: StandinSettings = StandinSettings()
    mode: CallMode = Field(
        "online", description="`batch`: model calls go through the provider's Batches API (cheaper, slower)."
    )
    # Plain strings (Dagster config has no literals inside a dict), checked by `_known_modes`.
    modes: dict[str, str] = Field(
        default_factory=dict, description="Call mode per model role, over `mode` (e.g. `judge: batch`)."
    )
    batch: BatchSettings = BatchSettings()

    @field_validator("sampling", "modes")
    @classmethod
    def _known_roles(cls, per_role: dict[str, Any]) -> dict[str, Any]:
        if unknown := sorted(set(per_role) - {"default", *get_args(ModelRole)}):
            raise ValueError(f"unknown role(s) {unknown}; roles: default, {', '.join(get_args(ModelRole))}")
        return per_role

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, modes: dict[str, str]) -> dict[str, str]:
        if unknown := sorted({mode for mode in modes.values()} - set(get_args(CallMode))):
            raise ValueError(f"unknown mode(s) {unknown}; modes: {', '.join(get_args(CallMode))}")
        return modes

    @field_validator("models")
    @classmethod
    def _has_default(cls, models: dict[str, str]) -> dict[str, str]:
        if "default" not in models:
            raise ValueError("must name a `default` model")
        return models

    def model_for(self, role: ModelRole) -> str:
        return self.models.get(role, self.models["default"])

    def mode_for(self, role: ModelRole) -> CallMode:
        """A role's call mode: its own, else `default`'s, else `mode`."""
        return cast(CallMode, self.modes.get(role, self.modes.get("default", self.mode)))

    def sampling_for(self, role: ModelRole) -> Sampling:
        """A role's effective sampling: its own fields over `default`'s over `temperature`; extras merged."""
        fields: dict[str, Any] = {"temperature": self.temperature}
        extra_body: dict[str, Any] = {}
        for entry in (self.sampling.get("default"), self.sampling.get(role)):
            if entry is not None:
                fields.update(entry.model_dump(exclude_none=True, exclude={"extra_body"}))
                extra_body.update(entry.extra_body)
        return Sampling(**fields, extra_body=extra_body)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, *, batched: bool = False) -> float:
        """USD of the tokens at the model's price; batched calls get the batch discount."""
        price = self.prices.get(model)
        if price is None:
            return 0.0
        factor = 1 - self.batch.discount if batched else 1.0
        return factor * (prompt_tokens * price.input_per_million + completion_tokens * price.output_per_million) / 1e6

    def api_key(self) -> str:
        """The key from the environment; the stand-in and key-less local servers need none."""
        if self.provider == "standin" or (self.provider == "openai_compatible" and not self.api_key_env):
            return "no-key-needed"
        if not self.api_key_env:
            raise ValueError(f"profile provider {self.provider!r} needs `llm.api_key_env`")
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ValueError(f"environment variable {self.api_key_env} is not set (it should hold the API key)")
        return key


class StorageSettings(StrictModel):
    """Where the lake and the inbox live: local paths (relative ones below the project folder) or object-store
    URIs (`s3://bucket/lake`, `gs://`, `az://`, `abfss://`, `file://`); credentials come from the environment."""

    root: str = "data/lake"
    inbox: str = "data/inbox"
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="Object store options (e.g. aws_endpoint_url, aws_region) over those of the environment; "
        "no credentials (they are shown with the run's resources).",
    )

    @field_validator("root", "inbox")
    @classmethod
    def _known_location(cls, value: str) -> str:
        as_location(value)  # ValueError for an unsupported URI
        return value

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, options: dict[str, str]) -> dict[str, str]:
        secret = sorted(key for key in options if any(marker in key.lower() for marker in CREDENTIAL_MARKERS))
        if secret:
            raise ValueError(f"{secret} look like credentials: set them in the environment, not in the profile")
        return options

    @property
    def root_path(self) -> Location:
        return _storage_location(self.root)

    @property
    def inbox_path(self) -> Location:
        return _storage_location(self.inbox)


# Parts of storage option keys that name credentials (aws_secret_access_key, azure_storage_account_key, ...).
CREDENTIAL_MARKERS = ("secret", "token", "password", "access_key", "account_key", "sas", "credential")


def _storage_location(text: str) -> Location:
    """A local path resolved against the project folder; an object-store URI unchanged."""
    location = as_location(text)
    return resolve(location) if isinstance(location, Path) else location


class IngestSettings(StrictModel):
    max_document_bytes: int = Field(2_000_000, gt=0)
    chunk_fraction_of_context: float = Field(
        0.5, gt=0, le=0.9, description="Share of the model context one document chunk may fill."
    )
    chunk_overlap_chars: int = Field(200, ge=0)
    text_field: str = Field(
        "text", min_length=1, description="Field of a JSONL record, or column of a parquet file, holding the text."
    )
    title_field: str = Field(
        "title", min_length=1, description="Field or column holding a record's title (the file's stem when absent)."
    )
    source_field: str = Field(
        "source", min_length=1, description="Field or column naming where a record comes from (a URL...), if any."
    )


class SandboxSettings(StrictModel):
    """Limits of the bubblewrap sandbox that runs model-written code (coding skills)."""

    timeout_seconds: float = Field(10.0, gt=0, le=600)
    memory_mb: int = Field(512, ge=64)
    output_chars: int = Field(4000, ge=100, description="The tail of stdout and of stderr kept in the record.")
    max_output_bytes: int = Field(1024 * 1024, ge=1024, description="More output than this kills the run.")


class ScheduleSettings(StrictModel):
    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    sensor_interval_seconds: int = Field(30, ge=1)
    inbox_settle_seconds: float = Field(10.0, ge=0, description="A folder must be unchanged this long.")


class Profile(StrictModel):
    name: str
    description: str = ""
    llm: LLMSettings
    storage: StorageSettings = StorageSettings()
    ingest: IngestSettings = IngestSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    sandbox: SandboxSettings = SandboxSettings()
    seed: int = Field(0, description="Seed of every deterministic choice (agents, types).")
    skills: list[str] | None = Field(None, description="Skills to run; all catalogue skills when unset.")


def active_profile_name() -> str:
    return os.environ.get(PROFILE_ENV_VAR) or DEFAULT_PROFILE


def load_profile(name: str | None = None) -> Profile:
    """Load `resources/<name>.yaml` (or a path to a YAML file)."""
    name = name or active_profile_name()
    path = Path(name) if name.endswith((".yaml", ".yml")) else profiles_dir() / f"{name}.yaml"
    profile = load_yaml_model(path, Profile, what="profile")
    if profile.name != path.stem:
        raise ConfigFileError(f"{path}: field `name` is {profile.name!r} but the file is named {path.name}")
    return profile
