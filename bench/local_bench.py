"""Local model performance: the figures onnxruntime-genai's own benchmark prints, plus what the
planner's harness costs and what batching buys.

Builds a random-weight decoder big enough for timings to mean something (hidden 512, 8 layers,
about 26M parameters) in a temporary folder, with INT8 and INT4 copies, then:

1. per variant, in a fresh process each (clean memory figures): prompt processing tok/s
   (prompt tokens / TTFT), token generation tok/s, end-to-end latency, peak working set;
2. harness overhead: LocalBackend decode tok/s against a bare onnxruntime-genai generate loop,
   same prompts, same model, same process, interleaved (goal >= 0.95x);
3. batching: the same 16 requests one at a time and in batches of 4 and 8 (similar prompt
   lengths batched together), generated tokens/s overall.

Run: ``python -m bench.local_bench`` (or through ``make bench``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from planner.models.quantize import quantize_model_folder  # noqa: E402
from planner.models.runtime import default_threads  # noqa: E402
from planner.models.tiny import build_tiny_model  # noqa: E402
from planner.replay.local import LocalBackend  # noqa: E402
from planner.replay.protocol import ReplayRequest, ReplayResult  # noqa: E402

SHAPE = {"layers": 8, "hidden": 512, "heads": 8, "context_length": 1024, "seed": 0}
NEW_TOKENS = 64
TOPICS = [
    "the billing page",
    "a failed payment",
    "the mobile app",
    "an exported report",
    "the team plan",
    "a refund request",
    "the login page",
    "the settings screen",
]


def requests(n: int = 8, max_tokens: int = NEW_TOKENS) -> list[ReplayRequest]:
    """Prompts of about 100 to 400 tokens (eight lengths, repeating), like production requests."""
    out = []
    for i in range(n):
        body = " ".join(
            f"The customer wrote about {TOPICS[(i + j) % 8]}." for j in range(3 + 2 * (i % 8))
        )
        messages = [
            {"role": "system", "content": "Classify the support ticket. Reply with one word."},
            {"role": "user", "content": f"Ticket {i}: {body}"},
        ]
        out.append(ReplayRequest(f"b{i}", messages, max_tokens=max_tokens))
    return out


def measure_variant(folder: Path) -> dict[str, Any]:
    """In this process: load, replay the prompts, report the figures (run in a child process)."""
    import psutil

    backend = LocalBackend(folder.name, folder, max_new_tokens=NEW_TOKENS)
    results: list[ReplayResult] = []
    backend.replay(requests(), results.append)  # warm-up: every prompt length once
    results.clear()
    backend.replay(requests(), results.append)
    ok = [r for r in results if r.ok]
    prompt_rates = [
        r.prompt_tokens / (r.ttft_ms / 1000) for r in ok if r.prompt_tokens and r.ttft_ms
    ]
    return {
        "variant": folder.name,
        "load_ms": backend.load_ms,
        "prompt_tok_s": statistics.median(prompt_rates),
        "gen_tok_s": statistics.median(r.tokens_per_s for r in ok if r.tokens_per_s),
        "ttft_ms": statistics.median(r.ttft_ms for r in ok if r.ttft_ms),
        "e2e_ms": statistics.median(r.latency_ms for r in ok if r.latency_ms),
        "prompt_tokens": statistics.median(r.prompt_tokens for r in ok if r.prompt_tokens),
        "new_tokens": statistics.median(r.completion_tokens for r in ok if r.completion_tokens),
        "peak_rss_mb": psutil.Process().memory_info().rss / 2**20
        if not ok
        else max(r.peak_rss_mb or 0.0 for r in ok),
        "ok": len(ok),
    }


def bare_decode_rate(model: Any, tokenizer: Any, prompt_ids: list[int], n: int) -> float:
    """Decode tok/s of the plainest onnxruntime-genai loop (no harness)."""
    import numpy as np
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt_ids) + n, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
    gen.generate_next_token()
    first = time.perf_counter()
    count = 1
    while not gen.is_done() and count < n:
        gen.generate_next_token()
        gen.get_next_tokens()
        count += 1
    return (count - 1) / (time.perf_counter() - first)


def harness_overhead(folder: Path, rounds: int = 3) -> dict[str, Any]:
    """LocalBackend vs the bare loop on the same prompts and model, interleaved."""
    backend = LocalBackend("harness", folder, max_new_tokens=NEW_TOKENS)
    runtime = backend.runtime
    reqs = requests()
    prompts = [runtime.encode_messages(r.messages) for r in reqs]
    bare: list[float] = []
    harness: list[float] = []
    for _ in range(rounds):
        for req, ids in zip(reqs, prompts, strict=True):
            bare.append(bare_decode_rate(runtime.model, runtime.tokenizer, ids, NEW_TOKENS))
            results: list[ReplayResult] = []
            backend.replay([req], results.append)
            harness.append(results[0].tokens_per_s or 0.0)
    bare_tok_s, harness_tok_s = statistics.median(bare), statistics.median(harness)
    return {
        "model": folder.name,
        "bare_decode_tok_s": bare_tok_s,
        "harness_decode_tok_s": harness_tok_s,
        "ratio": harness_tok_s / bare_tok_s,
        "goal": 0.95,
    }


def batching_gain(folder: Path, sizes: tuple[int, ...] = (1, 4, 8)) -> dict[str, Any]:
    """Overall generated tokens/s for the same 16 requests at several batch sizes."""
    reqs = requests(16, max_tokens=NEW_TOKENS)
    out: dict[str, Any] = {"model": folder.name, "requests": len(reqs)}
    base = None
    for size in sizes:
        backend = LocalBackend(f"b{size}", folder, max_new_tokens=NEW_TOKENS, batch_size=size)
        results: list[ReplayResult] = []
        backend.replay(reqs[:size], results.append)  # warm-up at this size
        results.clear()
        started = time.perf_counter()
        backend.replay(reqs, results.append)
        seconds = time.perf_counter() - started
        tokens = sum(r.completion_tokens or 0 for r in results)
        rate = tokens / seconds
        base = base or rate
        out[f"batch_{size}"] = {"tok_s": rate, "seconds": seconds, "gain": rate / base}
        backend.close()
    return out


def build_models(root: Path) -> dict[str, Path]:
    fp32 = build_tiny_model(root / "fp32", **SHAPE)
    return {
        "fp32": fp32,
        "int8": quantize_model_folder(fp32, root / "int8", "int8"),
        "int4": quantize_model_folder(fp32, root / "int4", "int4"),
    }


def _child(folder: str) -> None:
    print(json.dumps(measure_variant(Path(folder))))


def run() -> dict[str, Any]:
    """Builds the models, measures everything, prints the tables, returns the figures."""
    from planner.models.folder import inspect_model

    with tempfile.TemporaryDirectory(prefix="local-bench-") as tmp:
        started = time.perf_counter()
        folders = build_models(Path(tmp))
        build_s = time.perf_counter() - started
        variants = []
        for name, folder in folders.items():
            proc = subprocess.run(
                [sys.executable, "-m", "bench.local_bench", "--child", str(folder)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            figures = json.loads(proc.stdout.strip().splitlines()[-1])
            info = inspect_model(folder)
            figures |= {
                "variant": name,
                "parameters": info.parameters,
                "weights_mb": info.weight_bytes / 2**20,
                "quantization": info.quantization,
            }
            variants.append(figures)
        overhead = harness_overhead(folders["int4"])
        batching = [batching_gain(folders["fp32"]), batching_gain(folders["int4"])]
    result = {
        "model_shape": SHAPE,
        "build_seconds": build_s,
        "threads": default_threads(),
        "variants": variants,
        "harness_overhead": overhead,
        "batching": batching,
    }
    print_tables(result)
    return result


def print_tables(result: dict[str, Any]) -> None:
    shape = result["model_shape"]
    print(
        f"local models: random decoder, {shape['layers']} layers x hidden {shape['hidden']}, "
        f"built in {result['build_seconds']:.1f} s; {NEW_TOKENS} new tokens per request, "
        f"{result['threads']} threads"
    )
    header = (
        f"{'variant':<8} {'params':>7} {'weights MB':>10} {'load ms':>8} {'prompt tok/s':>12} "
        f"{'gen tok/s':>9} {'ttft ms':>8} {'e2e ms':>8} {'peak RSS MB':>11}"
    )
    print(header)
    print("-" * len(header))
    for v in result["variants"]:
        print(
            f"{v['variant']:<8} {v['parameters'] / 1e6:>6.1f}M {v['weights_mb']:>10.1f} "
            f"{v['load_ms']:>8.0f} {v['prompt_tok_s']:>12.0f} {v['gen_tok_s']:>9.1f} "
            f"{v['ttft_ms']:>8.1f} {v['e2e_ms']:>8.0f} {v['peak_rss_mb']:>11.0f}"
        )
    o = result["harness_overhead"]
    print(
        f"\nharness overhead ({o['model']}): LocalBackend {o['harness_decode_tok_s']:.1f} tok/s "
        f"vs bare onnxruntime-genai loop {o['bare_decode_tok_s']:.1f} tok/s = "
        f"{o['ratio']:.3f}x (goal >= {o['goal']})"
    )
    for b in result["batching"]:
        sizes = [k for k in b if k.startswith("batch_")]
        print(
            f"batching ({b['model']}, {b['requests']} requests): "
            + ", ".join(
                f"{k.removeprefix('batch_')}: {b[k]['tok_s']:.0f} tok/s ({b[k]['gain']:.2f}x)"
                for k in sizes
            )
        )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(sys.argv[2])
    else:
        run()
