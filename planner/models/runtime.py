"""One onnxruntime-genai model folder loaded for generation: tokenizer, chat template, greedy or
sampled decoding, one sequence or a padded batch, and the process's peak memory while it runs.

:class:`GenaiRuntime` is shared by the replay's local backend (:mod:`planner.replay.local`) and the
model server (:mod:`planner.models.server`). Chat messages go through the folder's own chat
template (Jinja, rendered in a sandbox the way Hugging Face does); a folder without one gets
:data:`PLAIN_TEMPLATE`::

    System: <system message>

    User: <user message>

    Assistant:
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from jinja2 import Template
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from planner.errors import ModelFolderError
from planner.messages import message_text
from planner.models.folder import ModelFolder, open_model_folder

PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
RSS_SAMPLE_S = 0.005


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent)
    return env.from_string(template)


def render_chat(
    template: str,
    messages: Sequence[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    special_tokens: dict[str, str] | None = None,
) -> str:
    """The prompt text for ``messages`` (contents flattened to strings) under ``template``."""
    flat = [
        {
            **{k: v for k, v in m.items() if k != "content"},
            "content": message_text(m.get("content")),
        }
        for m in messages
    ]
    tokens = {"bos_token": "", "eos_token": "", **(special_tokens or {})}
    return _compile(template).render(
        messages=flat, add_generation_prompt=add_generation_prompt, tools=None, **tokens
    )


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class RssSampler:
    """Peak resident memory of this process while the ``with`` block runs (sampled)."""

    def __init__(self, interval_s: float = RSS_SAMPLE_S) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _sample(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / (1024 * 1024)


@dataclass
class Generation:
    """One sequence's generated tokens and when they came."""

    tokens: list[int]
    first_token_s: float | None  # perf_counter time of the first generated token
    last_token_s: float | None
    finish_reason: str  # "stop" (end-of-turn token) or "length"


