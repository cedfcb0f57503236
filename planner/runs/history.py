"""The run history: one row per run and one row per task type's decision, in any SQL database.

A SQLite file by default, any SQLAlchemy URL (PostgreSQL, say) by configuration. Nothing here is
SQLite-specific: plain tables, JSON columns (``sqlalchemy.JSON``: JSON in SQLite, json in
PostgreSQL), timezone-aware timestamps stored as UTC. The decisions sit in their own table
(``planner_run_decisions``) so a team can query the history of each task type in SQL::

    SELECT r.started_at, d.route, d.quality_mean
    FROM planner_run_decisions d JOIN planner_runs r USING (run_id)
    WHERE d.task_type = 'summarization' ORDER BY r.started_at;

Callers get frozen :class:`RunRecord` views, never ORM rows (those are bound to a session).

Scopes: every run records the warehouse (or ``[history] scope``) it belongs to, so several
warehouses can share one history. A store opened with a scope sees only that scope's runs:
interrupted-run marking, "previous run", listing, lookups and diffs never cross into another
warehouse's runs. Opened without one (``runs list --all-scopes``) it sees every run. A history
written before scopes existed gains the column on open; its runs have no scope and are seen only
without one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, col, select

from planner.errors import PlannerError
from planner.runs.diff import RouteFigures, RunFigures, Signal

STATUSES = ("running", "completed", "failed", "interrupted")
KNOWN_SHOWN = 5  # run ids named in a "no run named X" error


class HistoryError(PlannerError):
    """The run history cannot be opened, read or written (names the URL, password hidden)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"run history {url}: {reason}")


class RunRow(SQLModel, table=True):
    """One run of the planner, from start to finish."""

    __tablename__ = "planner_runs"

    run_id: str = Field(primary_key=True, max_length=128)
    scope: str | None = Field(default=None, max_length=1024, index=True)
    started_at: datetime = Field(sa_type=sa.DateTime(timezone=True), index=True)
    finished_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    status: str = Field(max_length=16, index=True)
    config_hash: str = Field(max_length=128)
    trigger: str = Field(max_length=64)
    inputs: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    headline: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    task_mix: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    quality_floor: float | None = None
    artifacts: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    stage_seconds: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON)
    signals: list[Any] = Field(default_factory=list, sa_type=sa.JSON)
    error: str | None = Field(default=None, sa_type=sa.Text)


class DecisionRow(SQLModel, table=True):
    """One task type's route in one run."""

    __tablename__ = "planner_run_decisions"

    run_id: str = Field(
        primary_key=True, max_length=128, foreign_key="planner_runs.run_id", ondelete="CASCADE"
    )
    task_type: str = Field(primary_key=True, max_length=255)
    route: str = Field(max_length=255)
    kind: str = Field(max_length=32)
    quality_mean: float | None = None
    latency_p95_ms: float | None = None
    cost_per_1k_usd: float | None = None
    share: float | None = None


