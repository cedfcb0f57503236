"""What production text an endpoint outside this machine may see, and the redaction it gets.

A relay candidate, the judge or the annotator on a non-loopback address receives production
prompts only when its configuration says so: ``send_production_data = true`` (as logged) or
``redact = true`` (through :class:`Redactor`). :func:`endpoint_policy` says which, and
:func:`check_endpoint` refuses an endpoint that has neither, and a key sent over plain http to
another machine.

:class:`Redactor` replaces e-mail addresses, phone numbers, card-like numbers (Luhn-valid),
key-like strings (through the key masker the caller hands in: the warehouse's pattern list) and
names a team lists by typed placeholders — ``[EMAIL_1]``, ``[PHONE_2]``, ``[CARD_1]``,
``[NAME_1]`` — numbered per request, so the same address twice in one request is the same
placeholder and the model can still refer to it. The answer comes back with the placeholders
turned into the originals again (:meth:`Redaction.restore`), so it can be scored against
production's answer; the mapping lives in memory for that one request only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from planner.errors import ConfigError
from planner.messages import message_text
from planner.models.guards import is_loopback

Policy = Literal["local", "full", "redacted"]
KeyMasker = Callable[[str], str]

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{2,4}\)?){2,5}(?![\w])")
_PLACEHOLDER = re.compile(r"\[(EMAIL|PHONE|CARD|NAME)_(\d+)\]")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_phone(text: str) -> bool:
    """Digit runs that look like phone numbers: 9 to 15 digits (E.164's most), separated or
    +-prefixed."""
    digits = sum(ch.isdigit() for ch in text)
    return 9 <= digits <= 15 and (
        text.startswith("+") or any(sep in text for sep in " .-()") or digits >= 10
    )


@dataclass
class Redaction:
    """One request's placeholders: original text by placeholder."""

    originals: dict[str, str] = field(default_factory=dict)
    _by_value: dict[tuple[str, str], str] = field(default_factory=dict)

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, value.casefold() if kind in ("EMAIL", "NAME") else value)
        found = self._by_value.get(key)
        if found is None:
            n = sum(1 for k in self._by_value if k[0] == kind) + 1
            found = f"[{kind}_{n}]"
            self._by_value[key] = found
            self.originals[found] = value
        return found

    def restore(self, text: str | None) -> str | None:
        """``text`` with this request's placeholders turned back into the originals."""
        if not text or not self.originals:
            return text
        return _PLACEHOLDER.sub(lambda m: self.originals.get(m.group(0), m.group(0)), text)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind, _ in self._by_value:
            out[kind] = out.get(kind, 0) + 1
        return out


class Redactor:
    """Replaces personal data and keys in chat messages by typed placeholders (see module)."""

    def __init__(self, names: Sequence[str] = (), mask_keys: KeyMasker | None = None) -> None:
        cleaned = sorted({n.strip() for n in names if n.strip()}, key=len, reverse=True)
        self._names = (
            re.compile(r"(?i)(?<!\w)(" + "|".join(re.escape(n) for n in cleaned) + r")(?!\w)")
            if cleaned
            else None
        )
        self._mask_keys = mask_keys

    def text(self, text: str, redaction: Redaction) -> str:
        out = self._mask_keys(text) if self._mask_keys else text
        out = _EMAIL.sub(lambda m: redaction.placeholder("EMAIL", m.group(0)), out)

        def card(m: re.Match[str]) -> str:
            digits = re.sub(r"\D", "", m.group(0))
            if 13 <= len(digits) <= 19 and _luhn(digits):
                return redaction.placeholder("CARD", m.group(0))
            return m.group(0)

        out = _CARD.sub(card, out)
        out = _PHONE.sub(
            lambda m: (
                redaction.placeholder("PHONE", m.group(0)) if _is_phone(m.group(0)) else m.group(0)
            ),
            out,
        )
        if self._names is not None:
            out = self._names.sub(lambda m: redaction.placeholder("NAME", m.group(0)), out)
        return out

    def messages(
        self, messages: Sequence[Mapping[str, Any]]
    ) -> tuple[list[dict[str, Any]], Redaction]:
        """The messages with every text redacted (content parts flattened to their text), and
        the request's :class:`Redaction` to restore the answer with."""
        redaction = Redaction()
        out: list[dict[str, Any]] = []
        for message in messages:
            copy = dict(message)
            content = message.get("content")
            if content is not None:
                copy["content"] = self.text(message_text(content, sep="\n"), redaction)
            out.append(copy)
        return out, redaction


def is_local_url(url: str | None) -> bool:
    """An endpoint on this machine (loopback host): production text never leaves it."""
    if not url:
        return True
    return is_loopback(urlsplit(url).hostname or "")


def endpoint_policy(
    base_url: str | None, send_production_data: bool, redact: bool
) -> Policy | None:
    """What an endpoint gets: ``redacted`` (asked for, wherever it is), ``local`` (on this
    machine: as logged), ``full`` (told so); None when an external endpoint has no policy (it
    must be refused)."""
    if redact:
        return "redacted"
    if is_local_url(base_url):
        return "local"
    if send_production_data:
        return "full"
    return None


def check_endpoint(
    where: str,
    name: str,
    base_url: str | None,
    *,
    send_production_data: bool,
    redact: bool,
    has_key: bool,
) -> Policy:
    """The endpoint's policy, or one :class:`ConfigError` line saying what to set."""
    policy = endpoint_policy(base_url, send_production_data, redact)
    if policy is None:
        raise ConfigError(
            where,
            f"{name!r} at {base_url} is outside this machine and would receive production "
            "prompts: set redact = true (e-mails, phones, cards, keys and [privacy] names "
            "replaced) or send_production_data = true",
        )
    parts = urlsplit(base_url or "")
    if has_key and parts.scheme == "http" and not is_local_url(base_url):
        raise ConfigError(
            where,
            f"{name!r}: refusing to send an API key over plain http to {parts.hostname}; use https",
        )
    return policy
