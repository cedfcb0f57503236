"""The one string the classifier reads for a request: ``request_text(messages)``.

The ONNX model takes ONE string per request, so a gateway needs the model file plus this
function, which is small and deterministic on purpose (spec ``TEXT_VERSION``):

1. Texts: the system prompt is every ``system``/``developer`` message joined by newlines; the
   instruction is the LAST ``user`` message. Content-part lists contribute their ``text`` parts.
2. Structural markers, from the raw texts (their first 4000 characters; the regular
   expressions below in this module are part of the spec):
   ``__turnsN__`` (user messages, N capped at 4), ``__history__`` (an assistant message comes
   before the last user message), ``__sys__`` / ``__nosys__``, ``__lenN__`` (last user message
   length bucket: <60, <250, <1000, <4000, more), ``__linesN__`` (1, 2-5, 6+ lines),
   ``__codeblock__`` (a ``` fence), ``__codelike__`` (2+ lines that look like code),
   ``__json__`` (a JSON object key), ``__schema__`` (JSON-schema keys), ``__math__`` (digits
   joined by an operator), ``__question__`` (ends with a question mark), ``__quoted__`` (a
   quoted span of 20+ characters, 8+ in 「」/『』), ``__ctxN__`` (given context: the longest of
   the quoted span, the text after the first line, the text after a colon in the first 200
   characters; buckets <20, <200, <1000, more).
3. Each text is clipped raw (system prompt: first 600 code points; user message: first 1000 and
   last 600 joined by `` ... `` when longer than 1600), normalized (lone surrogates become ``?``,
   ``str.lower``, every run of whitespace or control characters becomes one space, ends
   stripped), then clipped again (system prompt: first 300; user message: first 500 and last 300
   joined by `` ... `` when longer than 800). A clip strips the spaces at its cut.
4. Keyword markers ``__kw_<family>__`` for every family of ``data/lexicon.json`` with an entry in
   the normalized, clipped system + user text ('x*' = a word starting with x; other entries =
   whole words or phrases, bounded by non-word characters; entries with CJK/kana/hangul match
   anywhere). The families pool phrasings across languages, which is what lets a model trained
   on one source's phrasing recognize another's.
5. The result: ``"<markers> | <system> | <user>"``, markers in the order above, families in
   lexicon order; an empty part leaves no extra space (``"<markers> | | <user>"``).

Whitespace is collapsed and case lowered here, not in the model, so the ONNX graph needs no
locale and sees exactly what scikit-learn saw.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

TEXT_VERSION = "rt1"
SYSTEM_CHARS = 300
USER_HEAD = 500
USER_TAIL = 300
_SCAN_CHARS = 4000  # structural checks look at this much of each raw text

STRUCTURE_MARKERS: tuple[str, ...] = (
    *(f"__turns{n}__" for n in range(1, 5)),
    "__history__",
    "__sys__",
    "__nosys__",
    *(f"__len{n}__" for n in range(5)),
    *(f"__lines{n}__" for n in range(1, 4)),
    "__codeblock__",
    "__codelike__",
    "__json__",
    "__schema__",
    "__math__",
    "__question__",
    "__quoted__",
    *(f"__ctx{n}__" for n in range(4)),
)

_SPACE = re.compile(r"[\s\x00-\x1f\x7f]+")
_WORD = re.compile(r"\w+")
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_CODE_LINE = re.compile(
    r"^\s*(?:def |class |import |from [\w.]+ import|#include|public |private |function |"
    r"const |let |var |return\b|if ?\(|for ?\(|while ?\(|select .+ from|\}|<\w+[ >]|\$ )"
    r"|[;{]\s*$",
    re.MULTILINE | re.IGNORECASE,
)
_JSON_KEY = re.compile(r"[{,\[]\s*\"[^\"\n]{1,60}\"\s*:")
_SCHEMA_KEY = re.compile(r"\"(?:properties|required|\$schema|additionalProperties)\"\s*:")
_MATH = re.compile(r"\d\s*[-+*/×÷^=<>]\s*\(?\d")
_QUOTED = re.compile(
    r"\"[^\"]{20,}\"|'[^'\n]{20,}'|“[^”]{20,}”|‘[^’]{20,}’|«[^»]{20,}»|„[^“”]{20,}[“”]|「[^」]{8,}」|『[^』]{8,}』"
)


def content_text(content: Any) -> str:
    """A message's text: the string itself, or its text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            str(p.get("text", ""))
            for p in content
            if isinstance(p, Mapping) and p.get("type", "text") == "text"
        ]
        return "\n".join(parts)
    return ""


