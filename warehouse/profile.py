"""What the logged workload looks like: the numbers a migration is planned on.

Every figure is one SQL query over ``requests`` (and ``predictions`` where they exist), returned as
plain dicts and lists so the CLI, ``--json`` and the HTML templates all show the same thing.
A failed call is one with an ``error_message`` (HTTP status >= 400, or no batch output).
"""

from __future__ import annotations

from typing import Any

import duckdb

from warehouse.errors import EmptyWarehouseError


def _rows(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _round(value: Any, digits: int = 2) -> Any:
    return round(float(value), digits) if value is not None else None


def _percentiles(
    con: duckdb.DuckDBPyConnection, column: str, where: str = "TRUE"
) -> dict[str, Any]:
    (row,) = _rows(
        con,
        f"""
        SELECT quantile_cont({column}, 0.5) AS p50, quantile_cont({column}, 0.9) AS p90,
               quantile_cont({column}, 0.99) AS p99, avg({column}) AS mean,
               max({column}) AS max, count({column}) AS n
        FROM requests WHERE {where}
    """,
    )
    return {k: (_round(v) if k != "n" else int(v)) for k, v in row.items()}


def profile_warehouse(con: duckdb.DuckDBPyConnection, *, top: int = 20) -> dict[str, Any]:
    """The whole profile. Raises EmptyWarehouseError when nothing has been ingested."""
    (overview,) = _rows(
        con,
        """
        SELECT count(*) AS requests,
               count(*) FILTER (WHERE error_message IS NOT NULL) AS failed,
               min(ts) AS first_ts, max(ts) AS last_ts,
               count(DISTINCT model) AS models,
               count(DISTINCT conversation_id) AS conversations,
               sum(cost_usd) AS cost_usd,
               sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
               count(*) FILTER (WHERE tokens_estimated) AS tokens_estimated,
               count(*) FILTER (WHERE cost_source = 'unknown-model') AS unpriced
        FROM requests
    """,
    )
    n = int(overview["requests"])
    if n == 0:
        raise EmptyWarehouseError("requests")
    span_days = max((overview["last_ts"] - overview["first_ts"]).total_seconds() / 86400, 1 / 24)
    overview.update(
        error_rate=_round(overview["failed"] / n, 4),
        cost_usd=_round(overview["cost_usd"], 4),
        span_days=_round(span_days, 2),
        cost_per_month_usd=_round((overview["cost_usd"] or 0) / span_days * 30, 2),
        requests_per_day=_round(n / span_days, 1),
    )
    (rejects,) = _rows(
        con,
        """
        SELECT (SELECT count(*) FROM rejected_lines) AS rejected_lines,
               (SELECT count(*) FROM duplicate_lines) AS duplicate_lines,
               (SELECT count(*) FROM ingest_batches) AS files
    """,
    )
    overview.update(rejects)

    by_model = _rows(
        con,
        """
        SELECT model, count(*) AS requests, round(count(*) / sum(count(*)) OVER (), 4) AS share,
               round(sum(cost_usd), 4) AS cost_usd,
               round(avg(prompt_tokens), 1) AS avg_prompt_tokens,
               round(avg(completion_tokens), 1) AS avg_completion_tokens,
               count(*) FILTER (WHERE error_message IS NOT NULL) AS failed
        FROM requests GROUP BY model ORDER BY requests DESC LIMIT ?
    """,
        [top],
    )
    by_day = _rows(
        con,
        """
        SELECT CAST(date_trunc('day', ts) AS DATE) AS day, count(*) AS requests,
               round(sum(cost_usd), 4) AS cost_usd,
               count(*) FILTER (WHERE error_message IS NOT NULL) AS failed
        FROM requests GROUP BY 1 ORDER BY 1
    """,
    )
    by_hour = _rows(
        con,
        """
        SELECT hour(ts) AS hour, count(*) AS requests FROM requests GROUP BY 1 ORDER BY 1
    """,
    )
    by_label = _rows(
        con,
        """
        SELECT coalesce(label_task_type, '(unlabeled)') AS task_type, count(*) AS requests,
               round(count(*) / sum(count(*)) OVER (), 4) AS share,
               round(sum(cost_usd), 4) AS cost_usd
        FROM requests GROUP BY 1 ORDER BY requests DESC LIMIT ?
    """,
        [top],
    )
    by_feature = _rows(
        con,
        """
        SELECT coalesce(feature, '(none)') AS feature, count(*) AS requests,
               round(sum(cost_usd), 4) AS cost_usd
        FROM requests GROUP BY 1 ORDER BY requests DESC LIMIT ?
    """,
        [top],
    )
    errors = _rows(
        con,
        """
        SELECT coalesce(status_code::VARCHAR, 'no status') AS status, count(*) AS requests,
               any_value(error_message) AS example
        FROM requests WHERE error_message IS NOT NULL GROUP BY 1 ORDER BY requests DESC
    """,
    )
    (conv,) = _rows(
        con,
        """
        WITH c AS (SELECT conversation_id, count(*) AS calls, max(turn_index) + 1 AS depth
                   FROM requests GROUP BY conversation_id)
        SELECT count(*) AS conversations,
               count(*) FILTER (WHERE depth > 1) AS multi_turn_conversations,
               (SELECT count(*) FROM requests WHERE turn_index > 0) AS later_turn_requests,
               (SELECT count(*) FROM requests r JOIN c USING (conversation_id) WHERE c.depth > 1)
                   AS requests_in_multi_turn,
               quantile_cont(depth, 0.5) AS depth_p50, quantile_cont(depth, 0.9) AS depth_p90,
               max(depth) AS depth_max
        FROM c
    """,
    )
    conv["multi_turn_share"] = _round(conv["requests_in_multi_turn"] / n, 4)
    depth_hist = _rows(
        con,
        """
        WITH c AS (SELECT least(max(turn_index) + 1, 10) AS depth FROM requests
                   GROUP BY conversation_id)
        SELECT depth, count(*) AS conversations FROM c GROUP BY depth
    """,
    )
    hist: dict[int, int] = {}
    for row in depth_hist:
        hist[int(row["depth"])] = hist.get(int(row["depth"]), 0) + int(row["conversations"])
    conv["depth_histogram"] = [
        {"depth": d if d < 10 else "10+", "conversations": c} for d, c in sorted(hist.items())
    ]
    (repeats,) = _rows(
        con,
        """
        WITH r AS (SELECT prompt_hash, cost_usd,
                          row_number() OVER (PARTITION BY prompt_hash ORDER BY ts, request_id) AS k
                   FROM requests WHERE error_message IS NULL)
        SELECT count(*) AS successful, count(*) FILTER (WHERE k > 1) AS repeats,
               coalesce(sum(cost_usd) FILTER (WHERE k > 1), 0) AS repeat_cost_usd,
               coalesce(sum(cost_usd), 0) AS cost_usd
        FROM r
    """,
    )
    repeats["repeat_share"] = _round(repeats["repeats"] / max(repeats["successful"], 1), 4)
    repeats["cache_saving_share"] = (
        _round(repeats["repeat_cost_usd"] / repeats["cost_usd"], 4) if repeats["cost_usd"] else 0.0
    )
    repeats["repeat_cost_usd"] = _round(repeats["repeat_cost_usd"], 4)
    repeats["cost_usd"] = _round(repeats["cost_usd"], 4)
    ok = "error_message IS NULL"
    return {
        "overview": overview,
        "by_model": by_model,
        "by_day": by_day,
        "by_hour": by_hour,
        "by_label": by_label,
        "by_feature": by_feature,
        "tokens": {
            "prompt": _percentiles(con, "prompt_tokens", ok),
            "completion": _percentiles(con, "completion_tokens", ok),
        },
        "latency_ms": _percentiles(con, "latency_ms", ok),
        "ttft_ms": _percentiles(con, "ttft_ms", ok),
        "conversations": conv,
        "errors": errors,
        "exact_repeats": repeats,
    }
