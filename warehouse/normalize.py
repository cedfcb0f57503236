"""From ``_extracted`` (any log format) to rows of ``requests``: shared by every reader.

Checks each message, derives what later stages need (system prompt, last user message,
conversation and turn, token estimates, cost, a prompt hash), then splits the lines into loaded,
duplicate (request id seen earlier in this file or in the warehouse), rejected and blank — all in
one transaction, so a failure leaves the warehouse as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from warehouse.credentials import mask_sql, may_hold_credential_sql
from warehouse.pricing import Prices, load_price_table
from warehouse.secrets_in_text import mask_text_sql, may_hold_secret_sql, replace_secrets_sql

_ROLES = "['system', 'developer', 'user', 'assistant', 'tool', 'function']"

# A message is an object with a known role and string / content-part content (assistant and tool
# messages may carry tool calls instead of content).
# (coalesce: a message with no content at all is not ok, rather than unknown)
_MSG_OK = (
    "lambda m: coalesce(json_type(m) = 'OBJECT' AND json_type(m, '$.role') = 'VARCHAR' "
    f"AND list_contains({_ROLES}, m->>'$.role') "
    "AND (json_type(m, '$.content') IN ('VARCHAR', 'ARRAY') "
    "     OR (m->>'$.role' IN ('assistant', 'tool', 'function') "
    "         AND coalesce(json_type(m, '$.content'), 'NULL') = 'NULL')), false)"
)
_MSG_TEXT = (
    "lambda m: CASE json_type(m, '$.content') WHEN 'VARCHAR' THEN m->>'$.content' "
    "WHEN 'ARRAY' THEN array_to_string(json_extract_string(m, '$.content[*].text'), chr(10)) "
    "ELSE '' END"
)


@dataclass
class LineCounts:
    lines_read: int = 0
    loaded: int = 0
    duplicates: int = 0
    rejected: int = 0
    blank: int = 0
    joined: int = 0

    def add(self, other: LineCounts) -> None:
        for name in ("lines_read", "loaded", "duplicates", "rejected", "blank", "joined"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def stage_requests(con: duckdb.DuckDBPyConnection, target: str = "_stage") -> None:
    """``_extracted`` -> ``_stage``: message checks (JSON, per message) and every derived column
    (from the messages with key-like strings masked).

    The general path: any reader's ``_extracted`` goes through it. The chat-log reader has a
    faster one for the rows it fully understands, ending in the same ``stage_columns``."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {target} AS
        WITH masked AS (
            SELECT * REPLACE ({masked_messages_sql("messages")} AS messages) FROM _extracted
        ), msgs AS MATERIALIZED (
            SELECT *,
                CASE WHEN reason IS NULL THEN json_extract(messages, '$[*]') END AS msg_list
            FROM masked
        ), checked AS MATERIALIZED (
            SELECT *,
                CASE WHEN msg_list IS NOT NULL
                     THEN list_position(list_transform(msg_list, {_MSG_OK}), false) END AS bad_msg
            FROM msgs
        ), derived AS MATERIALIZED (
            SELECT * REPLACE (
                CASE
                    WHEN reason IS NOT NULL THEN reason
                    WHEN bad_msg IS NOT NULL THEN {BAD_MESSAGE_REASON_SQL}
                END AS reason),
                CASE WHEN reason IS NULL AND bad_msg IS NULL
                     THEN list_transform(msg_list, lambda m: m->>'$.role') END AS roles,
                CASE WHEN reason IS NULL AND bad_msg IS NULL
                     THEN list_transform(msg_list, {_MSG_TEXT}) END AS texts
            FROM checked
        )
        SELECT {stage_columns("d")} FROM derived d
    """)


# Why message ``bad_msg`` (1-based) of a line cannot be loaded.
BAD_MESSAGE_REASON_SQL = (
    "'field request.messages[' || (bad_msg - 1)::VARCHAR || ']: needs a role "
    "(system/user/assistant/tool) and string or content-part content'"
)


def masked_json_sql(expr: str) -> str:
    """SQL: the JSON ``expr`` (request parameters, metadata) with credential values and
    key-like strings masked (NULL stays NULL). A cheap test first: only texts that may hold one
    pay for the regexes."""
    return (
        f"CASE WHEN {may_hold_credential_sql(f'{expr}::VARCHAR')} "
        f"THEN {mask_sql(f'{expr}::VARCHAR')}::JSON ELSE {expr}::JSON END"
    )


def masked_messages_sql(expr: str) -> str:
    """SQL: the JSON ``expr`` (a request's messages) with key-like strings masked in its text
    (see warehouse/secrets_in_text.py; no pattern crosses a JSON string, so it stays JSON)."""
    text = f"{expr}::VARCHAR"
    return (
        f"CASE WHEN {may_hold_secret_sql(text)} "
        f"THEN {replace_secrets_sql(text)}::JSON ELSE {expr}::JSON END"
    )


def stage_columns(d: str) -> str:
    """The columns of ``_stage``, from a relation ``d`` holding the extracted fields plus the
    messages' ``roles`` and ``texts`` (lists; NULL when the line is rejected). ``messages`` (and
    so ``texts``) come masked; the answer and the error are masked here."""
    return f"""
            {d}.line_no, {d}.is_blank, {d}.is_marker,
            CASE
                WHEN {d}.reason IS NOT NULL THEN {d}.reason
                WHEN NOT list_contains({d}.roles, 'user') THEN 'field request.messages: no user message'
            END AS reason,
            {d}.request_id, {d}.ts,
            coalesce({d}.conversation_id, 'derived-' || md5(
                coalesce({d}.texts[list_position({d}.roles, 'system')], '') || chr(31) ||
                coalesce({d}.texts[list_position({d}.roles, 'user')], ''))) AS conversation_id,
            {d}.conversation_id IS NULL AS conversation_derived,
            greatest(len(list_filter({d}.roles, lambda r: r = 'user')) - 1, 0) AS turn_index,
            coalesce({d}.model, {d}.response_model) AS model,
            {d}.response_model,
            {d}.texts[list_position({d}.roles, 'system')] AS system_prompt,
            {d}.messages,
            {d}.texts[len({d}.roles) - list_position(list_reverse({d}.roles), 'user') + 1]
                AS last_user_message,
            len({d}.roles) AS n_messages,
            {d}.temperature, {d}.max_tokens,
            {masked_json_sql(f"{d}.params")} AS params,
            coalesce({d}.usage_prompt,
                     (ceil(len(array_to_string({d}.texts, ' ')) / 4) + 4 * len({d}.roles))::INTEGER)
                AS prompt_tokens,
            coalesce({d}.usage_completion,
                     CASE WHEN {d}.response_text IS NOT NULL
                          THEN ceil(len({d}.response_text) / 4)::INTEGER END) AS completion_tokens,
            ({d}.usage_prompt IS NULL
             OR ({d}.usage_completion IS NULL AND {d}.response_text IS NOT NULL)) AS tokens_estimated,
            {mask_text_sql(f"{d}.response_text")} AS response_text,
            {d}.finish_reason, {d}.latency_ms, {d}.ttft_ms,
            coalesce({d}.status_code, CASE WHEN {d}.error_message IS NULL THEN 200 END) AS status_code,
            coalesce({mask_text_sql(f"{d}.error_message")}, CASE WHEN {d}.status_code >= 400
                                          THEN 'HTTP ' || {d}.status_code::VARCHAR END) AS error_message,
            {d}.cost_log, {d}.label_task_type, {d}.feature, {d}.user_id,
            {masked_json_sql(f"{d}.metadata")} AS metadata,
            md5(coalesce(coalesce({d}.model, {d}.response_model), '') || chr(31) || {d}.messages::VARCHAR)
                AS prompt_hash,
            coalesce({d}.response_model, {d}.model) AS priced_model
    """


def load_prices(con: duckdb.DuckDBPyConnection, prices: Prices, stage: str = "_stage") -> None:
    """``_prices`` for the models ``_stage`` prices (the model that answered, else the one asked)."""
    models = sorted(
        m
        for (m,) in con.execute(
            f"SELECT DISTINCT priced_model FROM {stage} WHERE reason IS NULL"
        ).fetchall()
        if m
    )
    load_price_table(con, models, prices)


def finish_stage(
    con: duckdb.DuckDBPyConnection,
    *,
    batch_id: str,
    source_file: str,
    stage: str = "_stage",
    raw: str = "_raw",
) -> LineCounts:
    """Write ``stage`` into the warehouse: loaded rows, duplicates and rejects (their lines from
    ``raw``). Caller commits."""
    # Only ids travel here, never whole rows: the first line of an id not yet in the warehouse wins.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ranked AS
        SELECT line_no, request_id,
               row_number() OVER (PARTITION BY request_id ORDER BY line_no) AS dup_rank
        FROM {stage}
        WHERE reason IS NULL AND NOT is_blank AND NOT is_marker
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _new AS
        SELECT r.line_no FROM _ranked r
        WHERE r.dup_rank = 1
          AND NOT EXISTS (SELECT 1 FROM requests q WHERE q.request_id = r.request_id)
    """)
    con.execute(
        f"""
        INSERT INTO requests
        SELECT {requests_row_sql("n", "p", source_line="n.line_no")}
        FROM {stage} n SEMI JOIN _new USING (line_no)
        LEFT JOIN _prices p ON p.model = n.priced_model
    """,
        [source_file, batch_id],
    )
    con.execute(
        """
        INSERT INTO duplicate_lines
        SELECT ?, ?, line_no, request_id FROM _ranked
        WHERE line_no NOT IN (SELECT line_no FROM _new)
    """,
        [batch_id, source_file],
    )
    con.execute(
        f"""
        INSERT INTO rejected_lines
        SELECT ?, ?, s.line_no, {mask_text_sql("s.reason")}, encode({mask_sql("r.line")})
        FROM {stage} s JOIN {raw} r USING (line_no)
        WHERE s.reason IS NOT NULL AND NOT s.is_blank AND NOT s.is_marker
    """,
        [batch_id, source_file],
    )
    (loaded,) = _one(con, "SELECT count(*) FROM _new")
    (ranked,) = _one(con, "SELECT count(*) FROM _ranked")
    rejected, blank = _one(
        con,
        f"""
        SELECT count(*) FILTER (WHERE reason IS NOT NULL AND NOT is_blank AND NOT is_marker),
               count(*) FILTER (WHERE is_blank) FROM {stage}
    """,
    )
    return LineCounts(loaded=loaded, duplicates=ranked - loaded, rejected=rejected, blank=blank)


