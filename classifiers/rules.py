"""Transparent heuristics that label only the obvious requests, to bootstrap when no other labels
exist.

Each rule is a name, a task type and a regular expression over one part of the request (the start
of the last user message, the system prompt, or the whole normalized text). A request is labeled
when the rules that match all agree on one task type; when rules of two types match, the request
is not obvious and stays unlabeled. Rules never guess: no rule, no label.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from classifiers.features import split_messages, normalize

Part = Literal["start", "system", "all"]


@dataclass(frozen=True)
class Rule:
    name: str
    task_type: str
    part: Part  # 'start': first 80 chars of the last user message; 'system'; 'all': user + system
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class RuleMatch:
    task_type: str
    rule: str  # the names of the agreeing rules, joined by '+'


def _rule(name: str, task_type: str, part: Part, pattern: str) -> Rule:
    return Rule(name, task_type, part, re.compile(pattern))


RULES: tuple[Rule, ...] = (
    _rule(
        "code_fence",
        "code",
        "all",
        r"```|\b(?:traceback \(most recent call last\)|syntaxerror|typeerror|nullpointerexception)",
    ),
    _rule(
        "code_request",
        "code",
        "start",
        r"^(?:please )?(?:write|implement|create|fix|debug|refactor|optimi[sz]e) (?:a |an |the |this |my )?"
        r"(?:python|javascript|typescript|java|go|rust|c\+\+|c#|sql|bash|shell|regex|function|script|class|method|query|unit tests?)\b",
    ),
    _rule(
        "translate",
        "rewrite",
        "start",
        r"^(?:please )?(?:translate|traduce|traduis|traduza|traduci|übersetze|переведи)\b|^(?:翻译|請翻譯|请翻译)",
    ),
    _rule(
        "translate_into",
        "rewrite",
        "all",
        r"\btranslate (?:it|this|them|that|the \w+) (?:in)?to [a-z]+",
    ),
    _rule(
        "rewrite",
        "rewrite",
        "start",
        r"^(?:please )?(?:rewrite|rephrase|paraphrase|reword|proofread|fix the (?:grammar|spelling|typos)|"
        r"make (?:this|it) (?:more|less|sound)|reescribe|reformule|umformulieren|schreibe .{0,20}um)\b",
    ),
    _rule(
        "summarize",
        "summarization",
        "start",
        r"^(?:please )?(?:summari[sz]e|sum up|tl;?dr|give me a (?:short |brief )?summary|resume|résume|resuma|"
        r"fasse .{0,30}zusammen|riassumi)\b|^(?:总结|概括|要約)",
    ),
    _rule(
        "summarize_tail",
        "summarization",
        "all",
        r"(?:\btl;?dr:?|summary:|summari[sz]e (?:this|the above)\.?)$",
    ),
    _rule(
        "context_question",
        "closed_qa",
        "all",
        r"\b(?:context|passage|document|article|text|contexto|contexte|kontext)\s?:.{20,}\bquestion\s?:",
    ),
    _rule(
        "answer_from_text",
        "closed_qa",
        "all",
        r"\b(?:according to|based on|using only) the (?:passage|text|article|context|document|paragraph)s?\b"
        r"(?! above, (?:write|summari))",
    ),
    _rule(
        "extract",
        "extraction",
        "start",
        r"^(?:please )?(?:extract|pull out|list all (?:the )?(?:names|dates|emails|entities|people|companies)|"
        r"find all (?:the )?(?:names|dates|emails|entities)|extrae|extrais|extrahiere)\b",
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
        r"^(?:please )?(?:classify|categori[sz]e|label|tag) (?:this|the|each|following|these)\b|"
        r"^is (?:this|the following) (?:email|message|review|comment|text) (?:spam|positive|negative|toxic)",
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
        r"^(?:please )?(?:brainstorm|give me (?:\d+|some|a few|ten|five|three) (?:\w+ )?(?:ideas|names|suggestions)|"
        r"list (?:\d+|some|a few|ten|five) (?:\w+ )?ideas|come up with (?:\d+|some|a few|ten|five) )",
    ),
    _rule(
        "math_steps",
        "reasoning",
        "all",
        r"\b(?:think|reason|solve it|work it out) step[ -]by[ -]step\b.*\d|\d.*\bstep[ -]by[ -]step\b",
    ),
    _rule("solve", "reasoning", "start", r"^(?:solve|calculate|compute|prove that|find x)\b"),
    _rule(
        "creative",
        "text_generation",
        "start",
        r"^(?:please )?(?:write|compose) (?:me )?(?:a|an) (?:short |funny |sad |rhyming )?"
        r"(?:poem|story|haiku|limerick|song|sonnet|fairy tale|toast|speech|essay|blog post)\b",
    ),
    _rule(
        "greeting",
        "chatbot",
        "all",
        r"^\W*(?:hi|hello|hey|good (?:morning|evening)|hola|salut|bonjour|hallo|ciao)(?: there)?\W*"
        r"(?:how are you(?: doing)?(?: today)?)?\W*$",
    ),
    _rule(
        "roleplay",
        "chatbot",
        "all",
        r"\b(?:let's role-?play|pretend (?:you are|to be)|stay in character|you are my (?:friend|girlfriend|boyfriend|companion))\b",
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
