"""`runs list|show|diff` on two constructed runs stored in a real SQLite history, which another
warehouse's runs share."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli_runs import app
from planner.runs.alerts import RouteCheck, WindowDrift, attention_signals
from planner.runs.diff import diff_runs, figures_from_metrics
from planner.runs.history import open_history

runner = CliRunner()
T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
RUN_A, RUN_B = "20261120-020000-a1a1", "20261121-020000-b2b2"
SCOPE, OTHER = "team-eu", "team-us"  # two warehouses' runs in one history


def metrics(
    mix: dict[str, float],
    routes: list[tuple[str, str, str, float, float, float]],
    cost: tuple[float, float],
) -> dict[str, Any]:
    """The parts of a metrics.json (PlanReport.metrics()) the history reads."""
    return {
        "run_id": "plan",
        "generated_at": "2026-11-20 02:10 UTC",
        "objectives": {"quality_floor": 0.9, "p95_latency_ms": 2000.0, "min_samples": 5},
        "workload": {
            "requests": 2000,
            "types": [
                {"task_type": t, "share": s, "requests": int(s * 2000)} for t, s in mix.items()
            ],
        },
        "projection": {
            "cost_before_usd": cost[0],
            "cost_after_usd": cost[1],
            "savings_usd": cost[0] - cost[1],
            "migrated_share": sum(mix[t] for t, _, kind, *_ in routes if kind != "production"),
            "quality": 0.96,
            "latency_p95_before_ms": 1000.0,
            "latency_p95_after_ms": 400.0,
            "verdict": "Suitable: move traffic.",
            "suitability": "suitable",
        },
        "routes": [
            {
                "task_type": t,
                "route": r,
                "kind": k,
                "fallbacks": ["production"],
                "quality_mean": q,
                "quality_low": q - 0.03,
                "latency_p95_ms": lat,
                "cost_per_1k_usd": c,
            }
            for t, r, k, q, lat, c in routes
        ],
    }


METRICS_A = metrics(
    {"classification": 0.5, "extraction": 0.3, "chatbot": 0.2},
    [
        ("classification", "edge-small-int4", "local", 0.98, 6.0, 0.0),
        ("extraction", "relay-deepseek", "relay", 0.96, 1400.0, 0.11),
        ("chatbot", "production", "production", 1.0, 900.0, 0.25),
    ],
    (200.0, 80.0),
)
METRICS_B = metrics(  # a flipped route, a quality drop on a migrated route, a mix shift
    {"classification": 0.25, "extraction": 0.3, "chatbot": 0.45},
    [
        ("classification", "production", "production", 1.0, 650.0, 0.2),
        ("extraction", "relay-deepseek", "relay", 0.84, 1500.0, 0.11),
        ("chatbot", "production", "production", 1.0, 910.0, 0.25),
    ],
    (210.0, 150.0),
)


@pytest.fixture
def history(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'out' / 'history.sqlite'}"
    with open_history(url, scope=OTHER) as other:  # the other warehouse ran in between
        other.start_run("20261121-010000-d4d4", started_at=T0, config_hash="h9", trigger="x")
    with open_history(url, scope=SCOPE) as store:
        previous = None
        for i, (run_id, data) in enumerate(((RUN_A, METRICS_A), (RUN_B, METRICS_B))):
            figs = figures_from_metrics(data)
            diff = None if previous is None else diff_runs(previous[0], previous[1], run_id, figs)
            store.start_run(
                run_id, started_at=T0 + timedelta(days=i), config_hash="h1", trigger="schedule"
            )
            store.finish_run(
                run_id,
                status="completed",
                finished_at=T0 + timedelta(days=i, seconds=75),
                inputs={"loaded": 2000, "rejected": 1},
                figures=figs,
                artifacts={"plan": f"out/{run_id}/plan.html"},
                stage_seconds={"replay": 60.0},
                signals=attention_signals(
                    diff,
                    deployed=[
                        RouteCheck(
                            "extraction",
                            "relay-deepseek",
                            RUN_A,
                            ("quality lower bound 0.81 below the floor 0.90",),
                            below_floor=True,
                        )
                    ],
                    drift=WindowDrift("new", "before", {"chatbot": 90, "x": 10}, {"x": 100}),
                    drift_threshold=0.15,
                )
                if diff is not None
                else [],
                error=None,
            )
            previous = (run_id, figs)
        # a failed run after them: not 'latest', and it has nothing to diff
        store.start_run(
            "20261122-020000-c3c3",
            started_at=T0 + timedelta(days=2),
            config_hash="h1",
            trigger="manual",
        )
        store.finish_run(
            "20261122-020000-c3c3",
            status="failed",
            finished_at=T0 + timedelta(days=2, seconds=5),
            inputs={},
            figures=None,
            artifacts={},
            stage_seconds={},
            signals=[],
            error="ingest: no log files matched",
        )
    return url


def run(*args: str) -> tuple[int, str, str]:
    if args and args[0] in ("list", "show", "diff") and "--scope" not in args:
        args = (*args, "--scope", SCOPE)
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_runs_diff_json_figures(history: str) -> None:
    code, out, err = run("diff", "20261120", "20261121", "--history", history, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["a_run_id"] == RUN_A and data["b_run_id"] == RUN_B
    assert data["drift"] == pytest.approx(0.25)  # 0.5 * (|.5-.25| + 0 + |.2-.45|)
    assert data["flipped"] == ["classification"]
    first = data["route_changes"][0]
    assert (first["task_type"], first["route_a"], first["route_b"]) == (
        "classification",
        "edge-small-int4",
        "production",
    )
    extraction = next(c for c in data["route_changes"] if c["task_type"] == "extraction")
    assert extraction["status"] == "same"
    assert extraction["quality"] == {"a": 0.96, "b": 0.84, "delta": pytest.approx(-0.12)}
    assert extraction["latency_p95_ms"]["delta"] == pytest.approx(100.0)
    assert data["cost"]["savings_usd"] == {"a": 120.0, "b": 60.0, "delta": -60.0}
    assert data["cost"]["cost_after_usd"]["b"] == 150.0
    assert data["headline"]["migrated_share"]["a"] == pytest.approx(0.8)
    assert data["headline"]["migrated_share"]["b"] == pytest.approx(0.3)
    mix = {m["task_type"]: m["delta"] for m in data["mix_changes"]}
    assert mix == {
        "chatbot": pytest.approx(0.25),
        "classification": pytest.approx(-0.25),
        "extraction": 0.0,
    }
    assert [(s["kind"], s["task_type"]) for s in data["signals"]] == [
        ("decision_flipped", "classification"),
        ("quality_below_floor", "extraction"),
        ("drift", None),
    ]


def test_runs_diff_text_states_flips_first(history: str) -> None:
    code, out, err = run("diff", "previous", "latest", "--history", history)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"run {RUN_A} → run {RUN_B}"
    assert lines[2] == "decisions flipped (1):"
    assert lines[3].split() == [
        "classification", "edge-small-int4", "→", "production", "quality", "0.980", "→", "1.000",
        "p95", "6", "ms", "→", "650", "ms",
    ]  # fmt: skip
    assert "attention needed (3):" in lines
    assert "saved $120 → $60.00" in out
    assert "task mix drift  25.0%" in out
    # the default pair is previous -> latest, among completed runs (the failed run is skipped)
    assert run("diff", "--history", history)[1] == out


def test_runs_stay_within_their_scope(history: str, tmp_path: Path) -> None:
    # the scope comes from the config ([history] scope), else from --scope
    config = tmp_path / "planner.toml"
    config.write_text(f'[history]\nurl = "{history}"\nscope = "{SCOPE}"\n', encoding="utf-8")
    result = runner.invoke(app, ["diff", "-c", str(config), "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["a_run_id"], data["b_run_id"]) == (RUN_A, RUN_B)  # not the other team's run
    code, out, _ = run("list", "--history", history, "--scope", OTHER, "--json")
    assert [r["run_id"] for r in json.loads(out)["runs"]] == ["20261121-010000-d4d4"]
    code, _, err = run("show", "20261121-010000-d4d4", "--history", history)
    assert code == 2 and "belongs to another scope (team-us)" in err
    code, out, _ = run("list", "--history", history, "--all-scopes")
    assert code == 0 and out.splitlines()[0].split()[-1] == "SCOPE"
    assert sum(1 for line in out.splitlines() if line.rstrip().endswith(OTHER)) == 1
    code, out, _ = run("list", "--history", history, "--scope", "nobody")
    assert "no runs recorded yet in scope nobody (--all-scopes lists every run)" in out


def test_runs_list_and_show(history: str, tmp_path: Path) -> None:
    # the default history is <[output] dir>/history.sqlite
    config = tmp_path / "planner.toml"
    config.write_text(
        f'[output]\ndir = "{tmp_path / "out"}"\n[history]\nscope = "{SCOPE}"\n', encoding="utf-8"
    )
    code, out, err = run("list", "-c", str(config), "--json")
    assert code == 0, err
    runs = json.loads(out)["runs"]
    assert [(r["run_id"], r["status"]) for r in runs] == [
        ("20261122-020000-c3c3", "failed"),
        (RUN_B, "completed"),
        (RUN_A, "completed"),
    ]
    assert [len(r["signals"]) for r in runs] == [0, 3, 0]
    code, out, _ = run("list", "-c", str(config), "--limit", "2")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4 and lines[0] == f"scope {SCOPE}"
    assert lines[1].split()[:3] == ["RUN", "STARTED", "UTC"]
    assert lines[2].split()[:3] == ["20261122-020000-c3c3", "2026-11-22", "02:00"]
    assert lines[3].split()[3:] == [
        "completed",
        "schedule",
        "$60.00",
        "30%",
        "96%",
        "400",
        "ms",
        "3",
    ]

    code, out, err = run("show", "latest", "--history", history, "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["run_id"] == RUN_B and shown["duration_s"] == 75.0
    assert [r["route"] for r in shown["routes"]] == ["production", "production", "relay-deepseek"]
    assert shown["signals"][0]["kind"] == "decision_flipped"
    code, out, _ = run("show", "20261122", "--history", history)
    assert code == 0
    assert out.splitlines()[:4] == [
        "run 20261122-020000-c3c3: failed (manual)",
        "started 2026-11-22T02:00:00+00:00, took 5 s; config h1",
        f"scope {SCOPE}",
        "error: ingest: no log files matched",
    ]


def test_unknown_runs_and_missing_history_are_one_line_errors(history: str, tmp_path: Path) -> None:
    code, out, err = run("show", "nope", "--history", history)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: run history sqlite:///")
    assert f"no run named 'nope' (known: 20261122-020000-c3c3, {RUN_B}, {RUN_A})" in err
    code, _, err = run("diff", "2026112", RUN_B, "--history", history)
    assert code == 2 and "is ambiguous" in err and err.count("\n") == 1
    code, _, err = run("diff", "20261122", RUN_B, "--history", history)
    assert code == 2 and "run 20261122-020000-c3c3 has no plan figures (status failed)" in err
    missing = f"sqlite:///{tmp_path / 'elsewhere' / 'history.sqlite'}"
    code, _, err = run("list", "--history", missing)
    assert code == 2 and "no run history yet" in err
    assert not (tmp_path / "elsewhere").exists()
    code, _, err = run("diff", "--history", "postgresql+psycopg://u:hunter22@127.0.0.1:1/h")
    assert code == 2 and "hunter22" not in err and "u:***@" in err
