"""What answers behind the model server: a :class:`ChatEngine` is anything that turns chat
messages into text pieces. :class:`EchoEngine` needs no model (fast and deterministic, for relay
tests and benches); :class:`LocalEngine` is an onnxruntime-genai folder through
:class:`planner.models.runtime.GenaiRuntime`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from planner.messages import message_text
from planner.models.runtime import GenaiRuntime


@runtime_checkable
class ChatEngine(Protocol):
    """What answers; the server is engine-agnostic.

    An engine may also offer ``count_prompt_tokens(messages) -> int`` (the prompt as the model
    sees it, chat template included); without it the server counts the messages' text.
    """

    model_name: str

    def complete(
        self, messages: list[dict[str, Any]], max_tokens: int, temperature: float
    ) -> Iterator[str]:
        """Text pieces of the answer, in order."""
        ...

    def count_tokens(self, text: str) -> int: ...


_WORD = re.compile(r"\w+|[^\w\s]")


class EchoEngine:
    """No model: answers ``Echo: <last user message>`` one word-piece at a time.

    Deterministic and fast, so relay tests and benches measure the client, not a model. A token
    is a word or a punctuation mark; ``max_tokens`` cuts the answer at that many tokens.
    """

    pieces_are_tokens = True

    def __init__(self, model_name: str = "echo") -> None:
        self.model_name = model_name

    def answer(self, messages: list[dict[str, Any]]) -> str:
        last = ""
        for msg in messages:
            if msg.get("role") == "user":
                last = message_text(msg.get("content"))
        return f"Echo: {last}".strip()

    def complete(
        self, messages: list[dict[str, Any]], max_tokens: int, temperature: float
    ) -> Iterator[str]:
        text = self.answer(messages)
        for i, match in enumerate(re.finditer(r"\s*(\w+|[^\w\s])", text)):
            if i >= max_tokens:
                return
            yield match.group(0)

    def count_tokens(self, text: str) -> int:
        return len(_WORD.findall(text))


def default_model_name(model_dir: Path) -> str:
    """The folder's name, with its parent's for precision-named folders (edge-small-int4)."""
    folder = model_dir.resolve()
    tags = ("fp32", "fp16", "bf16", "int8", "int4", "cpu", "cuda")
    if folder.name.lower().startswith(tags) or folder.name.lower().endswith(tags):
        return f"{folder.parent.name}-{folder.name}"
    return folder.name


class ContextOverflow(ValueError):
    """An engine's prompt does not fit its context window: answered 400 context_length_exceeded."""


class LocalEngine:
    """An onnxruntime-genai model folder behind the server (shares the runtime with LocalBackend).

    Generation is serialized with a lock: one model, one generator at a time. Each text piece is
    one generated token.
    """

    pieces_are_tokens = True

    def __init__(
        self,
        model_dir: Path,
        model_name: str | None = None,
        threads: int | None = None,
        memory_limit_mb: float | None = None,
    ) -> None:
        self._runtime = GenaiRuntime(
            Path(model_dir), threads=threads, memory_limit_mb=memory_limit_mb
        )
        self.model_name = model_name or default_model_name(Path(model_dir))
        self._lock = threading.Lock()

    def complete(
        self, messages: list[dict[str, Any]], max_tokens: int, temperature: float
    ) -> Iterator[str]:
        with self._lock:
            prompt_ids = self._runtime.encode_messages(messages)
            if len(prompt_ids) >= self._runtime.context_length:
                raise ContextOverflow(
                    f"This model's maximum context length is {self._runtime.context_length} "
                    f"tokens; the messages resulted in {len(prompt_ids)} tokens"
                )
            for _token, piece in self._runtime.stream(prompt_ids, max_tokens, temperature):
                yield piece

    def count_tokens(self, text: str) -> int:
        return len(self._runtime.encode(text))

    def count_prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        return len(self._runtime.encode_messages(messages))

    def close(self) -> None:
        self._runtime.close()
