"""The canonical ``chat-log`` JSONL format (one API call per line), read set-wise in DuckDB.

Every line of ``_raw(line_no, line)`` becomes one row of ``_extracted``: the fields the warehouse
keeps, or a ``reason`` a person understands for why the line cannot be loaded. The shared
normalization (warehouse/normalize.py) takes it from there.
"""

from __future__ import annotations

import json

import duckdb

from warehouse.credentials import REQUEST_SECRET_FIELDS
from warehouse.normalize import masked_messages_sql, stage_columns
from warehouse.rawfile import LONG_LINE_BYTES

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
    secret_patch = params_patch()
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


# The fast path. Each line is parsed once, into its top-level fields: most as JSON text (a value's
# first character tells its JSON type), the response as the few values kept. The request's fields
# come from its (small, minified) text, the messages' roles and contents from theirs. A line
# passing every cheap check is loaded from these values; any other line (broken, wrong types,
# unusual shapes) is 'pending' and takes the general path above, which states exactly what is
# wrong with it. Both paths mask key-like strings in the messages' JSON text before anything is
# derived from it (masked_messages_sql), so they store the same masked text.
_RESPONSE: dict[str, object] = {
    "model": "VARCHAR",
    "choices": [{"message": {"content": "JSON"}, "finish_reason": "VARCHAR"}],
    "usage": {"prompt_tokens": "JSON", "completion_tokens": "JSON"},
}
TOP_FIELDS: dict[str, object] = {
    "id": "JSON",
    "timestamp": "JSON",
    "request": "JSON",
    "response": _RESPONSE,
    "status_code": "JSON",
    "latency_ms": "JSON",
    "ttft_ms": "JSON",
    "cost_usd": "JSON",
    "conversation_id": "JSON",
    "user": "VARCHAR",
    "metadata": "JSON",
    "error": "JSON",
}
_STRUCTURE = json.dumps(TOP_FIELDS)
# The fields relation both readers give, from the parsed top-level fields ({r}: their prefix).
# A response that is not an object comes out as a struct of NULLs: a non-empty response must
# show one of its fields (an empty object takes the general path).
_FIELD_COLUMNS = (
    ("id", "{r}id::VARCHAR"),
    ("tsj", '{r}"timestamp"::VARCHAR'),
    ("rq", "{r}request::VARCHAR"),
    (
        "resp_ok",
        "{r}response IS NULL OR {r}response.model IS NOT NULL "
        "OR {r}response.choices IS NOT NULL OR {r}response.usage IS NOT NULL",
    ),
    ("response_model", "{r}response.model"),
    ("content_j", "{r}response.choices[1].message.content::VARCHAR"),
    ("finish_reason", "{r}response.choices[1].finish_reason"),
    ("prompt_j", "{r}response.usage.prompt_tokens::VARCHAR"),
    ("completion_j", "{r}response.usage.completion_tokens::VARCHAR"),
    ("status_j", "{r}status_code::VARCHAR"),
    ("latency_j", "{r}latency_ms::VARCHAR"),
    ("ttft_j", "{r}ttft_ms::VARCHAR"),
    ("cost_j", "{r}cost_usd::VARCHAR"),
    ("conv_j", "{r}conversation_id::VARCHAR"),
    ("user_id", '{r}"user"'),
    ("meta_j", "{r}metadata"),  # JSON, as it is stored
    ("err_j", "{r}error::VARCHAR"),
)
_ROLES = "['system', 'developer', 'user', 'assistant', 'tool', 'function']"
_ROLE_SET = "(" + _ROLES[1:-1] + ")"
# Request keys stored in their own columns: a request with no other key has params '{}'.
_OWN_KEYS = ("messages", "model", "temperature", "max_tokens")
_MESSAGES = json.dumps([{"role": "VARCHAR", "content": "VARCHAR"}])


def _all_in(values: str, allowed: str) -> str:
    """SQL: every element of the list ``values`` is one of ``allowed`` (a NULL element is not).
    (Five times cheaper than list_has_all here.)"""
    return f"list_bool_and(list_transform({values}, lambda v: coalesce(v IN {allowed}, false)))"


def _absent(x: str) -> str:
    return f"({x} IS NULL OR {x} = 'null')"


def _is_str(x: str) -> str:
    return f"prefix({x}, '\"')"


def _is_num(x: str) -> str:
    return f"regexp_matches({x}, '^-?[0-9]')"


def _is_int(x: str) -> str:
    # surely a BIGINT; longer integers take the general path
    return f"regexp_full_match({x}, '-?[0-9]{{1,18}}')"


# Number fields: absent, null, or a number (an integer that surely fits a BIGINT).
_NUMBER_FIELDS = (
    ("temp_j", "number"),
    ("maxt_j", "integer"),
    ("status_j", "integer"),
    ("latency_j", "number"),
    ("ttft_j", "number"),
    ("prompt_j", "integer"),
    ("completion_j", "integer"),
    ("cost_j", "number"),
)
_PATTERNS = {"number": "(?:|null|-?[0-9][^\\x01]*)", "integer": "(?:|null|-?[0-9]{1,18})"}


