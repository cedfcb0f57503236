"""Pages and text about runs over time: ``out/index.html``, ``out/<run>/diff.html``, a summary.

The index lists every run with its headline figures and links to its plan and to its diff with
the previous run; links are relative, so the folder works from file:// and from any web server.
Pages are self-contained (inline CSS, no scripts, no fetches) and written atomically. Task types
and model names come from logs and configs: the templates escape them, and the markdown summary
neutralizes the characters that would make markup of them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from planner.evaluate.projection import money
from planner.report.render import TEMPLATES, environment
from planner.runs.diff import Change, RunDiff, RunFigures, Signal
from planner.runs.history import RunRecord

INDEX_TEMPLATE = "index.html.j2"
DIFF_TEMPLATE = "diff.html.j2"
PLAN_FILE = "plan.html"
DIFF_FILE = "diff.html"


def write_atomically(path: Path, text: str) -> Path:
    """Write ``text`` beside ``path`` and rename it into place: a reader never sees half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _signed(value: Any, kind: str = "num") -> str:
    """A change with its sign: +3.2 pp, -$0.40, +120 ms; '–' when unknown."""
    if value is None:
        return "–"
    sign = "+" if value > 0 else ("-" if value < 0 else "±")
    size = abs(value)
    if kind == "pp":
        return f"{sign}{size * 100:.1f} pp"
    if kind == "usd":
        return f"{sign}{money(size)}"
    if kind == "ms":
        return f"{sign}{size:,.0f} ms"
    if kind == "int":
        return f"{sign}{size:,.0f}"
    return f"{sign}{size:,.2f}"


def _when(moment: datetime | None) -> str:
    return "–" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _env(templates: Path) -> jinja2.Environment:
    env = environment(templates)
    env.filters.update(signed=_signed, when=_when, duration=_duration)
    return env


def _href(*parts: str) -> str:
    """A relative link whose path segments (run ids) are percent-encoded."""
    return "/".join(quote(p, safe="") for p in parts)


def _index_row(out_dir: Path, run: RunRecord) -> dict[str, Any]:
    folder = out_dir / run.run_id
    plan = folder / PLAN_FILE
    diff = folder / DIFF_FILE
    return {
        "run": run,
        "h": run.headline,
        "plan_href": _href(run.run_id, PLAN_FILE) if plan.is_file() else None,
        "diff_href": _href(run.run_id, DIFF_FILE) if diff.is_file() else None,
        "attention": [str(s.get("message", "")) for s in run.signals],
    }


def render_index(out_dir: Path, runs: Sequence[RunRecord], templates: Path = TEMPLATES) -> str:
    ordered = sorted(runs, key=lambda r: (r.started_at, r.run_id), reverse=True)
    return (
        _env(templates)
        .get_template(INDEX_TEMPLATE)
        .render(
            rows=[_index_row(out_dir, r) for r in ordered],
            generated_at=_when(datetime.now(UTC)),
        )
    )


def write_index(out_dir: Path, runs: Sequence[RunRecord], templates: Path = TEMPLATES) -> Path:
    """``out_dir/index.html``: every run, newest first, with links to its plan and diff pages."""
    return write_atomically(out_dir / "index.html", render_index(out_dir, runs, templates))


def render_diff(diff: RunDiff, signals: Sequence[Signal], templates: Path = TEMPLATES) -> str:
    return (
        _env(templates)
        .get_template(DIFF_TEMPLATE)
        .render(
            d=diff,
            signals=list(signals),
            index_href="../index.html",
            plan_a_href="../" + _href(diff.a_run_id, PLAN_FILE),
            plan_b_href=PLAN_FILE,
            generated_at=_when(datetime.now(UTC)),
        )
    )


def write_diff_page(
    path: Path, diff: RunDiff, signals: Sequence[Signal], templates: Path = TEMPLATES
) -> Path:
    """The diff of run B with run A as a page meant to live at ``out/<run B>/diff.html``."""
    return write_atomically(path, render_diff(diff, signals, templates))


_MD_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        "|": "\\|",
        "`": "'",
        "*": "\\*",
        "[": "\\[",
        "]": "\\]",
        "\n": " ",
        "\r": " ",
    }
)


def md(text: Any) -> str:
    """Untrusted text as inert markdown: no tags, links, emphasis, code or table breaks."""
    return str(text).translate(_MD_ESCAPES)


# Figures as text, "–" when unknown: shared by these pages and `runs` in the CLI.


def pct(value: Any, digits: int = 0) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def usd(value: Any) -> str:
    return "–" if value is None else money(value)


def ms(value: Any) -> str:
    return "–" if value is None else f"{value:,.0f} ms"


def count(value: Any) -> str:
    return "–" if value is None else f"{value:,.0f}"


def score(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def arrow(change: Change, fmt: Any) -> str:
    return f"{fmt(change.a)} → {fmt(change.b)}"


def summary_markdown(
    run_id: str, figures: RunFigures, diff: RunDiff | None, signals: Sequence[Signal]
) -> str:
    """The run in a few lines: attention first, then the headline, then one row per route.

    Used as the Prefect markdown artifact and as the webhook text.
    """
    h: Mapping[str, Any] = figures.headline
    lines = [f"# Migration plan run {md(run_id)}", ""]
    if signals:
        lines += [f"**Attention needed ({len(signals)})**", ""]
        lines += [f"- {md(s.message)}" for s in signals]
        lines.append("")
    if h.get("verdict"):
        lines += [md(h["verdict"]), ""]
    lines += [
        f"- Monthly cost: {usd(h.get('cost_before_usd'))} today → "
        f"{usd(h.get('cost_after_usd'))} after ({usd(h.get('savings_usd'))} saved)",
        f"- Traffic migrated: {pct(h.get('migrated_share'))}; quality kept "
        f"{pct(h.get('quality'))} (floor {pct(figures.quality_floor)})",
        f"- p95 latency: {ms(h.get('latency_p95_before_ms'))} → "
        f"{ms(h.get('latency_p95_after_ms'))}",
        f"- Requests analysed: {count(h.get('requests'))}",
    ]
    if diff is not None:
        lines.append(
            f"- Since run {md(diff.a_run_id)}: task-mix drift {pct(diff.drift)}, "
            f"{len(diff.flipped)} decision(s) flipped, savings "
            f"{arrow(diff.cost['savings_usd'], usd)}"
        )
    lines += [
        "",
        "| Task type | Share | Route | Kind | Quality | p95 latency | Cost / 1k |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for r in sorted(figures.routes, key=lambda r: (-(r.share or 0.0), r.task_type)):
        lines.append(
            f"| {md(r.task_type)} | {pct(r.share)} | {md(r.route)} | {md(r.kind)} | "
            f"{score(r.quality_mean)} | {ms(r.latency_p95_ms)} | {usd(r.cost_per_1k_usd)} |"
        )
    return "\n".join(lines) + "\n"
