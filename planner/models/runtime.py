"""One onnxruntime-genai model folder loaded for generation: tokenizer, chat template, greedy or
sampled decoding, one sequence or a padded batch, and the model's own peak memory while it runs.

:class:`GenaiRuntime` is shared by the replay's local backend (:mod:`planner.replay.local`) and the
model server (:mod:`planner.models.server`).

Chat: messages go through the folder's own chat template (Jinja, rendered in a sandbox the way
Hugging Face does: ``bos_token``/``eos_token`` and the other special tokens of
``tokenizer_config.json``, ``raise_exception``, ``strftime_now``, loop controls); contents made of
parts are flattened to their text, and keys whose value is null are dropped (a template tests
``'tool_calls' in message``). A folder without a template gets :data:`PLAIN_TEMPLATE`::

    System: <system message>

    User: <user message>

    Assistant:

The prompt starts with the BOS token when ``tokenizer_config.json`` says ``add_bos_token``
(onnxruntime-genai's encode never adds it; Gemma answers garbage without it) and the template did
not render it already. Generation stops at the folder's EOS ids and at the token that ends an
assistant turn in its template (``<|im_end|>``, ``<|eot_id|>``, ``<|end|>``, ``<end_of_turn>``).

Memory: a generator's KV cache is allocated whole for its ``max_length`` when it is made, so each
request gets one sized to what it needs (prompt + allowed new tokens), never the declared
context. Folders whose cache can rewind (no sliding-window layers) keep their greedy generator and
reuse it while the next request needs the same bucket (``max_length`` rounded up to
:data:`BUCKET_TOKENS`), saving its set-up (~20 µs per token of ``max_length``); a sliding-window
cache cannot rewind past its window, so those folders get a fresh generator per request, at least
a window long (onnxruntime-genai refuses a smaller one). Before a generator is made, its KV cache
and prefill logits (:func:`planner.models.devices.generation_bytes`, the fit table's formula) are
compared with the memory available (free RAM, and an optional limit): a request that does not fit
fails with :class:`planner.errors.ModelMemoryError` at once instead of the runtime touching
gigabytes for a minute before it gives up (or the OOM killer ends the process). Peak memory is
the process's high-water mark during the request (reset before it, via ``/proc/self/clear_refs``;
sampled every 5 ms where that is not possible) less the resident memory before the model was
loaded: the model's own. (A sampling thread costs ~7% of SmolLM2's decode speed; the reset is
process-wide, so :func:`process_peak_bytes` keeps the process's whole-life peak.)

This module is long because the chat template, the generator policy, the memory check and the
decoding loops are one object's state (the tokenizer, the held generator, the baseline memory)
and are only ever used together.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
from jinja2 import Template
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from planner.errors import ModelFolderError, ModelMemoryError, ModelRuntimeError
from planner.messages import message_text
from planner.models.devices import generation_bytes
from planner.models.folder import (
    TOKENIZER_CONFIG,
    ModelFolder,
    ModelInfo,
    inspect_model,
    open_model_folder,
)

PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
RSS_SAMPLE_S = 0.005
BUCKET_TOKENS = 256  # a reused generator's max_length is the request's, rounded up to this
MEMORY_FIX = (
    "lower max_new_tokens ([replay] max_new_tokens, or the request's max_tokens), cap the "
    "context (a smaller context_length in genai_config.json, or import the model with a smaller "
    "context cap), or plan for a device tier with more memory"
)
_ANSWER_MARK = "PLANNERANSWERMARK"
_SPECIAL_TEXT = re.compile(r"\s*(<\|[^|<>\s]+\|>|<[A-Za-z_][\w.-]*>|</s>|\[/?[A-Z_]+\])")


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(
    value: Any, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(
        value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys
    )


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    env.filters["tojson"] = _tojson
    return env.from_string(template)


def render_chat(
    template: str,
    messages: Sequence[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    special_tokens: dict[str, str] | None = None,
) -> str:
    """The prompt text for ``messages`` (contents flattened to strings, null keys dropped)
    under ``template``."""
    flat = [
        {
            **{k: v for k, v in m.items() if k != "content" and v is not None},
            "content": message_text(m.get("content")),
        }
        for m in messages
    ]
    tokens = {"bos_token": "", "eos_token": "", **(special_tokens or {})}
    return _compile(template).render(
        messages=flat, add_generation_prompt=add_generation_prompt, tools=None, **tokens
    )


def end_of_turn_text(template: str, special_tokens: dict[str, str] | None = None) -> str | None:
    """The special token a template writes right after an assistant's answer (``<|im_end|>``,
    ``<|eot_id|>``, ``<|end|>``, ``<end_of_turn>``, ``</s>``), or None."""
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": _ANSWER_MARK},
    ]
    try:
        text = render_chat(
            template, messages, add_generation_prompt=False, special_tokens=special_tokens
        )
    except (TemplateError, TypeError, ValueError):
        return None
    if _ANSWER_MARK not in text:
        return None
    match = _SPECIAL_TEXT.match(text.split(_ANSWER_MARK, 1)[1])
    return match.group(1) if match else None


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


_peak_before_resets = 0  # the process's high-water mark as it was before this module reset it
_peak_lock = threading.Lock()


def _peak_rss() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's high-water mark of resident memory (Linux), remembering what it was
    (:func:`process_peak_bytes`); False if impossible."""
    global _peak_before_resets
    with _peak_lock:
        before = _peak_rss()
        if before is None:
            return False
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            return False
        _peak_before_resets = max(_peak_before_resets, before)
        return True


