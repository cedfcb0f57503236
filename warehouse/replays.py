"""Storage of replay results: one ``replays`` row per cache key, written as results arrive; and
which of them are current evidence.

Each store is one small transaction (delete the keys' old rows and their scores, insert the new
ones), so a run killed midway keeps everything answered before the kill, a retried key replaces
its earlier failure instead of piling up rows, and a renewed answer is never read with the old
answer's score. Rows are plain mappings with the ``replays`` columns: the
warehouse knows nothing of the planner's result classes.

Current evidence (:data:`SAMPLE_REPLAYS`): a replay counts for a sampled request when it asked
the same (its ``content_key`` is the request's, from ``request_content``; rows stored before
content keys were kept match by request id), is of the candidate's current fingerprint, is not
older than the candidate's ``fresh_after`` (a relay's answers expire), and — for a relay — was
served by what the relay serves now (``relay_serving``; an answer that named no model says
nothing about it and counts until it expires). Everything else is stale:
:func:`stale_replays` counts it by reason, so the plan can say what it left out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from warehouse.errors import WarehouseError

REPLAY_COLUMNS: tuple[str, ...] = (
    "replay_id",
    "request_id",
    "candidate",
    "candidate_fingerprint",
    "output_text",
    "ttft_ms",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "tokens_estimated",
    "tokens_per_s",
    "peak_rss_mb",
    "cost_usd",
    "error_kind",
    "error_message",
    "attempts",
    "content_key",
    "served_model",
    "system_fingerprint",
)
_INSERT = f"INSERT INTO replays ({', '.join(REPLAY_COLUMNS)}, created_at) VALUES "
_ROW = f"({', '.join('?' for _ in REPLAY_COLUMNS)}, now()::TIMESTAMP)"


def store_replays(con: duckdb.DuckDBPyConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write replays in one transaction, each replacing any earlier row with its ``replay_id``
    (and that row's scores: a renewed answer is scored again)."""
    if not rows:
        return
    for row in rows:
        missing = [c for c in ("replay_id", "request_id", "candidate") if not row.get(c)]
        if missing:
            raise WarehouseError(f"replay row lacks {', '.join(missing)}")
    ids = [row["replay_id"] for row in rows]
    con.begin()
    try:
        con.execute("DELETE FROM replays WHERE replay_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
        con.execute("DELETE FROM scores WHERE replay_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
        con.execute(
            _INSERT + ", ".join(_ROW for _ in rows),
            [row.get(c) for row in rows for c in REPLAY_COLUMNS],
        )
        con.commit()
    except BaseException:
        con.rollback()
        raise


def store_replay(con: duckdb.DuckDBPyConnection, row: Mapping[str, Any]) -> None:
    """Write one replay (replacing any earlier row with the same ``replay_id``) atomically."""
    store_replays(con, [row])


def final_replay_ids(
    con: duckdb.DuckDBPyConnection, keys: Sequence[str], retry_kinds: Collection[str]
) -> set[str]:
    """The keys already answered for good: stored, and not failed with a kind worth retrying."""
    if not keys:
        return set()
    rows = con.execute(
        """
        SELECT replay_id FROM replays
        WHERE replay_id IN (SELECT unnest(?::VARCHAR[]))
          AND (error_kind IS NULL OR NOT list_contains(?::VARCHAR[], error_kind))
        """,
        [list(keys), sorted(retry_kinds)],
    ).fetchall()
    return {str(r[0]) for r in rows}


def replay_stats(
    con: duckdb.DuckDBPyConnection,
    sample_id: str,
    fingerprints: Mapping[str, str],
    fresh_after: Mapping[str, datetime] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per candidate, over the current replays of one sample (one per sampled request).

    ``fingerprints`` maps candidate name -> fingerprint, so rows an older configuration of the
    same name produced are left out (as are expired ones, by ``fresh_after``). Returns counts,
    errors by kind, cost, TTFT and latency p50/p95 (successful replays) and median tokens/s.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in fingerprints:
        base = (
            "WITH "
            + SAMPLE_REPLAYS
            + """, latest AS (SELECT * FROM replayed WHERE candidate = ?)
        """
        )
        params = [*sample_replays_params(sample_id, fingerprints, fresh_after), name]
        row = con.execute(
            base
            + """
            SELECT count(*), count(*) FILTER (WHERE error_kind IS NULL),
                   coalesce(sum(cost_usd), 0), coalesce(sum(attempts - 1) FILTER
                                                        (WHERE attempts > 0), 0),
                   quantile_cont(ttft_ms, 0.5) FILTER (WHERE error_kind IS NULL),
                   quantile_cont(ttft_ms, 0.95) FILTER (WHERE error_kind IS NULL),
                   quantile_cont(latency_ms, 0.5) FILTER (WHERE error_kind IS NULL),
                   quantile_cont(latency_ms, 0.95) FILTER (WHERE error_kind IS NULL),
                   median(tokens_per_s) FILTER (WHERE error_kind IS NULL),
                   count(*) FILTER (WHERE tokens_estimated)
            FROM latest
            """,
            params,
        ).fetchone()
        assert row is not None
        errors = dict(
            con.execute(
                base
                + """
                SELECT error_kind, count(*)::INTEGER FROM latest
                WHERE error_kind IS NOT NULL GROUP BY error_kind ORDER BY error_kind
                """,
                params,
            ).fetchall()
        )
        out[name] = {
            "replays": int(row[0]),
            "ok": int(row[1]),
            "errors": errors,
            "cost_usd": float(row[2]),
            "retries": int(row[3]),
            "ttft_ms_p50": row[4],
            "ttft_ms_p95": row[5],
            "latency_ms_p50": row[6],
            "latency_ms_p95": row[7],
            "tokens_per_s": row[8],
            "tokens_estimated": int(row[9]),
        }
    return out


# ---------------------------------------------------------------- what a replay answered with


@dataclass(frozen=True)
class ReplayState:
    """A stored replay as the renewal rules see it."""

    created_at: datetime
    error_kind: str | None
    served_model: str | None
    system_fingerprint: str | None


def replay_states(con: duckdb.DuckDBPyConnection, keys: Sequence[str]) -> dict[str, ReplayState]:
    """replay_id -> when it was stored, how it ended and what served it (stored keys only)."""
    if not keys:
        return {}
    rows = con.execute(
        """
        SELECT replay_id, created_at, error_kind, served_model, system_fingerprint FROM replays
        WHERE replay_id IN (SELECT unnest(?::VARCHAR[]))
        """,
        [list(keys)],
    ).fetchall()
    return {str(r[0]): ReplayState(r[1], r[2], r[3], r[4]) for r in rows}


@dataclass(frozen=True)
class Serving:
    """What a relay candidate's answers say serves it."""

    served_model: str | None
    system_fingerprint: str | None
    since: datetime | None = None

    def label(self) -> str:
        model = self.served_model or "(model not named)"
        return f"{model} ({self.system_fingerprint})" if self.system_fingerprint else model


def current_serving(con: duckdb.DuckDBPyConnection, fingerprint: str) -> Serving | None:
    """The latest recorded serving of a relay fingerprint (None: none recorded yet)."""
    rows = con.execute(
        """
        SELECT served_model, system_fingerprint, since FROM relay_serving
        WHERE candidate_fingerprint = ? ORDER BY since DESC LIMIT 1
        """,
        [fingerprint],
    ).fetchall()
    return Serving(rows[0][0], rows[0][1], rows[0][2]) if rows else None


def record_serving(
    con: duckdb.DuckDBPyConnection,
    fingerprint: str,
    candidate: str,
    serving: Serving,
    answers: int,
) -> None:
    """Make ``serving`` the current one of ``fingerprint`` (the earlier rows stay, as history)."""
    con.execute(
        "INSERT INTO relay_serving VALUES (?, ?, ?, ?, now()::TIMESTAMP, ?)",
        [fingerprint, candidate, serving.served_model, serving.system_fingerprint, answers],
    )


def store_content_keys(con: duckdb.DuckDBPyConnection, pairs: Sequence[tuple[str, str]]) -> None:
    """Record each (request_id, content_key), replacing the request's earlier one."""
    if not pairs:
        return
    con.begin()
    try:
        con.execute(
            "DELETE FROM request_content WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
            [[rid for rid, _ in pairs]],
        )
        con.execute(
            """
            INSERT INTO request_content
            SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), now()::TIMESTAMP
            """,
            [[rid for rid, _ in pairs], [key for _, key in pairs]],
        )
        con.commit()
    except BaseException:
        con.rollback()
        raise


def replayed_ids(con: duckdb.DuckDBPyConnection, sample_id: str, fingerprint: str) -> set[str]:
    """The sample's requests with a stored replay of this fingerprint (sent for them, or for
    another request with the same content key)."""
    rows = con.execute(
        """
        WITH sampled AS (
            SELECT s.request_id, any_value(k.content_key) AS content_key
            FROM samples AS s LEFT JOIN request_content AS k USING (request_id)
            WHERE s.sample_id = ? GROUP BY s.request_id
        )
        SELECT DISTINCT s.request_id FROM sampled AS s JOIN replays AS rp
          ON rp.content_key = s.content_key
             OR (rp.request_id = s.request_id AND (s.content_key IS NULL OR rp.content_key IS NULL))
        WHERE rp.candidate_fingerprint = ?
        """,
        [sample_id, fingerprint],
    ).fetchall()
    return {str(r[0]) for r in rows}


# ---------------------------------------------------------------- current evidence

# The current replays of one sample: ``sampled`` (request_id, task_type, uncertain, content_key)
# and ``replayed`` (the replays columns, with request_id the sampled request it counts for and
# sent_for the request it was sent for), the latest current row per (request, candidate).
# Parameters: :func:`sample_replays_params`. With no candidates given, every fingerprint counts.
SAMPLE_REPLAYS = """
sampled AS (
    SELECT s.request_id, any_value(s.task_type) AS task_type, bool_or(s.uncertain) AS uncertain,
           any_value(k.content_key) AS content_key
    FROM samples AS s LEFT JOIN request_content AS k USING (request_id)
    WHERE s.sample_id = ? GROUP BY s.request_id
),
wanted AS (
    SELECT unnest(?::VARCHAR[]) AS candidate, unnest(?::VARCHAR[]) AS candidate_fingerprint,
           unnest(?::TIMESTAMP[]) AS fresh_after
),
serving AS (
    SELECT candidate_fingerprint, served_model, system_fingerprint FROM relay_serving
    QUALIFY row_number() OVER (PARTITION BY candidate_fingerprint ORDER BY since DESC) = 1
),
linked AS (
    SELECT s.request_id AS sampled_id, rp.replay_id
    FROM sampled AS s JOIN replays AS rp ON rp.content_key = s.content_key
    UNION
    SELECT s.request_id AS sampled_id, rp.replay_id
    FROM sampled AS s JOIN replays AS rp ON rp.request_id = s.request_id
    WHERE s.content_key IS NULL OR rp.content_key IS NULL
),
judged AS (
    SELECT l.sampled_id, rp.*, s.task_type, s.uncertain,
           (SELECT count(*) FROM wanted) = 0 OR w.candidate IS NOT NULL AS fingerprint_ok,
           w.fresh_after IS NULL OR rp.created_at >= w.fresh_after AS fresh_ok,
           sv.candidate_fingerprint IS NULL
               OR (rp.served_model IS NULL AND rp.system_fingerprint IS NULL)
               OR (rp.served_model IS NOT DISTINCT FROM sv.served_model
                   AND rp.system_fingerprint IS NOT DISTINCT FROM sv.system_fingerprint)
               AS serving_ok
    FROM linked AS l
    JOIN replays AS rp USING (replay_id)
    JOIN sampled AS s ON s.request_id = l.sampled_id
    LEFT JOIN wanted AS w
      ON w.candidate = rp.candidate AND w.candidate_fingerprint = rp.candidate_fingerprint
    LEFT JOIN serving AS sv ON sv.candidate_fingerprint = rp.candidate_fingerprint
),
replayed AS (
    SELECT * EXCLUDE (sampled_id, request_id, fingerprint_ok, fresh_ok, serving_ok),
           sampled_id AS request_id, request_id AS sent_for
    FROM judged WHERE fingerprint_ok AND fresh_ok AND serving_ok
    QUALIFY row_number() OVER (
        PARTITION BY sampled_id, candidate ORDER BY created_at DESC, replay_id
    ) = 1
)
"""


def sample_replays_params(
    sample_id: str,
    fingerprints: Mapping[str, str] | None,
    fresh_after: Mapping[str, datetime] | None = None,
) -> list[Any]:
    """The parameters of :data:`SAMPLE_REPLAYS`: candidate -> current fingerprint, and candidate
    -> the oldest replay still fresh (relays; others never expire)."""
    names = sorted((fingerprints or {}).keys())
    after = fresh_after or {}
    return [
        sample_id,
        names,
        [(fingerprints or {})[n] for n in names],
        [after.get(n) for n in names],
    ]


def stale_replays(
    con: duckdb.DuckDBPyConnection,
    sample_id: str,
    fingerprints: Mapping[str, str],
    fresh_after: Mapping[str, datetime] | None = None,
) -> dict[str, dict[str, int]]:
    """Per candidate, sampled requests that have replays but no current one, by why:
    ``fingerprint`` (only of another fingerprint: the model folder or endpoint changed, or the
    candidate is no longer configured),
    ``expired`` (a relay's answers are older than its time to live), ``served_model`` (the relay
    now serves another model). They count as not replayed."""
    rows = con.execute(
        "WITH "
        + SAMPLE_REPLAYS
        + """
        SELECT candidate, CASE WHEN NOT bool_or(fingerprint_ok) THEN 'fingerprint'
                               WHEN NOT bool_or(fingerprint_ok AND fresh_ok) THEN 'expired'
                               ELSE 'served_model' END AS why
        FROM judged
        GROUP BY sampled_id, candidate
        HAVING NOT bool_or(fingerprint_ok AND fresh_ok AND serving_ok)
        """,
        sample_replays_params(sample_id, fingerprints, fresh_after),
    ).fetchall()
    out: dict[str, dict[str, int]] = {}
    for candidate, why in rows:
        counts = out.setdefault(str(candidate), {})
        counts[str(why)] = counts.get(str(why), 0) + 1
    return out
