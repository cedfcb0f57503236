"""out/index.html, diff.html and the markdown summary: contents, links, escaping, atomic writes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from planner.report.pages import md, summary_markdown, write_diff_page, write_index
from planner.runs.alerts import RouteCheck, WindowDrift, attention_signals
from planner.runs.diff import RouteFigures, RunDiff, RunFigures, Signal, diff_runs
from planner.runs.history import open_history

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script>|x"


def figures(route: str, quality: float, savings: float, mix: dict[str, float]) -> RunFigures:
    return RunFigures(
        headline={
            "verdict": f"Suitable: saves ${savings:.2f}/month.",
            "requests": 1000,
            "cost_before_usd": 100.0,
            "cost_after_usd": 100.0 - savings,
            "savings_usd": savings,
            "migrated_share": 0.5,
            "quality": 0.96,
            "latency_p95_before_ms": 900.0,
            "latency_p95_after_ms": 310.0,
        },
        task_mix=mix,
        routes=(
            RouteFigures(HOSTILE, route, "local", quality, 5.0, 0.0, mix[HOSTILE]),
            RouteFigures("chatbot", "production", "production", 1.0, 850.0, 0.2, mix["chatbot"]),
        ),
        quality_floor=0.9,
    )


A = figures("edge-small-int4", 0.97, 60.0, {HOSTILE: 0.5, "chatbot": 0.5})
B = figures("edge-base-int4", 0.8, 45.5, {HOSTILE: 0.2, "chatbot": 0.8})


def attention(diff: RunDiff) -> list[Signal]:
    """A flip, a deployed route below its floor tonight, and a drift of the last window."""
    below = RouteCheck(
        "chatbot",
        "edge-base-int4",
        "run-a",
        ("quality lower bound 0.70 below the floor 0.90",),
        below_floor=True,
    )
    drift = WindowDrift(
        "this run's 500 new requests",
        "the 1 day before",
        {HOSTILE: 400, "chatbot": 100},
        {HOSTILE: 100, "chatbot": 400},
    )
    return attention_signals(diff, deployed=[below], drift=drift, drift_threshold=0.15)


def test_index_lists_runs_newest_first_with_relative_links(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with open_history("sqlite://") as store:
        for i, (run_id, figs) in enumerate((("run-a", A), ("run-b", B), ("run-c", None))):
            store.start_run(
                run_id, started_at=T0 + timedelta(days=i), config_hash="c", trigger="schedule"
            )
            store.finish_run(
                run_id,
                status="completed" if figs else "failed",
                finished_at=T0 + timedelta(days=i, minutes=2),
                inputs={},
                figures=figs,
                artifacts={},
                stage_seconds={},
                signals=attention(diff_runs("run-a", A, "run-b", B)) if run_id == "run-b" else [],
                error=None if figs else "ingest: no logs",
            )
        runs = store.list_runs()
    for run_id in ("run-a", "run-b"):
        (out / run_id).mkdir(parents=True)
        (out / run_id / "plan.html").write_text("plan", encoding="utf-8")
    (out / "run-b" / "diff.html").write_text("diff", encoding="utf-8")

    page = write_index(out, list(reversed(runs))).read_text(encoding="utf-8")
    assert [p.name for p in out.iterdir() if p.is_file()] == ["index.html"]  # no temp file left
    order = [page.index(f'id="run-{r}"') for r in ("run-c", "run-b", "run-a")]
    assert order == sorted(order)
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert hrefs == ["run-b/plan.html", "run-b/diff.html", "run-a/plan.html"]
    assert "$45.50" in page and "$60.00" in page and "failed" in page and "ingest: no logs" in page
    row_b = page[page.index('id="run-run-b"') : page.index('id="run-run-a"')]
    assert '<span class="attention">3</span>' in row_b
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page and " src=" not in page


def test_diff_page_puts_attention_first_and_escapes_log_text(tmp_path: Path) -> None:
    diff = diff_runs("run-a", A, "run-b", B)
    signals = attention(diff)
    assert [s.kind for s in signals] == ["decision_flipped", "quality_below_floor", "drift"]
    path = write_diff_page(tmp_path / "run-b" / "diff.html", diff, signals)
    page = path.read_text(encoding="utf-8")
    assert (
        page.index("Attention needed (3)")
        < page.index("1 decision flipped.")
        < page.index("Task mix")
    )
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;|x" in page
    assert 'href="../index.html"' in page and 'href="../run-a/plan.html"' in page
    assert "-$14.50" in page  # savings 60.00 -> 45.50
    assert "30.0%" in page  # drift
    assert "-30.0 pp" in page and "+30.0 pp" in page
    assert "http://" not in page and "https://" not in page


def test_summary_markdown_attention_first_and_inert_text() -> None:
    diff = diff_runs("run-a", A, "run-b", B)
    signals = attention(diff)
    text = summary_markdown("run-b", B, diff, signals)
    lines = text.splitlines()
    assert lines[0] == "# Migration plan run run-b"
    assert lines[2] == "**Attention needed (3)**"
    assert lines[4].startswith("- Decision flipped since run run-a: &lt;script&gt;")
    assert text.index("Attention needed") < text.index("Suitable: saves $45.50/month.")
    assert "- Monthly cost: $100 today → $54.50 after ($45.50 saved)" in text
    assert "- Requests analysed: 1,000" in text
    assert (
        "- Since run run-a: task-mix drift 30%, 1 decision(s) flipped, savings $60.00 → $45.50"
        in text
    )
    table = [line for line in lines if line.startswith("| ")]
    assert table[0].startswith("| Task type |")
    assert table[2] == "| chatbot | 80% | production | production | 1.00 | 850 ms | $0.2000 |"
    assert table[3].startswith(
        "| &lt;script&gt;alert(1)&lt;/script&gt;\\|x | 20% | edge-base-int4 |"
    )
    assert "<script>" not in text
    quiet = summary_markdown("run-a", A, None, [])
    assert "Attention" not in quiet and quiet.splitlines()[2] == "Suitable: saves $60.00/month."
    assert md("a*b [c](d) `e`\nf") == "a\\*b \\[c\\](d) 'e' f"
