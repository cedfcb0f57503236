"""Which label a request trains with, when several sources labeled it.

Sources, by precedence: ``metadata`` (a human label logged with the request) wins over ``relay``
(an LLM annotator) which wins over ``rules`` (transparent heuristics). Every label keeps its
source. Rules only bootstrap: with ``use="all"`` they are used when neither humans nor the relay
labeled anything. A label outside the taxonomy is counted and dropped, never mapped to a guess.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from classifiers.taxonomy import Taxonomy

LabelSource = Literal["metadata", "relay", "rules"]
LabelChoice = Literal["metadata", "rules", "relay", "all"]
SOURCES: tuple[str, ...] = ("metadata", "relay", "rules")  # precedence: first wins
LABEL_CHOICES: tuple[str, ...] = ("metadata", "rules", "relay", "all")


@dataclass(frozen=True)
class LabelRecord:
    request_id: str
    task_type: str
    source: str
    annotator: str | None = None


@dataclass
class LabelResolution:
    """The winning label per request, and what happened to the others."""

    labels: dict[str, LabelRecord]
    by_source: dict[str, int]  # winning labels per source
    available: dict[str, int]  # labels present per source before precedence
    overridden: int = 0  # labels that lost to a higher-precedence source
    disagreements: int = 0  # ...of which named a different task type
    outside_taxonomy: dict[str, int] = field(default_factory=dict)  # raw label -> count
    rules_bootstrap: bool = False  # rules used because no other labels exist
    sources_used: tuple[str, ...] = ()


def normalize_labels(
    rows: Iterable[tuple[str, object]], taxonomy: Taxonomy
) -> tuple[list[tuple[str, str]], Counter[str]]:
    """(request_id, task type) for raw labels the taxonomy knows; the rest counted by value."""
    kept: list[tuple[str, str]] = []
    outside: Counter[str] = Counter()
    for request_id, raw in rows:
        task = taxonomy.normalize(raw)
        if task is None:
            outside[str(raw)[:60]] += 1
        else:
            kept.append((request_id, task))
    return kept, outside


def sources_for(use: str, available: dict[str, int]) -> tuple[tuple[str, ...], bool]:
    """The sources a training run reads for ``use``, and whether rules are a bootstrap."""
    if use == "all":
        human_or_relay = available.get("metadata", 0) + available.get("relay", 0)
        return (("metadata", "relay"), False) if human_or_relay else (("rules",), True)
    return (use,), False


def resolve_labels(
    records: Iterable[LabelRecord], taxonomy: Taxonomy, use: str = "all"
) -> LabelResolution:
    """One label per request from ``records`` (any sources), by precedence."""
    records = list(records)
    outside: Counter[str] = Counter()
    valid: list[LabelRecord] = []
    for record in records:
        if record.task_type in taxonomy.names:
            valid.append(record)
        else:
            outside[record.task_type] += 1
    available = Counter(r.source for r in valid)
    sources, bootstrap = sources_for(use, dict(available))
    rank = {s: i for i, s in enumerate(SOURCES)}
    chosen: dict[str, LabelRecord] = {}
    overridden = disagreements = 0
    ordered = sorted(
        (r for r in valid if r.source in sources),
        key=lambda r: (rank.get(r.source, 99), r.request_id, r.annotator or ""),
    )
    for record in ordered:
        winner = chosen.get(record.request_id)
        if winner is None:
            chosen[record.request_id] = record
            continue
        overridden += 1
        disagreements += winner.task_type != record.task_type
    by_source = Counter(r.source for r in chosen.values())
    return LabelResolution(
        labels=chosen,
        by_source={s: by_source.get(s, 0) for s in SOURCES},
        available={s: available.get(s, 0) for s in SOURCES},
        overridden=overridden,
        disagreements=disagreements,
        outside_taxonomy=dict(outside),
        rules_bootstrap=bootstrap,
        sources_used=sources,
    )
