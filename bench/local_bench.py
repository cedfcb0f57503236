"""Local model performance: the figures onnxruntime-genai's own benchmark prints, plus what the
planner's harness costs and what batching buys.

With ``BENCH_MODEL=DIR`` (a real model folder, e.g. the Phi-4-mini-shaped INT4 one) it measures
that folder instead: the project (:class:`LocalBackend`) and a bare onnxruntime-genai greedy loop
(a fresh generator of prompt + new tokens per request), each in fresh processes, alternated with
the order swapped each round, on the same prompts and threads: decode tok/s, time to first token
and the model's own peak memory (the process's high-water mark during the requests less its
resident memory before the model was loaded), next to the memory-bandwidth ceilings (bytes read
per generated token, the weights plus the KV cache at the mean context, against
:func:`planner.models.devices.measure_bandwidth`'s one-thread copy and against a read by as many
threads as the model uses). Goals: decode >= 0.97x the bare loop, peak memory within 10% of it.
It also times a fresh generator against a rewound one at the requests' length. ``BENCH_ROUNDS``
(default 2) and ``BENCH_NEW_TOKENS`` (default 64) tune it.

Builds a random-weight decoder big enough for timings to mean something (hidden 512, 8 layers,
about 26M parameters) in a temporary folder, with INT8 and INT4 copies, then:

1. per variant, in a fresh process each (clean memory figures): prompt processing tok/s
   (prompt tokens / TTFT), token generation tok/s, end-to-end latency, peak working set;
2. harness overhead: LocalBackend decode tok/s against a bare onnxruntime-genai generate loop,
   same prompts, same model, same process, interleaved (goal >= 0.95x);
3. batching: the same 16 requests one at a time and in batches of 4 and 8 (similar prompt
   lengths batched together), generated tokens/s overall.

Run: ``python -m bench.local_bench`` (or ``make bench BENCH_ARGS=local [BENCH_MODEL=DIR]``).
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


# -- a real folder: the project next to a bare loop ------------------------------------------


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def folder_requests(n: int, new: int) -> list[ReplayRequest]:
    return requests(n + 1, max_tokens=new)  # the first is the warm-up


def bare_child(folder: Path, n: int, new: int) -> dict[str, Any]:
    """The plainest loop: og.Model + tokenizer, the folder's chat template (BOS where the
    tokenizer wants it), a fresh generator of prompt + new tokens per request (at least a sliding
    window), greedy; peak = high-water mark less the pre-load RSS."""
    import numpy as np
    import onnxruntime_genai as og

    from planner.models.folder import open_model_folder
    from planner.models.runtime import PLAIN_TEMPLATE, cache_policy, render_chat

    model_folder = open_model_folder(folder)
    template = model_folder.chat_template() or PLAIN_TEMPLATE
    special = model_folder.special_tokens()
    min_length = cache_policy(model_folder).min_length  # a sliding window refuses less
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    bos = model_folder.config["model"].get("bos_token_id")
    add_bos = tok_config.get("add_bos_token") is True and isinstance(bos, int)
    baseline = _status_bytes("VmRSS")
    started = time.perf_counter()
    config = og.Config(str(folder))
    threads = {"intra_op_num_threads": default_threads()}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": threads}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    load_ms = (time.perf_counter() - started) * 1000
    eos = {int(t) for t in tokenizer.eos_token_ids}
    out: list[dict[str, float]] = []
    peak = 0
    for i, req in enumerate(folder_requests(n, new)):
        _reset_peak()
        t0 = time.perf_counter()
        ids = list(tokenizer.encode(render_chat(template, req.messages, special_tokens=special)))
        if add_bos and ids[0] != bos:
            ids.insert(0, bos)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max(len(ids) + new, min_length), do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(np.asarray(ids, dtype=np.int32))
        gen.generate_next_token()
        first = time.perf_counter()
        count = 1
        last = first
        while count < new and not gen.is_done():
            gen.generate_next_token()
            if int(gen.get_next_tokens()[0]) in eos:
                break
            count += 1
            last = time.perf_counter()
        del gen
        if i == 0:
            continue  # warm-up
        peak = max(peak, _status_bytes("VmHWM") - baseline)
        out.append(
            {
                "ttft_ms": (first - t0) * 1000,
                "decode_tok_s": (count - 1) / (last - first) if count > 1 else 0.0,
                "prompt_tokens": len(ids),
                "new_tokens": count,
            }
        )
    return {"load_ms": load_ms, "requests": out, "peak_mb": peak / 2**20}


def project_child(folder: Path, n: int, new: int) -> dict[str, Any]:
    """LocalBackend on the same prompts; then a fresh generator against a rewound one."""
    backend = LocalBackend("project", folder, max_new_tokens=new)
    results: list[ReplayResult] = []
    backend.replay(folder_requests(n, new), results.append)
    failed = [r.error_message for r in results if not r.ok]
    if failed:
        raise SystemExit(f"the project failed a request: {failed[0]}")
    out = [
        {
            "ttft_ms": r.ttft_ms or 0.0,
            "decode_tok_s": r.tokens_per_s or 0.0,
            "prompt_tokens": r.prompt_tokens or 0,
            "new_tokens": r.completion_tokens or 0,
        }
        for r in results[1:]
    ]
    rt = backend.runtime
    prompt = int(statistics.median(r["prompt_tokens"] for r in out))
    length = rt.max_length_for(prompt, new, reuse=rt.policy.rewindable)
    fresh, rewind = [], []
    for _ in range(10):
        started = time.perf_counter()
        generator = rt._og.Generator(rt.model, rt._params(length, 0.0, 0))
        fresh.append(time.perf_counter() - started)
        started = time.perf_counter()
        generator.rewind_to(0)
        rewind.append(time.perf_counter() - started)
        del generator
    return {
        "load_ms": backend.load_ms,
        "requests": out,
        "peak_mb": max(r.peak_rss_mb or 0.0 for r in results[1:]),
        "reuse": rt.policy.rewindable,
        "generator_length": length,
        "fresh_generator_ms": statistics.median(fresh) * 1000,
        "rewind_ms": statistics.median(rewind) * 1000,
    }


def _in_child(kind: str, folder: Path, n: int, new: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.local_bench", f"--{kind}", str(folder), str(n), str(new)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child failed: {proc.stderr.strip()[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    reqs = [r for run in runs for r in run["requests"]]
    return {
        "decode_tok_s": statistics.median(r["decode_tok_s"] for r in reqs),
        "ttft_ms": statistics.median(r["ttft_ms"] for r in reqs),
        "peak_mb": statistics.median(run["peak_mb"] for run in runs),
        "load_ms": statistics.median(run["load_ms"] for run in runs),
        "prompt_tokens": statistics.median(r["prompt_tokens"] for r in reqs),
        "new_tokens": statistics.median(r["new_tokens"] for r in reqs),
    }


def read_bandwidth(threads: int, size_mb: int = 1024, repeats: int = 3) -> float:
    """GB/s read by ``threads`` threads summing their share of one array (numpy releases the
    GIL): what decoding does, where devices.measure_bandwidth copies on one thread."""
    import threading

    import numpy as np

    data = np.ones(size_mb * 2**20 // 8, dtype=np.float64)
    chunks = np.array_split(data, threads)
    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=np.sum, args=(c,)) for c in chunks]
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - started)
    return data.nbytes / best / 1e9


def folder_bench(
    folder: Path, rounds: int = 2, n: int = 4, new: int = NEW_TOKENS
) -> dict[str, Any]:
    """The project next to the bare loop on one real folder, alternated ``rounds`` times."""
    from planner.models.devices import GB, measure_bandwidth
    from planner.models.folder import inspect_model

    info = inspect_model(folder)
    load_before = os.getloadavg()[0]
    bare: list[dict[str, Any]] = []
    project: list[dict[str, Any]] = []
    loads: list[float] = []
    for i in range(rounds):  # alternated, the order swapped each round: no side goes first
        for kind in ("bare", "project") if i % 2 == 0 else ("project", "bare"):
            (bare if kind == "bare" else project).append(_in_child(kind, folder, n, new))
        loads.append(round(os.getloadavg()[0], 2))
    bandwidth = measure_bandwidth()
    read = read_bandwidth(default_threads())
    b, p = _summary(bare), _summary(project)
    context = b["prompt_tokens"] + b["new_tokens"] / 2
    bytes_per_token = info.weight_bytes + info.kv_bytes_per_token * context
    return {
        "folder": str(folder),
        "parameters": info.parameters,
        "weights_mb": info.weight_bytes / 2**20,
        "context_length": info.context_length,
        "threads": default_threads(),
        "rounds": rounds,
        "requests_per_round": n,
        "new_tokens": new,
        "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "bare": b,
        "project": p,
        "per_round": [
            {"bare": _summary([x]), "project": _summary([y]), "load_avg": load}
            for x, y, load in zip(bare, project, loads, strict=True)
        ],
        "decode_ratio": p["decode_tok_s"] / b["decode_tok_s"],
        "ttft_ratio": p["ttft_ms"] / b["ttft_ms"],
        "peak_ratio": p["peak_mb"] / b["peak_mb"],
        "bandwidth_gbs": bandwidth,
        "bytes_per_token": bytes_per_token,
        "ceiling_tok_s": bandwidth * GB / bytes_per_token,
        "read_bandwidth_gbs": read,
        "read_ceiling_tok_s": read * GB / bytes_per_token,
        "generator": {
            k: project[-1][k]
            for k in ("reuse", "generator_length", "fresh_generator_ms", "rewind_ms")
        },
        "goals": {"decode_ratio": 0.97, "peak_ratio": 1.10},
    }


def print_folder(result: dict[str, Any]) -> None:
    b, p = result["bare"], result["project"]
    print(
        f"local model {result['folder']}: {result['parameters'] / 1e6:.0f}M parameters, "
        f"{result['weights_mb']:.0f} MB of weights, context {result['context_length']:,}; "
        f"{result['threads']} threads, {result['rounds']} rounds x {result['requests_per_round']} "
        f"requests (median prompt {b['prompt_tokens']:.0f} tokens, {b['new_tokens']:.0f} new); "
        f"load average {result['load_avg'][0]} before, {result['load_avg'][1]} after"
    )
    header = f"{'':<22} {'decode tok/s':>12} {'TTFT ms':>9} {'peak MB':>8} {'load ms':>8}"
    print(header)
    print("-" * len(header))
    for name, row in (("bare onnxruntime-genai", b), ("project (LocalBackend)", p)):
        print(
            f"{name:<22} {row['decode_tok_s']:>12.1f} {row['ttft_ms']:>9.0f} "
            f"{row['peak_mb']:>8.0f} {row['load_ms']:>8.0f}"
        )
    per_token = result["bytes_per_token"] / 1e9
    print(
        f"{'bandwidth ceiling':<22} {result['ceiling_tok_s']:>12.1f}   "
        f"({result['bandwidth_gbs']:.1f} GB/s, devices.measure_bandwidth: a one-thread copy, "
        f"/ {per_token:.2f} GB read per token)"
    )
    print(
        f"{'read ceiling':<22} {result['read_ceiling_tok_s']:>12.1f}   "
        f"({result['read_bandwidth_gbs']:.1f} GB/s read by {result['threads']} threads "
        f"/ {per_token:.2f} GB)"
    )
    for i, r in enumerate(result["per_round"], 1):
        print(
            f"  round {i}: decode bare {r['bare']['decode_tok_s']:.1f} / project "
            f"{r['project']['decode_tok_s']:.1f} tok/s, TTFT {r['bare']['ttft_ms']:.0f} / "
            f"{r['project']['ttft_ms']:.0f} ms, peak {r['bare']['peak_mb']:.0f} / "
            f"{r['project']['peak_mb']:.0f} MB (load average {r['load_avg']})"
        )
    g = result["generator"]
    print(
        f"project / bare: decode {result['decode_ratio']:.3f}x (goal >= 0.97), TTFT "
        f"{result['ttft_ratio']:.3f}x, peak memory {result['peak_ratio']:.3f}x (goal <= 1.10); "
        f"decode at {p['decode_tok_s'] / result['read_ceiling_tok_s']:.0%} of the read ceiling"
    )
    print(
        f"generator set-up at max_length {g['generator_length']}: fresh "
        f"{g['fresh_generator_ms']:.2f} ms, rewound {g['rewind_ms']:.3f} ms "
        f"({'reused per bucket' if g['reuse'] else 'fresh per request: the cache cannot rewind'})"
    )


def run() -> dict[str, Any]:
    """Builds the models, measures everything, prints the tables, returns the figures."""
    from planner.models.folder import inspect_model

    if os.environ.get("BENCH_MODEL"):
        result = folder_bench(
            Path(os.environ["BENCH_MODEL"]),
            rounds=int(os.environ.get("BENCH_ROUNDS", "2")),
            new=int(os.environ.get("BENCH_NEW_TOKENS", str(NEW_TOKENS))),
        )
        print_folder(result)
        return result

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
        f"{'gen tok/s':>9} {'ttft ms':>8} {'e2e ms':>8} {'own peak MB':>11}"
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
    elif len(sys.argv) == 5 and sys.argv[1] in ("--bare", "--project"):
        child = bare_child if sys.argv[1] == "--bare" else project_child
        print(json.dumps(child(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
    else:
        run()
