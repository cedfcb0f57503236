"""The canonical ``chat-log`` JSONL format (one API call per line), read set-wise in DuckDB.

Every line of ``_raw(line_no, line)`` becomes one row of ``_extracted``: the fields the warehouse
keeps, or a ``reason`` a person understands for why the line cannot be loaded. The shared
normalization (warehouse/normalize.py) takes it from there.
"""

from __future__ import annotations

import duckdb

from warehouse.credentials import REQUEST_SECRET_FIELDS

# (name, JSON path) pulled out of each line with one parse.
_PATHS: tuple[tuple[str, str], ...] = (
    ("id", "$.id"),
    ("timestamp", "$.timestamp"),
    ("request", "$.request"),
    ("messages", "$.request.messages"),
    ("model", "$.request.model"),
    ("temperature", "$.request.temperature"),
    ("max_tokens", "$.request.max_tokens"),
    ("response", "$.response"),
    ("response_model", "$.response.model"),
    ("content", "$.response.choices[0].message.content"),
    ("finish_reason", "$.response.choices[0].finish_reason"),
    ("prompt_tokens", "$.response.usage.prompt_tokens"),
    ("completion_tokens", "$.response.usage.completion_tokens"),
    ("status_code", "$.status_code"),
    ("latency_ms", "$.latency_ms"),
    ("ttft_ms", "$.ttft_ms"),
    ("conversation_id", "$.conversation_id"),
    ("user", "$.user"),
    ("metadata", "$.metadata"),
    ("task_type", "$.metadata.task_type"),
    ("feature", "$.metadata.feature"),
    ("error", "$.error"),
    ("error_message", "$.error.message"),
    ("cost_usd", "$.cost_usd"),
)
_IDX = {name: i + 1 for i, (name, _) in enumerate(_PATHS)}


def f(name: str) -> str:
    """SQL for the extracted JSON value of field ``name`` (NULL when absent)."""
    return f"e[{_IDX[name]}]"


def jt(name: str) -> str:
    return f"json_type({f(name)})"


NUMBER = "('BIGINT', 'UBIGINT', 'DOUBLE')"
INTEGER = "('BIGINT', 'UBIGINT')"


def _optional(name: str, label: str, types: str, kind: str) -> str:
    """A CASE arm rejecting an optional field present with the wrong JSON type."""
    return (
        f"WHEN {f(name)} IS NOT NULL AND {jt(name)} NOT IN {types[:-1]}, 'NULL') "
        f"THEN 'field {label}: must be {kind}, got ' || lower({jt(name)})"
    )


def timestamp_sql(value: str) -> str:
    """RFC 3339 string or epoch seconds -> UTC TIMESTAMP (NULL when it cannot be parsed)."""
    return (
        f"CASE json_type({value}) "
        f"WHEN 'VARCHAR' THEN try_cast({value}->>'$' AS TIMESTAMPTZ) AT TIME ZONE 'UTC' "
        f"WHEN 'BIGINT' THEN {_epoch(value)} WHEN 'UBIGINT' THEN {_epoch(value)} "
        f"WHEN 'DOUBLE' THEN {_epoch(value)} END"
    )


def _epoch(value: str) -> str:
    # 0 .. year 2200; larger values (epoch milliseconds) are rejected with a hint, not overflowed
    return (
        f"CASE WHEN {value}::DOUBLE BETWEEN 0 AND 7258118400 "
        f"THEN to_timestamp({value}::DOUBLE) AT TIME ZONE 'UTC' END"
    )


def timestamp_reason(value: str, parsed: str, label: str = "timestamp") -> str:
    return (
        f"WHEN {value} IS NULL OR json_type({value}) = 'NULL' THEN 'missing field: {label}' "
        f"WHEN json_type({value}) IN {NUMBER} AND {parsed} IS NULL "
        f"THEN 'field {label}: ' || {value}::VARCHAR || ' is not epoch seconds (milliseconds?)' "
        f"WHEN {parsed} IS NULL THEN 'field {label}: cannot parse ' || left({value}::VARCHAR, 60) "
        f"WHEN year({parsed}) NOT BETWEEN 1990 AND 2200 "
        f"THEN 'field {label}: ' || {parsed}::VARCHAR || ' is out of range' "
    )


def messages_reason(value: str, label: str) -> str:
    return (
        f"WHEN {value} IS NULL OR json_type({value}) = 'NULL' THEN 'missing field: {label}' "
        f"WHEN json_type({value}) <> 'ARRAY' "
        f"THEN 'field {label}: must be a list, got ' || lower(json_type({value})) "
        f"WHEN json_array_length({value}) = 0 THEN 'field {label}: empty list' "
    )


def parse_lines_sql(source: str, *, checked: bool = True) -> str:
    """A SELECT over ``source(line_no, line)``: blank/marker flags, and the line as ``j`` when it
    may be parsed (checked: only valid JSON; unchecked: the caller knows every line is JSON)."""
    valid = (
        "line IS NOT NULL AND json_valid(line)"
        if checked
        else "line IS NOT NULL AND line <> chr(2) AND trim(line) <> ''"
    )
    return f"""
        SELECT line_no, line,
               (line IS NULL OR trim(line) = '') AS is_blank,
               line = chr(2) AS is_marker,
               CASE WHEN {valid} THEN line END AS j
        FROM {source}
    """


