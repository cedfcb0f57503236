"""``planner.toml`` + ``PLANNER_<SECTION>__<FIELD>`` environment variables, as one typed object.

Only ``flows/`` reads settings; it hands plain values to the stage functions. Environment
variables win over the file, the file over the defaults. Secrets never live here: a relay
candidate names the environment variable that holds its key (``api_key_env``) and
:meth:`CandidateSettings.api_key` reads it at the moment a header is built.

This module is long because it is the one typed object for the whole of ``planner.toml``: every
section, with its descriptions and checks, in one place.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from planner.errors import ConfigError

DEFAULT_CONFIG = Path("planner.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WarehouseSettings(_Section):
    path: Path = Field(Path("planner.duckdb"), description="The DuckDB warehouse file.")


class PriceSettings(_Section):
    price_in: float = Field(ge=0, description="USD per 1M input (prompt) tokens.")
    price_out: float = Field(ge=0, description="USD per 1M output (completion) tokens.")


class BaselineSettings(_Section):
    model: str = Field("gpt-4.1", description="The production model traffic goes to today.")
    price_in: float | None = Field(
        None, ge=0, description="USD per 1M input tokens; else the price table."
    )
    price_out: float | None = Field(
        None, ge=0, description="USD per 1M output tokens; else the price table."
    )
    base_url: str | None = Field(
        None,
        description=(
            "Production's OpenAI-compatible endpoint, used only to re-ask production a few "
            "sampled requests (reask_per_type) for its ceiling. Off when unset."
        ),
    )
    api_key_env: str | None = Field(
        None, description="The environment variable holding production's API key (re-asks)."
    )
    reask_per_type: int = Field(
        0, ge=0, description="Sampled requests per task type re-asked of production (0: off)."
    )
    reask_max_cost_usd: float = Field(
        1.0, ge=0, description="Budget cap of the re-asks of one run, USD."
    )
    timeout_s: float = Field(60.0, gt=0, description="Read timeout of a re-ask, seconds.")

    _url = field_validator("base_url")(lambda cls, v: _check_url(v))
    _key = field_validator("api_key_env")(lambda cls, v: _check_env_name(v))


def _check_url(value: str | None) -> str | None:
    """A URL is copied into routing configs and logs: it must not carry a secret."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL such as https://relay.example/v1")
    if "@" in parts.netloc or parts.query:
        raise ValueError(
            "must not carry credentials or a query string; name the key's environment "
            "variable in api_key_env instead"
        )
    return value.rstrip("/")


