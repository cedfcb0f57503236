"""`migration-planner runs list|show|diff`: the run history, read from the command line.

A run is named by its id, a unique prefix of it, ``latest`` (the newest completed run) or
``previous`` (the completed run before that). The history is the one ``planner.toml`` points to
(``[history] url``, else ``history.sqlite`` in the output folder) unless ``--history`` names
another SQLAlchemy URL. Only the runs of this setup's scope are seen (``[history] scope``, else
the warehouse's absolute path; ``--scope`` names another, ``runs list --all-scopes`` lists every
run). Reading never creates a database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from flows.cli_common import ConfigOption, JsonOption, new_app, print_json, settings_from
from planner.report.pages import arrow, ms, pct, score, usd
from planner.runs.alerts import flip_signals
from planner.runs.diff import RunDiff, Signal, diff_runs, signals_from_dicts
from planner.runs.history import HistoryError, HistoryStore, RunRecord, open_history

app = new_app("Past runs: list them, show one, and say what changed between two.")

HistoryOption = typer.Option(
    None,
    "--history",
    help="SQLAlchemy URL of the run history (default: [history] url, else "
    "<output dir>/history.sqlite).",
    show_default=False,
)
ScopeOption = typer.Option(
    None,
    "--scope",
    help="Whose runs: a warehouse path or a [history] scope (default: this setup's).",
    show_default=False,
)
LATEST, PREVIOUS = "latest", "previous"
MIX_SHOWN_MIN = 0.005  # task-mix changes smaller than half a point are left out of the text


@contextmanager
def _history(
    config: Path | None, history: str | None, scope: str | None, all_scopes: bool = False
) -> Iterator[HistoryStore]:
    settings = settings_from(config)
    url = history if history is not None else settings.history_url()
    chosen = None if all_scopes else (scope or settings.history_scope())
    store = open_history(url, create=False, scope=chosen)
    try:
        yield store
    finally:
        store.close()


def resolve_run(store: HistoryStore, ref: str) -> RunRecord:
    """An id, a unique id prefix, ``latest`` or ``previous`` (both among completed runs)."""
    if ref in (LATEST, PREVIOUS):
        completed = store.list_runs(2, status="completed")
        index = 0 if ref == LATEST else 1
        if len(completed) <= index:
            have = len(completed)
            raise HistoryError(
                store.url, f"{ref!r} needs {index + 1} completed run(s); the history has {have}"
            )
        return completed[index]
    return store.get_run(ref)


def _quality(value: Any) -> str:
    return score(value, 3)


def _when(record: RunRecord) -> str:
    return record.started_at.strftime("%Y-%m-%d %H:%M")


def _table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> list[str]:
    """Columns padded to their widest cell; numbers (``right``) aligned right."""
    right = right or set()
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            (c.rjust(w) if i in right else c.ljust(w))
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), *(line(r) for r in rows)]


def format_list(runs: list[RunRecord], scope: str | None = None) -> str:
    if not runs:
        where = f" in scope {scope} (--all-scopes lists every run)" if scope else ""
        return f"no runs recorded yet{where}"
    rows = [
        [
            r.run_id,
            _when(r),
            r.status,
            r.trigger,
            usd(r.headline.get("savings_usd")),
            pct(r.headline.get("migrated_share")),
            pct(r.headline.get("quality")),
            ms(r.headline.get("latency_p95_after_ms")),
            str(len(r.signals)),
        ]
        for r in runs
    ]
    header = ["RUN", "STARTED UTC", "STATUS", "TRIGGER", "SAVED/MO", "MIGRATED", "QUALITY"]
    header += ["P95 AFTER", "ATTENTION"]
    if scope is None:  # every scope: say whose each run is
        header.append("SCOPE")
        for row, run in zip(rows, runs, strict=True):
            row.append(run.scope or "(none)")
    lines = _table(header, rows, {4, 5, 6, 7, 8})
    return "\n".join(lines if scope is None else [f"scope {scope}", *lines])


def format_show(record: RunRecord) -> str:
    h = record.headline
    took = "" if record.duration_s is None else f", took {record.duration_s:.0f} s"
    lines = [
        f"run {record.run_id}: {record.status} ({record.trigger})",
        f"started {record.started_at.isoformat()}{took}; config {record.config_hash}",
        f"scope {record.scope or '(none)'}",
    ]
    if record.error:
        lines.append(f"error: {record.error}")
    if record.signals:
        lines += ["", f"attention needed ({len(record.signals)}):"]
        lines += [f"  - {s.get('message', '')}" for s in record.signals]
    if h:
        lines += [
            "",
            str(h.get("verdict") or ""),
            f"cost per month  {usd(h.get('cost_before_usd'))} today → "
            f"{usd(h.get('cost_after_usd'))} after, {usd(h.get('savings_usd'))} saved",
            f"migrated        {pct(h.get('migrated_share'))} of traffic, quality "
            f"{pct(h.get('quality'))} of production (floor {pct(record.quality_floor)})",
            f"p95 latency     {ms(h.get('latency_p95_before_ms'))} → "
            f"{ms(h.get('latency_p95_after_ms'))}",
        ]
    if record.inputs:
        lines.append("inputs          " + ", ".join(f"{k} {v}" for k, v in record.inputs.items()))
    if record.routes:
        rows = [
            [
                r.task_type,
                pct(r.share, 1),
                r.route,
                r.kind,
                _quality(r.quality_mean),
                ms(r.latency_p95_ms),
                usd(r.cost_per_1k_usd),
            ]
            for r in sorted(record.routes, key=lambda r: (-(r.share or 0.0), r.task_type))
        ]
        header = ["TASK TYPE", "SHARE", "ROUTE", "KIND", "QUALITY", "P95", "COST/1K"]
        lines += ["", *_table(header, rows, {1, 4, 5, 6})]
    if record.stage_seconds:
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in record.stage_seconds.items())
        lines += ["", f"stages: {stages}"]
    if record.artifacts:
        width = max(len(k) for k in record.artifacts)
        lines += ["", "files:", *(f"  {k:<{width}}  {v}" for k, v in record.artifacts.items())]
    return "\n".join(lines)


def format_diff(diff: RunDiff, signals: list[Signal]) -> str:
    """Flipped decisions first, then what needs attention, money, mix and every route."""
    lines = [f"run {diff.a_run_id} → run {diff.b_run_id}", ""]
    if diff.flipped:
        lines.append(f"decisions flipped ({len(diff.flipped)}):")
        rows = [
            [
                c.task_type,
                f"{c.route_a} → {c.route_b}",
                f"quality {arrow(c.quality, _quality)}",
                f"p95 {arrow(c.latency_p95_ms, ms)}",
            ]
            for c in diff.flipped
        ]
        lines += ["  " + line for line in _table(["TASK TYPE", "ROUTE", "", ""], rows)[1:]]
    else:
        lines.append("no decision flipped")
    if signals:
        lines += ["", f"attention needed ({len(signals)}):"]
        lines += [f"  - {s.message}" for s in signals]
    cost, head = diff.cost, diff.headline
    lines += [
        "",
        f"cost per month  today {arrow(cost['cost_before_usd'], usd)}, after "
        f"{arrow(cost['cost_after_usd'], usd)}, saved {arrow(cost['savings_usd'], usd)}",
        f"migrated        {arrow(head['migrated_share'], pct)}; quality "
        f"{arrow(head['quality'], pct)}; p95 after {arrow(head['latency_p95_after_ms'], ms)}",
        f"task mix drift  {pct(diff.drift, 1)}",
    ]
    lines += [f"note: {n}" for n in diff.notes]
    moved = [m for m in diff.mix_changes if abs(m.delta) >= MIX_SHOWN_MIN]
    if moved:
        rows = [
            [m.task_type, pct(m.share_a, 1), pct(m.share_b, 1), f"{m.delta * 100:+.1f} pp"]
            for m in moved
        ]
        lines += ["", *_table(["TASK TYPE", "SHARE A", "SHARE B", "CHANGE"], rows, {1, 2, 3})]
    rows = [
        [
            c.task_type,
            c.status,
            c.route_a or "–",
            c.route_b or "–",
            arrow(c.quality, _quality),
            arrow(c.latency_p95_ms, ms),
        ]
        for c in diff.route_changes
    ]
    header = ["TASK TYPE", "CHANGE", "ROUTE A", "ROUTE B", "QUALITY", "P95"]
    lines += ["", *_table(header, rows)]
    return "\n".join(lines)


@app.command("list")
def list_command(
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="How many runs, newest first."),
    config: Path | None = ConfigOption,
    history: str | None = HistoryOption,
    scope: str | None = ScopeOption,
    all_scopes: bool = typer.Option(
        False, "--all-scopes", help="Every run in the history, whatever it belongs to."
    ),
    json_output: bool = JsonOption,
) -> None:
    """List recorded runs, newest first, with their headline figures."""
    with _history(config, history, scope, all_scopes) as store:
        runs = store.list_runs(limit)
        if json_output:
            print_json(
                {"history": store.url, "scope": store.scope, "runs": [r.to_dict() for r in runs]}
            )
        else:
            typer.echo(format_list(runs, store.scope))


@app.command("show")
def show_command(
    run: str = typer.Argument(..., help="Run id, unique prefix, 'latest' or 'previous'."),
    config: Path | None = ConfigOption,
    history: str | None = HistoryOption,
    scope: str | None = ScopeOption,
    json_output: bool = JsonOption,
) -> None:
    """Show one run: status, headline figures, attention signals, routes and files."""
    with _history(config, history, scope) as store:
        record = resolve_run(store, run)
    if json_output:
        print_json(record.to_dict())
    else:
        typer.echo(format_show(record))


@app.command("diff")
def diff_command(
    a: str = typer.Argument(PREVIOUS, help="The earlier run (id, prefix, 'latest', 'previous')."),
    b: str = typer.Argument(LATEST, help="The later run (id, prefix, 'latest', 'previous')."),
    config: Path | None = ConfigOption,
    history: str | None = HistoryOption,
    scope: str | None = ScopeOption,
    json_output: bool = JsonOption,
) -> None:
    """Say what changed from run A to run B (both of one scope): flipped decisions, quality,
    latency, mix, cost; and what run B itself found needed attention."""
    with _history(config, history, scope) as store:
        records = [resolve_run(store, ref) for ref in (a, b)]
        figures = []
        for record in records:
            fig = record.figures
            if fig is None:
                raise HistoryError(
                    store.url, f"run {record.run_id} has no plan figures (status {record.status})"
                )
            figures.append(fig)
    ra, rb = records
    diff = diff_runs(ra.run_id, figures[0], rb.run_id, figures[1])
    recorded = [s for s in signals_from_dicts(rb.signals) if s.kind != "decision_flipped"]
    signals = flip_signals(diff) + recorded
    if json_output:
        print_json(diff.to_dict() | {"signals": [s.to_dict() for s in signals]})
    else:
        typer.echo(format_diff(diff, signals))
