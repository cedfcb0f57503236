"""What the plan reads from the warehouse, and where scores (and judge answers) are kept.

Reads: the replays of a sample joined with their request (production's answer is the reference)
and the sample's task type; the logged traffic per task type; conversation turns; a few sample
outputs for people to read. Writes: ``scores`` rows (replay_id, metric, value, scorer) and the
judge cache. Everything is plain tuples and dicts: the warehouse knows nothing of the planner's
classes. A replay's task type is the one its sample gave it; traffic's task type is the latest
prediction, else the human label, else ``'unknown'`` (as sampling does).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import duckdb

from warehouse.errors import EmptyWarehouseError, WarehouseError

JUDGE_CACHE_DDL = """
CREATE TABLE IF NOT EXISTS judge_cache (
    cache_key  VARCHAR,     -- sha256 of judge name + prompt messages
    judge      VARCHAR,     -- the candidate that judged
    response   VARCHAR,     -- its raw reply
    created_at TIMESTAMP
)
"""

_LATEST_PREDICTION = """
latest_prediction AS (
    SELECT request_id, task_type, uncertain FROM predictions
    QUALIFY row_number() OVER (
        PARTITION BY request_id
        ORDER BY predicted_at DESC NULLS LAST, prediction_run DESC NULLS LAST
    ) = 1
)
"""

# The replays of one sample: the latest row per (request, candidate), of the wanted fingerprints.
_SAMPLE_REPLAYS = """
sampled AS (
    SELECT request_id, any_value(task_type) AS task_type, bool_or(uncertain) AS uncertain
    FROM samples WHERE sample_id = ? GROUP BY request_id
),
fingerprints AS (
    SELECT unnest(?::VARCHAR[]) AS candidate, unnest(?::VARCHAR[]) AS candidate_fingerprint
),
replayed AS (
    SELECT rp.*, s.task_type, s.uncertain FROM replays AS rp
    JOIN sampled AS s USING (request_id)
    WHERE (SELECT count(*) FROM fingerprints) = 0
       OR EXISTS (SELECT 1 FROM fingerprints AS f
                  WHERE f.candidate = rp.candidate
                    AND f.candidate_fingerprint = rp.candidate_fingerprint)
    QUALIFY row_number() OVER (
        PARTITION BY rp.request_id, rp.candidate ORDER BY rp.created_at DESC, rp.replay_id
    ) = 1
),
quality AS (
    SELECT replay_id, value, scorer FROM scores WHERE metric = 'quality'
    QUALIFY row_number() OVER (PARTITION BY replay_id ORDER BY created_at DESC) = 1
)
"""


def _sample(con: duckdb.DuckDBPyConnection, sample_id: str | None) -> str:
    if sample_id is not None:
        (found,) = con.execute(  # type: ignore[misc]
            "SELECT count(*) FROM samples WHERE sample_id = ?", [sample_id]
        ).fetchone()
        if not found:
            raise WarehouseError(f"no sample {sample_id!r} in the warehouse")
        return sample_id
    row = con.execute(
        "SELECT sample_id FROM samples ORDER BY created_at DESC, sample_id LIMIT 1"
    ).fetchone()
    if row is None:
        raise EmptyWarehouseError("sample of requests (run `migration-planner replay` first)")
    return str(row[0])


def _fp_params(fingerprints: Mapping[str, str] | None) -> list[list[str]]:
    items = sorted((fingerprints or {}).items())
    return [[k for k, _ in items], [v for _, v in items]]


def messages_from_json(raw: Any) -> list[dict[str, Any]]:
    """A request's stored messages as a list (an empty one for anything else)."""
    value = json.loads(raw) if isinstance(raw, str) else raw
    return value if isinstance(value, list) else []


