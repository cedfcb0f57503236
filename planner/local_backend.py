"""Replays logged requests through a local onnxruntime-genai model and measures what a device
user would feel: time to first token, decode speed, total latency, the process's peak memory.

:class:`GenaiRuntime` is one loaded model (shared with the model server's ``LocalEngine``);
:class:`LocalBackend` is the :class:`planner.backends.ReplayBackend` over it. Chat messages go
through the folder's own chat template (Jinja, rendered in a sandbox the way Hugging Face
does); a folder without one gets :data:`PLAIN_TEMPLATE`::

    System: <system message>

    User: <user message>

    Assistant:

Decoding is greedy by default (``greedy=False`` honours each request's logged temperature,
seeded). A request's ``max_tokens`` is respected and capped by ``max_new_tokens`` and by what is
left of the context window. Measured per request: prompt tokens, output tokens (the end-of-turn
token not counted), TTFT (from before the template is rendered to the first generated token),
decode tokens/s (output tokens after the first, over the time after the first), total latency,
and peak RSS of this process sampled every 5 ms during generation. Per model: load time
(``load_ms``, the cold start). With ``batch_size > 1`` requests are generated in padded
batches (greedy batches give the same tokens as one at a time).
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from jinja2 import Template
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from planner.backends import ReplayRequest, ReplayResult, message_text
from planner.errors import BackendError, ModelFolderError
from planner.model_folder import ModelFolder, fingerprint, open_model_folder

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


class LocalBackend:
    """A local candidate: replays requests through one onnxruntime-genai model folder.

    The folder is checked at construction (a bad folder raises ModelFolderError); the model is
    loaded on first use, so a fully cached candidate never pays the cold start.
    """

    def __init__(
        self,
        name: str,
        model_dir: Path,
        *,
        max_new_tokens: int = 256,
        threads: int | None = None,
        batch_size: int = 1,
        greedy: bool = True,
        seed: int = 0,
    ) -> None:
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        self.name = name
        self.model_dir = Path(model_dir)
        self.folder = open_model_folder(self.model_dir)
        self.max_new_tokens = max_new_tokens
        self.threads = threads or default_threads()
        self.batch_size = batch_size
        self.greedy = greedy
        self.seed = seed
        self._runtime: GenaiRuntime | None = None
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"LocalBackend(name={self.name!r}, model_dir={str(self.model_dir)!r})"

    @property
    def runtime(self) -> GenaiRuntime:
        """The loaded model (loads it the first time: the cold start is ``load_ms``)."""
        if self._runtime is None:
            try:
                self._runtime = GenaiRuntime(self.model_dir, threads=self.threads)
            except ModelFolderError as exc:
                raise BackendError(self.name, str(exc)) from exc
        return self._runtime

    @property
    def load_ms(self) -> float | None:
        return self._runtime.load_ms if self._runtime is not None else None

    def fingerprint(self) -> str:
        """``local-`` + the folder's content hash (see :func:`planner.model_folder.fingerprint`),
        plus ``-sampled`` when decoding is not greedy."""
        if self._fingerprint is None:
            self._fingerprint = "local-" + fingerprint(self.model_dir)
            if not self.greedy:
                self._fingerprint += f"-sampled{self.seed}"
        return self._fingerprint

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.close()
        self._runtime = None

    def _temperature(self, request: ReplayRequest) -> float:
        return 0.0 if self.greedy else max(0.0, float(request.temperature))

    def _failure(self, request: ReplayRequest, kind: str, message: str, **kw: Any) -> ReplayResult:
        return ReplayResult(
            request_id=request.request_id,
            candidate=self.name,
            error_kind=kind,
            error_message=message,
            **kw,
        )

    def _prepare(self, request: ReplayRequest) -> tuple[list[int] | None, ReplayResult | None]:
        """Prompt tokens, or the failed result (bad template, prompt beyond the context)."""
        rt = self.runtime
        try:
            prompt = rt.encode_messages(request.messages)
        except (TemplateError, TypeError, ValueError) as exc:
            return None, self._failure(request, "runtime", f"chat template failed: {exc}")
        if len(prompt) >= rt.context_length:
            return None, self._failure(
                request,
                "context_overflow",
                f"prompt of {len(prompt)} tokens does not fit the context window of "
                f"{rt.context_length} with room to answer",
                prompt_tokens=len(prompt),
            )
        return prompt, None

    def _result(
        self,
        request: ReplayRequest,
        prompt: list[int],
        gen: Generation,
        started: float,
        ended: float,
        peak_mb: float,
    ) -> ReplayResult:
        text = self.runtime.decode(gen.tokens)
        ttft = (gen.first_token_s - started) * 1000 if gen.first_token_s is not None else None
        rate = None
        if gen.first_token_s is not None and gen.last_token_s is not None and len(gen.tokens) > 1:
            span = gen.last_token_s - gen.first_token_s
            rate = (len(gen.tokens) - 1) / span if span > 0 else None
        result = ReplayResult(
            request_id=request.request_id,
            candidate=self.name,
            output_text=text,
            ttft_ms=ttft,
            latency_ms=(ended - started) * 1000,
            prompt_tokens=len(prompt),
            completion_tokens=len(gen.tokens),
            tokens_per_s=rate,
            peak_rss_mb=peak_mb,
        )
        if not text.strip():
            result.error_kind = "empty_output"
            result.error_message = (
                f"the model produced no text ({len(gen.tokens)} tokens, {gen.finish_reason})"
            )
        return result

    def _run_one(self, request: ReplayRequest) -> ReplayResult:
        started = time.perf_counter()
        prompt, failed = self._prepare(request)
        if failed is not None:
            return failed
        assert prompt is not None
        max_new = min(request.max_tokens, self.max_new_tokens)
        try:
            with RssSampler() as rss:
                (gen,) = self.runtime.generate(
                    [prompt], [max_new], self._temperature(request), self.seed
                )
        except Exception as exc:  # the runtime's failure is this sample's, not the run's
            return self._failure(
                request, "runtime", f"{type(exc).__name__}: {exc}", prompt_tokens=len(prompt)
            )
        return self._result(request, prompt, gen, started, time.perf_counter(), rss.peak_mb)

    def _run_batch(self, ready: list[tuple[ReplayRequest, list[int]]]) -> list[ReplayResult]:
        """One padded batch; if the runtime refuses it, its requests one at a time."""
        started = time.perf_counter()
        temperatures = {self._temperature(r) for r, _ in ready}
        if len(ready) > 1 and len(temperatures) == 1:
            try:
                with RssSampler() as rss:
                    gens = self.runtime.generate(
                        [p for _, p in ready],
                        [min(r.max_tokens, self.max_new_tokens) for r, _ in ready],
                        temperatures.pop(),
                        self.seed,
                    )
            except Exception:  # e.g. a runtime without batching: fall through
                pass
            else:
                ended = time.perf_counter()
                return [
                    self._result(request, prompt, gen, started, ended, rss.peak_mb)
                    for (request, prompt), gen in zip(ready, gens, strict=True)
                ]
        return [self._run_one(request) for request, _ in ready]

    def replay(
        self,
        requests: Sequence[ReplayRequest],
        on_result: Callable[[ReplayResult], None],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """Runs every request, reporting each as it finishes.

        With ``batch_size > 1`` every prompt is tokenized first (failures are reported at
        once), then prompts of similar length are batched together, so padding wastes little;
        results then arrive in batch order, not request order. A batched request's TTFT and
        latency are its batch's.
        """
        _ = self.runtime  # load (cold start) before the first request's clock starts
        if self.batch_size == 1:
            for request in requests:
                if should_stop():
                    return
                on_result(self._run_one(request))
            return
        ready: list[tuple[ReplayRequest, list[int]]] = []
        for request in requests:
            prompt, failed = self._prepare(request)
            if failed is not None:
                on_result(failed)
            else:
                assert prompt is not None
                ready.append((request, prompt))
        ready.sort(key=lambda item: len(item[1]))
        for start in range(0, len(ready), self.batch_size):
            if should_stop():
                return
            for result in self._run_batch(ready[start : start + self.batch_size]):
                on_result(result)

    def stats(self) -> dict[str, Any]:
        """What the plan reports about the model itself (after a replay: the cold start)."""
        rt = self._runtime
        return {
            "candidate": self.name,
            "model_dir": str(self.model_dir),
            "fingerprint": self.fingerprint(),
            "load_ms": self.load_ms,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "chat_template": rt.has_chat_template if rt is not None else None,
            "context_length": rt.context_length if rt is not None else None,
        }
