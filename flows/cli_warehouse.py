"""``migration-planner ingest | profile | rejects | demo``.

``ingest``, ``profile`` and ``rejects`` call the warehouse functions directly (a Prefect server
start would cost seconds for a sub-second job); ``demo`` runs the stages as Prefect flows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_common import (
    ConfigOption,
    JsonOption,
    UserError,
    print_json,
    progress,
    settings_from,
    warehouse_path,
)
from warehouse import (
    FORMATS,
    ingest_paths,
    list_rejects,
    open_warehouse,
    prepare_ingest,
    profile_warehouse,
)

WarehouseOption = typer.Option(
    None,
    "--warehouse",
    "-w",
    help="DuckDB warehouse file (default: [warehouse] path in planner.toml, "
    "else ./planner.duckdb).",
    show_default=False,
)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*("–" if v is None else str(v) for v in row))
    return table


def ingest(
    paths: list[Path] = typer.Argument(
        ...,
        help="Log files (.jsonl, .jsonl.gz, .parquet) or folders of them (hive-partitioned "
        "Parquet folders such as logs/date=2026-11-01/part-0.parquet work).",
        show_default=False,
    ),
    fmt: str = typer.Option(
        "auto",
        "--format",
        "-f",
        help=f"Log format: {', '.join(FORMATS)} (auto detects: .parquet files are Parquet, "
        "others from their first line).",
    ),
    batch_output: Path | None = typer.Option(
        None,
        "--batch-output",
        help="OpenAI batch output file joined with the input file on custom_id.",
        show_default=False,
    ),
    warehouse: Path | None = WarehouseOption,
    config: Path | None = ConfigOption,
    strict: bool = typer.Option(
        False, "--strict", help="Exit with code 1 when any line was rejected."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Load request logs into the warehouse; bad lines are kept in rejected_lines, never dropped.

    Every file reports: lines read = loaded + duplicates + rejected + blank (+ joined batch
    outputs). Re-ingesting a file already ingested changes nothing.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    settings = settings_from(config)
    prepare_ingest(paths, fmt=fmt, batch_output=batch_output)
    con = open_warehouse(warehouse_path(settings, warehouse))
    try:
        report = ingest_paths(
            con,
            paths,
            fmt=fmt,
            batch_output=batch_output,
            prices=settings.price_overrides(),
            progress=None if as_json else progress,
        )
    finally:
        con.close()
    totals = report.as_dict()
    if as_json:
        print_json(totals)
    else:
        Console().print(
            _table(
                "ingest",
                ["file", "status", "read", "loaded", "duplicates", "rejected", "blank", "joined"],
                [
                    [
                        f.path,
                        f.status,
                        f.lines_read,
                        f.loaded,
                        f.duplicates,
                        f.rejected,
                        f.blank,
                        f.joined,
                    ]
                    for f in report.files
                ],
            )
        )
        typer.echo(
            f"total: {totals['lines_read']} lines read, {totals['loaded']} loaded, "
            f"{totals['duplicates']} duplicates, {totals['rejected']} rejected, "
            f"{totals['blank']} blank"
            + (f", {totals['joined']} batch outputs joined" if totals["joined"] else "")
        )
        if totals["rejected"]:
            typer.echo(
                f"{totals['rejected']} lines were rejected and kept: "
                "see `migration-planner rejects`",
                err=True,
            )
    if strict and totals["rejected"]:
        raise typer.Exit(1)


def profile(
    warehouse: Path | None = WarehouseOption,
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Summarize the warehouse: models, days and hours, labels, tokens, latency, cost,
    conversations, errors and exact-repeat prompts."""
    settings = settings_from(config)
    con = open_warehouse(warehouse_path(settings, warehouse), read_only=True)
    try:
        prof = profile_warehouse(con)
    finally:
        con.close()
    if as_json:
        print_json(prof)
        return
    _print_profile(prof)


