"""Key-like strings in free text — a key pasted into a prompt, a token echoed in an answer — and
how to mask them, as one list read by two regex engines.

The warehouse masks message text on the way in: in SQL (DuckDB's ``regexp_replace``, RE2) on
the ingest's set-wise paths, and in Python (``re``) for lines DuckDB cannot read (not UTF-8,
stray control bytes). Both must change exactly the same characters, so every pattern here is
written in the subset where RE2 and Python's ``re`` (with ``re.ASCII``) agree: explicit ASCII
character classes (no ``\\w``, ``\\s``, ``\\d``, ``.``), no case-insensitive flag (RE2 folds
Unicode, e.g. the Kelvin sign to ``k``), no look-around, no back-references, ``\\b`` only where
both engines read it the same (an ASCII word boundary).

Each pattern has exactly one capture group, the context it keeps (``Bearer ``, ``user:`` of a
URL, the character before a key); the rest of the match becomes ``[REDACTED:<kind>]`` (and a
fixed ``suffix``, the ``@`` ending a URL's password). So the replacement is
``\\1[REDACTED:<kind>]`` in both engines.

The same patterns are applied to decoded text (a system prompt) and to JSON text (the stored
``messages``, whose strings escape ``"``, ``\\`` and control characters), and mask the same
thing in both: no pattern crosses a ``"`` (so no match spans two JSON strings or breaks one),
none starts or ends inside an escape sequence, and a key must follow a non-word character, the
start of the text, or an escape (``\\n``, ``\\t``, ``\\u0001``...), which decoded is a control
character.

Public (``warehouse.TEXT_SECRET_PATTERNS``, ``warehouse.mask_text``), and standard library
only, so that the planner's redaction of report text (``planner/redact.py``) can use the same
list: what counts as a key is defined once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache


def placeholder(kind: str) -> str:
    """What a key of ``kind`` becomes: ``[REDACTED:api_key]``."""
    return f"[REDACTED:{kind}]"


# The character before a key: start of text, a non-word character, or the end of a JSON escape
# (kept, as group 1). A key glued to a word (``task-force``, ``risk-...``) is not a key.
_START = r"(^|[^A-Za-z0-9_]|\\[nrtbf]|\\u[0-9A-Fa-f]{4})"
# Characters of an opaque token (base64, base64url, hex, JWT dots).
_TOKEN = r"[A-Za-z0-9._~+/=-]"


@dataclass(frozen=True)
class SecretPattern:
    """One kind of key-like string.

    ``regex``: RE2 and Python ``re`` alike, one capture group (kept). ``literals``: strings one
    of which every match contains (the cheap test that spares most texts the regex).
    ``example``: a string the pattern masks (the tests and the README show it)."""

    kind: str
    regex: str
    literals: tuple[str, ...]
    example: str
    suffix: str = ""  # the literal end of every match, put back after the placeholder

    @property
    def replacement(self) -> str:
        return "\\1" + placeholder(self.kind) + self.suffix


TEXT_SECRET_PATTERNS: tuple[SecretPattern, ...] = (
    # A PEM or PGP private-key block, from BEGIN to END (its body holds no quote and no "--",
    # which keeps Python's search linear). A block cut off before its END: the BEGIN line and
    # the base64 lines after it.
    SecretPattern(
        "private_key",
        r"()-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
        r'(?:(?:[^"-]|-[^"-])*?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----'
        r"|(?:(?:[ \t\r\n]|\\[nrt])+[A-Za-z0-9+/=]{16,})*)",
        ("PRIVATE KEY",),
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq9\n-----END RSA PRIVATE KEY-----",
    ),
    # The password of a URL: postgres://app:[REDACTED:password]@db/x (redis://:pw@host too).
    SecretPattern(
        "password",
        r"(://[^:/?#@ \t\r\n\"'\\]*:)[^/?#@ \t\r\n\"'\\]+@",
        ("://",),
        "postgres://app:S3cr3t-pw@db.internal:5432/orders",
        suffix="@",
    ),
    # Webhook URLs are secrets: whoever has one can post.
    SecretPattern(
        "webhook_url",
        r"(hooks\.slack\.com/(?:services|workflows|triggers)/)[A-Za-z0-9/_-]{16,}",
        ("hooks.slack.com/",),
        "https://hooks.slack.com/services/T0000AAAA/B0000BBBB/abcdefghijklmnopqrstuvwx",
    ),
    SecretPattern(
        "aws_access_key_id",
        _START + r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
        ("AKIA", "ASIA", "ABIA", "ACCA"),
        "AKIAIOSFODNN7EXAMPLE",
    ),
    # An AWS secret key has no prefix: only where it is named (env, ini, JSON, YAML).
    SecretPattern(
        "aws_secret_access_key",
        r"((?:aws_secret_access_key|AWS_SECRET_ACCESS_KEY|aws_secret_key|AWS_SECRET_KEY"
        r"|SecretAccessKey|secretAccessKey)\\?[\"']?[ \t]*[:=][ \t]*\\?[\"']?)[A-Za-z0-9/+=]{40}",
        ("_SECRET_", "_secret_", "ecretAccessKey"),
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    # Provider API keys by their prefixes: OpenAI (sk-, sk-proj-), Anthropic (sk-ant-),
    # OpenRouter, DeepSeek and most OpenAI-compatible relays (sk-), Stripe secret and restricted
    # keys, Google (AIza), Hugging Face (hf_), Groq (gsk_), xAI, Perplexity, Replicate (r8_).
    SecretPattern(
        "api_key",
        _START
        + r"(?:sk-[A-Za-z0-9_-]{20,}|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}|AIza[0-9A-Za-z_-]{35}"
        r"|hf_[A-Za-z0-9]{30,}|gsk_[A-Za-z0-9]{40,}|xai-[A-Za-z0-9]{40,}|pplx-[A-Za-z0-9]{40,}"
        r"|r8_[A-Za-z0-9]{30,})",
        ("sk-", "k_live_", "k_test_", "AIza", "hf_", "gsk_", "xai-", "pplx-", "r8_"),
        "sk-proj-EXAMPLEonlyNotAKey000000",
    ),
    # Access tokens by their prefixes: GitHub, GitLab, Slack, Google OAuth.
    SecretPattern(
        "access_token",
        _START
        + r"(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}|glpat-[A-Za-z0-9_-]{20,}"
        r"|xox[abposr]-[A-Za-z0-9-]{10,}|ya29\.[A-Za-z0-9_-]{20,})",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "xox", "ya29."),
        "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    ),
    # A JSON Web Token (header.payload.signature; both JSON parts start '{"' = eyJ).
    SecretPattern(
        "jwt",
        _START + r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*",
        ("eyJ",),
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dBjftJeZ4CVPmB92K27uhbUJU1p1r",
    ),
    # A credential header written out (a curl command, a pasted request): its value.
    SecretPattern(
        "auth_header",
        r"((?:[Aa]uthorization|AUTHORIZATION|[Xx]-[Aa]pi-[Kk]ey|X-API-KEY|[Aa]pi-[Kk]ey|API-KEY)"
        r" *: *(?:(?:Basic|Bearer|Token|bearer|basic|token) +)?)" + _TOKEN + "{16,}",
        ("uthorization", "UTHORIZATION", "pi-key", "pi-Key", "PI-KEY"),
        "api-key: 0123456789abcdef0123456789abcdef",
    ),
    # Any other bearer token (16+ characters: 'Bearer authentication' stays).
    SecretPattern(
        "bearer_token",
        r"((?:Bearer|bearer|BEARER) +)" + _TOKEN + "{16,}",
        ("earer", "EARER"),
        "Bearer EXAMPLEonlyNotAToken00000000000",
    ),
)


@cache
def _compiled_text() -> tuple[tuple[re.Pattern[str], str], ...]:
    return tuple((re.compile(p.regex, re.ASCII), p.replacement) for p in TEXT_SECRET_PATTERNS)


@cache
def _compiled_bytes() -> tuple[tuple[re.Pattern[bytes], bytes], ...]:
    return tuple(
        (re.compile(p.regex.encode()), p.replacement.encode()) for p in TEXT_SECRET_PATTERNS
    )


@cache
def _literals() -> tuple[str, ...]:
    return tuple(dict.fromkeys(lit for p in TEXT_SECRET_PATTERNS for lit in p.literals))


def regex_literal(text: str) -> str:
    """``text`` as a regex matching itself (RE2 and Python ``re`` alike)."""
    return re.sub(r"([.^$|?*+()\[\]{}\\])", r"\\\1", text)


# Every pattern without its kept start (so true wherever one of them matches): one RE2 pass, a
# third of the cost of a contains() per literal.
MAY_HOLD_SECRET = "|".join(p.regex.removeprefix(_START) for p in TEXT_SECRET_PATTERNS)


def may_hold_secret(text: str) -> bool:
    """True for every text a pattern would change (and for some others): the cheap test."""
    return any(lit in text for lit in _literals())


def mask_text(text: str) -> str:
    """``text`` with every key-like string replaced by its placeholder (as ``mask_text_sql``)."""
    if not may_hold_secret(text):
        return text
    for pattern, replacement in _compiled_text():
        text = pattern.sub(replacement, text)
    return text


def mask_bytes(raw: bytes) -> bytes:
    """``mask_text`` for raw bytes (a line that may not be UTF-8): every other byte kept."""
    if not any(lit.encode() in raw for lit in _literals()):
        return raw
    for pattern, replacement in _compiled_bytes():
        raw = pattern.sub(replacement, raw)
    return raw


def sql_string(value: str) -> str:
    """``value`` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def may_hold_secret_sql(expr: str) -> str:
    """SQL: true for every VARCHAR ``expr`` a pattern would change (NULL for NULL)."""
    return f"regexp_matches({expr}, {sql_string(MAY_HOLD_SECRET)})"


def replace_secrets_sql(expr: str) -> str:
    """SQL: every pattern applied to the VARCHAR ``expr``, in order (no cheap test first)."""
    for p in TEXT_SECRET_PATTERNS:
        expr = f"regexp_replace({expr}, {sql_string(p.regex)}, {sql_string(p.replacement)}, 'g')"
    return expr


def mask_text_sql(expr: str) -> str:
    """SQL: the VARCHAR ``expr`` with every key-like string masked (same result as mask_text;
    NULL stays NULL). Texts no pattern matches skip the replacements."""
    return f"CASE WHEN {may_hold_secret_sql(expr)} THEN {replace_secrets_sql(expr)} ELSE {expr} END"