# The first reasons every JSONL reader gives, over columns is_blank, is_marker, bad_json, top.
LINE_REASONS = """
    WHEN is_blank OR is_marker THEN NULL
    WHEN bad_json THEN 'not valid JSON'
    WHEN top <> 'OBJECT' THEN 'not a JSON object (got ' || lower(top) || ')'
"""


def extract_chat_log(con: duckdb.DuckDBPyConnection, source: str = "_raw") -> None:
    """``source(line_no, line)`` -> ``_extracted`` for chat-log lines.

    One JSON parse per line when every line of the chunk is JSON (a fast validation pass tells);
    otherwise each line is checked before it is parsed, and bad ones become reasons.
    """
    ((all_json,),) = con.execute(
        f"SELECT coalesce(bool_and(json_valid(line)), true) FROM {source} "
        "WHERE line IS NOT NULL AND line <> chr(2) AND trim(line) <> ''"
    ).fetchall()
    _extract(con, source, checked=not all_json)


def _extract(con: duckdb.DuckDBPyConnection, source: str, *, checked: bool) -> None:
    paths = ", ".join(f"'{p}'" for _, p in _PATHS)
    secret_patch = (
        "{"
        + ", ".join(
            f'"{k}": null'
            for k in ("messages", "model", "temperature", "max_tokens", *REQUEST_SECRET_FIELDS)
        )
        + "}"
    )
    ts = timestamp_sql(f("timestamp"))
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _extracted AS
        WITH parsed AS MATERIALIZED ({parse_lines_sql(source, checked=checked)}), fields AS MATERIALIZED (
            SELECT line_no, is_blank, is_marker, j IS NULL AS bad_json, json_type(j) AS top,
                   json_extract(j, [{paths}]) AS e FROM parsed
        ), typed AS MATERIALIZED (
            SELECT *, {ts} AS ts_parsed FROM fields
        )
        SELECT
            line_no, is_blank, is_marker,
            CASE
                {LINE_REASONS}
                WHEN {f("id")} IS NULL OR {jt("id")} = 'NULL' THEN 'missing field: id'
                WHEN {jt("id")} NOT IN ('VARCHAR', 'BIGINT', 'UBIGINT')
                    THEN 'field id: must be a string, got ' || lower({jt("id")})
                WHEN trim({f("id")}->>'$') = '' THEN 'field id: empty string'
                {timestamp_reason(f("timestamp"), "ts_parsed")}
                WHEN {f("request")} IS NULL OR {jt("request")} = 'NULL' THEN 'missing field: request'
                WHEN {jt("request")} <> 'OBJECT'
                    THEN 'field request: must be an object, got ' || lower({jt("request")})
                {messages_reason(f("messages"), "request.messages")}
                {_optional("model", "request.model", "('VARCHAR')", "a string")}
                {_optional("temperature", "request.temperature", NUMBER, "a number")}
                {_optional("max_tokens", "request.max_tokens", INTEGER, "an integer")}
                {_optional("status_code", "status_code", INTEGER, "an integer")}
                {_optional("latency_ms", "latency_ms", NUMBER, "a number")}
                {_optional("ttft_ms", "ttft_ms", NUMBER, "a number")}
                {_optional("prompt_tokens", "response.usage.prompt_tokens", INTEGER, "an integer")}
                {_optional("completion_tokens", "response.usage.completion_tokens", INTEGER, "an integer")}
                {_optional("cost_usd", "cost_usd", NUMBER, "a number")}
                {_optional("response", "response", "('OBJECT')", "an object")}
                {_optional("metadata", "metadata", "('OBJECT')", "an object")}
                {_optional("conversation_id", "conversation_id", "('VARCHAR', 'BIGINT', 'UBIGINT')", "a string")}
                {_optional("content", "response.choices[0].message.content", "('VARCHAR')", "a string")}
            END AS reason,
            {f("id")}->>'$' AS request_id,
            ts_parsed AS ts,
            NULLIF({f("conversation_id")}->>'$', '') AS conversation_id,
            {f("model")}->>'$' AS model,
            {f("response_model")}->>'$' AS response_model,
            {f("messages")} AS messages,
            try_cast({f("temperature")}->>'$' AS DOUBLE) AS temperature,
            try_cast({f("max_tokens")}->>'$' AS INTEGER) AS max_tokens,
            CASE WHEN {jt("request")} = 'OBJECT'
                 THEN json_merge_patch({f("request")}, '{secret_patch}') END AS params,
            {f("content")}->>'$' AS response_text,
            {f("finish_reason")}->>'$' AS finish_reason,
            try_cast({f("prompt_tokens")}->>'$' AS INTEGER) AS usage_prompt,
            try_cast({f("completion_tokens")}->>'$' AS INTEGER) AS usage_completion,
            try_cast({f("latency_ms")}->>'$' AS DOUBLE) AS latency_ms,
            try_cast({f("ttft_ms")}->>'$' AS DOUBLE) AS ttft_ms,
            try_cast({f("status_code")}->>'$' AS INTEGER) AS status_code,
            CASE WHEN {f("error")} IS NOT NULL AND {jt("error")} <> 'NULL'
                 THEN coalesce({f("error_message")}->>'$', left({f("error")}::VARCHAR, 500)) END
                AS error_message,
            try_cast({f("cost_usd")}->>'$' AS DOUBLE) AS cost_log,
            {f("task_type")}->>'$' AS label_task_type,
            {f("feature")}->>'$' AS feature,
            {f("user")}->>'$' AS user_id,
            CASE WHEN {jt("metadata")} = 'OBJECT' THEN {f("metadata")} END AS metadata
        FROM typed
    """)
