"""Transparent heuristics that label only the obvious requests, to bootstrap when no other labels
exist.

Each rule is a name, a task type and a regular expression over one part of the request (the start
of the last user message, the system prompt, or the whole normalized text). A request is labeled
when the rules that match all agree on one task type; when rules of two types match, the request
is not obvious and stays unlabeled. Rules never guess: no rule, no label.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from classifiers.features import normalize, split_messages

Part = Literal["start", "system", "all"]


@dataclass(frozen=True)
class Rule:
    name: str
    task_type: str
    part: Part  # 'start': first 80 chars of the last user message; 'system'; 'all': user + system
    pattern: re.Pattern[str]
    unless: re.Pattern[str] | None = None  # abstain when this matches the whole text


@dataclass(frozen=True)
class RuleMatch:
    task_type: str
    rule: str  # the names of the agreeing rules, joined by '+'


def _rule(name: str, task_type: str, part: Part, pattern: str, unless: str | None = None) -> Rule:
    return Rule(name, task_type, part, re.compile(pattern), re.compile(unless) if unless else None)


# Rewriting or translating source code is a code request, not a text rewrite.
_ABOUT_CODE = (
    r"```|\b(?:code|snippet|function|script|program|python|javascript|typescript|java|c\+\+|c#|"
    r"php|ruby|golang|rust|sql|bash|html|css|regex)\b|#include|\bdef \w+\(|[;{}]\s*$"
)


def _any(*alternatives: str) -> str:
    """A non-capturing group of regular-expression alternatives."""
    return "(?:" + "|".join(alternatives) + ")"


_PLEASE = r"^(?:please )?"
_LANGS = _any(
    "python",
    "javascript",
    "typescript",
    "java",
    "go",
    "rust",
    r"c\+\+",
    "c#",
    "sql",
    "bash",
    "shell",
    "regex",
    "function",
    "script",
    "class",
    "method",
    "query",
    "unit tests?",
)
_FEW = _any(r"\d+", "some", "a few", "ten", "five", "three")

RULES: tuple[Rule, ...] = (
    _rule(
        "code_fence",
        "code",
        "all",
        r"```|\b"
        + _any(
            r"traceback \(most recent call last\)",
            "syntaxerror",
            "typeerror",
            "nullpointerexception",
        ),
    ),
    _rule(
        "code_request",
        "code",
        "start",
        _PLEASE
        + _any("write", "implement", "create", "fix", "debug", "refactor", "optimi[sz]e")
        + r" (?:a |an |the |this |my )?"
        + _LANGS
        + r"\b",
    ),
    _rule(
        "translate",
        "rewrite",
        "start",
        _PLEASE
        + _any("translate", "traduce", "traduis", "traduza", "traduci", "übersetze", "переведи")
        + r"\b|^"
        + _any("翻译", "請翻譯", "请翻译"),
        _ABOUT_CODE,
    ),
    _rule(
        "translate_into",
        "rewrite",
        "all",
        r"^.{0,300}\btranslate (?:it|this|them|that|the \w+) (?:in)?to [a-z]+",
        _ABOUT_CODE,
    ),
    _rule(
        "rewrite",
        "rewrite",
        "start",
        _PLEASE
        + _any(
            "rewrite",
            "rephrase",
            "paraphrase",
            "reword",
            "proofread",
            "fix the (?:grammar|spelling|typos)",
            "make (?:this|it) (?:more|less|sound)",
            "reescribe",
            "reformule",
            "umformulieren",
            "schreibe .{0,20}um",
        )
        + r"\b",
        _ABOUT_CODE,
    ),
    _rule(
        "summarize",
        "summarization",
        "start",
        _PLEASE
        + _any(
            "summari[sz]e",
            "sum up",
            "tl;?dr",
            "give me a (?:short |brief )?summary",
            "resume",
            "résume",
            "resuma",
            "fasse .{0,30}zusammen",
            "riassumi",
        )
        + r"\b|^"
        + _any("总结", "概括", "要約"),
    ),
    _rule(
        "summarize_tail",
        "summarization",
        "all",
        _any(r"\btl;?dr:?", "summary:", r"summari[sz]e (?:this|the above)\.?") + "$",
    ),
    _rule(
        "context_question",
        "closed_qa",
        "all",
        r"\b"
        + _any(
            "context", "passage", "document", "article", "text", "contexto", "contexte", "kontext"
        )
        + r"\s?:.{20,}\bquestion\s?:",
    ),
    _rule(
        "answer_from_text",
        "closed_qa",
        "all",
        r"\b(?:according to|based on|using only) the "
        + _any("passage", "text", "article", "context", "document", "paragraph")
        + r"s?\b(?! above, (?:write|summari))",
    ),
    _rule(
        "extract",
        "extraction",
        "start",
        _PLEASE
        + _any(
            "extract",
            "pull out",
            "list all (?:the )?(?:names|dates|emails|entities|people|companies)",
            "find all (?:the )?(?:names|dates|emails|entities)",
            "extrae",
            "extrais",
            "extrahiere",
        )
        + r"\b",
    ),
    _rule(
        "extract_system",
        "extraction",
        "system",
        r"\bextract\b.{0,80}\b(?:json|fields|keys|entities)\b",
    ),
    _rule(
        "classify",
        "classification",
        "start",
        _PLEASE + r"(?:classify|categori[sz]e|label|tag) (?:this|the|each|following|these)\b"
        r"|^is (?:this|the following) (?:email|message|review|comment|text) "
        r"(?:spam|positive|negative|toxic)",
    ),
    _rule(
        "classify_system",
        "classification",
        "system",
        r"\b(?:classify|categori[sz]e|label)\b.{0,120}\b(?:as|into|with one (?:word|label))\b",
    ),
    _rule(
        "brainstorm",
        "brainstorming",
        "start",
        _PLEASE
        + _any(
            "brainstorm",
            rf"give me {_FEW} (?:\w+ )?(?:ideas|names|suggestions)",
            rf"list {_FEW} (?:\w+ )?ideas",
            rf"come up with {_FEW} ",
        ),
    ),
    _rule(
        "math_steps",
        "reasoning",
        "all",
        # A short math question only: long prompts that ask for steps are rarely just math.
        r"^(?=.{0,400}$)(?:.*\b(?:think|reason|solve it|work it out) step[ -]by[ -]step\b.*\d"
        r"|.*\d.*\bstep[ -]by[ -]step\b)",
        _ABOUT_CODE,
    ),
    _rule(
        "solve",
        "reasoning",
        "start",
        r"^(?:solve|calculate|compute|prove that|find x)\b",
        _ABOUT_CODE,
    ),
    _rule(
        "creative",
        "text_generation",
        "start",
        _PLEASE
        + r"(?:write|compose) (?:me )?(?:a|an) (?:short |funny |sad |rhyming )?"
        + _any(
            "poem",
            "story",
            "haiku",
            "limerick",
            "song",
            "sonnet",
            "fairy tale",
            "toast",
            "speech",
            "essay",
            "blog post",
        )
        + r"\b",
    ),
    _rule(
        "greeting",
        "chatbot",
        "all",
        r"^\W*"
        + _any(
            "hi",
            "hello",
            "hey",
            "good (?:morning|evening)",
            "hola",
            "salut",
            "bonjour",
            "hallo",
            "ciao",
        )
        + r"(?: there)?\W*(?:how are you(?: doing)?(?: today)?)?\W*$",
    ),
    _rule(
        "roleplay",
        "chatbot",
        "all",
        r"\b"
        + _any(
            "let's role-?play",
            "pretend (?:you are|to be)",
            "stay in character",
            "you are my (?:friend|girlfriend|boyfriend|companion)",
        )
        + r"\b",
    ),
    _rule(
        "companion",
        "chatbot",
        "system",
        r"\b(?:companion|chat partner|role-?play|in character|virtual friend)\b",
    ),
    _rule(
        "fact_question",
        "open_qa",
        "start",
        r"^(?!.*\b(?:you|your|i|my|me|we|our)\b)"
        r"(?:what|who|when|where|why|how) (?:is|are|was|were|did|does|do) [^.!]{3,100}\?$",
        r"\d",  # a number in the question: usually something to compute, not to recall
    ),
)


_ANY_TURN = frozenset({"code_fence", "roleplay", "companion"})


def rule_label(
    messages: Sequence[Mapping[str, Any]], rules: Sequence[Rule] = RULES
) -> RuleMatch | None:
    """The task type the rules agree on for one request, or None when none or several match."""
    system_raw, user_raw, _, history = split_messages(messages)
    user = normalize(user_raw[:4000])
    system = normalize(system_raw[:2000])
    parts = {"start": user[:80], "system": system, "all": f"{system} | {user}".strip(" |")}
    # The open-question rule reads the whole message: a long text with a question is not "obvious".
    # A follow-up turn is read with its conversation: only rules that hold for any turn apply.
    hits = [
        r
        for r in rules
        if (not history or r.name in _ANY_TURN)
        and r.pattern.search(parts[r.part] if r.name != "fact_question" else user)
        and not (r.unless is not None and r.unless.search(parts["all"]))
    ]
    types = {r.task_type for r in hits}
    if len(types) != 1:
        return None
    return RuleMatch(types.pop(), "+".join(r.name for r in hits))


def rule_labels(
    requests: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], rules: Sequence[Rule] = RULES
) -> list[tuple[str, str, str]]:
    """(request_id, task_type, rule) for every request the rules label."""
    out: list[tuple[str, str, str]] = []
    for request_id, messages in requests:
        match = rule_label(messages, rules)
        if match is not None:
            out.append((request_id, match.task_type, match.rule))
    return out


@lru_cache(maxsize=1)
def rule_precision() -> dict[str, float]:
    """Each rule's precision on public labeled requests (``data/rule_precision.json``)."""
    raw = resources.files("classifiers").joinpath("data/rule_precision.json").read_text("utf-8")
    return {name: float(row["precision"]) for name, row in json.loads(raw)["rules"].items()}


def rule_weight(match: RuleMatch, default: float = 0.5) -> float:
    """How much a rule label counts in training: the best precision among the agreeing rules
    (a rule never measured counts as a coin flip)."""
    table = rule_precision()
    return max(table.get(name, default) for name in match.rule.split("+"))