def process_peak_bytes() -> int:
    """This process's peak resident memory over its whole life. The kernel's ``VmHWM`` (and
    ``ru_maxrss``) only go back to the last reset once a local model has measured a request:
    ask this instead."""
    return max(_peak_before_resets, _peak_rss() or 0, rss_bytes())


class RssSampler:
    """Peak resident memory of this process while the ``with`` block runs, less ``baseline``.

    Exact on Linux (the kernel's high-water mark, reset at the start); elsewhere sampled every
    ``interval_s``."""

    def __init__(self, interval_s: float = RSS_SAMPLE_S, baseline_bytes: int = 0) -> None:
        self.interval_s = interval_s
        self.baseline_bytes = baseline_bytes
        self.peak_bytes = 0
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._exact = False

    def _sample(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._exact = _reset_peak() and _peak_rss() is not None
        self._sample()
        if not self._exact:
            self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        if self._exact:
            self.peak_bytes = max(self.peak_bytes, _peak_rss() or 0)

    @property
    def peak_mb(self) -> float:
        """The peak above the baseline, in MiB."""
        return max(self.peak_bytes - self.baseline_bytes, 0) / (1024 * 1024)


@dataclass
class Generation:
    """One sequence's generated tokens and when they came."""

    tokens: list[int]
    first_token_s: float | None  # perf_counter time of the first generated token
    last_token_s: float | None
    finish_reason: str  # "stop" (end-of-turn token) or "length"


@dataclass(frozen=True)
class CachePolicy:
    """What a folder's KV cache allows, read from its ``genai_config.json``."""

    rewindable: bool  # a generator can be rewound to empty and reused
    min_length: int  # the smallest max_length the runtime accepts (a sliding window's size)
    batching: bool  # padded batches give the tokens single runs give
    why: str | None  # why not, in a user's words

    @property
    def genai_version(self) -> str:
        try:
            return metadata.version("onnxruntime-genai")
        except metadata.PackageNotFoundError:
            return "?"


def cache_policy(folder: ModelFolder) -> CachePolicy:
    """Sliding-window attention (a window shorter than the context on some layers) keeps only
    the last window of positions: the cache cannot rewind to empty, a generator must hold at
    least a window, and onnxruntime-genai 0.18 cannot run padded batches of it (right padding
    is refused, left padding changes the tokens)."""
    dec = folder.decoder
    context = int(folder.config["model"].get("context_length") or 0)
    window = dec.get("sliding_window") if isinstance(dec.get("sliding_window"), dict) else None
    size = int((window or {}).get("window_size") or 0)
    layers = (window or {}).get("layers")
    sliding = bool(window) and 0 < size < (context or size + 1) and (layers is None or layers)
    if not sliding:
        return CachePolicy(rewindable=True, min_length=0, batching=True, why=None)
    count = len(layers) if isinstance(layers, list) else dec.get("num_hidden_layers", "all")
    why = (
        f"sliding-window attention (window {size} on {count} of "
        f"{dec.get('num_hidden_layers', '?')} layers)"
    )
    return CachePolicy(rewindable=False, min_length=size, batching=False, why=why)


def batching_for(folder: ModelFolder, requested: int) -> tuple[int, str | None]:
    """(batch size that will be used, why it is smaller than ``requested``)."""
    if requested <= 1:
        return max(requested, 1), None
    policy = cache_policy(folder)
    if policy.batching:
        return requested, None
    return 1, (
        f"{policy.why}: onnxruntime-genai {policy.genai_version} cannot run padded batches of "
        "it, so requests run one at a time"
    )


def _fmt_bytes(n: float) -> str:
    """MB and GB of 2^20 and 2^30 bytes, as the fit table and peak memory are reported."""
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def _tokenizer_config(folder: ModelFolder) -> dict[str, Any]:
    try:
        data = json.loads((folder.path / TOKENIZER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class GenaiRuntime:
    """One onnxruntime-genai model loaded once: tokenizer, chat template, generation loops.

    ``memory_limit_mb`` caps the model's own memory (weights, caches, buffers above what the
    process used before loading it), e.g. a device tier's usable RAM; free RAM always caps it.
    """

    def __init__(
        self, model_dir: Path, threads: int | None = None, memory_limit_mb: float | None = None
    ) -> None:
        import onnxruntime_genai as og

        self.folder: ModelFolder = open_model_folder(model_dir)
        self.info: ModelInfo = inspect_model(self.folder.path)
        self.policy = cache_policy(self.folder)
        self.threads = threads or default_threads()
        self.memory_limit_bytes = (
            int(memory_limit_mb * 1024 * 1024) if memory_limit_mb is not None else None
        )
        self.baseline_bytes = rss_bytes()  # before the model: what is not the model's
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
        pad = model_cfg.get("pad_token_id")
        self.pad_id = int(pad if isinstance(pad, int) else self.tokenizer.pad_token_id)
        template = self.folder.chat_template()
        self.has_chat_template = template is not None
        self.template = template if template is not None else PLAIN_TEMPLATE
        tok_cfg = _tokenizer_config(self.folder)
        self.special_tokens = self.folder.special_tokens()
        for key in ("pad_token", "unk_token"):
            value = tok_cfg.get(key)
            if isinstance(value, str):
                self.special_tokens.setdefault(key, value)
        bos = model_cfg.get("bos_token_id")
        self.bos_id = int(bos) if isinstance(bos, int) else int(self.tokenizer.bos_token_id)
        self.add_bos = tok_cfg.get("add_bos_token") is True and self.bos_id >= 0
        self.eos_ids = self._end_ids(model_cfg)
        self._held: Any = None  # the reused greedy generator (rewindable caches only)
        self._held_length = 0
        self.load_ms = (time.perf_counter() - started) * 1000

    def _end_ids(self, model_cfg: dict[str, Any]) -> set[int]:
        """EOS ids of the tokenizer and genai_config, and the template's end-of-turn token."""
        ids = {int(t) for t in self.tokenizer.eos_token_ids}
        eos_cfg = model_cfg.get("eos_token_id")
        if isinstance(eos_cfg, list):
            ids |= {int(t) for t in eos_cfg}
        elif isinstance(eos_cfg, int):
            ids.add(eos_cfg)
        end = end_of_turn_text(self.template, self.special_tokens)
        if end:
            encoded = self.encode(end)
            if len(encoded) == 1:
                ids.add(encoded[0])
        return ids

    # -- text and tokens ---------------------------------------------------------------------

    def render(self, messages: Sequence[dict[str, Any]]) -> str:
        return render_chat(self.template, messages, special_tokens=self.special_tokens)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def encode_messages(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """The prompt's tokens, BOS first where the tokenizer wants it."""
        ids = self.encode(self.render(messages))
        if self.add_bos and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(tokens))) if tokens else ""

    # -- memory ------------------------------------------------------------------------------

    def measure(self) -> RssSampler:
        """``with runtime.measure() as mem:`` — ``mem.peak_mb`` is the model's own peak."""
        return RssSampler(baseline_bytes=self.baseline_bytes)

    def own_bytes(self) -> int:
        """Resident memory above the pre-load baseline now."""
        return max(rss_bytes() - self.baseline_bytes, 0)

    def max_length_for(self, prompt_len: int, new: int, reuse: bool = False) -> int:
        """The generator length a request needs: prompt + new tokens (a bucket of them when the
        generator is to be reused), at least a sliding window, at most the context."""
        need = prompt_len + new
        if reuse:
            need = math.ceil(need / BUCKET_TOKENS) * BUCKET_TOKENS
        return min(self.context_length, max(need, self.policy.min_length))

    def check_memory(self, max_length: int, prompt_len: int, batch_size: int = 1) -> None:
        """Raises :class:`ModelMemoryError` when a generator of ``max_length`` (its KV cache and
        the prefill's logits) does not fit in the memory available."""
        kv, logits = generation_bytes(
            self.info, prompt_tokens=prompt_len, max_length=max_length, batch_size=batch_size
        )
        asked = kv + logits
        available = int(psutil.virtual_memory().available)
        where = "free on this machine"
        if self.memory_limit_bytes is not None:
            room = self.memory_limit_bytes - self.own_bytes()
            if room < available:
                available = max(room, 0)
                where = f"left of the {_fmt_bytes(self.memory_limit_bytes)} memory limit"
        if asked <= available:
            return
        raise ModelMemoryError(
            str(self.folder.path),
            f"a request of {prompt_len} prompt tokens with max_length {max_length} (batch "
            f"{batch_size}) needs {_fmt_bytes(asked)} (KV cache {_fmt_bytes(kv)} at "
            f"{self.info.kv_bytes_per_token} bytes a token: {self.info.layers} layers x "
            f"{self.info.kv_heads} KV heads x {self.info.head_size} x keys and values; prefill "
            f"logits {_fmt_bytes(logits)}) but {_fmt_bytes(available)} is {where}",
            asked_bytes=asked,
            available_bytes=available,
            max_length=max_length,
            batch_size=batch_size,
            fix=MEMORY_FIX,
        )

    def _failure(self, exc: Exception, max_length: int, prompt_len: int, batch: int) -> Exception:
        """The runtime's exception as a typed error (an allocation failure is a memory one)."""
        if isinstance(exc, ModelRuntimeError):
            return exc
        message = str(exc)
        if "allocate" in message.lower():
            kv, logits = generation_bytes(
                self.info, prompt_tokens=prompt_len, max_length=max_length, batch_size=batch
            )
            return ModelMemoryError(
                str(self.folder.path),
                f"onnxruntime-genai could not allocate {_fmt_bytes(kv + logits)} for max_length "
                f"{max_length} (batch {batch}): {message}",
                asked_bytes=kv + logits,
                available_bytes=int(psutil.virtual_memory().available),
                max_length=max_length,
                batch_size=batch,
                fix=MEMORY_FIX,
            )
        return ModelRuntimeError(
            str(self.folder.path), f"onnxruntime-genai failed: {type(exc).__name__}: {message}"
        )

    # -- generators --------------------------------------------------------------------------

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

    def release(self) -> None:
        """Drop the held generator (its cache is freed)."""
        self._held = None
        self._held_length = 0

    def _generator(
        self, prompt_len: int, new: int, temperature: float, seed: int, batch_size: int
    ) -> tuple[Any, int]:
        """A generator ready for ``new`` tokens after a prompt, and its max_length. A greedy
        single sequence on a rewindable cache reuses the held generator when it is of the
        bucket the request needs; anything else is made for the request (the held one
        released first, so the two never hold memory together)."""
        reuse = self.policy.rewindable and batch_size == 1 and temperature <= 0
        max_length = self.max_length_for(prompt_len, new, reuse)
        if reuse and self._held is not None and self._held_length == max_length:
            self._held.rewind_to(0)
            return self._held, max_length
        self.release()
        self.check_memory(max_length, prompt_len, batch_size)
        try:
            generator = self._og.Generator(
                self.model, self._params(max_length, temperature, seed, batch_size)
            )
        except Exception as exc:
            raise self._failure(exc, max_length, prompt_len, batch_size) from exc
        if reuse:
            self._held, self._held_length = generator, max_length
        return generator, max_length

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
        generator, max_length = self._generator(len(prompt_ids), new, temperature, seed, 1)
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
        except GeneratorExit:
            raise
        except Exception as exc:
            self.release()  # its state is unknown now: the next request starts clean
            raise self._failure(exc, max_length, len(prompt_ids), 1) from exc
        except BaseException:
            self.release()
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
        new = min(self.context_length - longest, max(budgets))
        generator, max_length = self._generator(longest, new, temperature, seed, n)
        if n == 1:
            batch = np.asarray(prompts[0], dtype=np.int32)
        else:
            batch = np.full((n, longest), self.pad_id, dtype=np.int32)
            for i, prompt in enumerate(prompts):
                batch[i, : len(prompt)] = prompt
        try:
            self._decode_loop(generator, batch, budgets, results)
        except Exception as exc:
            self.release()
            raise self._failure(exc, max_length, longest, n) from exc
        except BaseException:
            self.release()
            raise
        if generator is not self._held:
            del generator  # a request's own cache goes now, not at the next request
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
        self.release()
        self.model = None
        self.tokenizer = None