def _print_profile(p: dict[str, Any]) -> None:
    o = p["overview"]
    out = Console()
    out.print(
        f"[bold]{o['requests']}[/bold] requests, {o['first_ts']} → {o['last_ts']} UTC "
        f"({o['span_days']} days); cost ${o['cost_usd']} (≈ ${o['cost_per_month_usd']}/month); "
        f"error rate {o['error_rate']:.1%}; {o['rejected_lines']} rejected lines kept"
    )
    out.print(
        _table(
            "per model",
            ["model", "requests", "share", "cost USD", "avg in", "avg out", "failed"],
            [
                [
                    m["model"],
                    m["requests"],
                    f"{m['share']:.1%}",
                    m["cost_usd"],
                    m["avg_prompt_tokens"],
                    m["avg_completion_tokens"],
                    m["failed"],
                ]
                for m in p["by_model"]
            ],
        )
    )
    out.print(
        _table(
            "per day",
            ["day", "requests", "cost USD", "failed"],
            [[d["day"], d["requests"], d["cost_usd"], d["failed"]] for d in p["by_day"]],
        )
    )
    out.print(
        _table(
            "per hour of day (UTC)",
            ["hour", "requests"],
            [[f"{h['hour']:02d}", h["requests"]] for h in p["by_hour"]],
        )
    )
    out.print(
        _table(
            "per label (metadata.task_type)",
            ["label", "requests", "share", "cost USD"],
            [
                [lb["task_type"], lb["requests"], f"{lb['share']:.1%}", lb["cost_usd"]]
                for lb in p["by_label"]
            ],
        )
    )
    rows = [
        [name, *(p["tokens"][key][k] for k in ("p50", "p90", "p99"))]
        for name, key in (("prompt tokens", "prompt"), ("completion tokens", "completion"))
    ]
    rows += [
        [name, *(p[key][k] for k in ("p50", "p90", "p99"))]
        for name, key in (("latency ms", "latency_ms"), ("TTFT ms", "ttft_ms"))
    ]
    out.print(_table("percentiles (successful calls)", ["", "p50", "p90", "p99"], rows))
    c = p["conversations"]
    out.print(
        f"conversations: {c['conversations']} ({c['multi_turn_conversations']} multi-turn); "
        f"{c['multi_turn_share']:.1%} of requests are in multi-turn conversations; depth p50 "
        f"{c['depth_p50']}, p90 {c['depth_p90']}, max {c['depth_max']}"
    )
    r = p["exact_repeats"]
    out.print(
        f"exact-repeat prompts: {r['repeat_share']:.1%} of successful requests; a response "
        f"cache would save ${r['repeat_cost_usd']} ({r['cache_saving_share']:.1%} of cost)"
    )
    if p["errors"]:
        out.print(
            _table(
                "failed calls",
                ["status", "requests", "example"],
                [[e["status"], e["requests"], e["example"]] for e in p["errors"]],
            )
        )


def rejects(
    warehouse: Path | None = WarehouseOption,
    config: Path | None = ConfigOption,
    limit: int = typer.Option(100, "--limit", "-n", min=1, help="Most rejected lines to list."),
    file: str | None = typer.Option(
        None, "--file", help="Only lines from this source file.", show_default=False
    ),
    as_json: bool = JsonOption,
) -> None:
    """List the lines that could not be loaded, with file, line number and reason."""
    settings = settings_from(config)
    con = open_warehouse(warehouse_path(settings, warehouse), read_only=True)
    try:
        data = list_rejects(con, limit=limit, source_file=file)
    finally:
        con.close()
    if as_json:
        print_json(data)
        return
    out = Console()
    out.print(f"{data['total']} rejected lines")
    out.print(
        _table(
            "by reason", ["reason", "lines"], [[r["reason"], r["count"]] for r in data["by_reason"]]
        )
    )
    out.print(
        _table(
            "lines",
            ["file:line", "reason", "raw"],
            [[f"{x['file']}:{x['line']}", x["reason"], x["raw"][:80]] for x in data["lines"]],
        )
    )


def demo(
    workdir: Path = typer.Option(
        Path(".demo"), "--workdir", help="Where the demo writes its logs and warehouse."
    ),
    out: Path = typer.Option(Path("out"), "--out", help="Where run folders out/<run-id>/ go."),
    n_requests: int = typer.Option(
        3000, "--requests", min=50, help="Synthetic requests to generate."
    ),
    seed: int = typer.Option(0, "--seed", help="Same seed, same logs."),
    as_json: bool = JsonOption,
) -> None:
    """Run the whole job on built-in synthetic data, offline, through Prefect."""
    from flows.demo import demo_flow

    progress("demo: starting Prefect (local, offline) ...")
    result = demo_flow(workdir=str(workdir), out_dir=str(out), n_requests=n_requests, seed=seed)
    if as_json:
        print_json(result)
        return
    i = result["ingest"]
    typer.echo(
        f"ingested {i['lines_read']} lines: {i['loaded']} loaded, {i['duplicates']} duplicates, "
        f"{i['rejected']} rejected, {i['blank']} blank, {i['joined']} batch outputs joined"
    )
    for key, value in result.items():
        if key.endswith("_html") or key == "plan":
            typer.echo(f"{key.replace('_', ' ')}: {value}")
    typer.echo(f"run folder: {result['run_dir']}")
    if result.get("real_models_missing"):
        typer.echo(
            "SmolLM2-135M-Instruct was left out (not built: "
            + ", ".join(result["real_models_missing"])
            + "); `make real-models` builds it once, `make demo` does it for you"
        )


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
    app.command("profile")(profile)
    app.command("rejects")(rejects)
    app.command("demo")(demo)
