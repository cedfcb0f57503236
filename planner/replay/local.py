"""The local replay backend: logged requests through one onnxruntime-genai model folder, measuring
what a device user would feel — time to first token, decode speed, total latency, the process's
peak memory.

Decoding is greedy by default (``greedy=False`` honours each request's logged temperature,
seeded). A request's ``max_tokens`` is respected and capped by ``max_new_tokens`` and by what is
left of the context window. Measured per request: prompt tokens, output tokens (the end-of-turn
token not counted), TTFT (from before the template is rendered to the first generated token),
decode tokens/s (output tokens after the first, over the time after the first), total latency,
and the model's own peak memory during generation (above what the process held before the model
was loaded). Per model: load time (``load_ms``, the cold start).

With ``batch_size > 1`` requests are generated in padded batches (greedy batches give the same
tokens as one at a time) where the folder allows it: a folder whose cache cannot batch
(sliding-window attention) is known from its config and runs one at a time, and a batch the
runtime refuses sends its requests, and every later one, one at a time. Either way
:attr:`LocalBackend.batching` says what was asked, what was used and why, and the replay summary
and the plan report it.

A request whose KV cache and buffers do not fit in memory fails as ``error_kind="memory"`` (a
:class:`planner.errors.ModelMemoryError`'s message: the figures asked and available, and the fix)
before anything is allocated; any other failure of the runtime is that request's ``runtime``
error. Either way the next request starts with a clean generator. The model itself is a
:class:`planner.models.runtime.GenaiRuntime`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError

from planner.errors import BackendError, ModelFolderError, ModelMemoryError
from planner.models.folder import fingerprint, open_model_folder
from planner.models.runtime import GenaiRuntime, Generation, batching_for, default_threads
from planner.replay.protocol import ReplayRequest, ReplayResult


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
        memory_limit_mb: float | None = None,
    ) -> None:
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        self.name = name
        self.model_dir = Path(model_dir)
        self.folder = open_model_folder(self.model_dir)
        self.max_new_tokens = max_new_tokens
        self.threads = threads or default_threads()
        self.batch_size = batch_size
        self.batch_used, self.batch_why = batching_for(self.folder, batch_size)
        self.greedy = greedy
        self.seed = seed
        self.memory_limit_mb = memory_limit_mb
        self._runtime: GenaiRuntime | None = None
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"LocalBackend(name={self.name!r}, model_dir={str(self.model_dir)!r})"

    @property
    def runtime(self) -> GenaiRuntime:
        """The loaded model (loads it the first time: the cold start is ``load_ms``)."""
        if self._runtime is None:
            try:
                self._runtime = GenaiRuntime(
                    self.model_dir, threads=self.threads, memory_limit_mb=self.memory_limit_mb
                )
            except ModelFolderError as exc:
                raise BackendError(self.name, str(exc)) from exc
        return self._runtime

    @property
    def batching(self) -> dict[str, Any] | None:
        """What batching was asked for and what ran (None: one at a time was asked)."""
        if self.batch_size == 1:
            return None
        return {"requested": self.batch_size, "used": self.batch_used, "why": self.batch_why}

    @property
    def load_ms(self) -> float | None:
        return self._runtime.load_ms if self._runtime is not None else None

    def fingerprint(self) -> str:
        """``local-`` + the folder's content hash (see :func:`planner.models.folder.fingerprint`),
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
            with self.runtime.measure() as mem:
                (gen,) = self.runtime.generate(
                    [prompt], [max_new], self._temperature(request), self.seed
                )
        except ModelMemoryError as exc:
            return self._failure(request, "memory", str(exc), prompt_tokens=len(prompt))
        except Exception as exc:  # the runtime's failure is this sample's, not the run's
            return self._failure(
                request, "runtime", f"{type(exc).__name__}: {exc}", prompt_tokens=len(prompt)
            )
        return self._result(request, prompt, gen, started, time.perf_counter(), mem.peak_mb)

    def _run_batch(self, ready: list[tuple[ReplayRequest, list[int]]]) -> list[ReplayResult]:
        """One padded batch; if the runtime refuses it, its requests (and every later one)
        one at a time, and :attr:`batching` says why."""
        started = time.perf_counter()
        temperatures = {self._temperature(r) for r, _ in ready}
        if len(ready) > 1 and len(temperatures) == 1 and self.batch_used > 1:
            try:
                with self.runtime.measure() as mem:
                    gens = self.runtime.generate(
                        [p for _, p in ready],
                        [min(r.max_tokens, self.max_new_tokens) for r, _ in ready],
                        temperatures.pop(),
                        self.seed,
                    )
            except Exception as exc:  # the folder cannot batch after all: one at a time
                self.batch_used = 1
                self.batch_why = (
                    f"a batch of {len(ready)} failed ({type(exc).__name__}: {exc}); "
                    "requests ran one at a time from then on"
                )
            else:
                ended = time.perf_counter()
                return [
                    self._result(request, prompt, gen, started, ended, mem.peak_mb)
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
        if self.batch_used == 1:
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
        size = self.batch_used
        for start in range(0, len(ready), size):
            if should_stop():
                return
            for result in self._run_batch(ready[start : start + size]):
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
            "batching": self.batching,
            "chat_template": rt.has_chat_template if rt is not None else None,
            "context_length": rt.context_length if rt is not None else None,
        }