def _numbers_ok() -> str:
    """SQL: every number field holds what it should. One regex over all of them (joined by
    0x01, which JSON text never holds) costs less than one per field."""
    joined = ", chr(1), ".join(f"coalesce({col}, '')" for col, _ in _NUMBER_FIELDS)
    pattern = "\\x01".join(_PATTERNS[kind] for _, kind in _NUMBER_FIELDS)
    return f"regexp_full_match(concat({joined}), '{pattern}')"


def _text(x: str) -> str:
    """The value of the JSON string ``x``: unquoted, unescaped only when it holds an escape."""
    return f"CASE WHEN contains({x}, '\\') THEN {x}->>'$' ELSE {x}[2:-2] END"


def params_patch() -> str:
    """A JSON merge patch turning a logged request into its stored ``params``: the keys kept
    in their own columns and the credential fields removed."""
    keys = (*_OWN_KEYS, *REQUEST_SECRET_FIELDS)
    return "{" + ", ".join(f'"{k}": null' for k in keys) + "}"


def _only_own_keys(request: str, values: tuple[str, ...]) -> str:
    """SQL: true when the minified object text ``request`` holds no key but _OWN_KEYS, whose
    values' minified texts (NULL: key absent) are ``values``. Its length tells: any other key
    would add at least ``,"k":0``."""
    parts = " + ".join(
        f"coalesce(strlen({v}) + {len(json.dumps(k)) + 1}, 0)"
        for k, v in zip(_OWN_KEYS, values, strict=True)
    )
    present = " + ".join(f"({v} IS NOT NULL)::INTEGER" for v in values)
    return f"strlen({request}) = 2 + {parts} + greatest({present} - 1, 0)"


def _duckdb_type(structure: object) -> str:
    """The DuckDB type of a json_transform structure."""
    if isinstance(structure, dict):
        fields = ", ".join(f'"{k}" {_duckdb_type(v)}' for k, v in structure.items())
        return f"STRUCT({fields})"
    if isinstance(structure, list):
        return f"{_duckdb_type(structure[0])}[]"
    return str(structure)


def read_json_sql() -> str:
    """``read_json`` of the file ``$path``: one row per non-blank line, in file order, its
    top-level fields (a line that is not a JSON object gives a row of NULLs). A blank line gives
    no row at all: the caller compares the count with the file's lines."""
    columns = "{" + ", ".join(f"'{k}': '{_duckdb_type(v)}'" for k, v in TOP_FIELDS.items()) + "}"
    return (
        f"read_json($path, format = 'newline_delimited', columns = {columns}, "
        f"ignore_errors = true, auto_detect = false, maximum_object_size = {LONG_LINE_BYTES})"
    )


def _fields(prefix: str) -> str:
    return ", ".join(f"{expr.format(r=prefix)} AS {col}" for col, expr in _FIELD_COLUMNS)


def _json_fields_sql() -> str:
    return f"""
        SELECT false AS is_blank, false AS is_marker, NULL::VARCHAR AS line, {_fields("")}
        FROM {read_json_sql()}
    """


def _line_fields_sql(lines: str) -> str:
    return f"""
        SELECT is_blank, is_marker, line, {_fields("t.")}
        FROM (
            SELECT *, CASE WHEN NOT is_blank AND NOT is_marker
                           THEN try(json_transform(line, '{_STRUCTURE}')) END AS t
            FROM (
                SELECT line,
                       CASE WHEN line IS NULL THEN true WHEN prefix(line, ' ') THEN trim(line) = ''
                            ELSE line = '' END AS is_blank,
                       line = chr(2) AS is_marker
                FROM ({lines})))
    """


def stage_chat_log_json_sql(*, fast: bool = True) -> str:
    """``stage_chat_log_sql`` for the file ``$path`` read with ``read_json``: one row per
    non-blank line (see read_json_sql), ``raw`` always NULL (the caller reads pending lines'
    text itself)."""
    return _stage_fields_sql(_json_fields_sql(), fast=fast)


def stage_chat_log_sql(lines: str, *, fast: bool = True) -> str:
    """A SELECT over ``lines`` (one column, ``line``, in file order) giving ``_stage`` columns
    but ``line_no`` (the caller numbers rows by their order), plus ``pending`` (the line needs
    the general path) and ``raw`` (the line, kept for pending ones only). ``fast=False`` sends
    every line the general way (the tests compare both)."""
    return _stage_fields_sql(_line_fields_sql(lines), fast=fast)


