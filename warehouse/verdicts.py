"""What the verdict reads besides the evidence rows: production answering the same prompt twice
(exact repeats in the logs, and requests re-asked of production), which measures production's
ceiling, and extra score metrics of the sample's replays (the judge's order flips, say).

Plain tuples and dicts, like :mod:`warehouse.scores`; SQL takes every value as a parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import duckdb

from warehouse.scores import _LATEST_PREDICTION, _sample

BASELINE_REASK_DDL = """
CREATE TABLE IF NOT EXISTS baseline_reasks (
    request_id  VARCHAR,     -- the logged request asked again
    model       VARCHAR,     -- the production model that answered
    output_text VARCHAR,     -- its second answer
    cost_usd    DOUBLE,
    created_at  TIMESTAMP
)
"""


def repeat_pairs(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Production answering the same prompt twice: one pair per exact-repeat prompt (its first
    two successful answers, by time — pairs stay independent), and one per re-asked request.

    Keys: task_type (latest prediction, else label, else 'unknown', of the first request),
    messages_json, reference, answer, source ('exact repeats' | 're-asked')."""
    repeats = con.execute(
        "WITH "
        + _LATEST_PREDICTION
        + """,
        answered AS (
            SELECT r.request_id, r.prompt_hash, r.messages, r.response_text,
                   coalesce(p.task_type, r.label_task_type, 'unknown') AS task_type,
                   row_number() OVER (
                       PARTITION BY r.prompt_hash ORDER BY r.ts, r.request_id
                   ) AS k
            FROM requests AS r LEFT JOIN latest_prediction AS p USING (request_id)
            WHERE r.prompt_hash IS NOT NULL AND coalesce(r.status_code, 200) < 400
              AND r.response_text IS NOT NULL AND r.response_text <> ''
        )
        SELECT a.task_type, a.messages, a.response_text, b.response_text
        FROM answered AS a JOIN answered AS b
          ON a.prompt_hash = b.prompt_hash AND a.k = 1 AND b.k = 2
        ORDER BY a.task_type, a.request_id
        """
    ).fetchall()
    (has_reasks,) = con.execute(  # type: ignore[misc]
        "SELECT count(*) > 0 FROM duckdb_tables() WHERE table_name = 'baseline_reasks'"
    ).fetchone()
    reasked = (
        []
        if not has_reasks
        else con.execute(
            "WITH "
            + _LATEST_PREDICTION
            + """,
        latest AS (
            SELECT * FROM baseline_reasks
            QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY created_at DESC) = 1
        )
        SELECT coalesce(p.task_type, r.label_task_type, 'unknown'), r.messages, r.response_text,
               b.output_text
        FROM latest AS b JOIN requests AS r USING (request_id)
        LEFT JOIN latest_prediction AS p USING (request_id)
        WHERE b.output_text IS NOT NULL AND r.response_text IS NOT NULL
        ORDER BY 1, r.request_id
        """
        ).fetchall()
    )
    keys = ("task_type", "messages_json", "reference", "answer")
    return [
        {**dict(zip(keys, row, strict=True)), "source": source}
        for source, rows in (("exact repeats", repeats), ("re-asked", reasked))
        for row in rows
    ]


def store_reasks(con: duckdb.DuckDBPyConnection, rows: Iterable[Sequence[Any]]) -> int:
    """Keep production's second answers: (request_id, model, output_text, cost_usd) rows."""
    con.execute(BASELINE_REASK_DDL)
    batch = [(str(r[0]), str(r[1]), r[2], float(r[3] or 0.0)) for r in rows]
    if batch:
        con.executemany("INSERT INTO baseline_reasks VALUES (?, ?, ?, ?, now()::TIMESTAMP)", batch)
    return len(batch)


def reasked_ids(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Requests production has already been asked again."""
    con.execute(BASELINE_REASK_DDL)
    return {
        str(r[0]) for r in con.execute("SELECT DISTINCT request_id FROM baseline_reasks").fetchall()
    }


def score_metrics(
    con: duckdb.DuckDBPyConnection, metrics: Sequence[str], sample_id: str | None = None
) -> list[tuple[str, str, str, float]]:
    """(request_id, candidate, metric, value) of the named metrics for the sample's latest
    replay of each (request, candidate): the judge's order flips and similarity, say."""
    sid = _sample(con, sample_id)
    rows = con.execute(
        """
        WITH latest AS (
            SELECT rp.replay_id, rp.request_id, rp.candidate FROM replays AS rp
            JOIN (SELECT DISTINCT request_id FROM samples WHERE sample_id = ?) USING (request_id)
            QUALIFY row_number() OVER (
                PARTITION BY rp.request_id, rp.candidate ORDER BY rp.created_at DESC, rp.replay_id
            ) = 1
        )
        SELECT l.request_id, l.candidate, s.metric, s.value
        FROM latest AS l JOIN scores AS s USING (replay_id)
        WHERE s.metric IN (SELECT unnest(?::VARCHAR[]))
        ORDER BY 1, 2, 3
        """,
        [sid, list(metrics)],
    ).fetchall()
    return [(str(r), str(c), str(m), float(v)) for r, c, m, v in rows]
