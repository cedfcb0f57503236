"""Credential values a careless client logged (``api_key`` in a body, ``Authorization`` in
headers) and key-like strings anywhere in a line (warehouse/secrets_in_text.py) are masked on the
way in: they never reach the warehouse, not even in rejected lines.
"""

from __future__ import annotations

import re

from warehouse.secrets_in_text import (
    TEXT_SECRET_PATTERNS,
    mask_bytes,
    regex_literal,
    replace_secrets_sql,
    sql_string,
)

REDACTED = "[REDACTED]"

# Keys whose string values are credentials, wherever they appear in a JSON object.
_KEYS = (
    r"(?:x-)?api[_-]?key|(?:proxy-)?authorization|auth|access[_-]?token|refresh[_-]?token|"
    r"session[_-]?token|id[_-]?token|(?:client[_-]?)?secret|password|cookie|set-cookie"
)
# RE2 (DuckDB) and Python re both accept this pattern; group 1 is the key.
KEY_VALUE_PATTERN = r'"(' + _KEYS + r')"\s*:\s*"(?:[^"\\]|\\.)*"'
KEY_VALUE_REPLACEMENT_SQL = r'"\1": "' + REDACTED + '"'
# Top-level request fields removed before the request parameters are stored.
REQUEST_SECRET_FIELDS = (
    "api_key",
    "apiKey",
    "api-key",
    "authorization",
    "Authorization",
    "headers",
    "extra_headers",
)

_KEY_VALUE_BYTES = re.compile(KEY_VALUE_PATTERN.encode(), re.IGNORECASE)


def mask_raw_line(raw: bytes) -> bytes:
    """Mask credential values and key-like strings in a raw (possibly broken) log line, keeping
    every other byte."""
    raw = _KEY_VALUE_BYTES.sub(
        lambda m: b'"' + m.group(1) + b'": "' + REDACTED.encode() + b'"', raw
    )
    return mask_bytes(raw)


def mask_sql(expr: str) -> str:
    """SQL that masks credential values and key-like strings in the VARCHAR ``expr`` (the same
    rules as mask_raw_line)."""
    kv = f"regexp_replace({expr}, '{KEY_VALUE_PATTERN}', '{KEY_VALUE_REPLACEMENT_SQL}', 'gi')"
    return replace_secrets_sql(kv)


# A cheap test, true for every text mask_sql would change: a credential-like key name (any
# case), or a literal of a key-like string.
MAY_HOLD_CREDENTIAL = "(?i)" + "|".join(
    [
        "key|auth|token|secret|password|cookie|bearer",
        *(regex_literal(lit) for p in TEXT_SECRET_PATTERNS for lit in p.literals),
    ]
)


def may_hold_credential_sql(expr: str) -> str:
    """SQL: true for every VARCHAR ``expr`` that mask_sql would change."""
    return f"regexp_matches({expr}, {sql_string(MAY_HOLD_CREDENTIAL)})"
