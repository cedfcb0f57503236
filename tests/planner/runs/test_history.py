"""The run history on a real SQLite file: records, decisions, lookups, interruptions, errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from planner.runs.diff import RouteFigures, RunFigures, Signal
from planner.runs.history import HistoryError, HistoryStore, open_history, redact_url

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


def figures(route: str = "edge-small-int4", quality: float = 0.97) -> RunFigures:
    return RunFigures(
        headline={
            "verdict": "Suitable: move 60% of traffic.",
            "requests": 1000,
            "cost_before_usd": 100.0,
            "cost_after_usd": 40.0,
            "savings_usd": 60.0,
            "migrated_share": 0.6,
            "quality": quality,
            "latency_p95_after_ms": 300.0,
        },
        task_mix={"classification": 0.6, "chatbot": 0.4},
        routes=(
            RouteFigures("chatbot", "production", "production", 1.0, 850.0, 0.2, 0.4),
            RouteFigures("classification", route, "local", quality, 5.0, 0.0, 0.6),
        ),
        quality_floor=0.9,
    )


def record_run(
    store: HistoryStore,
    run_id: str,
    started: datetime,
    *,
    status: str = "completed",
    figs: RunFigures | None = None,
) -> None:
    store.start_run(run_id, started_at=started, config_hash="cfg1", trigger="schedule")
    if status == "running":
        return
    store.finish_run(
        run_id,
        status=status,
        finished_at=started + timedelta(minutes=3),
        inputs={"lines_read": 1200, "loaded": 1000, "rejected": 2},
        figures=figs if status == "completed" else None,
        artifacts={"plan": f"out/{run_id}/plan.html"},
        stage_seconds={"ingest": 1.5, "replay": 90.25},
        signals=[Signal("drift", None, "The task mix drifted 20%.")] if figs else [],
        error=None if status == "completed" else "replay: relay down",
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HistoryStore]:
    history = open_history(f"sqlite:///{tmp_path / 'nested' / 'history.sqlite'}")
    yield history
    history.close()


def test_round_trip_through_a_sqlite_file(tmp_path: Path, store: HistoryStore) -> None:
    figs = figures()
    record_run(store, "20261120-020000-aaaa", T0, figs=figs)
    assert (tmp_path / "nested" / "history.sqlite").is_file()
    store.close()

    again = open_history(f"sqlite:///{tmp_path / 'nested' / 'history.sqlite'}", create=False)
    run = again.get_run("20261120-020000-aaaa")
    assert run.status == "completed"
    assert run.started_at == T0 and run.started_at.tzinfo is not None
    assert run.duration_s == 180.0
    assert run.inputs == {"lines_read": 1200, "loaded": 1000, "rejected": 2}
    assert run.stage_seconds == {"ingest": 1.5, "replay": 90.25}
    assert run.artifacts == {"plan": "out/20261120-020000-aaaa/plan.html"}
    assert run.signals == [
        {"kind": "drift", "task_type": None, "message": "The task mix drifted 20%."}
    ]
    assert run.config_hash == "cfg1" and run.trigger == "schedule" and run.error is None
    assert again.figures("20261120-020000-aaaa") == figs
    assert run.to_dict()["routes"][1]["route"] == "edge-small-int4"
    again.close()


def test_decisions_are_a_table_a_team_can_query(tmp_path: Path, store: HistoryStore) -> None:
    record_run(store, "r1", T0, figs=figures("edge-small-int4", 0.97))
    record_run(store, "r2", T0 + timedelta(days=1), figs=figures("relay-x", 0.93))
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'nested' / 'history.sqlite'}")
    with engine.connect() as con:
        rows = con.execute(
            sa.text(
                "SELECT r.run_id, d.route, d.quality_mean FROM planner_run_decisions d "
                "JOIN planner_runs r ON r.run_id = d.run_id "
                "WHERE d.task_type = :t ORDER BY r.started_at"
            ),
            {"t": "classification"},
        ).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("r1", "edge-small-int4", 0.97), ("r2", "relay-x", 0.93)]


def test_list_newest_first_and_previous_completed(store: HistoryStore) -> None:
    record_run(store, "r1", T0, figs=figures())
    record_run(store, "r2", T0 + timedelta(days=1), status="failed")
    record_run(store, "r3", T0 + timedelta(days=2), figs=figures())
    record_run(store, "r4", T0 + timedelta(days=3), status="running")
    assert [r.run_id for r in store.list_runs()] == ["r4", "r3", "r2", "r1"]
    assert [r.run_id for r in store.list_runs(2)] == ["r4", "r3"]
    assert [r.run_id for r in store.list_runs(status="completed")] == ["r3", "r1"]
    previous = store.previous_completed("r4")
    assert previous is not None and previous.run_id == "r3"
    previous = store.previous_completed("r3")
    assert previous is not None and previous.run_id == "r1"  # the failed r2 is skipped
    assert store.previous_completed("r1") is None
    failed = store.get_run("r2")
    assert failed.status == "failed" and failed.error == "replay: relay down"
    assert failed.figures is None and failed.routes == ()


def test_times_are_stored_as_utc(store: HistoryStore) -> None:
    paris = timezone(timedelta(hours=1))
    store.start_run(
        "r1",
        started_at=datetime(2026, 11, 20, 3, 0, tzinfo=paris),
        config_hash="c",
        trigger="manual",
    )
    assert store.get_run("r1").started_at == datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


def test_get_run_by_prefix_and_clear_errors(store: HistoryStore) -> None:
    record_run(store, "20261120-020000-aaaa", T0, figs=figures())
    record_run(store, "20261121-020000-bbbb", T0 + timedelta(days=1), figs=figures())
    record_run(store, "20261121-030000-cccc", T0 + timedelta(days=1, hours=1), figs=figures())
    assert store.get_run("20261120").run_id == "20261120-020000-aaaa"
    with pytest.raises(
        HistoryError,
        match="prefix '20261121' is ambiguous: 20261121-030000-cccc, 20261121-020000-bbbb",
    ):
        store.get_run("20261121")
    with pytest.raises(HistoryError) as err:
        store.get_run("nope")
    assert (
        "no run named 'nope' (known: 20261121-030000-cccc, 20261121-020000-bbbb, 20261120-020000-aaaa)"
        in str(err.value)
    )
    # LIKE wildcards in a prefix are literal characters
    with pytest.raises(HistoryError, match="no run named '2026%'"):
        store.get_run("2026%")


def test_mark_interrupted_only_touches_running_runs(store: HistoryStore) -> None:
    record_run(store, "r1", T0, figs=figures())
    record_run(store, "r2", T0 + timedelta(days=1), status="running")
    record_run(store, "r3", T0 + timedelta(days=2), status="running")
    assert store.mark_interrupted() == ["r2", "r3"]
    assert [r.status for r in store.list_runs()] == ["interrupted", "interrupted", "completed"]
    assert store.mark_interrupted() == []


def test_writes_are_transactional(store: HistoryStore) -> None:
    store.start_run("r1", started_at=T0, config_hash="c", trigger="manual")
    with pytest.raises(HistoryError, match="already recorded"):
        store.start_run("r1", started_at=T0, config_hash="c", trigger="manual")
    dupe = figures()
    bad = RunFigures(
        dupe.headline, dupe.task_mix, dupe.routes + dupe.routes[:1], dupe.quality_floor
    )
    with pytest.raises(HistoryError, match="cannot record the end of run 'r1'"):
        store.finish_run(
            "r1",
            status="completed",
            finished_at=T0,
            inputs={},
            figures=bad,
            artifacts={},
            stage_seconds={},
            signals=[],
            error=None,
        )
    run = store.get_run("r1")  # nothing of the failed write is left: still running, no figures
    assert run.status == "running" and run.headline == {} and run.routes == ()
    # finishing again replaces the decisions instead of failing on their keys
    for route in ("edge-small-int4", "relay-x"):
        store.finish_run(
            "r1",
            status="completed",
            finished_at=T0,
            inputs={},
            figures=figures(route),
            artifacts={},
            stage_seconds={},
            signals=[],
            error=None,
        )
    assert [r.route for r in store.get_run("r1").routes] == ["production", "relay-x"]
    with pytest.raises(HistoryError, match="not 'running'"):
        store.finish_run(
            "r1",
            status="running",
            finished_at=T0,
            inputs={},
            figures=None,
            artifacts={},
            stage_seconds={},
            signals=[],
            error=None,
        )


def test_open_errors_name_the_url_without_its_password(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="not a SQLAlchemy database URL"):
        open_history("history.sqlite")
    with pytest.raises(HistoryError, match="no run history yet"):
        open_history(f"sqlite:///{tmp_path / 'missing.sqlite'}", create=False)
    assert not (tmp_path / "missing.sqlite").exists()
    url = "postgresql+psycopg://planner:s3cret-pw@127.0.0.1:1/history"
    with pytest.raises(HistoryError) as err:
        open_history(url)
    assert "s3cret-pw" not in str(err.value)
    assert "postgresql+psycopg://planner:***@127.0.0.1:1/history" in str(err.value)
    assert redact_url("mysql://u:p%40ss@h/db") == "mysql://u:***@h/db"


def test_in_memory_sqlite_keeps_its_tables() -> None:
    with open_history("sqlite://") as history:
        record_run(history, "r1", T0, figs=figures())
        assert [r.run_id for r in history.list_runs()] == ["r1"]


def test_two_warehouses_share_one_history_without_touching_each_others_runs(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    a = open_history(url, scope="/data/eu/planner.duckdb")
    b = open_history(url, scope="/data/us/planner.duckdb")
    everything = open_history(url)
    try:
        record_run(a, "a1", T0, figs=figures())
        record_run(b, "b1", T0 + timedelta(hours=1), figs=figures("relay-x"))
        record_run(a, "a2", T0 + timedelta(days=1), figs=figures())
        record_run(a, "a3", T0 + timedelta(days=1, hours=2), status="running")  # live, in EU
        record_run(b, "b2", T0 + timedelta(days=1, hours=3), status="running")  # killed, in US

        # US's next run marks only its own dead run; Europe's live run is left alone
        assert b.mark_interrupted() == ["b2"]
        assert a.get_run("a3").status == "running"
        record_run(b, "b3", T0 + timedelta(days=2), figs=figures("relay-x"))

        # "previous run" stays within the warehouse, though Europe ran more recently
        previous = b.previous_completed("b3")
        assert previous is not None and previous.run_id == "b1"
        assert a.previous_completed("a2").run_id == "a1"  # type: ignore[union-attr]
        assert [r.run_id for r in b.list_runs()] == ["b3", "b2", "b1"]
        assert [r.run_id for r in a.list_runs(status="completed")] == ["a2", "a1"]
        assert {r.scope for r in a.list_runs()} == {"/data/eu/planner.duckdb"}

        # lookups (and so diffs) refuse a run of another warehouse, and say whose it is
        with pytest.raises(HistoryError, match="belongs to another scope"):
            b.get_run("a1")
        with pytest.raises(HistoryError, match="no run named 'a'"):
            b.get_run("a")  # a prefix matches only within the scope
        # without a scope, every run is seen
        assert len(everything.list_runs()) == 6
        assert everything.get_run("a1").scope == "/data/eu/planner.duckdb"
    finally:
        a.close()
        b.close()
        everything.close()


def test_a_history_from_before_scopes_gains_the_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    with open_history(url) as history:
        record_run(history, "old-1", T0, figs=figures())
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # as the history was before runs had a scope
        conn.execute(sa.text("DROP INDEX ix_planner_runs_scope"))
        conn.execute(sa.text("ALTER TABLE planner_runs DROP COLUMN scope"))
    engine.dispose()

    with open_history(url, scope="/data/eu/planner.duckdb") as scoped:
        assert scoped.list_runs() == []  # an unscoped old run is no warehouse's previous run
        record_run(scoped, "new-1", T0 + timedelta(days=1), figs=figures())
        assert scoped.previous_completed("new-1") is None
    with open_history(url) as history:
        runs = {r.run_id: r.scope for r in history.list_runs()}
        assert runs == {"new-1": "/data/eu/planner.duckdb", "old-1": None}
    indexes = {i["name"] for i in sa.inspect(sa.create_engine(url)).get_indexes("planner_runs")}
    assert "ix_planner_runs_scope" in indexes
