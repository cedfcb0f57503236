"""The relay annotator: an LLM labels a sample of unlabeled requests with a fixed prompt.

The completion function is handed in (``messages -> text``; ``flows`` builds it over httpx), so
this package never talks to the network itself. Answers are parsed strictly: exactly one task
type name (case and surrounding quotes, backticks or a final period aside), nothing else. An
invalid answer is counted and dropped, never guessed. A call that fails (timeout, HTTP error) is
counted; after ``max_consecutive_failures`` in a row the run stops early instead of waiting out a
dead endpoint. Each result goes to ``on_result`` as it arrives, so the caller can cache it before
the next request is paid for.

The prompt carries the taxonomy's definitions and a few labeled examples (``few_shot_examples``:
from human labels when the warehouse has them, else ``data/annotator_examples.json``). Where a
request has both a human and an annotator label, ``agreement`` says how often they agree (and
Cohen's kappa), per task type: the figure that says whether annotator labels can stand in for
human ones. Rate limits, the budget and the answer cache belong to the caller's ``complete``
(the relay client), never to this module.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from classifiers.errors import AnnotatorError
from classifiers.features import clip, content_text
from classifiers.taxonomy import Taxonomy

Complete = Callable[[list[dict[str, str]]], str]
OnResult = Callable[[str, str | None, str], None]  # (request_id, task type or None, raw answer)
PROMPT_VERSION = "label-v2"
REQUEST_CHARS = 3000
EXAMPLE_CHARS = 300

LABELING_PROMPT = """You label requests sent to an AI assistant with their task type.

Task types:
{types}
{examples}
Read the request between <request> and </request>. Answer with exactly one task type name from
the list above and nothing else: no explanation, no punctuation."""

Example = tuple[str, str]  # (request text, task type)


def _body(messages: Sequence[Mapping[str, Any]], chars: int) -> str:
    lines: list[str] = []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        text = content_text(message.get("content"))
        lines.append(f"[{message.get('role', '?')}] {text}")
    return clip("\n".join(lines), chars // 2, chars // 2)


def labeling_messages(
    messages: Sequence[Mapping[str, Any]], taxonomy: Taxonomy, examples: Sequence[Example] = ()
) -> list[dict[str, str]]:
    """The labeling prompt for one request: definitions, then ``examples``, then the request."""
    types = "\n".join(f"- {t.name}: {t.description}" for t in taxonomy.types)
    shown = ""
    if examples:
        shown = (
            "\nExamples:\n"
            + "\n".join(
                f"<request>\n{clip(text, EXAMPLE_CHARS)}\n</request> -> {task}"
                for text, task in examples
            )
            + "\n"
        )
    body = _body(messages, REQUEST_CHARS)
    return [
        {"role": "system", "content": LABELING_PROMPT.format(types=types, examples=shown)},
        {"role": "user", "content": f"<request>\n{body}\n</request>"},
    ]


def builtin_examples(taxonomy: Taxonomy) -> list[Example]:
    """The shipped examples (``data/annotator_examples.json``) for the taxonomy's types."""
    raw = resources.files("classifiers").joinpath("data/annotator_examples.json").read_text("utf-8")
    rows = json.loads(raw)["examples"]
    return [(r["request"], r["task_type"]) for r in rows if r["task_type"] in taxonomy.names]


def few_shot_examples(
    labeled: Sequence[tuple[Sequence[Mapping[str, Any]], str]],
    taxonomy: Taxonomy,
    *,
    per_type: int = 1,
    seed: int = 0,
) -> list[Example]:
    """``per_type`` examples per task type from human-labeled requests (messages, type), seeded;
    a type with none takes the shipped example instead."""
    rng = random.Random(seed)
    by_type: dict[str, list[str]] = {}
    for messages, task in labeled:
        if task in taxonomy.names:
            by_type.setdefault(task, []).append(_body(messages, EXAMPLE_CHARS))
    shipped = dict((task, text) for text, task in builtin_examples(taxonomy))
    out: list[Example] = []
    for task in taxonomy.names:
        pool = sorted(set(by_type.get(task, [])))
        if pool:
            out += [(text, task) for text in rng.sample(pool, min(per_type, len(pool)))]
        elif task in shipped:
            out.append((shipped[task], task))
    return out