def scoring_inputs(
    con: duckdb.DuckDBPyConnection,
    sample_id: str | None = None,
    fingerprints: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Successful replays of the sample next to production's answer, with their current score.

    Keys: replay_id, request_id, candidate, task_type, messages_json (the request's messages as
    logged: the caller parses only those it scores), reference, output_text, quality_scorer (None
    when not scored yet). Failed replays are not scored (they count as 0).
    """
    sid = _sample(con, sample_id)
    rows = con.execute(
        "WITH "
        + _SAMPLE_REPLAYS
        + """
        SELECT rp.replay_id, rp.request_id, rp.candidate, rp.task_type, r.messages,
               r.response_text, rp.output_text, q.scorer
        FROM replayed AS rp
        JOIN requests AS r USING (request_id)
        LEFT JOIN quality AS q USING (replay_id)
        WHERE rp.error_kind IS NULL
        ORDER BY rp.task_type, rp.request_id, rp.candidate
        """,
        [sid, *_fp_params(fingerprints)],
    ).fetchall()
    return [
        {
            "replay_id": rid,
            "request_id": req,
            "candidate": cand,
            "task_type": task,
            "messages_json": msgs,
            "reference": ref or "",
            "output_text": out or "",
            "quality_scorer": scorer,
        }
        for rid, req, cand, task, msgs, ref, out, scorer in rows
    ]


def store_scores(con: duckdb.DuckDBPyConnection, rows: Iterable[Sequence[Any]]) -> int:
    """Write (replay_id, metric, value, scorer) rows, replacing earlier scores of those replays."""
    batch = [(str(r[0]), str(r[1]), float(r[2]), str(r[3])) for r in rows]
    if not batch:
        return 0
    ids = sorted({r[0] for r in batch})
    con.begin()
    try:
        con.execute("DELETE FROM scores WHERE replay_id IN (SELECT unnest(?::VARCHAR[]))", [ids])
        con.executemany(
            "INSERT INTO scores (replay_id, metric, value, scorer, created_at) "
            "VALUES (?, ?, ?, ?, now()::TIMESTAMP)",
            batch,
        )
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return len(batch)


def evidence_rows(
    con: duckdb.DuckDBPyConnection,
    sample_id: str | None = None,
    fingerprints: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every replay of the sample and production's logged call for each sampled request.

    Production rows have candidate ``'production'`` and quality 1.0 (the reference). Keys:
    request_id, task_type, candidate, quality, scorer, error_kind, ttft_ms, latency_ms,
    prompt_tokens, completion_tokens, tokens_per_s, cost_usd, peak_rss_mb, reference_tokens,
    conversation_id, turn_index.
    """
    sid = _sample(con, sample_id)
    params = [sid, *_fp_params(fingerprints)]
    replayed = con.execute(
        "WITH "
        + _SAMPLE_REPLAYS
        + """
        SELECT rp.request_id, rp.task_type, rp.candidate, q.value, q.scorer, rp.error_kind,
               rp.ttft_ms, rp.latency_ms, rp.prompt_tokens, rp.completion_tokens, rp.tokens_per_s,
               rp.cost_usd, rp.peak_rss_mb, r.completion_tokens, r.conversation_id, r.turn_index
        FROM replayed AS rp
        JOIN requests AS r USING (request_id)
        LEFT JOIN quality AS q USING (replay_id)
        ORDER BY rp.task_type, rp.request_id, rp.candidate
        """,
        params,
    ).fetchall()
    production = con.execute(
        """
        WITH sampled AS (
            SELECT request_id, any_value(task_type) AS task_type FROM samples
            WHERE sample_id = ? GROUP BY request_id
        )
        SELECT r.request_id, s.task_type, 'production', 1.0::DOUBLE, 'reference', NULL,
               r.ttft_ms, r.latency_ms, r.prompt_tokens, r.completion_tokens, NULL,
               r.cost_usd, NULL, r.completion_tokens, r.conversation_id, r.turn_index
        FROM sampled AS s JOIN requests AS r USING (request_id)
        ORDER BY s.task_type, r.request_id
        """,
        [sid],
    ).fetchall()
    keys = (
        "request_id",
        "task_type",
        "candidate",
        "quality",
        "scorer",
        "error_kind",
        "ttft_ms",
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
        "tokens_per_s",
        "cost_usd",
        "peak_rss_mb",
        "reference_tokens",
        "conversation_id",
        "turn_index",
    )
    return [dict(zip(keys, row, strict=True)) for row in [*production, *replayed]]


def traffic_by_type(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Logged traffic per task type: requests, tokens, cost, uncertain, and each half's count.

    Returns {"period_days", "start", "end", "types": [{task_type, requests, prompt_tokens,
    completion_tokens, cost_usd, uncertain, first_half, second_half}]}.
    """
    span = con.execute("SELECT min(ts), max(ts), count(*) FROM requests").fetchone()
    if span is None or not span[2]:
        raise EmptyWarehouseError("requests")
    start, end, _ = span
    middle = start + (end - start) / 2
    seconds = (end - start).total_seconds()
    period_days = max(seconds / 86400.0, 1.0 / 24.0)  # at least an hour: one burst is not a rate
    rows = con.execute(
        "WITH "
        + _LATEST_PREDICTION
        + """
        SELECT coalesce(p.task_type, r.label_task_type, 'unknown') AS task_type,
               count(*)::BIGINT,
               coalesce(sum(r.prompt_tokens), 0)::BIGINT,
               coalesce(sum(r.completion_tokens), 0)::BIGINT,
               coalesce(sum(r.cost_usd), 0)::DOUBLE,
               count(*) FILTER (WHERE coalesce(p.uncertain, false))::BIGINT,
               count(*) FILTER (WHERE r.ts < ?::TIMESTAMP)::BIGINT,
               count(*) FILTER (WHERE r.ts >= ?::TIMESTAMP)::BIGINT
        FROM requests AS r LEFT JOIN latest_prediction AS p USING (request_id)
        GROUP BY 1 ORDER BY 2 DESC, 1
        """,
        [middle, middle],
    ).fetchall()
    keys = (
        "task_type",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "uncertain",
        "first_half",
        "second_half",
    )
    return {
        "period_days": period_days,
        "start": start,
        "end": end,
        "types": [dict(zip(keys, row, strict=True)) for row in rows],
    }


def conversation_shape(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Every logged request, grouped into conversations and counted (what stickiness needs):
    ``requests``; ``depth``, [turns in a conversation, conversations that long]; ``later``,
    [first turn's task type, a later turn's task type, turns]. A conversation's first turn is
    its lowest turn index (then the earliest, then the lowest request id). Counted here, not
    in Python: a few dozen rows leave the warehouse, not one per request."""
    turns = (
        "WITH "
        + _LATEST_PREDICTION
        + """, turns AS MATERIALIZED (
            SELECT r.conversation_id,
                   coalesce(p.task_type, r.label_task_type, 'unknown') AS task_type,
                   row_number() OVER (
                       PARTITION BY r.conversation_id
                       ORDER BY coalesce(r.turn_index, 0), r.ts, r.request_id
                   ) AS pos
            FROM requests AS r LEFT JOIN latest_prediction AS p USING (request_id)
        )"""
    )
    depth = con.execute(
        """
        SELECT size, count(*) FROM (
            SELECT count(*) AS size FROM requests GROUP BY conversation_id
        ) GROUP BY size ORDER BY size
        """
    ).fetchall()
    later = con.execute(
        turns
        + """
        SELECT f.task_type, t.task_type, count(*)
        FROM turns AS t JOIN turns AS f ON f.conversation_id IS NOT DISTINCT FROM t.conversation_id
        WHERE f.pos = 1 AND t.pos > 1
        GROUP BY 1, 2 ORDER BY 1, 2
        """
    ).fetchall()
    return {
        "requests": sum(int(size) * int(n) for size, n in depth),
        "depth": [(int(size), int(n)) for size, n in depth],
        "later": [(str(a), str(b), int(n)) for a, b, n in later],
    }


def sample_outputs(
    con: duckdb.DuckDBPyConnection,
    per_type: int = 3,
    sample_id: str | None = None,
    fingerprints: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """A few sampled requests per task type with production's answer and every candidate's.

    Keys: task_type, request_id, prompt (last user message), production, answers: list of
    {candidate, text, quality, error_kind}. Texts are as logged: the report redacts them.
    """
    sid = _sample(con, sample_id)
    rows = con.execute(
        "WITH "
        + _SAMPLE_REPLAYS
        + """,
        picked AS (
            SELECT request_id, task_type FROM sampled
            QUALIFY row_number() OVER (PARTITION BY task_type ORDER BY md5(request_id)) <= ?
        )
        SELECT p.task_type, p.request_id, r.last_user_message, r.response_text,
               rp.candidate, rp.output_text, q.value, rp.error_kind
        FROM picked AS p
        JOIN requests AS r USING (request_id)
        LEFT JOIN replayed AS rp USING (request_id)
        LEFT JOIN quality AS q ON q.replay_id = rp.replay_id
        ORDER BY p.task_type, md5(p.request_id), rp.candidate
        """,
        [sid, *_fp_params(fingerprints), per_type],
    ).fetchall()
    out: list[dict[str, Any]] = []
    index: dict[str, dict[str, Any]] = {}
    for task, rid, prompt, reference, cand, text, quality, error in rows:
        item = index.get(rid)
        if item is None:
            item = {
                "task_type": task,
                "request_id": rid,
                "prompt": prompt or "",
                "production": reference or "",
                "answers": [],
            }
            index[rid] = item
            out.append(item)
        if cand is not None:
            item["answers"].append(
                {"candidate": cand, "text": text, "quality": quality, "error_kind": error}
            )
    return out


def judge_cache_get(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    """A judge's stored reply for this prompt hash, if any."""
    con.execute(JUDGE_CACHE_DDL)
    row = con.execute(
        "SELECT response FROM judge_cache WHERE cache_key = ? ORDER BY created_at DESC LIMIT 1",
        [key],
    ).fetchone()
    return None if row is None else str(row[0])


def judge_cache_put(con: duckdb.DuckDBPyConnection, key: str, judge: str, response: str) -> None:
    """Keep a judge's reply (replacing an older one for the same prompt hash)."""
    con.execute(JUDGE_CACHE_DDL)
    con.begin()
    try:
        con.execute("DELETE FROM judge_cache WHERE cache_key = ?", [key])
        con.execute(
            "INSERT INTO judge_cache VALUES (?, ?, ?, now()::TIMESTAMP)", [key, judge, response]
        )
        con.commit()
    except BaseException:
        con.rollback()
        raise


def workload_tokens(con: duckdb.DuckDBPyConnection) -> dict[str, float]:
    """Token figures a device fit needs: p95 context (prompt + output), mean prompt and output."""
    row = con.execute(
        """
        SELECT quantile_cont(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0), 0.95),
               avg(prompt_tokens), avg(completion_tokens)
        FROM requests WHERE coalesce(status_code, 200) < 400
        """
    ).fetchone()
    if row is None or row[0] is None:
        raise EmptyWarehouseError("successful requests")
    return {
        "context_p95": float(row[0]),
        "prompt_mean": float(row[1] or 0.0),
        "completion_mean": float(row[2] or 0.0),
    }


def measured_decode_speed(
    con: duckdb.DuckDBPyConnection, sample_id: str | None = None
) -> dict[str, float]:
    """Median tokens/s of each candidate's successful replays of the sample (on this host)."""
    sid = _sample(con, sample_id)
    rows = con.execute(
        """
        SELECT rp.candidate, median(rp.tokens_per_s) FROM replays AS rp
        JOIN (SELECT DISTINCT request_id FROM samples WHERE sample_id = ?) USING (request_id)
        WHERE rp.error_kind IS NULL AND rp.tokens_per_s > 0
        GROUP BY rp.candidate ORDER BY rp.candidate
        """,
        [sid],
    ).fetchall()
    return {str(c): float(v) for c, v in rows if v is not None}