class GenaiRuntime:
    """One onnxruntime-genai model loaded once: tokenizer, chat template, generation loops."""

    def __init__(self, model_dir: Path, threads: int | None = None) -> None:
        import onnxruntime_genai as og

        self.folder: ModelFolder = open_model_folder(model_dir)
        self.threads = threads or default_threads()
        started = time.perf_counter()
        try:
            config = og.Config(str(self.folder.path))
            overlay = {
                "model": {"decoder": {"session_options": {"intra_op_num_threads": self.threads}}}
            }
            config.overlay(json.dumps(overlay))
            self.model = og.Model(config)
            self.tokenizer = og.Tokenizer(self.model)
        except Exception as exc:  # og raises RuntimeError/OSError with the runtime's message
            raise ModelFolderError(
                str(self.folder.path), f"onnxruntime-genai cannot load it: {exc}"
            ) from exc
        self._og = og
        model_cfg = self.folder.config["model"]
        self.context_length = int(model_cfg.get("context_length") or 0) or 4096
        self.eos_ids = {int(t) for t in self.tokenizer.eos_token_ids}
        eos_cfg = model_cfg.get("eos_token_id")
        if isinstance(eos_cfg, list):
            self.eos_ids |= {int(t) for t in eos_cfg}
        elif isinstance(eos_cfg, int):
            self.eos_ids.add(eos_cfg)
        pad = model_cfg.get("pad_token_id")
        self.pad_id = int(pad if isinstance(pad, int) else self.tokenizer.pad_token_id)
        template = self.folder.chat_template()
        self.has_chat_template = template is not None
        self.template = template if template is not None else PLAIN_TEMPLATE
        self.special_tokens = self.folder.special_tokens()
        self._greedy: Any = None
        self._generator(self.context_length, 0.0, 0, 1)  # part of the cold start
        self.load_ms = (time.perf_counter() - started) * 1000

    def render(self, messages: Sequence[dict[str, Any]]) -> str:
        return render_chat(self.template, messages, special_tokens=self.special_tokens)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def encode_messages(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        return self.encode(self.render(messages))

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(tokens))) if tokens else ""

    def _params(self, max_length: int, temperature: float, seed: int, batch_size: int = 1) -> Any:
        params = self._og.GeneratorParams(self.model)
        options: dict[str, Any] = {"max_length": max_length, "batch_size": batch_size}
        if temperature > 0:
            options |= {"do_sample": True, "temperature": temperature, "top_k": 50, "top_p": 1.0}
            options["random_seed"] = seed
        else:
            options |= {"do_sample": False}
        params.set_search_options(**options)
        return params

    def _generator(self, max_length: int, temperature: float, seed: int, batch_size: int) -> Any:
        """A generator ready for new tokens. Greedy single-sequence generation reuses one
        generator (rewound to empty), which saves onnxruntime-genai's ~15 ms set-up per
        request; it was checked to produce the same tokens as a fresh one."""
        if batch_size == 1 and temperature <= 0:
            if self._greedy is None:
                params = self._params(self.context_length, 0.0, 0)
                self._greedy = self._og.Generator(self.model, params)
            else:
                self._greedy.rewind_to(0)
            return self._greedy
        params = self._params(max_length, temperature, seed, batch_size)
        return self._og.Generator(self.model, params)

    def room(self, prompt_len: int, max_new: int) -> int:
        """New tokens that fit: ``max_new`` capped by what the context window leaves."""
        return max(0, min(max_new, self.context_length - prompt_len))

    def stream(
        self, prompt_ids: Sequence[int], max_new: int, temperature: float = 0.0, seed: int = 0
    ) -> Iterator[tuple[int, str]]:
        """(token, text piece) as generated; stops at an end-of-turn token (not yielded)."""
        import numpy as np

        new = self.room(len(prompt_ids), max_new)
        if new <= 0:
            return
        generator = self._generator(len(prompt_ids) + new, temperature, seed, 1)
        try:
            generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
            text_stream = self.tokenizer.create_stream()
            for _ in range(new):
                if generator.is_done():
                    break
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                if token in self.eos_ids:
                    break
                yield token, str(text_stream.decode(token))
        except BaseException:
            self._greedy = None  # its state is unknown now
            raise

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new: Sequence[int],
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[Generation]:
        """Generates for one prompt or a padded batch; per-sequence tokens and timings."""
        import numpy as np

        n = len(prompts)
        budgets = [self.room(len(p), m) for p, m in zip(prompts, max_new, strict=True)]
        longest = max(len(p) for p in prompts)
        results = [Generation([], None, None, "length") for _ in range(n)]
        if max(budgets) <= 0:
            return results
        max_length = min(self.context_length, longest + max(budgets))
        generator = self._generator(max_length, temperature, seed, n)
        if n == 1:
            batch = np.asarray(prompts[0], dtype=np.int32)
        else:
            batch = np.full((n, longest), self.pad_id, dtype=np.int32)
            for i, prompt in enumerate(prompts):
                batch[i, : len(prompt)] = prompt
        try:
            self._decode_loop(generator, batch, budgets, results)
        except BaseException:
            self._greedy = None
            raise
        return results

    def _decode_loop(
        self, generator: Any, batch: Any, budgets: list[int], results: list[Generation]
    ) -> None:
        n = len(budgets)
        generator.append_tokens(batch)
        active = [b > 0 for b in budgets]
        eos = self.eos_ids
        while any(active) and not generator.is_done():
            generator.generate_next_token()
            now = time.perf_counter()
            tokens = generator.get_next_tokens()
            for i in range(n):
                if not active[i]:
                    continue
                token = int(tokens[i])
                gen = results[i]
                if gen.first_token_s is None:
                    gen.first_token_s = now
                if token in eos:
                    gen.finish_reason = "stop"
                    active[i] = False
                    continue
                gen.tokens.append(token)
                gen.last_token_s = now
                if len(gen.tokens) >= budgets[i]:
                    active[i] = False

    def close(self) -> None:
        self._greedy = None
        self.model = None
        self.tokenizer = None