def _check_env_name(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        # never echo the value: it may be the key itself, pasted by mistake
        raise ValueError("must be the NAME of an environment variable (letters, digits, _)")
    return value


class CandidateSettings(_Section):
    name: str = Field(min_length=1, description="Unique name used in reports and routing configs.")
    description: str | None = Field(
        None, description="What this candidate is, in a sentence (the plan page says it)."
    )
    kind: Literal["local", "relay"] = Field(
        description="'local': an onnxruntime-genai folder; 'relay': an OpenAI-compatible endpoint."
    )
    path: Path | None = Field(None, description="local: the model folder.")
    base_url: str | None = Field(None, description="relay: the endpoint base URL, ending in /v1.")
    model: str | None = Field(None, description="relay: the model name sent in requests.")
    api_key_env: str | None = Field(
        None, description="relay: the environment variable holding the API key."
    )
    price_in: float = Field(0.0, ge=0, description="USD per 1M input tokens (local: 0).")
    price_out: float = Field(0.0, ge=0, description="USD per 1M output tokens (local: 0).")
    rpm: int | None = Field(None, gt=0, description="Requests per minute, never exceeded.")
    tpm: int | None = Field(None, gt=0, description="Tokens per minute, never exceeded.")
    max_concurrency: int = Field(8, gt=0, description="Requests in flight at once.")
    timeout_s: float = Field(60.0, gt=0, description="Read timeout per request, seconds.")
    max_retries: int = Field(
        4, ge=0, description="Retries on 429/5xx/timeouts (never on 400/401/403/404)."
    )
    stream: bool = Field(
        True, description="relay: stream responses (measures time to first token)."
    )
    threads: int | None = Field(
        None, gt=0, description="local: intra-op threads (default: all cores)."
    )
    batch_size: int = Field(
        1,
        ge=1,
        description=(
            "local: requests generated together in padded batches (1: one at a time). A folder "
            "that cannot batch (sliding-window attention) runs one at a time, and the replay "
            "summary and the plan say so."
        ),
    )
    send_production_data: bool = Field(
        False,
        description=(
            "relay outside this machine: may receive production prompts as logged (else it "
            "needs redact = true, or the run refuses to start)."
        ),
    )
    redact: bool = Field(
        False,
        description=(
            "relay outside this machine: receives prompts with e-mails, phones, cards, keys and "
            "[privacy] names replaced by typed placeholders."
        ),
    )
    device_tokens_per_s: float | None = Field(
        None,
        gt=0,
        description=(
            "local: decode tokens/s measured on the target device; calibrates the device "
            "latency estimate (else it is scaled from this host by memory bandwidth)."
        ),
    )

    @field_validator("base_url")
    @classmethod
    def _no_credentials_in_url(cls, value: str | None) -> str | None:
        return _check_url(value)

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        return _check_env_name(value)

    @model_validator(mode="after")
    def _check_kind(self) -> CandidateSettings:
        if self.kind == "local" and self.path is None:
            raise ValueError(f"candidate {self.name!r}: kind 'local' needs 'path' (a model folder)")
        if self.kind == "relay" and (not self.base_url or not self.model):
            raise ValueError(f"candidate {self.name!r}: kind 'relay' needs 'base_url' and 'model'")
        return self

    def api_key(self) -> SecretStr | None:
        """The key from the environment variable this candidate names (None if unset or unnamed)."""
        if not self.api_key_env:
            return None
        value = os.environ.get(self.api_key_env)
        return SecretStr(value) if value else None


KEY_ENV_SUFFIXES = ("_KEY", "_TOKEN", "_API_KEY")


class PrivacySettings(_Section):
    names: list[str] = Field(
        default_factory=list,
        description="Names (people, customers, products) redacted as [NAME_n] before a redacted "
        "endpoint sees a prompt.",
    )
    allowed_key_envs: list[str] = Field(
        default_factory=list,
        description="Environment variables that may be sent as a bearer key although their name "
        "does not end in _KEY, _TOKEN or _API_KEY.",
    )


class ObjectivesSettings(_Section):
    quality_floor: float = Field(
        0.95, gt=0, le=1.5, description="Required quality relative to production (1.0 = as good)."
    )
    p95_latency_ms: float = Field(
        2000.0, gt=0, description="Latency SLO: p95 end-to-end milliseconds."
    )
    device: str = Field("snapdragon-8-gen-3", description="Device tier local models must fit.")
    migration_cost_usd: float = Field(
        0.0, ge=0, description="One-time migration cost, for the payback period."
    )


class VerdictSettings(_Section):
    """How the evidence is weighed (README: How a verdict is reached)."""

    confidence: float = Field(
        0.95,
        ge=0.5,
        lt=1.0,
        description=(
            "Confidence of each task type's decision: the chance of migrating a type to a route "
            "whose true pass rate is below the floor is at most 1 - confidence."
        ),
    )
    min_samples: int = Field(
        10, ge=1, description="Fewest measured replays a route may qualify on."
    )
    first_round: int = Field(
        10, ge=1, description="Samples per (type, candidate) in the first round; rounds double."
    )
    adaptive: bool = Field(
        True,
        description=(
            "Replay in rounds and stop a (type, candidate) as soon as its interval decides "
            "([replay] per_type is then the cap)."
        ),
    )
    similarity_pass: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A similarity-scored answer passes at this ROUGE-L + token F1 or above.",
    )
    tie_credit: float = Field(
        0.5, ge=0, le=1, description="What a judge's tie counts for, as a share of a pass."
    )
    bootstrap_resamples: int = Field(
        9999, ge=100, description="Resamples of the BCa interval of the mean score."
    )
    ceiling_min_pairs: int = Field(
        10,
        ge=2,
        description="Production-vs-production pairs needed to measure production's ceiling.",
    )


