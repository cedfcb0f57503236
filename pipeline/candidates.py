"""The configured candidates and objectives as the planner's plain data: every candidate plus
production (priced from the baseline or the price table) and the objectives the rule applies.
"""

from __future__ import annotations

from pipeline.evidence import baseline_prices
from planner.errors import ConfigError
from planner.evaluate.decision import Objectives
from planner.evaluate.evidence import PRODUCTION, Candidate
from planner.settings import PlannerSettings

PRODUCTION_BASE_URL = "https://api.openai.com/v1"
PRODUCTION_KEY_ENV = "OPENAI_API_KEY"


def plan_candidates(settings: PlannerSettings) -> dict[str, Candidate]:
    """Every configured candidate plus production (priced from the baseline or the price table)."""
    out: dict[str, Candidate] = {}
    for c in settings.candidates:
        if c.name == PRODUCTION:
            raise ConfigError(
                settings.source, f"candidate name {PRODUCTION!r} is reserved for the baseline"
            )
        out[c.name] = Candidate(
            name=c.name,
            kind=c.kind,
            price_in=c.price_in,
            price_out=c.price_out,
            rpm=c.rpm,
            tpm=c.tpm,
            base_url=c.base_url,
            model=c.model,
            api_key_env=c.api_key_env,
            timeout_s=c.timeout_s,
            max_retries=c.max_retries,
        )
    base = settings.baseline
    price_in, price_out = baseline_prices(settings)
    out[PRODUCTION] = Candidate(
        name=PRODUCTION,
        kind="production",
        price_in=price_in,
        price_out=price_out,
        base_url=base.base_url or PRODUCTION_BASE_URL,
        model=base.model,
        api_key_env=base.api_key_env or PRODUCTION_KEY_ENV,
    )
    return out


def objectives_from(settings: PlannerSettings) -> Objectives:
    return Objectives(
        quality_floor=settings.objectives.quality_floor,
        p95_latency_ms=settings.objectives.p95_latency_ms,
        min_samples=settings.verdict.min_samples,
    )
