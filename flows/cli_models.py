"""`migration-planner models ...`: Inspect, build and quantize local onnxruntime-genai model
folders; `migration-planner serve-model`: one behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import typer

from flows.cli_common import JsonOption, UserError, new_app, print_json, progress
from planner.models.guards import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_INFLIGHT  # no FastAPI

app = new_app("Inspect, build and quantize local onnxruntime-genai model folders.")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _count(n: int) -> str:
    if n >= 1_000_000_000:
        return f"{n / 1e9:.2f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}K"
    return str(n)


def _opt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _parameters(info: dict[str, Any]) -> str:
    shown = f"{_count(info['parameters'])} ({info['parameters']:,})"
    duplicate = int(info.get("duplicate_parameters") or 0)
    if duplicate:
        shown += f"; a stored second copy of a shared tensor ({duplicate:,}) counted once"
    return shown


def format_info(info: dict[str, Any]) -> str:
    ops = ", ".join(f"{op} {n}" for op, n in info["quant_ops"].items() if n) or "none"
    rows = [
        ("model", f"{info['path']} ({info['model_type']})"),
        ("parameters", _parameters(info)),
        ("quantization", info["quantization"]),
        ("weight ops", ops),
        ("on disk", f"{_size(info['bytes_on_disk'])} (weights {_size(info['weight_bytes'])})"),
        ("context length", f"{info['context_length']:,} tokens"),
        ("vocabulary", f"{info['vocab_size']:,} tokens"),
        (
            "shape",
            f"{info['layers']} layers, hidden {info['hidden_size']}, "
            f"{info['attention_heads']} heads ({info['kv_heads']} kv), head {info['head_size']}",
        ),
        ("KV cache", f"{_size(info['kv_bytes_per_token'])} per token"),
        ("chat template", "yes" if info["chat_template"] else "no (plain fallback is used)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


@app.command("inspect")
def inspect(
    model_dir: Path = typer.Argument(..., help="An onnxruntime-genai model folder."),
    json_output: bool = JsonOption,
) -> None:
    """Parameters, quantization, size, context length, vocabulary, chat template of a model."""
    from planner.models.folder import inspect_model

    info = inspect_model(model_dir).as_dict()
    if json_output:
        print_json(info)
    else:
        typer.echo(format_info(info))


@app.command("import")
def import_(
    src: Path = typer.Argument(
        ..., help="A .gguf file, a Hugging Face checkpoint folder or an onnxruntime-genai folder."
    ),
    out: Path = typer.Argument(
        ..., help="Folder to write; each precision goes to OUT/<precision>."
    ),
    precision: list[str] = typer.Option(
        [], "--precision", help="int4, int8 or fp32; repeat for several (default: int4)."
    ),
    context_cap: int | None = typer.Option(
        None,
        "--context-cap",
        min=256,
        help="Cap the context (and the KV cache reserved) at N tokens.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace existing OUT/<precision> folders."),
    build_python: Path | None = typer.Option(
        None,
        "--build-python",
        help="Python of a build environment to use (default: $MIGRATION_PLANNER_BUILD_PYTHON, "
        "else one created once under ~/.cache/migration-planner/build-venv).",
    ),
    json_output: bool = JsonOption,
) -> None:
    """Import a real model as onnxruntime-genai folders: a GGUF file (quantized ones are
    dequantized), a Hugging Face checkpoint (AWQ/GPTQ included) or an existing genai folder
    (checked and copied). Conversions run in a separate build environment (torch CPU,
    transformers, the onnxruntime-genai model builder) and take minutes."""
    from planner.models.importer import import_model

    result = import_model(
        src,
        out,
        precision,
        context_cap=context_cap,
        force=force,
        python=build_python,
        progress=progress,
    )
    if json_output:
        print_json(result.as_dict())
        return
    for name, folder in result.folders.items():
        typer.echo(f"{name}: {folder} ({_size(result.sizes[name])})")
    typer.echo(f"imported in {result.seconds:.0f}s; check one with `models inspect FOLDER`")


@app.command("tiny")
def tiny(
    out: Path = typer.Argument(..., help="Folder to write (replaced if it exists)."),
    layers: int = typer.Option(2, "--layers", min=1, max=48, help="Decoder layers."),
    hidden: int = typer.Option(64, "--hidden", min=8, max=4096, help="Hidden size."),
    heads: int = typer.Option(4, "--heads", min=1, help="Attention heads (divide --hidden)."),
    context: int = typer.Option(256, "--context", min=8, help="Context length in tokens."),
    vocab: int = typer.Option(512, "--vocab", min=300, help="Tokenizer vocabulary (at most)."),
    quant: str = typer.Option("fp32", "--quant", help="fp32, int8 or int4."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
) -> None:
    """Build a small random-weight decoder model (no download, no torch) for tests and benches."""
    from planner.errors import ModelFolderError
    from planner.models.quantize import quantize_model_folder
    from planner.models.tiny import build_tiny_model

    if quant not in ("fp32", "int8", "int4"):
        raise UserError(f"--quant {quant!r}: expected fp32, int8 or int4")
    if hidden % heads:
        raise UserError(f"--hidden {hidden} is not a multiple of --heads {heads}")
    kwargs = dict(
        layers=layers,
        hidden=hidden,
        heads=heads,
        context_length=context,
        vocab_size=vocab,
        seed=seed,
    )
    try:
        if quant == "fp32":
            build_tiny_model(out, **kwargs)
        else:
            with tempfile.TemporaryDirectory(prefix="planner-tiny-") as tmp:
                build_tiny_model(Path(tmp) / "fp32", **kwargs)
                quantize_model_folder(Path(tmp) / "fp32", out, quant)  # type: ignore[arg-type]
    except OSError as exc:
        raise ModelFolderError(str(out), f"cannot write: {exc}") from exc
    progress(f"wrote {out}")
    inspect(out, json_output=False)


@app.command("quantize")
def quantize(
    src: Path = typer.Argument(..., help="The model folder to quantize."),
    out: Path = typer.Argument(..., help="Folder to write (replaced if it exists)."),
    to: str = typer.Option(
        ..., "--to", help="int8 (dynamic, MatMulInteger) or int4 (MatMulNBits)."
    ),
    block_size: int = typer.Option(
        32, "--block-size", help="int4 block size (power of two >= 16)."
    ),
) -> None:
    """Write an INT8 or INT4 copy of a model folder (the tokenizer and configs are copied)."""
    from planner.models.quantize import quantize_model_folder

    if to not in ("int8", "int4"):
        raise UserError(f"--to {to!r}: expected int8 or int4")
    quantize_model_folder(src, out, to, block_size=block_size)  # type: ignore[arg-type]
    progress(f"wrote {out}")
    inspect(out, json_output=False)


@app.command("devices")
def devices(
    model_dirs: list[Path] = typer.Argument(..., help="Model folders to place on devices."),
    context: int = typer.Option(2048, "--context", min=1, help="Tokens of context to hold (p95)."),
    requests_per_hour: float = typer.Option(
        60.0, "--requests-per-hour", min=0, help="Workload rate, for battery drain."
    ),
    output_tokens: int = typer.Option(128, "--output-tokens", min=1, help="Typical answer length."),
    measure: bool = typer.Option(
        True,
        "--measure/--no-measure",
        help="Time a few generations on this host and scale them (else the bandwidth roofline).",
    ),
    json_output: bool = JsonOption,
) -> None:
    """Which device tiers each model fits, with estimated decode speed and energy (estimates)."""
    from dataclasses import asdict

    from planner.models.devices import estimate_fits, load_devices, measure_host
    from planner.models.folder import inspect_model

    host = measure_host()
    table = load_devices(host)
    rows = []
    for model_dir in model_dirs:
        info = inspect_model(model_dir)
        decode, prefill = measure_speed(model_dir) if measure else (None, None)
        rows += estimate_fits(
            info,
            table,
            host,
            context_tokens=context,
            output_tokens=output_tokens,
            requests_per_hour=requests_per_hour,
            host_decode_tokens_per_s=decode,
            host_prefill_tokens_per_s=prefill,
        )
    if json_output:
        print_json({"host": asdict(host), "estimates": [asdict(r) for r in rows]})
        return
    header = (
        f"{'model':<28} {'device':<22} {'fits':<4} {'needs MB':>9} {'usable MB':>10} "
        f"{'~tok/s':>8} {'~J/req':>7} {'~%bat/h':>8}"
    )
    typer.echo(header)
    typer.echo("-" * len(header))
    for r in rows:
        typer.echo(
            f"{r.model[-28:]:<28} {r.device[:22]:<22} {'yes' if r.fits else 'no':<4} "
            f"{r.required_mb:>9.0f} {r.usable_mb:>10.0f} {r.decode_tokens_per_s:>8.1f} "
            f"{_opt(r.energy_j_per_request):>7} {_opt(r.battery_pct_per_hour):>8}"
        )
    for formula in dict.fromkeys(r.formula for r in rows if r.basis != "measured"):
        typer.echo(f"\n(estimates) {formula}")


def measure_speed(model_dir: Path) -> tuple[float | None, float | None]:
    """(decode tok/s, prompt tok/s) on this host: medians over a few short generations."""
    import statistics

    from planner.replay.local import LocalBackend
    from planner.replay.protocol import ReplayRequest, ReplayResult

    text = "Please summarize the following customer message in one short sentence. " * 4
    requests = [
        ReplayRequest(f"m{i}", [{"role": "user", "content": f"{i}. {text}"}], max_tokens=32)
        for i in range(4)
    ]
    results: list[ReplayResult] = []
    backend = LocalBackend("measure", model_dir, max_new_tokens=32)
    backend.replay(requests, results.append)
    backend.close()
    rates = [r.tokens_per_s for r in results[1:] if r.tokens_per_s]
    prompt = [
        r.prompt_tokens / (r.ttft_ms / 1000) for r in results[1:] if r.prompt_tokens and r.ttft_ms
    ]
    return (
        statistics.median(rates) if rates else None,
        statistics.median(prompt) if prompt else None,
    )


def serve_model(
    model_dir: Path | None = typer.Argument(None, help="An onnxruntime-genai model folder."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port (0: any free)."),
    model_name: str | None = typer.Option(
        None, "--model-name", help="Name clients send as `model` (default: the folder's name)."
    ),
    echo: bool = typer.Option(False, "--echo", help="No model: echo the last user message."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Intra-op threads."),
    fault_429: float = typer.Option(
        0.0, "--fault-429", min=0, max=1, help="Fraction answered 429."
    ),
    retry_after: float | None = typer.Option(
        1.0, "--retry-after", min=0, help="Retry-After seconds on injected 429s."
    ),
    fault_503: float = typer.Option(
        0.0, "--fault-503", min=0, max=1, help="Fraction answered 503."
    ),
    latency_ms: float = typer.Option(0.0, "--latency-ms", min=0, help="Extra latency per answer."),
    hang_rate: float = typer.Option(
        0.0, "--hang-rate", min=0, max=1, help="Fraction never answered."
    ),
    malformed_sse: float = typer.Option(
        0.0, "--malformed-sse", min=0, max=1, help="Fraction of streams with a broken data: line."
    ),
    omit_usage: bool = typer.Option(False, "--omit-usage", help="Never report token usage."),
    fault_seed: int = typer.Option(0, "--fault-seed", help="Seed of the fault decisions."),
    api_key_env: str | None = typer.Option(
        None,
        "--api-key-env",
        help="Environment variable holding the key clients must send (Bearer); never the key "
        "itself.",
    ),
    insecure_no_auth: bool = typer.Option(
        False,
        "--insecure-no-auth",
        help="Listen on a non-loopback --host without a key (anyone who reaches it may use it).",
    ),
    max_body_bytes: int = typer.Option(
        DEFAULT_MAX_BODY_BYTES,
        "--max-body-bytes",
        min=1,
        help="Largest request body accepted; a larger one gets 413.",
    ),
    max_inflight: int = typer.Option(
        DEFAULT_MAX_INFLIGHT,
        "--max-inflight",
        min=1,
        help="Requests served at once; one more gets 429 with Retry-After.",
    ),
    memory_limit_mb: float | None = typer.Option(
        None,
        "--memory-limit-mb",
        min=1,
        help="Cap on the model's own memory (weights, KV cache, buffers), e.g. a device tier's; "
        "a request whose cache would not fit gets 503 insufficient_memory before anything is "
        "allocated. Default: the host's available memory.",
    ),
) -> None:
    """Serve a local model (or --echo) as an OpenAI-compatible API (models, chat completions)."""
    import uvicorn

    from planner.models.server import (
        ChatEngine,
        EchoEngine,
        FaultConfig,
        LocalEngine,
        create_app,
        is_loopback,
    )

    if (model_dir is None) == (not echo):
        raise UserError("give a model folder, or --echo for a server without a model")
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise UserError(f"--api-key-env {api_key_env}: that environment variable is not set")
    # Before anything is loaded or bound: a server others can reach needs a key.
    if api_key is None and not is_loopback(host):
        if not insecure_no_auth:
            raise UserError(
                f"--host {host} is reachable from other machines: require a key "
                "(--api-key-env VAR) or pass --insecure-no-auth"
            )
        progress(f"warning: serving on {host} without a key (--insecure-no-auth)")
    try:
        faults = FaultConfig(
            rate_429=fault_429,
            retry_after_s=retry_after,
            rate_503=fault_503,
            extra_latency_ms=latency_ms,
            hang_rate=hang_rate,
            malformed_sse_rate=malformed_sse,
            omit_usage=omit_usage,
            seed=fault_seed,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    engine: ChatEngine
    if echo:
        engine = EchoEngine(model_name or "echo")
    else:
        assert model_dir is not None
        engine = LocalEngine(
            model_dir, model_name=model_name, threads=threads, memory_limit_mb=memory_limit_mb
        )
    shown = f"[{host}]" if ":" in host else host
    progress(f"serving {engine.model_name!r} on http://{shown}:{port}/v1 (Ctrl+C stops)")
    app = create_app(
        engine, faults, api_key, max_body_bytes=max_body_bytes, max_inflight=max_inflight
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