def requests_row_sql(
    n: str, p: str, *, source_line: str, source_file: str = "?", batch_id: str = "?"
) -> str:
    """The SELECT list of a ``requests`` row, from a ``_stage`` relation ``n`` joined to its
    model's ``_prices`` row ``p`` (the other arguments: SQL expressions, by default parameters)."""
    return f"""
        {n}.request_id, {n}.ts, {n}.conversation_id, {n}.conversation_derived, {n}.turn_index,
        {n}.model, {n}.response_model, {n}.system_prompt, {n}.messages, {n}.last_user_message,
        {n}.n_messages, {n}.temperature, {n}.max_tokens, {n}.params, {n}.prompt_tokens,
        {n}.completion_tokens, {n}.tokens_estimated, {n}.response_text, {n}.finish_reason,
        {n}.latency_ms, {n}.ttft_ms, {n}.status_code, {n}.error_message,
        CASE WHEN {n}.cost_log IS NOT NULL THEN {n}.cost_log
             WHEN {n}.error_message IS NOT NULL THEN 0.0
             WHEN {p}.model IS NOT NULL THEN ({n}.prompt_tokens * {p}.price_in
                  + coalesce({n}.completion_tokens, 0) * {p}.price_out) / 1e6 END,
        CASE WHEN {n}.cost_log IS NOT NULL THEN 'log'
             WHEN {n}.error_message IS NOT NULL THEN 'failed-call'
             WHEN {p}.model IS NOT NULL THEN 'price-table' ELSE 'unknown-model' END,
        {n}.label_task_type, {n}.feature, {n}.user_id, {n}.metadata,
        {source_file}, {source_line}, {batch_id}, {n}.prompt_hash
    """


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[int, ...]:
    row = con.execute(sql).fetchall()[0]
    return tuple(int(v or 0) for v in row)
