"""Masks personal data and credentials in logged text before a person reads it in the report.

Applied to every prompt and answer the HTML plan quotes. It is deliberately greedy (a long run of
hex is masked even if it was a commit hash): the report is shared more widely than the logs.
Escaping for HTML is a separate step (Jinja2 autoescape); redaction never produces markup.
"""

from __future__ import annotations

import re

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\bBearer\s+[A-Za-z0-9._~+/=-]{8,}"), "Bearer [token]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"), "[token]"),
    (re.compile(r"\b(?:sk|pk|rk)-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_]{16,}"), "[key]"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "[key]"),
    (re.compile(r"\b(?:ghp|gho|ghs|github_pat|xox[abpr])_?[A-Za-z0-9_-]{20,}"), "[key]"),
    (
        re.compile(
            r"(?i)\b(api[_-]?key|secret|password|passwd|token)(\s*[:=]\s*)(['\"]?)[^\s'\"]{6,}\3"
        ),
        r"\1\2[secret]",
    ),
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[email]"),
    (re.compile(r"\b[0-9a-fA-F]{32,}\b"), "[hex]"),
    (
        re.compile(
            r"(?<![\w/+=-])(?=[A-Za-z0-9+/_-]*\d)(?=[A-Za-z0-9+/_-]*[A-Za-z])[A-Za-z0-9+/_-]{40,}={0,2}"
        ),
        "[secret]",
    ),
    (
        re.compile(r"(?<![\w+])\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{2,4}\)?){2,5}(?![\w])"),
        "\x00phone\x00",
    ),
)


def _phone_or_number(match: re.Match[str]) -> str:
    """Only digit runs that look like phone numbers (9+ digits, separated or +-prefixed) go."""
    text = match.group(0)
    digits = sum(ch.isdigit() for ch in text)
    if digits >= 9 and (
        text.startswith("+") or any(sep in text for sep in " .-()") or digits >= 10
    ):
        return "[phone]"
    return text


def redact(text: str | None) -> str:
    """``text`` with e-mail addresses, phone numbers, keys, tokens and long secrets masked."""
    if not text:
        return ""
    out = text
    for pattern, replacement in _RULES:
        if replacement == "\x00phone\x00":
            out = pattern.sub(_phone_or_number, out)
        else:
            out = pattern.sub(replacement, out)
    return out
