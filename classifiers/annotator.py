"""The relay annotator: an LLM labels a sample of unlabeled requests with a fixed prompt.

The completion function is handed in (``messages -> text``; ``flows`` builds it over httpx), so
this package never talks to the network itself. Answers are parsed strictly: exactly one task
type name (case and surrounding quotes, backticks or a final period aside), nothing else. An
invalid answer is counted and dropped, never guessed. A call that fails (timeout, HTTP error) is
counted; after ``max_consecutive_failures`` in a row the run stops early instead of waiting out a
dead endpoint. Each result goes to ``on_result`` as it arrives, so the caller can cache it before
the next request is paid for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from classifiers.errors import AnnotatorError
from classifiers.features import clip, content_text
from classifiers.taxonomy import Taxonomy

Complete = Callable[[list[dict[str, str]]], str]
OnResult = Callable[[str, str | None, str], None]  # (request_id, task type or None, raw answer)
PROMPT_VERSION = "label-v1"
REQUEST_CHARS = 3000

LABELING_PROMPT = """You label requests sent to an AI assistant with their task type.

Task types:
{types}

Read the request between <request> and </request>. Answer with exactly one task type name from
the list above and nothing else: no explanation, no punctuation."""


def labeling_messages(
    messages: Sequence[Mapping[str, Any]], taxonomy: Taxonomy
) -> list[dict[str, str]]:
    """The fixed labeling prompt for one request."""
    types = "\n".join(f"- {t.name}: {t.description}" for t in taxonomy.types)
    lines: list[str] = []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        text = content_text(message.get("content"))
        lines.append(f"[{message.get('role', '?')}] {text}")
    body = clip("\n".join(lines), REQUEST_CHARS // 2, REQUEST_CHARS // 2)
    return [
        {"role": "system", "content": LABELING_PROMPT.format(types=types)},
        {"role": "user", "content": f"<request>\n{body}\n</request>"},
    ]


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
) -> tuple[list[tuple[str, str]], AnnotationReport]:
    """Label ``requests`` (request_id, messages) through ``complete``; returns the valid labels."""
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
            answer = complete(labeling_messages(messages, taxonomy))
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
