"""Conversations and the stickiness the routing config enables: a conversation stays on its first
turn's route, so a later turn of another task type rides along. :func:`summarize_turns` gives the
warehouse's conversation shape, :func:`stickiness_impact` what stickiness moves for a decision.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from planner.evaluate.decision import Decision
from planner.evaluate.evidence import (
    PRODUCTION,
    TIER_RANK,
)


@dataclass(frozen=True)
class Turn:
    conversation_id: str
    turn_index: int
    task_type: str


@dataclass(frozen=True)
class Conversations:
    """Logged requests grouped into conversations, in counts: all that stickiness needs, and
    small whatever the traffic (the warehouse counts it in SQL: ``conversation_shape``)."""

    requests: int
    depth: tuple[tuple[int, int], ...]  # (turns in a conversation, conversations that long)
    later: tuple[tuple[str, str, int], ...]  # (first turn's type, later turn's type, turns)

    @property
    def conversations(self) -> int:
        return sum(n for _, n in self.depth)


def summarize_turns(turns: Iterable[Turn]) -> Conversations:
    """The counts of ``turns``; a conversation's first turn is its lowest ``turn_index`` (the
    earlier one on a tie)."""
    by_conv: dict[str, list[Turn]] = defaultdict(list)
    for turn in turns:
        by_conv[turn.conversation_id].append(turn)
    depth: Counter[int] = Counter(len(conv) for conv in by_conv.values())
    later: Counter[tuple[str, str]] = Counter()
    for conv in by_conv.values():
        conv.sort(key=lambda t: t.turn_index)
        for turn in conv[1:]:
            later[(conv[0].task_type, turn.task_type)] += 1
    return Conversations(
        requests=sum(depth[n] * n for n in depth),
        depth=tuple(sorted(depth.items())),
        later=tuple((a, b, n) for (a, b), n in sorted(later.items())),
    )


@dataclass(frozen=True)
class Stickiness:
    """What keeping a conversation on its first turn's route moves."""

    requests: int
    conversations: int
    multi_turn_conversations: int
    multi_turn_share: float  # share of requests that belong to multi-turn conversations
    later_turns: int
    rerouted_turns: int  # later turns whose own type would route elsewhere
    rerouted_share: float  # of all requests
    to_lower_tier: int  # rerouted turns sent to a cheaper tier than their type's route
    to_higher_tier: int
    moves: tuple[tuple[str, str, str, int], ...] = field(
        default=()
    )  # (task type, own route, sticky route, count)

    def summary(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k != "moves"}
        data["moves"] = [
            {"task_type": t, "own_route": a, "sticky_route": b, "count": n}
            for t, a, b, n in self.moves
        ]
        return data


def stickiness_impact(conversations: Conversations, decision: Decision) -> Stickiness:
    """Count the later turns that stickiness routes differently from their own task type."""
    routes = decision.route_map()
    kinds = {r.route: r.kind for r in decision.routes}
    requests = conversations.requests
    multi = sum(n for size, n in conversations.depth if size >= 2)
    in_multi = sum(size * n for size, n in conversations.depth if size >= 2)
    moves: Counter[tuple[str, str, str]] = Counter()
    later = lower = higher = 0
    for first_type, task_type, n in conversations.later:
        later += n
        sticky = routes.get(first_type, PRODUCTION)
        own = routes.get(task_type, PRODUCTION)
        if own == sticky:
            continue
        moves[(task_type, own, sticky)] += n
        own_rank = TIER_RANK.get(kinds.get(own, "production"), 2)
        sticky_rank = TIER_RANK.get(kinds.get(sticky, "production"), 2)
        if sticky_rank < own_rank:
            lower += n
        elif sticky_rank > own_rank:
            higher += n
    rerouted = sum(moves.values())
    return Stickiness(
        requests=requests,
        conversations=conversations.conversations,
        multi_turn_conversations=multi,
        multi_turn_share=in_multi / requests if requests else 0.0,
        later_turns=later,
        rerouted_turns=rerouted,
        rerouted_share=rerouted / requests if requests else 0.0,
        to_lower_tier=lower,
        to_higher_tier=higher,
        moves=tuple((t, a, b, n) for (t, a, b), n in sorted(moves.items())),
    )


# ---------------------------------------------------------------- other rules, same evidence
