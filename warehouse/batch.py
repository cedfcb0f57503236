"""The OpenAI Batch API format: an input file and its output file, joined on ``custom_id``.

Input lines (``{"custom_id", "method", "url", "body": {chat request}}``) become requests; the
output line with the same ``custom_id`` (``{"response": {"status_code", "body"}, "error"}``)
supplies the answer. An input with no output, or an output with an error, is a failed call — kept,
never lost. Output lines that match no loadable input are rejected with that reason, and a second
output for the same ``custom_id`` is a duplicate. Request ids are ``<input hash>:<custom_id>``:
stable across re-ingests, distinct across batches that reuse ids such as ``request-1``.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from warehouse.chatlog import (
    INTEGER,
    LINE_REASONS,
    NUMBER,
    messages_reason,
    params_patch,
    parse_lines_sql,
    timestamp_sql,
)
from warehouse.credentials import mask_sql
from warehouse.normalize import LineCounts
from warehouse.secrets_in_text import mask_text_sql


def extract_batch(
    con: duckdb.DuckDBPyConnection,
    *,
    id_prefix: str,
    fallback_ts: datetime,
    batch_id: str,
    output_file: str,
) -> LineCounts:
    """``_raw`` (input) + ``_raw_out`` (output) -> ``_extracted``; output-side rejects and
    duplicates are written here. Returns the output file's counts (its ``joined`` lines)."""
    _extract_output(con)
    secret_patch = params_patch()
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _extracted AS
        WITH parsed AS MATERIALIZED ({parse_lines_sql("_raw")}),
        fields AS MATERIALIZED (
            SELECT *, j IS NULL AS bad_json, json_type(j) AS top,
                   json_extract(j, ['$.custom_id', '$.url', '$.body', '$.body.messages',
                                    '$.body.model', '$.body.temperature', '$.body.max_tokens',
                                    '$.body.max_completion_tokens', '$.body.metadata']) AS e
            FROM parsed
        ), checked AS MATERIALIZED (
            SELECT *,
                CASE
                    {LINE_REASONS}
                    WHEN e[1] IS NULL OR json_type(e[1]) = 'NULL' THEN 'missing field: custom_id'
                    WHEN json_type(e[1]) NOT IN ('VARCHAR', 'BIGINT', 'UBIGINT')
                        THEN 'field custom_id: must be a string'
                    WHEN e[2] IS NOT NULL AND e[2]->>'$' NOT LIKE '%/chat/completions'
                        THEN 'field url: ' || (e[2]->>'$') || ' is not a chat completions endpoint'
                    WHEN e[3] IS NULL OR json_type(e[3]) <> 'OBJECT' THEN 'missing field: body (an object)'
                    {messages_reason("e[4]", "body.messages")}
                    WHEN e[6] IS NOT NULL AND json_type(e[6]) NOT IN {NUMBER[:-1]}, 'NULL')
                        THEN 'field body.temperature: must be a number'
                    WHEN e[7] IS NOT NULL AND json_type(e[7]) NOT IN {INTEGER[:-1]}, 'NULL')
                        THEN 'field body.max_tokens: must be an integer'
                END AS reason
            FROM fields
        )
        SELECT
            c.line_no, c.is_blank, c.is_marker, c.reason,
            ? || (c.e[1]->>'$') AS request_id,
            coalesce(o.created_ts, ?::TIMESTAMP) AS ts,
            NULL::VARCHAR AS conversation_id,
            c.e[5]->>'$' AS model,
            o.response_model,
            c.e[4] AS messages,
            try_cast(c.e[6]->>'$' AS DOUBLE) AS temperature,
            coalesce(try_cast(c.e[7]->>'$' AS INTEGER), try_cast(c.e[8]->>'$' AS INTEGER)) AS max_tokens,
            CASE WHEN json_type(c.e[3]) = 'OBJECT'
                 THEN json_merge_patch(c.e[3], '{secret_patch}') END AS params,
            o.response_text, o.finish_reason, o.usage_prompt, o.usage_completion,
            NULL::DOUBLE AS latency_ms, NULL::DOUBLE AS ttft_ms,
            CASE WHEN o.custom_id IS NULL THEN NULL ELSE o.status_code END AS status_code,
            CASE WHEN o.custom_id IS NULL
                 THEN 'no output line for this request (batch expired, cancelled or incomplete)'
                 ELSE o.error_message END AS error_message,
            NULL::DOUBLE AS cost_log,
            c.e[9]->>'$.task_type' AS label_task_type,
            c.e[9]->>'$.feature' AS feature,
            NULL::VARCHAR AS user_id,
            CASE WHEN json_type(c.e[9]) = 'OBJECT' THEN c.e[9] END AS metadata
        FROM checked c
        LEFT JOIN _out o ON o.custom_id = c.e[1]->>'$' AND o.out_rank = 1 AND o.reason IS NULL
    """,
        [id_prefix, fallback_ts],
    )
    return _settle_output(con, id_prefix=id_prefix, batch_id=batch_id, output_file=output_file)


def _extract_output(con: duckdb.DuckDBPyConnection) -> None:
    ts = timestamp_sql("e[9]")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _out AS
        WITH parsed AS MATERIALIZED ({parse_lines_sql("_raw_out")}),
        fields AS MATERIALIZED (
            SELECT *, j IS NULL AS bad_json, json_type(j) AS top,
                   json_extract(j, ['$.custom_id', '$.response', '$.response.status_code',
                                    '$.response.body', '$.error', '$.response.body.error',
                                    '$.response.body.choices[0].message.content',
                                    '$.response.body.choices[0].finish_reason',
                                    '$.response.body.created', '$.response.body.model',
                                    '$.response.body.usage.prompt_tokens',
                                    '$.response.body.usage.completion_tokens']) AS e
            FROM parsed
        ), checked AS MATERIALIZED (
            SELECT *,
                CASE
                    {LINE_REASONS}
                    WHEN e[1] IS NULL OR json_type(e[1]) = 'NULL' THEN 'missing field: custom_id'
                    WHEN coalesce(json_type(e[2]), 'NULL') = 'NULL' AND coalesce(json_type(e[5]), 'NULL') = 'NULL'
                        THEN 'neither response nor error'
                    WHEN e[2] IS NOT NULL AND json_type(e[2]) NOT IN ('OBJECT', 'NULL')
                        THEN 'field response: must be an object'
                END AS reason
            FROM fields
        )
        SELECT line_no, is_blank, is_marker, reason,
               e[1]->>'$' AS custom_id,
               row_number() OVER (PARTITION BY CASE WHEN reason IS NULL AND NOT is_blank
                                  AND NOT is_marker THEN e[1]->>'$' END ORDER BY line_no) AS out_rank,
               coalesce(try_cast(e[3]->>'$' AS INTEGER),
                        CASE WHEN coalesce(json_type(e[5]), 'NULL') <> 'NULL' THEN 500 END) AS status_code,
               CASE WHEN coalesce(json_type(e[5]), 'NULL') <> 'NULL'
                    THEN coalesce(e[5]->>'$.message', left(e[5]::VARCHAR, 500))
                    WHEN coalesce(json_type(e[6]), 'NULL') <> 'NULL'
                    THEN coalesce(e[6]->>'$.message', left(e[6]::VARCHAR, 500))
                    WHEN try_cast(e[3]->>'$' AS INTEGER) >= 400
                    THEN 'HTTP ' || (e[3]->>'$') END AS error_message,
               e[7]->>'$' AS response_text,
               e[8]->>'$' AS finish_reason,
               {ts} AS created_ts,
               e[10]->>'$' AS response_model,
               try_cast(e[11]->>'$' AS INTEGER) AS usage_prompt,
               try_cast(e[12]->>'$' AS INTEGER) AS usage_completion
        FROM checked
    """)