class JudgeSettings(_Section):
    """The LLM judge of open-ended types: an OpenAI-compatible endpoint that is not a candidate."""

    name: str = Field("judge", min_length=1, description="Recorded as the scorer's name.")
    base_url: str | None = Field(
        None, description="The judge's endpoint base URL, ending in /v1 (unset: no judge)."
    )
    model: str | None = Field(None, description="The judge model's name.")
    api_key_env: str | None = Field(
        None, description="The environment variable holding the judge's API key."
    )
    price_in: float = Field(0.0, ge=0, description="USD per 1M input tokens.")
    price_out: float = Field(0.0, ge=0, description="USD per 1M output tokens.")
    rpm: int | None = Field(None, gt=0, description="Requests per minute, never exceeded.")
    tpm: int | None = Field(None, gt=0, description="Tokens per minute, never exceeded.")
    max_concurrency: int = Field(8, gt=0, description="Judge calls in flight at once.")
    max_cost_usd: float = Field(2.0, ge=0, description="Budget cap of the judge's calls per run.")
    timeout_s: float = Field(60.0, gt=0, description="Read timeout per call, seconds.")
    max_retries: int = Field(4, ge=0, description="Retries on 429/5xx/timeouts.")
    task_types: list[str] = Field(
        default_factory=lambda: ["text_generation", "brainstorming", "chatbot", "open_qa"],
        description="The task types the judge scores (the others keep their own scorers).",
    )
    send_production_data: bool = Field(
        False, description="A judge outside this machine may receive prompts as logged."
    )
    redact: bool = Field(
        False, description="The judge receives prompts and answers redacted (typed placeholders)."
    )

    _url = field_validator("base_url")(lambda cls, v: _check_url(v))
    _key = field_validator("api_key_env")(lambda cls, v: _check_env_name(v))

    @model_validator(mode="after")
    def _both_or_none(self) -> JudgeSettings:
        if bool(self.base_url) != bool(self.model):
            raise ValueError("a judge needs both base_url and model (or neither: no judge)")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.base_url and self.model)

    def api_key(self) -> SecretStr | None:
        """The key from the environment variable the judge names (None if unset or unnamed)."""
        if not self.api_key_env:
            return None
        value = os.environ.get(self.api_key_env)
        return SecretStr(value) if value else None


class ClassifierSettings(_Section):
    labels: Literal["metadata", "rules", "relay", "all"] = Field(
        "all", description="Label sources used for training."
    )
    confidence_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "Below this a prediction is 'uncertain' (its request stays on production). Unset: "
            "the lowest threshold reaching 90% accuracy on held-out requests (0.5 if none does; "
            "0.9 for a classifier trained on rule labels alone)."
        ),
    )
    encoder: Path | None = Field(
        None,
        description=(
            "An ONNX sentence-encoder folder (encoder.onnx, tokenizer.json, encoder.json; "
            "`make encoder` builds all-MiniLM-L6-v2, `make encoder-mpnet` the slower "
            "all-mpnet-base-v2) whose embeddings the classifier uses beside "
            "its n-grams; the exported classifier then needs its tokenizer.json."
        ),
    )
    lexicon_prior: Literal["auto", "on", "off"] = Field(
        "auto",
        description=(
            "Train with the lexicon as a prior (its entries as examples, its keywords weighed "
            "up): 'on' helps on traffic unlike the labeled requests, 'off' fits the labeled "
            "traffic closer; 'auto' keeps the better on validation folds of the training "
            "requests (whole log files held out when there are two or more)."
        ),
    )
    annotator: str | None = Field(
        None, description="Name of the relay candidate that labels unlabeled requests."
    )
    annotate_max: int = Field(200, ge=0, description="Most requests sent to the annotator per run.")


class ReplaySettings(_Section):
    per_type: int = Field(
        50,
        gt=0,
        description=("Sampled requests per task type: the cap of the adaptive rounds ([verdict])."),
    )
    uncertain: int = Field(
        10, ge=0, description="Extra sampled requests the classifier was unsure of."
    )
    seed: int = Field(0, description="Sampling seed: same seed, same sample.")
    max_cost_usd: float = Field(5.0, ge=0, description="Budget cap for one replay run.")
    max_new_tokens: int = Field(
        256,
        gt=0,
        description="Cap on generated tokens (the logged max_tokens is respected below it).",
    )
    relay_ttl_days: float = Field(
        14.0,
        ge=0,
        description=(
            "A relay's answers expire after this many days (its provider may move the model "
            "behind a name); a nightly run renews a rotating slice of them. 0: never expire."
        ),
    )


