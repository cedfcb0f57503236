"""The task mix over windows of traffic, and what a new classifier changes of it.

Traffic drift is measured where it happens: the mix of the last window of requests against the
window before it, both read with the same (current) classifier, so a retrained classifier is not
mistaken for traffic that moved. The last window is a run's new requests (those of the files it
ingested) when there are any, else the last ``window_days`` of logged time; the window before is
the ``window_days`` of logged time before the last window's first request. What a retrained
classifier changes is measured on its own (:func:`relabel_counts`): the same requests under the
previous version and the new one.

A request's task type is its latest prediction, else its human label, else ``'unknown'`` (as
sampling and the plan read it). Counts only: no request text leaves the warehouse.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

_TYPED = """
WITH latest AS (
    SELECT request_id, task_type FROM predictions
    QUALIFY row_number() OVER (
        PARTITION BY request_id
        ORDER BY predicted_at DESC NULLS LAST, prediction_run DESC NULLS LAST
    ) = 1
),
typed AS (
    SELECT r.request_id, r.ts, coalesce(p.task_type, r.label_task_type, 'unknown') AS task_type,
           r.batch_id IN (SELECT batch_id FROM ingest_batches WHERE ingested_at >= ?) AS new
    FROM requests AS r LEFT JOIN latest AS p USING (request_id)
)
"""


@dataclass(frozen=True)
class MixWindow:
    """The requests of one window of traffic, counted by task type."""

    label: str  # e.g. "this run's 1,200 new requests", "the last 1 day"
    start: datetime | None
    end: datetime | None
    counts: dict[str, int]

    @property
    def requests(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class MixWindows:
    """The last window of traffic and the window before it."""

    last: MixWindow
    before: MixWindow


def _days(days: float) -> str:
    return f"{days:g} day" + ("" if days == 1 else "s")


def _counts(con: duckdb.DuckDBPyConnection, where: str, params: list[object]) -> dict[str, int]:
    rows = con.execute(
        _TYPED + f"SELECT task_type, count(*) FROM typed WHERE {where} GROUP BY 1 ORDER BY 1",
        params,
    ).fetchall()
    return {str(t): int(n) for t, n in rows}


def mix_windows(
    con: duckdb.DuckDBPyConnection, *, new_since: datetime | None, window_days: float
) -> MixWindows | None:
    """The last window (requests ingested at or after ``new_since``, a naive UTC time, when
    there are any; else the last ``window_days`` of logged time) and the ``window_days`` before
    its first request. None when either window is empty (nothing to compare)."""
    since = new_since or datetime.max
    width = timedelta(days=window_days)
    span = con.execute(
        _TYPED + "SELECT min(ts) FILTER (WHERE new), max(ts) FILTER (WHERE new), "
        "count(*) FILTER (WHERE new), max(ts) FROM typed",
        [since],
    ).fetchall()[0]
    first_new, last_new, new_count, end = span
    if end is None:
        return None
    if new_count:
        start = first_new
        last = MixWindow(
            f"this run's {new_count:,} new requests", start, last_new, _counts(con, "new", [since])
        )
        earlier = _counts(con, "NOT new AND ts >= ? AND ts < ?", [since, start - width, start])
    else:
        start = end - width
        last = MixWindow(
            f"the last {_days(window_days)}", start, end, _counts(con, "ts > ?", [since, start])
        )
        earlier = _counts(con, "ts > ? AND ts <= ?", [since, start - width, start])
    before = MixWindow(f"the {_days(window_days)} before", start - width, start, earlier)
    if not last.requests or not before.requests:
        return None
    return MixWindows(last, before)


@dataclass(frozen=True)
class RelabelCounts:
    """The same requests' task mix under the previous classifier and under the new one."""

    previous_version: str
    version: str
    before: dict[str, int]
    after: dict[str, int]

    @property
    def requests(self) -> int:
        return sum(self.after.values())


def relabel_counts(con: duckdb.DuckDBPyConnection, version: str) -> RelabelCounts | None:
    """How the classifier ``version`` types the requests the version before it also typed
    (None: no earlier version, or no request typed by both)."""
    rows = con.execute(
        """
        WITH previous AS (
            SELECT classifier_version FROM predictions WHERE classifier_version <> ?
            GROUP BY 1 ORDER BY max(predicted_at) DESC NULLS LAST, 1 DESC LIMIT 1
        ),
        per_version AS (
            SELECT request_id, classifier_version, task_type FROM predictions
            WHERE classifier_version = ? OR classifier_version IN (SELECT * FROM previous)
            QUALIFY row_number() OVER (
                PARTITION BY request_id, classifier_version ORDER BY predicted_at DESC NULLS LAST
            ) = 1
        )
        SELECT (SELECT * FROM previous), a.task_type, b.task_type, count(*)
        FROM per_version AS a JOIN per_version AS b USING (request_id)
        WHERE a.classifier_version <> ? AND b.classifier_version = ?
        GROUP BY 1, 2, 3 ORDER BY 2, 3
        """,
        [version, version, version, version],
    ).fetchall()
    if not rows:
        return None
    before: dict[str, int] = {}
    after: dict[str, int] = {}
    for _, old, new, n in rows:
        before[str(old)] = before.get(str(old), 0) + int(n)
        after[str(new)] = after.get(str(new), 0) + int(n)
    return RelabelCounts(str(rows[0][0]), version, before, after)
