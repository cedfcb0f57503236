"""`migration-planner replay`: the sample of real requests through every candidate."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import typer

from flows.cli_common import (
    EXIT_USER_ERROR,
    ConfigOption,
    JsonOption,
    print_json,
    progress,
    settings_from,
    warehouse_path,
)
from pipeline.endpoints import check_endpoints
from warehouse.connection import open_warehouse

EXIT_INTERRUPTED = 130


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(errors.items())) or "-"


def format_report(result: dict[str, Any]) -> str:
    """The per-candidate table people read (stored figures cover this and earlier runs)."""
    sample = result["sample"]
    lines = [
        f"sample {sample['sample_id']}: {sample['total']} requests "
        f"({len(sample['counts'])} task types, {sample['uncertain_extra']} uncertain extra)",
        f"cost this run ${result['spent_usd']:.4f} of a ${result['max_cost_usd']:.2f} cap",
    ]
    if sample.get("multi_model_prompts"):
        lines.append(
            f"{sample['multi_model_prompts']} prompts were logged under several production "
            "models; each is sampled once"
        )
    rounds = result.get("rounds")
    if rounds:
        lines.append(
            f"rounds (cap {result['cap']}): "
            + ", ".join(f"{r['look']} ({r['open']} pairs left open)" for r in rounds)
        )
    shards = result.get("shards")
    if shards:
        lines.append(
            f"shards {shards['done']}/{shards['total']} done: "
            f"{shards['replayed_requests']} requests replayed, {shards['cached_requests']} cached"
        )
    lines.append("")
    header = (
        f"{'candidate':<22} {'sent':>5} {'cached':>6} {'ok':>5} {'retries':>7} {'cost $':>9} "
        f"{'ttft p50/p95 ms':>16} {'latency p50/p95 ms':>19} {'tok/s':>7}  errors"
    )
    lines += [header, "-" * len(header)]
    notes = []
    for run in result["candidates"]:
        stored = run.get("stored") or {}
        ttft = f"{_ms(stored.get('ttft_ms_p50'))}/{_ms(stored.get('ttft_ms_p95'))}"
        latency = f"{_ms(stored.get('latency_ms_p50'))}/{_ms(stored.get('latency_ms_p95'))}"
        rate = stored.get("tokens_per_s")
        lines.append(
            f"{run['candidate']:<22} {run.get('sent', 0):>5} {run.get('cached', 0):>6} "
            f"{stored.get('ok', 0):>5} {run.get('retries', 0):>7} "
            f"{stored.get('cost_usd', 0.0):>9.4f} {ttft:>16} {latency:>19} "
            f"{'-' if rate is None else f'{rate:.0f}':>7}  {_errors(stored.get('errors', {}))}"
        )
        if run.get("skipped_budget"):
            notes.append(f"{run['candidate']}: skipped (budget): {run['skipped_budget']}")
        if run.get("stopped"):
            notes.append(f"{run['candidate']}: stopped ({run['stopped']}): {run.get('message')}")
        if run.get("renewed"):
            notes.append(
                f"{run['candidate']}: {run['renewed']} stored answers renewed (expired, tonight's "
                "slice, or served by another model)"
            )
        batching = run.get("batching") or {}
        if batching.get("used", 1) < batching.get("requested", 1):
            notes.append(
                f"{run['candidate']}: batch size {batching['requested']} requested, "
                f"{batching['used']} used: {batching['why']}"
            )
        serving = run.get("serving") or {}
        if serving.get("changed_from"):
            notes.append(
                f"{run['candidate']}: the relay now serves {serving.get('served_model')} (was "
                f"{serving['changed_from']}); its answers were replayed"
            )
    return "\n".join(lines + (["", *notes] if notes else []))


@contextmanager
def graceful_interrupt(stop: Callable[[], None]) -> Iterator[None]:
    """First Ctrl-C: finish the requests in flight, store them and stop. Second: abort."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, previous)
        stop()
        progress("stopping: finishing the requests in flight (Ctrl-C again to abort)")

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def replay(
    config: Path | None = ConfigOption,
    per_type: int | None = typer.Option(
        None,
        "--per-type",
        min=1,
        help="Sampled requests per task type (default: [replay] per_type).",
    ),
    candidates: str | None = typer.Option(
        None, "--candidates", help="Comma-separated candidate names (default: every candidate)."
    ),
    refresh: bool = typer.Option(
        False, "--refresh", help="Replay everything again, ignoring cached replays."
    ),
    json_output: bool = JsonOption,
    warehouse: Path | None = typer.Option(
        None, "--warehouse", "-w", help="The DuckDB warehouse (default: [warehouse] path)."
    ),
    shard_size: int | None = typer.Option(
        None,
        "--shard-size",
        min=1,
        help="Requests per local-model shard (default: [run] shard_size).",
    ),
    dask_address: str | None = typer.Option(
        None,
        "--dask-address",
        help=(
            "Run local-model shards on this Dask scheduler (tcp://host:8786), or 'local' for a "
            "LocalCluster here; needs prefect-dask (default: [run] dask_address)."
        ),
    ),
) -> None:
    """Replay a seeded sample of production requests through local models and relays."""
    settings = settings_from(config)
    names = [n.strip() for n in candidates.split(",") if n.strip()] if candidates else None
    for name in names or []:
        settings.candidate(name)  # an unknown name is one clear error before anything starts
    check_endpoints(settings, names)  # an external relay without a data policy: one line
    path = warehouse_path(settings, warehouse)
    open_warehouse(path, create=False).close()  # missing or locked: one line, before Prefect
    from flows.replay_flow import replay_flow, request_stop
    from flows.shards import dask_task_runner

    address = dask_address or settings.run.dask_address
    if address:
        dask_task_runner(address)  # prefect-dask missing: one line, before Prefect starts
    with graceful_interrupt(request_stop):
        result = replay_flow(
            config_path=str(config) if config is not None else None,
            per_type=per_type,
            candidates=names,
            refresh=refresh,
            warehouse_path=str(path),
            shard_size=shard_size,
            dask_address=dask_address,
        )
    if json_output:
        print_json(result)
    else:
        typer.echo(format_report(result))
    refused = [r["message"] for r in result["candidates"] if r.get("stopped") == "auth"]
    for message in refused:
        typer.echo(f"error: {message}", err=True)
    if refused:
        raise typer.Exit(EXIT_USER_ERROR)
    if any(r.get("stopped") == "interrupted" for r in result["candidates"]):
        progress("interrupted: what was answered is stored; run again to resume")
        raise typer.Exit(EXIT_INTERRUPTED)