def normalize(text: str) -> str:
    """Lone surrogates -> '?', lower case, whitespace and control runs -> one space."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return _SPACE.sub(" ", text.lower()).strip()


def clip(text: str, head: int, tail: int = 0) -> str:
    """The first ``head`` code points, plus the last ``tail`` ones when the text is longer."""
    if len(text) <= head + tail:
        return text
    if tail == 0:
        return text[:head].rstrip()
    return f"{text[:head].rstrip()} ... {text[-tail:].lstrip()}"


class Lexicon:
    """Keyword families, matched with the semantics described in the module docstring."""

    def __init__(self, families: Mapping[str, Sequence[str]], version: str) -> None:
        self.version = version
        self.families = tuple(families)
        self._raw = {
            name: tuple(e.strip().lower() for e in families[name] if e.strip()) for name in families
        }
        self._entries = {name: tuple(e.rstrip("*") for e in self._raw[name]) for name in families}
        self._words: dict[str, int] = {}  # whole single word -> family bit set
        self._prefixes: dict[str, list[tuple[str, int]]] = {}  # first 2 chars -> (prefix, bits)
        # phrases, by first word: (literal, pattern with the word boundaries, bits)
        self._phrases: dict[str, list[tuple[str, re.Pattern[str], int]]] = {}
        self._loose: list[tuple[str, re.Pattern[str], int]] = []  # phrases not starting a word
        self._cjk: list[tuple[str, int]] = []
        self._seen: dict[str, tuple[int, tuple[tuple[str, re.Pattern[str], int], ...]]] = {}
        for i, name in enumerate(self.families):
            bit = 1 << i
            for raw in families[name]:
                entry = raw.strip().lower()
                if not entry:
                    continue
                if CJK.search(entry):
                    self._cjk.append((entry, bit))
                    continue
                prefix = entry.endswith("*")
                body = entry.rstrip("*")
                if _WORD.fullmatch(body):
                    if prefix:
                        self._prefixes.setdefault(body[:2], []).append((body, bit))
                    else:
                        self._words[body] = self._words.get(body, 0) | bit
                    continue
                tail = "" if prefix else r"(?!\w)"
                pattern = re.compile(r"(?<!\w)" + re.escape(body) + tail)
                first = _WORD.match(body)
                if first:
                    self._phrases.setdefault(first.group(), []).append((body, pattern, bit))
                else:
                    self._loose.append((body, pattern, bit))

    def raw_entries(self, family: str) -> tuple[str, ...]:
        """The family's entries as written in the lexicon ('x*' = prefix)."""
        return self._raw.get(family, ())

    def entries(self, family: str) -> tuple[str, ...]:
        """The family's entries as plain text (prefix stars removed)."""
        return self._entries.get(family, ())

    def _word(self, word: str) -> tuple[int, tuple[tuple[str, re.Pattern[str], int], ...]]:
        """(families the word alone names, phrases starting with it), memoized per word."""
        info = self._seen.get(word)
        if info is None:
            bits = self._words.get(word, 0)
            for prefix, bit in self._prefixes.get(word[:2], ()):
                if word.startswith(prefix):
                    bits |= bit
            info = (bits, tuple(self._phrases.get(word, ())))
            if len(self._seen) < 500_000:
                self._seen[word] = info
        return info

    def match(self, text: str) -> list[str]:
        """The families with an entry in ``text`` (already normalized), in lexicon order."""
        bits = 0
        for word in set(_WORD.findall(text)):
            word_bits, phrases = self._word(word)
            bits |= word_bits
            for literal, pattern, bit in phrases:
                if not bits & bit and literal in text and pattern.search(text):
                    bits |= bit
        for literal, pattern, bit in self._loose:
            if not bits & bit and literal in text and pattern.search(text):
                bits |= bit
        if self._cjk and not text.isascii() and CJK.search(text):
            for entry, bit in self._cjk:
                if not bits & bit and entry in text:
                    bits |= bit
        return [name for i, name in enumerate(self.families) if bits >> i & 1]


def keyword_markers(lexicon: Lexicon) -> tuple[str, ...]:
    """Every keyword marker the lexicon can emit, in lexicon order."""
    return tuple(f"__kw_{family}__" for family in lexicon.families)


@lru_cache(maxsize=1)
def default_lexicon() -> Lexicon:
    raw = resources.files("classifiers").joinpath("data/lexicon.json").read_text("utf-8")
    data = json.loads(raw)
    return Lexicon(data["families"], str(data["version"]))


