"""The plan a person reads: one :class:`PlanReport` in, one self-contained HTML page out.

The report holds plain data from every stage (evidence, decision, projection, risks, samples) and
is also what ``metrics.json`` is made of, so every figure the page shows is in that file. Charts
are inline SVG (planner/report/charts.py); CSS is inline; the page fetches nothing and opens from
file://. Every quoted prompt and answer is redacted here and escaped by the template engine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from planner.evaluate.conversations import Stickiness
from planner.evaluate.decision import Decision, Objectives
from planner.evaluate.evidence import (
    PRODUCTION,
    UNCERTAIN,
    Candidate,
    Evidence,
    Method,
)
from planner.evaluate.intervals import CP_METHOD
from planner.evaluate.projection import Device, FrontierPoint, Projection, Traffic, money
from planner.evaluate.risks import Risk
from planner.evaluate.verdict import Ceiling
from planner.evaluate.views import View
from planner.redact import redact
from planner.report import charts

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
PLAN_TEMPLATE = "plan.html.j2"
MAX_SAMPLE_CHARS = 600


@dataclass(frozen=True)
class SampleOutput:
    """One sampled request: its prompt, production's answer, and each candidate's answer."""

    task_type: str
    request_id: str
    prompt: str
    production: str
    answers: tuple[
        tuple[str, str | None, float | None, str | None], ...
    ]  # (candidate, text, quality, error)


@dataclass(frozen=True)
class PlanReport:
    """Everything the HTML plan and metrics.json show."""

    title: str
    generated_at: str
    objectives: Objectives
    traffic: Traffic
    evidence: tuple[Evidence, ...]
    decision: Decision
    projection: Projection
    candidates: Mapping[str, Candidate]
    frontier: tuple[FrontierPoint, ...] = ()
    views: tuple[View, ...] = ()
    risks: tuple[Risk, ...] = ()
    samples: tuple[SampleOutput, ...] = ()
    stickiness: Stickiness | None = None
    conversation_depth: Mapping[int, int] = field(default_factory=dict)  # turns -> conversations
    classifier: Mapping[str, Any] | None = None
    device: Device | None = None
    judge: str | None = None
    run_id: str | None = None
    notes: tuple[str, ...] = ()
    method: Method = field(default_factory=Method)
    ceilings: Mapping[str, Ceiling] = field(default_factory=dict)
    judge_stats: tuple[Any, ...] = ()  # pipeline.evidence.JudgeStats
    labels: tuple[str, ...] = ()  # where the figures come from, when not production's own
    adaptive: bool = True

    def method_summary(self) -> dict[str, Any]:
        """How the verdicts were reached, as data (the page's method section and metrics.json)."""
        m = self.method
        return {
            "pass_rules": m.rules.describe(),
            "similarity_pass": m.rules.similarity_pass,
            "tie_credit": m.rules.tie_credit,
            "confidence": m.confidence,
            "bound": CP_METHOD,
            "error_budget": (
                f"alpha = {m.alpha:g} per task type, Bonferroni: half to production's ceiling "
                "where measured, the rest split evenly over the candidates and the looks"
            ),
            "first_look": m.first_look,
            "adaptive": self.adaptive,
            "mean_interval": f"BCa bootstrap, {m.resamples:,} resamples",
            "min_samples": self.objectives.min_samples,
            "ceiling_min_pairs": m.ceiling_min_pairs,
            "required": "pass-rate lower bound >= floor x production's ceiling",
        }

    def checklist(self) -> list[str]:
        """The migration steps this plan implies, in order."""
        steps = [
            "Deploy the task classifier (classifier.onnx) in the gateway with confidence "
            "threshold "
            f"{(self.classifier or {}).get('confidence_threshold', 'as in routing.yaml')}; "
            f"requests below it go to {self.decision.uncertain_route}.",
        ]
        envs = sorted({c.api_key_env for c in self.candidates.values() if c.api_key_env})
        if envs:
            steps.append(
                "Set the API key variables on the gateway hosts: "
                + ", ".join(envs)
                + " (never in a file)."
            )
        local = sorted({r.route for r in self.decision.routes if r.kind == "local"})
        for name in local:
            guard = max((r.memory_guard_mb or 0) for r in self.decision.routes if r.route == name)
            where = self.device.name if self.device else "the device tier"
            steps.append(
                f"Ship {name} to {where}; its memory guard needs {guard:.0f} MB free, else "
                "traffic takes the next hop."
            )
        steps += [
            "Load routing.yaml (or litellm.yaml) in shadow mode for a week: route, compare, but "
            "answer from production.",
            "Schedule the nightly replay run (`migration-planner run`); its quality figures feed "
            "the rollback triggers.",
            "Canary each migrated task type: 5% of traffic, then 25%, then 100%, watching error "
            "rate and p95 latency.",
            "Rehearse the rollback: load the all_to_production config from rollback.yaml and "
            "check traffic returns.",
        ]
        return steps

    def metrics(self) -> dict[str, Any]:
        """Every figure of the report as JSON-ready data (sample texts left out; NaN as null)."""
        data = {
            "title": self.title,
            "run_id": self.run_id,
            "generated_at": self.generated_at,
            "objectives": vars(self.objectives).copy(),
            "device": None if self.device is None else vars(self.device).copy(),
            "judge": self.judge,
            "labels": list(self.labels),
            "method": self.method_summary(),
            "ceilings": {t: c.summary() for t, c in sorted(self.ceilings.items())},
            "judge_stats": [j.summary() for j in self.judge_stats],
            "uncertain": (
                None if self.decision.uncertain is None else self.decision.uncertain.summary()
            ),
            "workload": workload(self),
            "classifier": dict(self.classifier) if self.classifier else None,
            "projection": self.projection.summary(),
            "routes": [r.summary() for r in self.decision.routes],
            "uncertain_route": self.decision.uncertain_route,
            "uncertain_fallbacks": list(self.decision.uncertain_fallbacks),
            "stickiness": None if self.stickiness is None else self.stickiness.summary(),
            "evidence": [e.summary() for e in self.evidence],
            "frontier": [vars(p).copy() for p in self.frontier],
            "views": [
                {k: v for k, v in v.summary().items() if k != "assignment"}
                | {"assignment": dict(v.assignment)}
                for v in self.views
            ],
            "risks": [vars(r).copy() for r in self.risks],
            "checklist": self.checklist(),
            "notes": list(self.notes),
            "samples": [
                {"task_type": s.task_type, "request_id": s.request_id} for s in self.samples
            ],
        }
        return _clean(data)


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def workload(report: PlanReport) -> dict[str, Any]:
    """The task mix, tokens and conversation depth of the logged traffic."""
    t = report.traffic
    total = t.requests
    depth = dict(sorted(report.conversation_depth.items()))
    conversations = sum(depth.values())
    return {
        "requests": total,
        "period_days": t.period_days,
        "prompt_tokens": sum(x.prompt_tokens for x in t.types),
        "completion_tokens": sum(x.completion_tokens for x in t.types),
        "cost_usd": sum(x.cost_usd for x in t.types),
        "uncertain": sum(x.uncertain for x in t.types),
        "types": [
            {
                "task_type": x.task_type,
                "requests": x.requests,
                "share": x.requests / total if total else 0.0,
                "prompt_tokens_avg": x.prompt_tokens / x.requests if x.requests else 0.0,
                "completion_tokens_avg": x.completion_tokens / x.requests if x.requests else 0.0,
                "cost_usd": x.cost_usd,
            }
            for x in sorted(t.types, key=lambda x: -x.requests)
        ],
        "conversation_depth": depth,
        "conversations": conversations,
        "multi_turn_conversations": sum(n for d, n in depth.items() if d > 1),
    }


# ---------------------------------------------------------------- charts (inline SVG)


def frontier_chart(points: Sequence[FrontierPoint], cost_before: float) -> str | None:
    """Monthly cost against expected quality at each floor; the chosen plan marked."""
    usable = [p for p in points if p.quality is not None]
    if not usable:
        return None
    # floors that give the same plan share one point and one label ("floor 0.50–0.80")
    groups: dict[tuple[float, float], list[float]] = {}
    for p in usable:
        groups.setdefault(
            (round(p.monthly_cost_usd, 9), round(float(p.quality or 0), 9)), []
        ).append(p.floor)
    labels = []
    for floors in groups.values():
        span = f"{min(floors):.2f}" if len(floors) == 1 else f"{min(floors):.2f}–{max(floors):.2f}"
        labels.append(f"floor {span}")
    chosen = next((p for p in usable if p.chosen), None)
    return charts.line_chart(
        [charts.Point(x, y) for x, y in groups],
        labels,
        chosen=(
            (
                charts.Point(chosen.monthly_cost_usd, float(chosen.quality or 0)),
                f"chosen (floor {chosen.floor:.2f})",
            )
            if chosen is not None
            else None
        ),
        reference=(charts.Point(cost_before, 1.0), "production today"),
        x_label="monthly cost (USD)",
        y_label="expected quality vs production",
        x_fmt=charts.usd,
        line_label="plan at each floor",
    )


def mix_chart(types: Sequence[Mapping[str, Any]]) -> str | None:
    """Requests per task type (horizontal bars)."""
    return charts.bar_chart(
        [str(t["task_type"]) for t in types],
        [charts.Series("requests", "#4a6fa5", [float(t["requests"]) for t in types])],
        x_label="requests in the logged period",
    )


def cost_chart(projection: Projection) -> str | None:
    """Monthly cost before and after, per task type."""
    rows = [t for t in projection.types if t.cost_before_usd > 0 or t.cost_after_usd > 0]
    return charts.bar_chart(
        [t.task_type for t in rows],
        [
            charts.Series("today", "#999", [t.cost_before_usd for t in rows]),
            charts.Series("after the plan", "#2e8b57", [t.cost_after_usd for t in rows]),
        ],
        x_label="USD per month",
        fmt=charts.usd,
    )


# ---------------------------------------------------------------- template filters


def _pct(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * 100:.{digits}f}%"


def _usd(value: Any) -> str:
    return "–" if value is None else money(value)


def _ms(value: Any) -> str:
    return "–" if value is None else f"{value:,.0f} ms"


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _clip(text: str | None) -> str:
    clean = redact(text)
    return clean if len(clean) <= MAX_SAMPLE_CHARS else clean[:MAX_SAMPLE_CHARS] + " …"


def environment(templates: Path = TEMPLATES) -> jinja2.Environment:
    """Autoescape everything (select_autoescape would skip .j2) and fail on a missing value."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=_pct, usd=_usd, ms=_ms, num=_num, redact=_clip)
    return env


def _interval_bar(ev: Evidence, floor: float) -> dict[str, float] | None:
    """Positions (percent of a 0..1 axis) for the CSS bar of the pass rate's bounds relative to
    production's ceiling (production itself is the reference: no bar)."""
    if ev.kind == "production":
        return None
    if ev.quality_mean is None or ev.quality_low is None or ev.quality_high is None:
        return None
    return {
        "low": min(1.0, max(0.0, ev.quality_low)) * 100,
        "width": max(0.5, (min(1.0, ev.quality_high) - max(0.0, ev.quality_low)) * 100),
        "mean": min(1.0, max(0.0, ev.quality_mean)) * 100,
        "floor": min(1.0, floor) * 100,
    }


def classifier_view(card: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The model card as the page reads it: label sources, held-out figures naming the labels
    they were measured on, a per-class table and calibration (not the raw dictionary)."""
    if not card:
        return None
    training = card.get("training") or {}
    evaluation = card.get("evaluation") or {}
    labels = card.get("labels") or {}
    sources = training.get("label_sources") or labels.get("available") or {}
    used = [k for k, v in sorted(sources.items()) if v] if isinstance(sources, Mapping) else []
    per_class = evaluation.get("per_class") or card.get("per_class") or {}
    rows = [
        {
            "name": name,
            "precision": row.get("precision"),
            "recall": row.get("recall"),
            "f1": row.get("f1"),
            "support": row.get("support"),
        }
        for name, row in sorted(per_class.items())
        if isinstance(row, Mapping)
    ]
    calibration = evaluation.get("calibration") or {}
    bins = [b for b in (calibration.get("bins") or []) if isinstance(b, Mapping) and b.get("count")]
    return {
        "version": card.get("version"),
        "classes": len(card.get("classes") or []) or len(rows),
        "threshold": card.get("confidence_threshold"),
        "sources": {k: v for k, v in sources.items()} if isinstance(sources, Mapping) else {},
        "held_out_source": " + ".join(used) if used else "unknown",
        "held_out_rows": evaluation.get("rows") or training.get("held_out_rows"),
        "macro_f1": evaluation.get("macro_f1", card.get("macro_f1")),
        "accuracy": evaluation.get("accuracy", card.get("accuracy")),
        "per_class": rows,
        "not_evaluated": list(evaluation.get("not_evaluated") or []),
        "ece": calibration.get("ece"),
        "bins": bins,
        "warnings": list(training.get("warnings") or []),
        "limitations": card.get("limitations"),
        "train_rows": training.get("train_rows") or training.get("rows"),
        "figure": card.get("figure") or evaluation.get("figure") or "macro-F1",
        "label_source": card.get("label_source") or evaluation.get("label_source"),
        "split": (training.get("split") or {}).get("method"),
        "threshold_source": card.get("threshold_source"),
        "suggested_threshold": card.get("suggested_threshold"),
        "selective": [p for p in (evaluation.get("selective") or []) if isinstance(p, Mapping)],
        "encoder": (card.get("encoder") or {}).get("name"),
        "annotator_agreement": labels.get("annotator_agreement"),
    }


def context(report: PlanReport) -> dict[str, Any]:
    """Plain data for the template (no connections, no ORM rows)."""
    floor = report.objectives.quality_floor
    by_type: dict[str, list[dict[str, Any]]] = {}
    for ev in report.evidence:
        by_type.setdefault(ev.task_type, []).append({"ev": ev, "bar": _interval_bar(ev, floor)})
    for rows in by_type.values():
        rows.sort(
            key=lambda r: (
                r["ev"].kind != "production",
                r["ev"].cost_per_1k_usd or 0.0,
                r["ev"].candidate,
            )
        )
    types = []
    projections = {t.task_type: t for t in report.projection.types}
    judge_by_type = {j.task_type: j for j in report.judge_stats}
    for route in report.decision.routes:
        types.append(
            {
                "route": route,
                "projection": projections.get(route.task_type),
                "candidates": by_type.get(route.task_type, []),
                "samples": [s for s in report.samples if s.task_type == route.task_type][:3],
                "ceiling": report.ceilings.get(route.task_type),
                "judge": judge_by_type.get(route.task_type),
            }
        )
    chains = [
        {
            "task_type": r.task_type,
            "hops": [
                _hop_info(h, report, r.memory_guard_mb if h == r.route else None)
                for h in (r.route, *r.fallbacks)
            ],
        }
        for r in report.decision.routes
    ]
    wl = workload(report)
    return {
        "r": report,
        "p": report.projection,
        "d": report.decision,
        "o": report.objectives,
        "workload": wl,
        "types": types,
        "chains": chains,
        "checklist": report.checklist(),
        "charts": {
            "frontier": frontier_chart(report.frontier, report.projection.cost_before_usd),
            "mix": mix_chart(wl["types"]),
            "cost": cost_chart(report.projection),
        },
        "scorers_used": sorted({s for e in report.evidence for s in e.scorers}),
        "production": PRODUCTION,
        "method": report.method_summary(),
        "classifier": classifier_view(report.classifier),
        "uncertain_rows": by_type.get(UNCERTAIN, []),
    }


def _hop_info(name: str, report: PlanReport, guard: float | None) -> dict[str, Any]:
    cand = report.candidates.get(name)
    return {
        "name": name,
        "kind": cand.kind if cand else "production",
        "rpm": cand.rpm if cand else None,
        "tpm": cand.tpm if cand else None,
        "guard_mb": guard,
    }


def render_plan(report: PlanReport, templates: Path = TEMPLATES) -> str:
    """The HTML plan as one string."""
    return environment(templates).get_template(PLAN_TEMPLATE).render(**context(report))


def write_plan(report: PlanReport, path: Path, templates: Path = TEMPLATES) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_plan(report, templates), encoding="utf-8")
    return path
