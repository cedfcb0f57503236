"""Adaptive samples: replay each (task type, candidate) in rounds and stop it as soon as its
verdict is decided.

``[replay] per_type`` is the cap. The sample is drawn once at the cap; a type's requests are
taken in the draw's order (:func:`warehouse.sampling.sample_layout`), so round ``k`` replays
positions up to the ``k``-th look (10, 20, 40, ... the cap, from ``[verdict] first_round``) for
the pairs still open, scores them (the judge too, on its types) and reads each pair's verdict
with the same sequential rule the plan uses (:func:`planner.evaluate.verdict.sequential_verdict`,
whose error budget already pays for every look). A pair that qualified, fell below, or can no
longer reach the floor within the cap is closed; the others go on to the next round. The
uncertain stratum is replayed whole in the first round. Every round shares the run's replay
budget, and the rounds share one judge budget.

The plan reads the same stored replays in the same order, so it reaches the same verdicts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from pipeline.candidates import objectives_from, plan_candidates
from pipeline.current import current_evidence
from pipeline.evidence import (
    measure_ceilings,
    method_from,
    read_observations,
    score_replays,
)
from pipeline.judge import judge_enabled
from pipeline.replay import RelayRunner, ShardRunner, draw, make_replay, select_candidates
from pipeline.stage import Stage, direct
from planner.evaluate.evidence import PRODUCTION, UNCERTAIN, build_evidence
from planner.evaluate.verdict import looks
from planner.replay.ratelimit import CostBudget
from planner.replay.relay import RelayBackend
from planner.replay.shards import stop_requested
from planner.settings import PlannerSettings
from warehouse.connection import open_warehouse
from warehouse.replays import replayed_ids
from warehouse.sampling import sample_layout


def pair_verdicts(settings: PlannerSettings, warehouse: str) -> dict[tuple[str, str], Any]:
    """Each (task type, candidate)'s verdict on what the warehouse holds now (quality only)."""
    candidates = plan_candidates(settings)
    method = method_from(settings)
    objectives = objectives_from(settings)
    observations, _ = read_observations(
        warehouse, candidates, settings.replay.seed, current_evidence(settings)
    )
    ceilings = measure_ceilings(settings, warehouse, judge_enabled(settings))
    evidence = build_evidence(
        observations,
        candidates,
        floor=objectives.quality_floor,
        method=replace(method, resamples=0),
        ceilings=ceilings,
        min_samples=objectives.min_samples,
    )
    return {
        (e.task_type, e.candidate): e.verdict
        for e in evidence
        if e.kind != "production" and e.task_type != UNCERTAIN
    }


def _positions(layout: dict[str, tuple[str, str, int]]) -> tuple[dict[str, list[str]], list[str]]:
    """Request ids of each type in sample order, and the uncertain stratum's ids."""
    by_type: dict[str, list[tuple[int, str]]] = defaultdict(list)
    uncertain: list[str] = []
    for request_id, (stratum, task_type, position) in layout.items():
        if stratum == "uncertain":
            uncertain.append(request_id)
        else:
            by_type[task_type].append((position, request_id))
    return {t: [r for _, r in sorted(v)] for t, v in by_type.items()}, sorted(uncertain)


_SUMMED = ("planned", "sent", "cached", "ok", "retries", "cost_usd", "skipped_budget", "seconds")


def _add_round(totals: dict[str, dict[str, Any]], rows: Sequence[dict[str, Any]]) -> None:
    """Add one round's per-candidate counts to the run's (stored figures stay the last round's:
    they already cover every round)."""
    for row in rows:
        mine = totals.setdefault(row["candidate"], {k: 0 for k in _SUMMED} | {"errors": {}})
        for key in _SUMMED:
            mine[key] += row.get(key) or 0
        for kind, n in (row.get("errors") or {}).items():
            mine["errors"][kind] = mine["errors"].get(kind, 0) + n
        if row.get("stopped") and not mine.get("stopped"):
            mine["stopped"], mine["message"] = row["stopped"], row.get("message")
        batching = row.get("batching")
        if batching and (not mine.get("batching") or batching["used"] < batching["requested"]):
            mine["batching"] = batching  # what batching ran, said once for the run


