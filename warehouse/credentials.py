"""Credential values a careless client logged (``api_key`` in a body, ``Authorization`` in
headers) are masked on the way in: they never reach the warehouse, not even in rejected lines.
"""

from __future__ import annotations

import re

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
_BEARER_BYTES = re.compile(rb"(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_SK_BYTES = re.compile(rb"\bsk-[A-Za-z0-9_-]{8,}")


def mask_raw_line(raw: bytes) -> bytes:
    """Mask credential values in a raw (possibly broken) log line, keeping every other byte."""
    raw = _KEY_VALUE_BYTES.sub(
        lambda m: b'"' + m.group(1) + b'": "' + REDACTED.encode() + b'"', raw
    )
    raw = _BEARER_BYTES.sub(lambda m: m.group(1) + REDACTED.encode(), raw)
    return _SK_BYTES.sub(REDACTED.encode(), raw)


def mask_sql(expr: str) -> str:
    """SQL that masks credential values in the VARCHAR ``expr`` (same rules as mask_raw_line)."""
    kv = f"regexp_replace({expr}, '{KEY_VALUE_PATTERN}', '{KEY_VALUE_REPLACEMENT_SQL}', 'gi')"
    bearer = f"regexp_replace({kv}, '(Bearer\\s+)[A-Za-z0-9._~+/=-]{{8,}}', '\\1{REDACTED}', 'g')"
    return f"regexp_replace({bearer}, '\\bsk-[A-Za-z0-9_-]{{8,}}', '{REDACTED}', 'g')"
