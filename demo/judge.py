"""The demo's judge: a rule, not a language model, behind the project's model server.

No model that can judge runs offline on this project's machines (the demo's tiny decoders have a
256-token context and were never taught to compare answers), so the demo's ``[judge]`` is this
rule served over the OpenAI protocol on 127.0.0.1 — the same relay client, budget, rate limits,
cache and concurrency as a real judge, and the page labels its figures as coming from there.

The rule reads the judge prompt (:func:`planner.evaluate.scoring.judge_messages`: the
conversation and two answers between markers) and prefers the answer that is more *relevant*
(the share of the last request's content words it uses) and less *degenerate* (the share of its
words that are not repeats); within 0.1 of each other it answers TIE. It sees no labels and
knows nothing of which answer is production's. It is symmetric, so its position bias is 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

_WORD = re.compile(r"[^\W\d_]{4,}")
_STOP = frozenset(
    {"about", "with", "from", "that", "this", "what", "which", "your", "their", "there", "have",
     "into", "some", "more", "please", "write", "answer", "using", "only", "give", "short"}
)  # fmt: skip
TIE_MARGIN = 0.1


def _between(text: str, start: str, end: str) -> str:
    _, _, rest = text.partition(start)
    return rest.partition(end)[0] if rest else ""


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.casefold()) if w not in _STOP]


def merit(request: str, answer: str) -> float:
    """Relevance to the request's content words, times the share of the answer's words that are
    not repeats (0 for an empty answer)."""
    words = _words(answer)
    if not words:
        return 0.0
    asked = set(_words(request))
    relevance = len(asked & set(words)) / len(asked) if asked else 1.0
    variety = len(set(words)) / len(words)
    return relevance * variety


def verdict(prompt: str) -> str:
    """A, B or TIE for one judge prompt."""
    convo = _between(prompt, "<<<CONVERSATION\n", "\nCONVERSATION>>>")
    last = convo.rsplit("[user] ", 1)[-1]
    a = merit(last, _between(prompt, "<<<ANSWER A\n", "\nANSWER A>>>"))
    b = merit(last, _between(prompt, "<<<ANSWER B\n", "\nANSWER B>>>"))
    if abs(a - b) <= TIE_MARGIN:
        return "TIE"
    return "A" if a > b else "B"


class RuleJudgeEngine:
    """A chat engine for the model server that answers judge prompts by :func:`verdict`."""

    pieces_are_tokens = True

    def __init__(self, model_name: str = "demo-rule-judge") -> None:
        self.model_name = model_name

    def complete(
        self, messages: list[dict[str, Any]], max_tokens: int, temperature: float
    ) -> Iterator[str]:
        user = next(
            (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"),
            "",
        )
        yield verdict(user)

    def count_tokens(self, text: str) -> int:
        return len(text.split())