def replay_in_rounds(
    settings: PlannerSettings,
    relays_runner: RelayRunner,
    shards_runner: ShardRunner,
    *,
    candidates: Sequence[str] | None = None,
    per_type: int | None = None,
    refresh: bool = False,
    warehouse: str | None = None,
    shard_size: int | None = None,
    stage: Stage = direct,
) -> dict[str, Any]:
    """Replay the sample in rounds, each pair until its verdict is decided or the cap.

    Returns :func:`pipeline.replay.make_replay`'s summary of the last round (the stored figures
    are cumulative) with ``rounds`` (per round: the look, requests asked, pairs still open) and
    ``pairs`` (each pair's state and the replays its decision needed)."""
    chosen = [c.name for c in select_candidates(settings, candidates)]
    warehouse = warehouse or str(settings.warehouse.path)
    cap = per_type or settings.replay.per_type
    sample = stage(
        "draw-sample",
        draw,
        warehouse,
        cap,
        settings.replay.uncertain,
        settings.replay.seed,
    )
    relays = {c.name: c for c in select_candidates(settings, chosen) if c.kind == "relay"}
    con = open_warehouse(warehouse, read_only=True, create=False)
    try:
        layout = sample_layout(con, settings.replay.seed, sample["sample_id"])
        # A relay's stored answers are renewed whatever the rounds decide (they expire, a slice
        # is renewed each night, a new served model replaces them): round 1 offers them all to
        # the relay's lane, which sends only those due.
        renewable = {
            name: replayed_ids(
                con,
                sample["sample_id"],
                RelayBackend(name, str(c.base_url), str(c.model)).fingerprint(),
            )
            for name, c in relays.items()
        }
    finally:
        con.close()
    by_type, uncertain = _positions(layout)
    budget = CostBudget(settings.replay.max_cost_usd)
    judge_budget = CostBudget(settings.judge.max_cost_usd) if settings.judge.enabled else None
    open_pairs = {(t, name) for t in by_type for name in chosen}
    rounds: list[dict[str, Any]] = []
    verdicts: dict[tuple[str, str], Any] = {}
    last: dict[str, Any] = {}
    totals = {"total": 0, "done": 0, "cached_requests": 0, "replayed_requests": 0}
    per_candidate: dict[str, dict[str, Any]] = {}
    previous = 0
    for k, n_k in enumerate(looks(cap, settings.verdict.first_round)):
        only: dict[str, set[str]] = {name: set() for name in chosen}
        for task_type, name in open_pairs:
            only[name].update(by_type[task_type][previous:n_k])
        if k == 0:
            for name in chosen:
                only[name].update(uncertain)
                only[name].update(renewable.get(name, ()))
        asked = sum(len(v) for v in only.values())
        if not asked:
            break
        last = make_replay(
            settings,
            relays_runner,
            shards_runner,
            candidates=chosen,
            per_type=cap,
            refresh=refresh,
            warehouse=warehouse,
            shard_size=shard_size,
            stage=stage,
            only=only,
            budget=budget,
            adaptive=False,
            sample=sample,
        )
        for key in totals:
            totals[key] += int(last.get("shards", {}).get(key, 0))
        _add_round(per_candidate, last.get("candidates", []))
        scored = stage(
            f"score-round-{k + 1}", score_replays, settings, warehouse, None, False, judge_budget
        )
        verdicts = stage(f"verdicts-round-{k + 1}", pair_verdicts, settings, warehouse)
        closed = {
            pair for pair in open_pairs if verdicts.get(pair) is not None and verdicts[pair].stopped
        }
        open_pairs -= closed
        rounds.append(
            {
                "look": n_k,
                "asked": asked,
                "sent": sum(int(c.get("sent", 0) or 0) for c in last.get("candidates", [])),
                "closed": len(closed),
                "open": len(open_pairs),
                "judge_awaiting": scored.get("awaiting_judge", 0),
            }
        )
        previous = n_k
        stopped = {c.get("stopped") for c in last.get("candidates", [])}
        if not open_pairs or "budget" in stopped or stop_requested():
            break
    if not rounds:  # nothing to ask: the summary of an empty round
        last = make_replay(
            settings,
            relays_runner,
            shards_runner,
            candidates=chosen,
            per_type=cap,
            warehouse=warehouse,
            stage=stage,
            only={name: set() for name in chosen},
            budget=budget,
            adaptive=False,
            sample=sample,
        )
    pairs = [
        {
            "task_type": t,
            "candidate": name,
            "state": None if verdicts.get((t, name)) is None else verdicts[(t, name)].state,
            "samples": None if verdicts.get((t, name)) is None else verdicts[(t, name)].n,
            "stopped": (t, name) not in open_pairs,
        }
        for t in sorted(by_type)
        for name in chosen
        if name != PRODUCTION
    ]
    return {
        **last,
        "candidates": [
            {**row, **per_candidate.get(row["candidate"], {})} for row in last["candidates"]
        ],
        "sample": sample,
        "spent_usd": budget.spent_usd,
        # The plan's scoring pass spends only what is left of the judge's cap for this run.
        "judge_spent_usd": judge_budget.spent_usd if judge_budget is not None else 0.0,
        "shards": totals,
        "adaptive": True,
        "cap": cap,
        "rounds": rounds,
        "pairs": pairs,
    }
