"""Chat messages as text and tokens: the one flattener and the one token estimate of the planner.

Every room that needs the words of an OpenAI ``content`` (a string or a list of content parts) or
an estimate of its tokens uses these, so a replay's prompt, a scorer's input, the judge's prompt
and the model server's chat template all see the same text.
"""

from __future__ import annotations

import math
from typing import Any

CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text and code


def message_text(content: Any, sep: str = "") -> str:
    """The text of an OpenAI message ``content``: a string, or a list of content parts (their
    texts joined by ``sep``)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return sep.join(parts)
    return str(content)


def estimate_tokens(text: str) -> int:
    """About four characters a token (the warehouse estimates missing ``usage`` the same way)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0