def _stage_fields_sql(fields: str, *, fast: bool) -> str:
    # year 1990 .. 2200, as the general path wants
    ok_ts = "ts BETWEEN TIMESTAMP '1990-01-01' AND TIMESTAMP '2200-12-31 23:59:59.999999'"
    return f"""
        WITH f AS ({fields}), x AS (
            SELECT *,
                json_extract(rq, ['$.messages', '$.model', '$.temperature', '$.max_tokens']) AS rx
            FROM f
        ), leaves AS (
            SELECT * EXCLUDE (rx),
                rx[1] AS logged_messages, rx[2]::VARCHAR AS model_j, rx[3]::VARCHAR AS temp_j,
                rx[4]::VARCHAR AS maxt_j
            FROM x
        ), masked AS (
            SELECT *, {masked_messages_sql("logged_messages")} AS messages FROM leaves
        ), msgs AS (
            SELECT *,
                json_transform(messages, '{_MESSAGES}') AS ml,
                -- a string (unquoted) or an integer; NULL for any other id
                CASE WHEN {_is_str("id")} THEN {_text("id")} WHEN {_is_int("id")} THEN id END
                    AS request_id,
                json_type(messages, '$[*].content') AS ctypes,
                CASE WHEN {_is_str("tsj")}
                     THEN try_cast({_text("tsj")} AS TIMESTAMPTZ) AT TIME ZONE 'UTC'
                     WHEN {_is_num("tsj")} AND try_cast(tsj AS DOUBLE) BETWEEN 0 AND 7258118400
                     THEN to_timestamp(try_cast(tsj AS DOUBLE)) AT TIME ZONE 'UTC' END AS ts
            FROM masked
        ), roled AS (
            SELECT *, list_transform(ml, lambda m: m.role) AS roles FROM msgs
        ), checked AS (
            SELECT *,
                (
                    {"true" if fast else "false"} AND prefix(rq, '{{')
                    AND resp_ok
                    AND trim(request_id) <> ''
                    AND {ok_ts}
                    AND prefix(messages, '[') AND len(ml) > 0 AND len(ctypes) = len(ml)
                    AND {_all_in("ctypes", "('VARCHAR', 'ARRAY')")}
                    AND list_count(roles) = len(ml) AND {_all_in("roles", _ROLE_SET)}
                    AND list_contains(roles, 'user')
                    AND ({_absent("model_j")} OR {_is_str("model_j")})
                    AND {_numbers_ok()}
                    AND ({_absent("meta_j")} OR prefix(meta_j, '{{'))
                    AND ({_absent("conv_j")} OR {_is_str("conv_j")} OR {_is_int("conv_j")})
                    AND ({_absent("content_j")} OR {_is_str("content_j")})
                ) IS NOT TRUE AND NOT is_blank AND NOT is_marker AS pending
            FROM roled
        ), d AS (
            SELECT NULL::BIGINT AS line_no, is_blank, is_marker, pending, line,
                NULL::VARCHAR AS reason,
                request_id,
                ts,
                NULLIF(CASE WHEN {_is_str("conv_j")} THEN {_text("conv_j")}
                            WHEN NOT {_absent("conv_j")} THEN conv_j END, '') AS conversation_id,
                roles,
                CASE WHEN pending OR is_blank OR is_marker THEN NULL
                     WHEN list_contains(ctypes, 'ARRAY')
                     THEN list_transform(ml, lambda m, i: CASE WHEN ctypes[i] = 'ARRAY'
                          THEN array_to_string(json_extract_string(m.content, '$[*].text'), chr(10))
                          ELSE m.content END)
                     ELSE list_transform(ml, lambda m: m.content) END AS texts,
                CASE WHEN {_is_str("model_j")} THEN {_text("model_j")} END AS model,
                response_model,
                messages,
                try_cast(temp_j AS DOUBLE) AS temperature,
                try_cast(maxt_j AS INTEGER) AS max_tokens,
                CASE WHEN pending OR is_blank OR is_marker THEN NULL
                     WHEN {_only_own_keys("rq", ("logged_messages", "model_j", "temp_j", "maxt_j"))}
                     THEN '{{}}'::JSON
                     ELSE json_merge_patch(rq, '{params_patch()}')
                END AS params,
                CASE WHEN {_is_str("content_j")} THEN {_text("content_j")} END AS response_text,
                finish_reason,
                try_cast(prompt_j AS INTEGER) AS usage_prompt,
                try_cast(completion_j AS INTEGER) AS usage_completion,
                try_cast(latency_j AS DOUBLE) AS latency_ms,
                try_cast(ttft_j AS DOUBLE) AS ttft_ms,
                try_cast(status_j AS INTEGER) AS status_code,
                CASE WHEN NOT {_absent("err_j")}
                     THEN coalesce(err_j->>'$.message', left(err_j, 500)) END AS error_message,
                try_cast(cost_j AS DOUBLE) AS cost_log,
                meta_x[1] AS label_task_type,
                meta_x[2] AS feature,
                user_id,
                CASE WHEN prefix(meta_j, '{{') THEN meta_j END AS metadata
            FROM (
                SELECT *, json_extract_string(meta_j, ['$.task_type', '$.feature']) AS meta_x
                FROM checked)
        )
        SELECT * EXCLUDE (line_no) FROM (
            SELECT {stage_columns("d")}, d.pending, CASE WHEN d.pending THEN d.line END AS raw
            FROM d)
    """