@dataclass(frozen=True)
class RunRecord:
    """One run as the history holds it (plain data: safe to hand to templates and JSON)."""

    run_id: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    config_hash: str
    trigger: str
    inputs: dict[str, Any] = field(default_factory=dict)
    headline: dict[str, Any] = field(default_factory=dict)
    task_mix: dict[str, float] = field(default_factory=dict)
    quality_floor: float | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    signals: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    routes: tuple[RouteFigures, ...] = ()
    scope: str | None = None

    @property
    def duration_s(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def figures(self) -> RunFigures | None:
        """The comparable figures, or None for a run that never produced a plan."""
        if not self.headline or self.quality_floor is None:
            return None
        return RunFigures(
            headline=dict(self.headline),
            task_mix=dict(self.task_mix),
            routes=self.routes,
            quality_floor=self.quality_floor,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
            "duration_s": self.duration_s,
            "status": self.status,
            "config_hash": self.config_hash,
            "trigger": self.trigger,
            "inputs": dict(self.inputs),
            "headline": dict(self.headline),
            "task_mix": dict(self.task_mix),
            "quality_floor": self.quality_floor,
            "artifacts": dict(self.artifacts),
            "stage_seconds": dict(self.stage_seconds),
            "signals": list(self.signals),
            "error": self.error,
            "routes": [r.to_dict() for r in self.routes],
            "scope": self.scope,
        }


def redact_url(url: str | URL) -> str:
    """The URL as it may be shown: any password replaced by ***."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", url)


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's own message (first line), without SQLAlchemy's SQL and parameter dump."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _utc(moment: datetime) -> datetime:
    """Stored as UTC; a naive datetime (SQLite hands those back) is taken to be UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _record(row: RunRow, decisions: Sequence[DecisionRow]) -> RunRecord:
    routes = tuple(
        RouteFigures(
            task_type=d.task_type,
            route=d.route,
            kind=d.kind,
            quality_mean=d.quality_mean,
            latency_p95_ms=d.latency_p95_ms,
            cost_per_1k_usd=d.cost_per_1k_usd,
            share=d.share,
        )
        for d in sorted(decisions, key=lambda d: d.task_type)
    )
    return RunRecord(
        run_id=row.run_id,
        started_at=_utc(row.started_at),
        finished_at=None if row.finished_at is None else _utc(row.finished_at),
        status=row.status,
        config_hash=row.config_hash,
        trigger=row.trigger,
        inputs=dict(row.inputs or {}),
        headline=dict(row.headline or {}),
        task_mix={k: float(v) for k, v in (row.task_mix or {}).items()},
        quality_floor=row.quality_floor,
        artifacts={k: str(v) for k, v in (row.artifacts or {}).items()},
        stage_seconds={k: float(v) for k, v in (row.stage_seconds or {}).items()},
        signals=list(row.signals or []),
        error=row.error,
        routes=routes,
        scope=row.scope,
    )


def _in_scope(scope: str | None) -> Any:
    """The runs of one scope (NULL-safe: runs recorded before scopes have none)."""
    return col(RunRow.scope).is_(None) if scope is None else col(RunRow.scope) == scope


class HistoryStore:
    """Reads and writes the run history; every write is one transaction. With a ``scope`` it
    sees and touches only that scope's runs; without one, every run (and records none)."""

    def __init__(self, engine: Engine, url: str, scope: str | None = None) -> None:
        self._engine = engine
        self.url = url  # redacted: safe to print
        self.scope = scope

    def _scoped(self, query: Any) -> Any:
        return query if self.scope is None else query.where(_in_scope(self.scope))

    @contextmanager
    def _session(self, action: str) -> Iterator[Session]:
        """A session whose transaction commits on success; a database failure is HistoryError."""
        try:
            with Session(self._engine, expire_on_commit=False) as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise HistoryError(self.url, f"cannot {action}: {_reason(exc)}") from exc

    def _row(self, session: Session, run_id: str) -> RunRow:
        row = session.get(RunRow, run_id)
        if row is None:
            raise HistoryError(self.url, f"no run named {run_id!r} is recorded")
        self._own(row)
        return row

    def _own(self, row: RunRow) -> None:
        if self.scope is not None and row.scope != self.scope:
            raise HistoryError(
                self.url,
                f"run {row.run_id!r} belongs to another scope ({row.scope or 'none'}), not "
                f"{self.scope}",
            )

    def start_run(
        self, run_id: str, *, started_at: datetime, config_hash: str, trigger: str
    ) -> None:
        """Record a run as ``running`` (it becomes ``interrupted`` if it never finishes)."""
        with self._session(f"record the start of run {run_id!r}") as session:
            if session.get(RunRow, run_id) is not None:
                raise HistoryError(self.url, f"run {run_id!r} is already recorded")
            session.add(
                RunRow(
                    run_id=run_id,
                    scope=self.scope,
                    started_at=_utc(started_at),
                    status="running",
                    config_hash=config_hash,
                    trigger=trigger,
                )
            )

    def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        finished_at: datetime,
        inputs: Mapping[str, int],
        figures: RunFigures | None,
        artifacts: Mapping[str, str],
        stage_seconds: Mapping[str, float],
        signals: Sequence[Signal],
        error: str | None,
    ) -> None:
        """Store how a run ended: headline, task mix, one decision row per task type, signals."""
        if status not in ("completed", "failed"):
            raise HistoryError(self.url, f"a run finishes 'completed' or 'failed', not {status!r}")
        with self._session(f"record the end of run {run_id!r}") as session:
            row = self._row(session, run_id)
            row.status = status
            row.finished_at = _utc(finished_at)
            row.inputs = {k: int(v) for k, v in inputs.items()}
            row.artifacts = {k: str(v) for k, v in artifacts.items()}
            row.stage_seconds = {k: float(v) for k, v in stage_seconds.items()}
            row.signals = [s.to_dict() for s in signals]
            row.error = error
            row.headline = dict(figures.headline) if figures else {}
            row.task_mix = dict(figures.task_mix) if figures else {}
            row.quality_floor = figures.quality_floor if figures else None
            session.add(row)
            session.execute(sa.delete(DecisionRow).where(col(DecisionRow.run_id) == run_id))
            for route in figures.routes if figures else ():
                session.add(
                    DecisionRow(
                        run_id=run_id,
                        task_type=route.task_type,
                        route=route.route,
                        kind=route.kind,
                        quality_mean=route.quality_mean,
                        latency_p95_ms=route.latency_p95_ms,
                        cost_per_1k_usd=route.cost_per_1k_usd,
                        share=route.share,
                    )
                )

    def mark_interrupted(self) -> list[str]:
        """This scope's runs still ``running`` become ``interrupted``; call it only while holding
        the run lock (of this scope's warehouse: another warehouse's run may well be running).

        Their process was killed before it could record an end, so nobody else will.
        """
        with self._session("mark interrupted runs") as session:
            query = self._scoped(select(RunRow).where(col(RunRow.status) == "running"))
            rows = session.exec(query).all()
            for row in rows:
                row.status = "interrupted"
                row.error = "the run's process ended before it recorded a result"
                session.add(row)
            return sorted(row.run_id for row in rows)

    def _records(self, session: Session, rows: Sequence[RunRow]) -> list[RunRecord]:
        ids = [row.run_id for row in rows]
        decisions: dict[str, list[DecisionRow]] = {i: [] for i in ids}
        if ids:
            query = select(DecisionRow).where(col(DecisionRow.run_id).in_(ids))
            for d in session.exec(query).all():
                decisions[d.run_id].append(d)
        return [_record(row, decisions[row.run_id]) for row in rows]

    def list_runs(self, limit: int = 50, *, status: str | None = None) -> list[RunRecord]:
        """The newest ``limit`` runs, newest first (only those with ``status`` if given)."""
        with self._session("list runs") as session:
            query = self._scoped(select(RunRow))
            if status is not None:
                query = query.where(col(RunRow.status) == status)
            query = query.order_by(col(RunRow.started_at).desc(), col(RunRow.run_id).desc())
            rows = session.exec(query.limit(limit)).all()
            return self._records(session, rows)

    def get_run(self, run_id: str) -> RunRecord:
        """The run with this id, or the only run whose id starts with it."""
        with self._session(f"read run {run_id!r}") as session:
            row = session.get(RunRow, run_id)
            if row is not None:
                self._own(row)
            if row is None and run_id:
                query = (
                    self._scoped(select(RunRow))
                    .where(col(RunRow.run_id).startswith(run_id, autoescape=True))
                    .order_by(col(RunRow.started_at).desc())
                    .limit(KNOWN_SHOWN + 1)
                )
                matches = session.exec(query).all()
                if len(matches) > 1:
                    names = ", ".join(m.run_id for m in matches[:KNOWN_SHOWN])
                    more = ", …" if len(matches) > KNOWN_SHOWN else ""
                    raise HistoryError(
                        self.url, f"run id prefix {run_id!r} is ambiguous: {names}{more}"
                    )
                row = matches[0] if matches else None
            if row is None:
                recent = session.exec(
                    self._scoped(select(RunRow.run_id))
                    .order_by(col(RunRow.started_at).desc())
                    .limit(KNOWN_SHOWN + 1)
                ).all()
                known = ", ".join(recent[:KNOWN_SHOWN]) or "none recorded yet"
                more = ", …" if len(recent) > KNOWN_SHOWN else ""
                raise HistoryError(self.url, f"no run named {run_id!r} (known: {known}{more})")
            return self._records(session, [row])[0]

    def previous_completed(self, before_run_id: str) -> RunRecord | None:
        """The newest completed run of the same scope that started before ``before_run_id``
        (None: there is none)."""
        with self._session(f"find the run before {before_run_id!r}") as session:
            current = self._row(session, before_run_id)
            started = _utc(current.started_at)
            earlier = sa.or_(
                col(RunRow.started_at) < started,
                sa.and_(col(RunRow.started_at) == started, col(RunRow.run_id) < current.run_id),
            )
            query = (
                select(RunRow)
                .where(col(RunRow.status) == "completed", earlier, _in_scope(current.scope))
                .order_by(col(RunRow.started_at).desc(), col(RunRow.run_id).desc())
                .limit(1)
            )
            rows = session.exec(query).all()
            return self._records(session, rows)[0] if rows else None

    def figures(self, run_id: str) -> RunFigures | None:
        """The run's comparable figures rebuilt from the stored rows (None: it has none)."""
        return self.get_run(run_id).figures

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sqlite_file(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if url.database.startswith("file:"):  # a URI filename: leave it to SQLite
        return None
    return Path(url.database)


def _add_scope_column(engine: Engine) -> None:
    """A history written before scopes: add ``planner_runs.scope`` and its index."""
    columns = {c["name"] for c in sa.inspect(engine).get_columns(RunRow.__tablename__)}
    if "scope" in columns:
        return
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE planner_runs ADD COLUMN scope VARCHAR(1024)"))
    for index in RunRow.__table__.indexes:  # type: ignore[attr-defined]
        if [c.name for c in index.columns] == ["scope"]:
            index.create(engine, checkfirst=True)


def open_history(url: str, *, create: bool = True, scope: str | None = None) -> HistoryStore:
    """Connect to the history at ``url`` and create its tables when missing (a history written
    before scopes gains the column). The store sees only ``scope``'s runs, or all when None.

    For a SQLite file the parent folder is created too; with ``create=False`` a missing SQLite
    file is an error instead (reading commands should not leave empty databases behind).
    Every failure is one :class:`HistoryError` naming the URL with its password hidden.
    """
    shown = redact_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise HistoryError(shown, "not a SQLAlchemy database URL") from exc
    shown = redact_url(parsed)
    options: dict[str, Any] = {"pool_pre_ping": True}
    file = _sqlite_file(parsed)
    if parsed.get_backend_name() == "sqlite" and file is None:
        # one shared connection, else every connection would see its own empty in-memory database
        options.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
    if file is not None:
        if not file.exists() and not create:
            raise HistoryError(shown, "no run history yet (the file does not exist)")
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HistoryError(shown, f"cannot create folder {file.parent}: {exc}") from exc
    try:
        engine = sa.create_engine(parsed, **options)
    except (NoSuchModuleError, ImportError) as exc:
        raise HistoryError(shown, f"no database driver for it installed ({exc})") from exc
    except (ArgumentError, SQLAlchemyError) as exc:
        raise HistoryError(shown, f"cannot open: {exc}") from exc
    try:
        SQLModel.metadata.create_all(engine, tables=[RunRow.__table__, DecisionRow.__table__])  # type: ignore[attr-defined]
        _add_scope_column(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise HistoryError(shown, f"cannot open: {_reason(exc)}") from exc
    return HistoryStore(engine, shown, scope)