def _settle_output(
    con: duckdb.DuckDBPyConnection, *, id_prefix: str, batch_id: str, output_file: str
) -> LineCounts:
    """Output lines: joined, duplicate, or rejected (bad, or matching no loadable input)."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _out_status AS
        SELECT o.*,
            CASE
                WHEN o.is_blank OR o.is_marker THEN NULL
                WHEN o.reason IS NOT NULL THEN o.reason
                WHEN o.out_rank > 1 THEN NULL
                WHEN NOT EXISTS (SELECT 1 FROM _extracted x WHERE x.reason IS NULL
                                 AND x.request_id = ? || o.custom_id)
                    THEN 'no loadable input line has custom_id ' || o.custom_id
            END AS final_reason
        FROM _out o
    """,
        [id_prefix],
    )
    con.execute(
        f"""
        INSERT INTO rejected_lines
        SELECT ?, ?, s.line_no, {mask_text_sql("s.final_reason")}, encode({mask_sql("r.line")})
        FROM _out_status s JOIN _raw_out r USING (line_no) WHERE s.final_reason IS NOT NULL
    """,
        [batch_id, output_file],
    )
    con.execute(
        """
        INSERT INTO duplicate_lines
        SELECT ?, ?, line_no, ? || custom_id FROM _out_status
        WHERE final_reason IS NULL AND out_rank > 1 AND NOT is_blank AND NOT is_marker
    """,
        [batch_id, output_file, id_prefix],
    )
    row = con.execute("""
        SELECT count(*),
               count(*) FILTER (WHERE final_reason IS NULL AND out_rank = 1 AND NOT is_blank AND NOT is_marker),
               count(*) FILTER (WHERE final_reason IS NULL AND out_rank > 1 AND NOT is_blank AND NOT is_marker),
               count(*) FILTER (WHERE final_reason IS NOT NULL),
               count(*) FILTER (WHERE is_blank)
        FROM _out_status
    """).fetchall()[0]
    total, joined, dups, rejected, blank = (int(v) for v in row)
    return LineCounts(
        lines_read=total, joined=joined, duplicates=dups, rejected=rejected, blank=blank
    )