class OutputSettings(_Section):
    dir: Path = Field(Path("out"), description="Where run folders out/<run-id>/ are written.")
    synthetic_data: bool = Field(
        False,
        description="The logs are generated, not production's (the demo sets it): pages say so.",
    )


class HistorySettings(_Section):
    url: str | None = Field(
        None,
        description=(
            "SQLAlchemy URL of the run history (e.g. postgresql+psycopg://host/db); "
            "default: a SQLite file history.sqlite in [output] dir."
        ),
    )
    scope: str | None = Field(
        None,
        description=(
            "What this setup's runs belong to in a shared history: previous run, diffs, alerts "
            "and interrupted-run marking stay within it. Default: the warehouse's absolute path."
        ),
    )


class AlertSettings(_Section):
    webhook_env: str = Field(
        "PLANNER_WEBHOOK_URL",
        description=(
            "Environment variable holding the webhook URL posted to when a run needs attention "
            "(webhook URLs are secrets: never in this file). Unset variable: no post."
        ),
    )
    drift_threshold: float = Field(
        0.15,
        ge=0,
        le=1,
        description=(
            "Task-mix drift that alerts: total variation distance between the last window of "
            "requests and the window before it."
        ),
    )
    drift_window_days: float = Field(
        1.0,
        gt=0,
        description=(
            "The drift windows' length: the run's new requests (else the last this many days "
            "of logged requests) against the this many days before them."
        ),
    )
    timeout_s: float = Field(10.0, gt=0, description="Webhook request timeout, seconds.")

    @field_validator("webhook_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("must be the NAME of an environment variable (letters, digits, _)")
        return value


class ScheduleSettings(_Section):
    cron: str = Field("0 2 * * *", description="When `serve` runs the nightly flow (cron syntax).")
    timezone: str = Field("UTC", description="Time zone of the cron schedule.")


class RunSettings(_Section):
    logs: list[str] = Field(
        default_factory=list,
        description="Log files, globs or Parquet folders `run` ingests (the CLI's --logs wins).",
    )
    batch_output: str | None = Field(
        None, description="OpenAI batch output file joined to a batch input listed in logs."
    )
    retrain_days: float = Field(
        7.0, ge=0, description="Retrain the classifier when it is older than this (0: every run)."
    )
    shard_size: int = Field(64, gt=0, description="Sampled requests per replay shard.")
    dask_address: str | None = Field(
        None,
        description=(
            "Dask scheduler address (tcp://host:8786) to run replay shards on; "
            "needs prefect-dask. Default: this machine."
        ),
    )
    lock_wait_s: float = Field(
        0.0,
        ge=0,
        description="How long a run waits for another run to finish before refusing (seconds).",
    )


class PlannerSettings(BaseSettings):
    """Everything a run needs, from planner.toml and PLANNER_* variables."""

    model_config = SettingsConfigDict(
        env_prefix="PLANNER_", env_nested_delimiter="__", extra="forbid"
    )

    warehouse: WarehouseSettings = Field(default_factory=WarehouseSettings)
    baseline: BaselineSettings = Field(default_factory=BaselineSettings)
    candidates: list[CandidateSettings] = Field(default_factory=list)
    objectives: ObjectivesSettings = Field(default_factory=ObjectivesSettings)
    classifier: ClassifierSettings = Field(default_factory=ClassifierSettings)
    replay: ReplaySettings = Field(default_factory=ReplaySettings)
    verdict: VerdictSettings = Field(default_factory=VerdictSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    run: RunSettings = Field(default_factory=RunSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    prices: dict[str, PriceSettings] = Field(
        default_factory=dict, description="Overrides of the shipped price table, by model name."
    )
    _source: str = PrivateAttr(default=str(DEFAULT_CONFIG))

    @property
    def source(self) -> str:
        """The file these settings were read from: errors about them name it."""
        return self._source

    @model_validator(mode="after")
    def _unique_candidates(self) -> PlannerSettings:
        names = [c.name for c in self.candidates]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"candidate names must be unique; repeated: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _key_variables(self) -> PlannerSettings:
        """A key variable is named like one: a changed planner.toml must not be able to send,
        say, AWS_SECRET_ACCESS_KEY's neighbour DATABASE_URL as a bearer token to any URL."""
        named = [(f"candidate {c.name!r}", c.api_key_env) for c in self.candidates]
        named += [("judge", self.judge.api_key_env), ("baseline", self.baseline.api_key_env)]
        for who, env in named:
            if (
                env
                and not env.endswith(KEY_ENV_SUFFIXES)
                and env not in self.privacy.allowed_key_envs
            ):
                raise ValueError(
                    f"{who}: api_key_env {env!r} must end in _KEY, _TOKEN or _API_KEY, or be "
                    "listed in [privacy] allowed_key_envs"
                )
        return self

    @model_validator(mode="after")
    def _judge_is_not_judged(self) -> PlannerSettings:
        """A judge that is also a judged candidate would grade its own answers."""
        judge = self.judge
        if not judge.enabled:
            return self
        for c in self.candidates:
            same_endpoint = (
                c.kind == "relay"
                and c.base_url is not None
                and judge.base_url is not None
                and c.base_url.rstrip("/") == judge.base_url.rstrip("/")
                and c.model == judge.model
            )
            if c.name == judge.name or same_endpoint:
                raise ValueError(
                    f"judge: the judge {judge.name!r} ({judge.model} at {judge.base_url}) is also "
                    f"the judged candidate {c.name!r}; a judge must not grade its own answers"
                )
        return self

    def candidate(self, name: str) -> CandidateSettings:
        for cand in self.candidates:
            if cand.name == name:
                return cand
        known = ", ".join(c.name for c in self.candidates) or "none configured"
        raise ConfigError(self.source, f"no candidate named {name!r} (known: {known})")

    def history_url(self) -> str:
        """The run history's SQLAlchemy URL: the configured one, else SQLite beside the runs."""
        if self.history.url:
            return self.history.url
        return f"sqlite:///{(self.output.dir / 'history.sqlite').resolve()}"

    def history_scope(self) -> str:
        """What this setup's runs belong to: ``[history] scope``, else the warehouse file's
        absolute path (two warehouses may share one history without touching each other's runs)."""
        if self.history.scope:
            return self.history.scope
        return str(Path(self.warehouse.path).resolve())

    def price_overrides(self) -> dict[str, tuple[float, float]]:
        """Model -> (USD/1M in, USD/1M out): the [prices] table plus the baseline's own prices."""
        table = {model: (p.price_in, p.price_out) for model, p in self.prices.items()}
        if self.baseline.price_in is not None and self.baseline.price_out is not None:
            table[self.baseline.model] = (self.baseline.price_in, self.baseline.price_out)
        return table


class _TomlSource(PydanticBaseSettingsSource):
    """Feeds the parsed TOML in below the environment variables."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _settings_from(data: dict[str, Any]) -> type[PlannerSettings]:
    class _Loaded(PlannerSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _TomlSource(settings_cls, data))

    return _Loaded


def load_settings(path: Path | str | None = None, **overrides: Any) -> PlannerSettings:
    """Read ``path`` (default ``planner.toml`` if it exists, else built-in defaults) + environment.

    A file named explicitly must exist. Every problem is one :class:`ConfigError` naming the file
    and the field or line.
    """
    explicit = path is not None
    file = Path(path) if path is not None else DEFAULT_CONFIG
    data: dict[str, Any] = {}
    if file.exists():
        if file.is_dir():
            raise ConfigError(str(file), "is a directory, not a TOML file")
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(file), f"not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(str(file), "not UTF-8 text") from exc
    elif explicit:
        raise ConfigError(str(file), "config file not found")
    try:
        settings = _settings_from(data)(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        msg = first["msg"].removeprefix("Value error, ")
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(str(file), f"field {where}: {msg}{more}") from exc
    settings._source = str(file)
    return settings
