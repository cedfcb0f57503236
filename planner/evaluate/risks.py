"""Risks drawn from the data: what could go wrong with the plan's routes, with the evidence
that says so (thin samples, failures, quantization loss, latency near the SLO, no judge, drift).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from planner.evaluate.decision import Decision
from planner.evaluate.evidence import PRODUCTION, Candidate, Evidence
from planner.evaluate.projection import DAYS_PER_MONTH, Projection, Traffic, evidence_map


@dataclass(frozen=True)
class Risk:
    level: str  # "high" | "medium" | "low"
    title: str
    detail: str
    task_type: str | None = None


_QUANT = re.compile(r"(?i)(int4|int8|q4|q8|fp16|fp32|4bit|8bit)")


def _quant_pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """(int4 name, int8 name) pairs of the same model that differ only in quantization."""
    stems: dict[str, dict[str, str]] = {}
    for name in names:
        match = _QUANT.search(name)
        if not match:
            continue
        bits = "4" if "4" in match.group(1) else ("8" if "8" in match.group(1) else "")
        if not bits:
            continue
        stem = _QUANT.sub("#", name, count=1).lower()
        stems.setdefault(stem, {})[bits] = name
    return [(v["4"], v["8"]) for v in stems.values() if "4" in v and "8" in v]


def assess_risks(
    decision: Decision,
    evidence: Sequence[Evidence],
    traffic: Traffic,
    candidates: Mapping[str, Candidate],
    projection: Projection,
    *,
    previous_quality: Mapping[str, float] | None = None,
    judge_used: bool = False,
    few_samples: int = 30,
    wide_interval: float = 0.04,
) -> list[Risk]:
    """What could make this plan wrong, each tied to a figure: few samples, wide intervals, little
    memory headroom, INT4 vs INT8 loss, drift of the task mix or of quality, rate limits."""
    risks: list[Risk] = []
    ev = evidence_map(evidence)
    for route in decision.routes:
        if route.kind == "production":
            continue
        hit = ev.get((route.task_type, route.route))
        if hit is None:
            continue
        if hit.n < few_samples:
            risks.append(
                Risk(
                    "medium",
                    "Few samples",
                    f"{route.route} on {route.task_type} rests on {hit.n} replays (< "
                    f"{few_samples}).",
                    route.task_type,
                )
            )
        width = hit.interval_width
        if width is not None and width > wide_interval:
            risks.append(
                Risk(
                    "medium",
                    "Wide interval",
                    f"{route.route} on {route.task_type}: quality 95% interval "
                    f"{hit.quality_low:.2f}-{hit.quality_high:.2f} (width {width:.2f}).",
                    route.task_type,
                )
            )
        if hit.fit is not None:
            tight = max(512.0, 0.25 * hit.fit.needed_mb)
            if hit.fit.headroom_mb < tight:
                level = "high" if hit.fit.headroom_mb < 256 else "medium"
                risks.append(
                    Risk(
                        level,
                        "Little memory headroom",
                        f"{route.route} needs {hit.fit.needed_mb:.0f} MB and leaves "
                        f"{hit.fit.headroom_mb:.0f} MB free on the device; the memory guard will "
                        "send traffic to the next hop when memory is short.",
                        route.task_type,
                    )
                )
        if hit.errors:
            worst = max(hit.errors.items(), key=lambda kv: kv[1])
            if hit.error_rate >= 0.02:
                risks.append(
                    Risk(
                        "medium",
                        "Failures",
                        f"{route.route} on {route.task_type} failed {hit.error_rate:.0%} of "
                        f"replays (mostly {worst[0]}); failures fall back to "
                        f"{route.fallbacks[0] if route.fallbacks else PRODUCTION}.",
                        route.task_type,
                    )
                )
    chosen = {(r.task_type, r.route) for r in decision.routes}
    for low_bits, high_bits in _quant_pairs(candidates):
        losses = []
        for t in sorted({e.task_type for e in evidence}):
            a, b = ev.get((t, low_bits)), ev.get((t, high_bits))
            if a is None or b is None or a.quality_mean is None or b.quality_mean is None:
                continue
            loss = b.quality_mean - a.quality_mean
            losses.append(loss)
            if loss > 0.02 and (t, low_bits) in chosen:
                risks.append(
                    Risk(
                        "medium",
                        "Quantization loss",
                        f"On {t}, the chosen {low_bits} scores {a.quality_mean:.2f} against "
                        f"{b.quality_mean:.2f} for {high_bits} (INT4 loses {loss:.2f}).",
                        t,
                    )
                )
        if losses and sum(losses) / len(losses) > 0.02:
            mean_loss = sum(losses) / len(losses)
            risks.append(
                Risk(
                    "low",
                    "Quantization loss",
                    f"Across {len(losses)} task types, {low_bits} scores {mean_loss:.2f} below "
                    f"{high_bits} on average.",
                )
            )
    first = sum(tt.first_half for tt in traffic.types)
    second = sum(tt.second_half for tt in traffic.types)
    if first and second:
        for tt in traffic.types:
            shift = tt.second_half / second - tt.first_half / first
            if abs(shift) > 0.05:
                risks.append(
                    Risk(
                        "medium",
                        "Task mix drift",
                        f"{tt.task_type} went from {tt.first_half / first:.0%} to "
                        f"{tt.second_half / second:.0%} of traffic between the halves of the "
                        "logged period.",
                        tt.task_type,
                    )
                )
    for route in decision.routes:
        before = (previous_quality or {}).get(route.task_type)
        if (
            before is not None
            and route.quality_mean is not None
            and before - route.quality_mean > 0.03
        ):
            risks.append(
                Risk(
                    "high",
                    "Quality drift",
                    f"{route.task_type} on {route.route}: quality {route.quality_mean:.2f}, down "
                    f"from {before:.2f} in the previous run.",
                    route.task_type,
                )
            )
    if traffic.period_days < 7:
        risks.append(
            Risk(
                "low",
                "Short logged period",
                f"The month is extrapolated from {traffic.period_days:.1f} days of logs "
                f"(x{projection.monthly_factor:.0f}).",
            )
        )
    uncertain = (
        sum(t.uncertain for t in traffic.types) / traffic.requests if traffic.requests else 0.0
    )
    if uncertain > 0.2:
        risks.append(
            Risk(
                "medium",
                "Uncertain classifier",
                f"{uncertain:.0%} of requests are below the classifier's confidence threshold and "
                f"go to {decision.uncertain_route}.",
            )
        )
    if not judge_used and any(
        e.scorers and any("no judge" in s for s in e.scorers) for e in evidence
    ):
        risks.append(
            Risk(
                "low",
                "No LLM judge",
                "Open-ended types (text generation, brainstorming, chat) were scored by text "
                "similarity, which under-rates good answers worded differently.",
            )
        )
    for name, share in projection.route_share.items():
        cand = candidates.get(name)
        if cand is None or cand.kind != "relay" or cand.rpm is None:
            continue
        per_minute = projection.monthly_requests * share / (DAYS_PER_MONTH * 24 * 60)
        if per_minute * 3 > cand.rpm:  # peaks ~3x the mean
            risks.append(
                Risk(
                    "high",
                    "Relay rate limit",
                    f"{name} would get ~{per_minute:.0f} requests/min on average (peaks "
                    f"~{per_minute * 3:.0f}) against rpm {cand.rpm}.",
                )
            )
    order = {"high": 0, "medium": 1, "low": 2}
    return sorted(risks, key=lambda r: (order[r.level], r.title, r.task_type or ""))
