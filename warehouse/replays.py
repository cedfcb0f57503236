"""Storage of replay results: one ``replays`` row per cache key, written as results arrive.

Each store is one small transaction (delete the keys' old rows, insert the new ones), so a run
killed midway keeps everything answered before the kill and a retried key replaces its earlier
failure instead of piling up rows. Rows are plain mappings with the ``replays`` columns: the
warehouse knows nothing of the planner's result classes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
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
)
_INSERT = f"INSERT INTO replays ({', '.join(REPLAY_COLUMNS)}, created_at) VALUES "
_ROW = f"({', '.join('?' for _ in REPLAY_COLUMNS)}, now()::TIMESTAMP)"


def store_replays(con: duckdb.DuckDBPyConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write replays in one transaction, each replacing any earlier row with its ``replay_id``."""
    if not rows:
        return
    for row in rows:
        missing = [c for c in ("replay_id", "request_id", "candidate") if not row.get(c)]
        if missing:
            raise WarehouseError(f"replay row lacks {', '.join(missing)}")
    con.begin()
    try:
        con.execute(
            "DELETE FROM replays WHERE replay_id IN (SELECT unnest(?::VARCHAR[]))",
            [[row["replay_id"] for row in rows]],
        )
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
    con: duckdb.DuckDBPyConnection, sample_id: str, fingerprints: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Per candidate, over the stored replays of one sample (the latest row per request).

    ``fingerprints`` maps candidate name -> fingerprint, so rows an older configuration of the
    same name produced are left out. Returns counts, errors by kind, cost, TTFT and latency
    p50/p95 (successful replays) and median tokens/s.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, fingerprint in fingerprints.items():
        base = """
            WITH latest AS (
                SELECT r.* FROM replays AS r
                JOIN (SELECT DISTINCT request_id FROM samples WHERE sample_id = ?) AS s
                  USING (request_id)
                WHERE r.candidate = ? AND r.candidate_fingerprint = ?
                QUALIFY row_number() OVER (PARTITION BY r.request_id
                                           ORDER BY r.created_at DESC) = 1
            )
        """
        params = [sample_id, name, fingerprint]
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