def agreement(annotator: Mapping[str, str], human: Mapping[str, str]) -> dict[str, Any]:
    """How often the annotator's label equals the human one, over requests that have both:
    accuracy, Cohen's kappa, and per task type (by the human label) its recall."""
    both = sorted(set(annotator) & set(human))
    n = len(both)
    if n == 0:
        return {"rows": 0, "accuracy": None, "cohen_kappa": None, "per_type": {}}
    agree = sum(annotator[r] == human[r] for r in both)
    p_o = agree / n
    a_counts = Counter(annotator[r] for r in both)
    h_counts = Counter(human[r] for r in both)
    p_e = sum(a_counts[t] * h_counts[t] for t in set(a_counts) | set(h_counts)) / (n * n)
    kappa = (p_o - p_e) / (1 - p_e) if p_e < 1 else 1.0
    per_type = {
        t: {
            "rows": h_counts[t],
            "agreement": round(
                sum(annotator[r] == t for r in both if human[r] == t) / h_counts[t], 4
            ),
        }
        for t in sorted(h_counts)
    }
    return {
        "rows": n,
        "accuracy": round(p_o, 4),
        "cohen_kappa": round(kappa, 4),
        "per_type": per_type,
    }


def parse_label(answer: object, taxonomy: Taxonomy) -> str | None:
    """The task type an answer names, or None unless it is exactly one taxonomy name."""
    if not isinstance(answer, str):
        return None
    text = answer
    for _ in range(2):  # `code`. and "code." alike
        text = text.strip().removesuffix(".").strip().strip("`\"'")
    text = text.strip().lower()
    return text if text in taxonomy.names else None


@dataclass
class AnnotationReport:
    requested: int = 0  # requests sent (calls paid or attempted)
    labeled: int = 0
    invalid: int = 0  # answered, but not exactly one task type
    timeouts: int = 0
    errors: int = 0  # HTTP or transport failures, or anything else the call raised
    skipped: int = 0  # not sent because the run stopped early
    stopped_early: str | None = None
    seconds: float = 0.0
    invalid_examples: list[str] = field(default_factory=list)
    error_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def message(self) -> str:
        parts = [f"annotator: {self.labeled} labeled of {self.requested} sent"]
        if self.invalid:
            parts.append(f"{self.invalid} invalid answers dropped")
        if self.timeouts:
            parts.append(f"{self.timeouts} timed out")
        if self.errors:
            parts.append(f"{self.errors} failed")
        if self.stopped_early:
            parts.append(f"stopped early ({self.stopped_early}; {self.skipped} not sent)")
        return ", ".join(parts)


def annotate(
    requests: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
    complete: Complete,
    taxonomy: Taxonomy,
    *,
    on_result: OnResult | None = None,
    max_consecutive_failures: int = 5,
    examples: Sequence[Example] = (),
) -> tuple[list[tuple[str, str]], AnnotationReport]:
    """Label ``requests`` (request_id, messages) through ``complete``; returns the valid labels.
    ``examples`` (see ``few_shot_examples``) go into every prompt."""
    report = AnnotationReport()
    labels: list[tuple[str, str]] = []
    failures_in_row = 0
    started = time.perf_counter()
    for n, (request_id, messages) in enumerate(requests):
        if failures_in_row >= max_consecutive_failures:
            report.skipped = len(requests) - n
            report.stopped_early = f"{failures_in_row} failures in a row"
            break
        report.requested += 1
        try:
            answer = complete(labeling_messages(messages, taxonomy, examples))
        except AnnotatorError as exc:
            failures_in_row += 1
            if exc.kind == "timeout":
                report.timeouts += 1
            else:
                report.errors += 1
            if len(report.error_examples) < 3:
                report.error_examples.append(f"{request_id}: {exc}")
            continue
        except Exception as exc:  # a completion function is foreign code: count, do not crash
            failures_in_row += 1
            report.errors += 1
            if len(report.error_examples) < 3:
                report.error_examples.append(f"{request_id}: {type(exc).__name__}: {exc}")
            continue
        failures_in_row = 0
        task = parse_label(answer, taxonomy)
        if task is None:
            report.invalid += 1
            if len(report.invalid_examples) < 3:
                report.invalid_examples.append(str(answer)[:80])
        else:
            report.labeled += 1
            labels.append((request_id, task))
        if on_result is not None:
            on_result(request_id, task, str(answer)[:200])
    report.seconds = round(time.perf_counter() - started, 3)
    return labels, report
