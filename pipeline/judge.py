"""The judge of open-ended types: ``[judge]`` of the settings, an OpenAI-compatible endpoint that
is not a judged candidate, asked through the same relay client as the replays (rate limits,
retries, circuit breaker, its own cost cap, the warehouse's judge cache), concurrently; and how
it behaved (position bias, agreement with the similarity scorer).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.endpoints import judge_redactor
from planner.errors import BudgetExceeded, CircuitOpenError, ConfigError
from planner.evaluate.evidence import NOT_SENT, Observation
from planner.evaluate.scoring import Asked, AskMany, JudgeCache, JudgeSetup
from planner.evaluate.verdict import PassRules, is_judge, outcome_of
from planner.replay.protocol import ReplayRequest, ReplayResult
from planner.replay.ratelimit import CostBudget
from planner.replay.relay import RelayBackend
from planner.settings import PlannerSettings
from warehouse.connection import open_warehouse
from warehouse.scores import judge_cache_get, judge_cache_put
from warehouse.verdicts import score_metrics

JUDGE_MAX_TOKENS = 8


def _relay_ask(backend: RelayBackend) -> AskMany:
    """Judge prompts as one concurrent batch through the relay client; a stop (budget, open
    circuit) returns what was answered, an auth failure raises."""

    def ask(prompts: Sequence[tuple[str, list[dict[str, Any]]]]) -> Asked:
        replies: dict[str, str] = {}
        failed = [0]

        def on_result(result: ReplayResult) -> None:
            if result.error_kind is None:
                replies[result.request_id] = result.output_text or ""
            elif result.error_kind not in NOT_SENT:
                failed[0] += 1

        requests = [
            ReplayRequest(key, messages, max_tokens=JUDGE_MAX_TOKENS, temperature=0.0)
            for key, messages in prompts
        ]
        try:
            backend.replay(requests, on_result)
        except (BudgetExceeded, CircuitOpenError) as exc:
            return Asked(replies, str(exc), failed[0])
        return Asked(replies, None, failed[0])

    return ask


def judge_backend(settings: PlannerSettings, budget: CostBudget | None = None) -> RelayBackend:
    j = settings.judge
    assert j.base_url and j.model
    return RelayBackend(
        j.name,
        j.base_url,
        j.model,
        j.api_key(),
        api_key_env=j.api_key_env,
        price_in=j.price_in,
        price_out=j.price_out,
        rpm=j.rpm,
        tpm=j.tpm,
        max_concurrency=j.max_concurrency,
        timeout_s=j.timeout_s,
        max_retries=j.max_retries,
        budget=budget if budget is not None else CostBudget(j.max_cost_usd),
        redactor=judge_redactor(settings),
    )


def judge_enabled(settings: PlannerSettings, judge: str | None = None) -> bool:
    """Whether the judge scores this run. ``judge`` names it (the CLI's --judge): it must be the
    configured ``[judge]``; naming a candidate is refused (it would grade its own answers)."""
    if judge is None:
        return settings.judge.enabled
    if judge in {c.name for c in settings.candidates}:
        raise ConfigError(
            settings.source,
            f"judge {judge!r} is a judged candidate; configure a [judge] that is not one "
            "(its own base_url and model)",
        )
    if not settings.judge.enabled or judge != settings.judge.name:
        raise ConfigError(
            settings.source,
            f"no judge named {judge!r}: configure it as [judge] (name, base_url, model)",
        )
    return True


def judge_setup(
    settings: PlannerSettings, con: Any, budget: CostBudget | None = None
) -> JudgeSetup:
    """The configured judge as a :class:`JudgeSetup` (its cache in the warehouse)."""
    backend = judge_backend(settings, budget)
    j = settings.judge
    return JudgeSetup(
        _relay_ask(backend),
        name=j.name,
        cache=JudgeCache(
            lambda key: judge_cache_get(con, key),
            lambda key, reply: judge_cache_put(con, key, j.name, reply),
        ),
        task_types=frozenset(j.task_types),
        ident=f"{j.name}@{backend.fingerprint()}",
    )


@dataclass(frozen=True)
class JudgeStats:
    """How the judge behaved on one task type: position bias and agreement with similarity."""

    task_type: str
    judged: int
    both_orders: int
    flips: int  # pairs where the two orders disagreed once un-swapped
    agree: int  # judged items where "not worse" (pass or tie) agrees with similarity >= bar
    compared: int

    @property
    def position_bias(self) -> float | None:
        return self.flips / self.both_orders if self.both_orders else None

    @property
    def agreement(self) -> float | None:
        return self.agree / self.compared if self.compared else None

    def summary(self) -> dict[str, Any]:
        return {
            **vars(self),
            "position_bias": self.position_bias,
            "agreement": self.agreement,
        }


def judge_stats(
    observations: Sequence[Observation], warehouse: str, rules: PassRules
) -> list[JudgeStats]:
    """Per judged type: the share of both-order pairs whose orders disagree (position bias) and
    how often the judge's "not worse" agrees with the similarity scorer's pass."""
    judged = {
        (o.request_id, o.candidate): o
        for o in observations
        if is_judge(o.scorer) and o.quality is not None
    }
    if not judged:
        return []
    con = open_warehouse(warehouse, read_only=True, create=False)
    try:
        metrics = score_metrics(con, ["judge_order_flip", "similarity"])
    finally:
        con.close()
    extra: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for request_id, candidate, metric, value in metrics:
        extra[(request_id, candidate)][metric] = value
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for key, obs in judged.items():
        c = counts[obs.task_type]
        c[0] += 1
        got = extra.get(key, {})
        if "judge_order_flip" in got:
            c[1] += 1
            c[2] += int(got["judge_order_flip"] >= 0.5)
        if "similarity" in got:
            outcome = outcome_of(obs.scorer, float(obs.quality or 0.0), rules)
            sim_pass = got["similarity"] >= rules.similarity_pass - 1e-9
            c[4] += 1
            c[3] += int((outcome in ("pass", "tie")) == sim_pass)
    return [JudgeStats(t, c[0], c[1], c[2], c[3], c[4]) for t, c in sorted(counts.items())]