def split_messages(messages: Sequence[Mapping[str, Any]]) -> tuple[str, str, int, bool]:
    """(system prompt, last user message, user messages, assistant before the last user)."""
    system: list[str] = []
    last_user = ""
    users = 0
    seen_assistant = False
    history = False
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(content_text(message.get("content")))
        elif role == "user":
            users += 1
            last_user = content_text(message.get("content"))
            history = seen_assistant
        elif role == "assistant":
            seen_assistant = True
    return "\n".join(t for t in system if t), last_user, users, history


def _bucket(value: int, bounds: Sequence[int]) -> int:
    for i, bound in enumerate(bounds):
        if value < bound:
            return i
    return len(bounds)


def structural_markers(system: str, user: str, users: int, history: bool) -> list[str]:
    """Markers for the shape of a request (see the module docstring, step 2)."""
    marks = [f"__turns{min(max(users, 1), 4)}__"]
    if history:
        marks.append("__history__")
    marks.append("__sys__" if system.strip() else "__nosys__")
    marks.append(f"__len{_bucket(len(user), (60, 250, 1000, 4000))}__")
    lines = user.count("\n") + 1 if user.strip() else 0
    marks.append(f"__lines{_bucket(lines, (2, 6)) + 1}__")
    scan = user[:_SCAN_CHARS] + "\n" + system[:_SCAN_CHARS]
    if "```" in scan:
        marks.append("__codeblock__")
    if len(_CODE_LINE.findall(scan)) >= 2:
        marks.append("__codelike__")
    if _JSON_KEY.search(scan):
        marks.append("__json__")
    if _SCHEMA_KEY.search(scan):
        marks.append("__schema__")
    if _MATH.search(user[:_SCAN_CHARS]):
        marks.append("__math__")
    if user.rstrip().endswith(("?", "？")):
        marks.append("__question__")
    quoted = _QUOTED.search(user[:_SCAN_CHARS])
    if quoted:
        marks.append("__quoted__")
    marks.append(f"__ctx{_bucket(given_context_chars(user, quoted), (20, 200, 1000))}__")
    return marks


def given_context_chars(user: str, quoted: re.Match[str] | None = None) -> int:
    """How much text the user hands in beside the instruction: the longest of a quoted span,
    everything after the first line, or everything after a colon in the first 200 characters."""
    if quoted is None:
        quoted = _QUOTED.search(user[:_SCAN_CHARS])
    text = user.strip()
    best = len(quoted.group()) - 2 if quoted else 0
    first, _, rest = text.partition("\n")
    best = max(best, len(rest.strip()))
    colon = first.find(":", 0, 200)
    if colon >= 0:
        best = max(best, len(first) - colon - 1)
    return best


def text_of(
    system: str, user: str, users: int = 1, history: bool = False, lexicon: Lexicon | None = None
) -> str:
    """``request_text`` from parts already split out of the messages."""
    marks = structural_markers(system, user, users, history)
    sys_text = clip(normalize(clip(system, 2 * SYSTEM_CHARS)), SYSTEM_CHARS)
    user_text = clip(normalize(clip(user, 2 * USER_HEAD, 2 * USER_TAIL)), USER_HEAD, USER_TAIL)
    found = (lexicon or default_lexicon()).match(f"{sys_text} | {user_text}")
    marks.extend(f"__kw_{family}__" for family in found)
    # Never two spaces in a row: scikit-learn's char analyzer would collapse them, the model not.
    return " ".join(part for part in (" ".join(marks), "|", sys_text, "|", user_text) if part)


def request_text(messages: Sequence[Mapping[str, Any]], lexicon: Lexicon | None = None) -> str:
    """The classifier's input for one request (chat messages as logged)."""
    system, user, users, history = split_messages(messages)
    return text_of(system, user, users, history, lexicon)


def request_text_json(messages_json: str | None, lexicon: Lexicon | None = None) -> str:
    """``request_text`` of a JSON-encoded message list (the warehouse's ``messages`` column)."""
    try:
        messages = json.loads(messages_json) if messages_json else []
    except (json.JSONDecodeError, TypeError):
        messages = []
    return request_text(messages if isinstance(messages, list) else [], lexicon)


def text_spec(lexicon: Lexicon | None = None) -> dict[str, Any]:
    """What a gateway re-implementing ``request_text`` must match (kept in the model card, so
    the card plus ``classifier.onnx`` is all a gateway needs): the limits, the marker names and
    the lexicon itself."""
    lex = lexicon or default_lexicon()
    return {
        "function": "classifiers.features.request_text",
        "version": TEXT_VERSION,
        "system_chars": SYSTEM_CHARS,
        "user_head": USER_HEAD,
        "user_tail": USER_TAIL,
        "structure_markers": list(STRUCTURE_MARKERS),
        "lexicon_version": lex.version,
        "lexicon": {family: list(lex.raw_entries(family)) for family in lex.families},
    }
