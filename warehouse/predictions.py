"""Storage of task-type predictions: one ``predictions`` row per request per prediction run.

A run is written in one transaction, so a run killed midway leaves nothing half-written; the
sampling stage reads each request's latest run. Rows arrive as columns (ids, types, confidences),
inserted with ``unnest`` of list parameters: one statement per batch, not one per row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import duckdb

from warehouse.connection import fetch_one, iter_id_messages
from warehouse.errors import EmptyWarehouseError

_INSERT = (
    "INSERT INTO predictions (request_id, task_type, confidence, uncertain, classifier_version, "
    "prediction_run, predicted_at) SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), "
    "unnest(?::DOUBLE[]), unnest(?::BOOLEAN[]), ?, ?, ?::TIMESTAMP"
)


def count_requests(con: duckdb.DuckDBPyConnection) -> int:
    row = fetch_one(con, "SELECT count(*) FROM requests")
    return int(row[0]) if row else 0  # type: ignore[call-overload]


def iter_request_messages(
    con: duckdb.DuckDBPyConnection,
    batch_size: int = 20_000,
    *,
    missing_version: str | None = None,
) -> Iterator[list[tuple[str, str]]]:
    """Every request as (request_id, messages JSON), in request_id order, ``batch_size`` at a
    time. Reads through its own cursor, so the caller may write on ``con`` meanwhile. With
    ``missing_version``, only the requests that classifier version has not predicted yet (a
    nightly run predicts what is new, not the whole warehouse again)."""
    if count_requests(con) == 0:
        raise EmptyWarehouseError("requests")
    sql = "SELECT request_id, messages::VARCHAR FROM requests AS r"
    params: list[str] = []
    if missing_version is not None:
        sql += (
            " WHERE NOT EXISTS (SELECT 1 FROM predictions AS p"
            " WHERE p.request_id = r.request_id AND p.classifier_version = ?)"
        )
        params.append(missing_version)
    return iter_id_messages(con, sql + " ORDER BY request_id", list(params), batch_size)


class PredictionWriter:
    """Writes one prediction run in a single transaction: ``with PredictionWriter(...) as w``."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        run_id: str,
        classifier_version: str,
        predicted_at: datetime,
    ) -> None:
        self.con = con
        self.run_id = run_id
        self.version = classifier_version
        self.predicted_at = predicted_at
        self.rows = 0

    def __enter__(self) -> PredictionWriter:
        self.con.begin()
        self.con.execute("DELETE FROM predictions WHERE prediction_run = ?", [self.run_id])
        return self

    def write(
        self,
        request_ids: Sequence[str],
        task_types: Sequence[str],
        confidences: Sequence[float],
        uncertain: Sequence[bool],
    ) -> None:
        if not request_ids:
            return
        self.con.execute(
            _INSERT,
            [
                list(request_ids),
                list(task_types),
                [float(c) for c in confidences],
                [bool(u) for u in uncertain],
                self.version,
                self.run_id,
                self.predicted_at,
            ],
        )
        self.rows += len(request_ids)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.con.commit()
        else:
            self.con.rollback()


def prediction_runs(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Every prediction run, oldest first: run id, classifier version, time, rows."""
    rows = con.execute(
        "SELECT prediction_run, any_value(classifier_version), max(predicted_at), count(*) "
        "FROM predictions GROUP BY prediction_run ORDER BY max(predicted_at), prediction_run"
    ).fetchall()
    return [
        {"run": str(r[0]), "classifier_version": r[1], "predicted_at": r[2], "rows": int(r[3])}
        for r in rows
    ]


def previous_run(con: duckdb.DuckDBPyConnection, run_id: str) -> str | None:
    """The run before ``run_id`` (by time), or None when it is the first."""
    runs = [r["run"] for r in prediction_runs(con)]
    if run_id not in runs:
        return runs[-1] if runs else None
    at = runs.index(run_id)
    return runs[at - 1] if at > 0 else None


def run_distribution(con: duckdb.DuckDBPyConnection, run_id: str, bins: int = 10) -> dict[str, Any]:
    """Task mix, confidence histogram (``bins`` equal bins over [0, 1]) overall and per type,
    and the uncertain count of one run."""
    rows = con.execute(
        """
        SELECT task_type, least(floor(confidence * ?)::INTEGER, ? - 1) AS bin,
               count(*), count(*) FILTER (WHERE uncertain)
        FROM predictions WHERE prediction_run = ?
        GROUP BY ALL ORDER BY ALL
        """,
        [bins, bins, run_id],
    ).fetchall()
    mix: dict[str, int] = {}
    hist = [0] * bins
    by_type: dict[str, list[int]] = {}
    uncertain = 0
    for task, b, n, unsure in rows:
        task, b, n = str(task), max(int(b), 0), int(n)
        mix[task] = mix.get(task, 0) + n
        hist[b] += n
        by_type.setdefault(task, [0] * bins)[b] += n
        uncertain += int(unsure)
    return {
        "run_id": run_id,
        "total": sum(mix.values()),
        "mix": mix,
        "confidence": hist,
        "confidence_by_type": by_type,
        "uncertain": uncertain,
    }
