"""The warehouse's tables, created on open. Later stages read and write these; the column
meanings are a contract (see ARCHITECTURE.md), so add columns rather than change them.

Time columns are UTC ``TIMESTAMP`` (no zone); token counts are integers; money is USD.

Versions: ``schema_info`` holds the version a file was last written with. Opening a file of an
older version for writing upgrades it in place, one step at a time (:data:`MIGRATIONS`: columns
added with ``ADD COLUMN IF NOT EXISTS``, new tables by their ``CREATE TABLE IF NOT EXISTS``);
rows are never rewritten, so an upgraded file's old replays keep NULL in the new columns.

- 2: ``replays.content_key`` (what was asked, whoever answered: one replay serves every sampled
  request that asked the same), ``replays.served_model`` and ``replays.system_fingerprint`` (what
  a relay said answered); tables ``request_content`` and ``relay_serving``.
- 3: table ``embeddings`` (sentence-encoder vectors of the classifier's inputs, by key).
"""

from __future__ import annotations

import duckdb

SCHEMA_VERSION = 3

DDL: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS schema_info (key VARCHAR, value VARCHAR)
    """,
    # One row per file (or batch input/output pair) ingested; content_hash makes re-ingest a no-op.
    """
    CREATE TABLE IF NOT EXISTS ingest_batches (
        batch_id      VARCHAR,      -- 'b-' + first 16 hex of content_hash
        source_file   VARCHAR,      -- path as given (batch format: the input file)
        output_file   VARCHAR,      -- batch format only: the joined output file
        source_format VARCHAR,      -- 'chat-log' | 'openai-batch'
        content_hash  VARCHAR,      -- sha256 of the decompressed bytes (input + output for batches)
        ingested_at   TIMESTAMP,
        lines_read    BIGINT,
        loaded        BIGINT,
        duplicates    BIGINT,
        rejected      BIGINT,
        blank         BIGINT,
        joined        BIGINT,       -- batch output lines merged into their request
        seconds       DOUBLE
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS requests (
        request_id        VARCHAR NOT NULL,
        ts                TIMESTAMP NOT NULL,
        conversation_id   VARCHAR NOT NULL,
        conversation_derived BOOLEAN,   -- true when derived from system prompt + first user message
        turn_index        INTEGER,      -- 0 for the first user turn of a conversation
        model             VARCHAR,      -- requested model (else the responding model)
        response_model    VARCHAR,
        system_prompt     VARCHAR,      -- texts: key-like strings masked (warehouse/secrets_in_text.py)
        messages          JSON NOT NULL,  -- the request's messages as logged, key-like strings masked
        last_user_message VARCHAR,
        n_messages        INTEGER,
        temperature       DOUBLE,
        max_tokens        INTEGER,
        params            JSON,         -- other request fields (response_format, tools...), credentials masked
        prompt_tokens     INTEGER,
        completion_tokens INTEGER,
        tokens_estimated  BOOLEAN,      -- true when the log had no usage and tokens were estimated
        response_text     VARCHAR,
        finish_reason     VARCHAR,
        latency_ms        DOUBLE,
        ttft_ms           DOUBLE,
        status_code       INTEGER,
        error_message     VARCHAR,
        cost_usd          DOUBLE,
        cost_source       VARCHAR,      -- 'log' | 'price-table' | 'unknown-model'
        label_task_type   VARCHAR,      -- human label from metadata.task_type, as logged
        feature           VARCHAR,      -- metadata.feature
        user_id           VARCHAR,
        metadata          JSON,         -- credentials and key-like strings masked
        source_file       VARCHAR NOT NULL,
        source_line       BIGINT NOT NULL,
        batch_id          VARCHAR NOT NULL,
        prompt_hash       VARCHAR       -- md5 of model + (masked) messages: exact-repeat detection, replay cache key
    )
    """,
    # Nothing a user hands in is silently dropped.
    """
    CREATE TABLE IF NOT EXISTS rejected_lines (
        batch_id    VARCHAR,
        source_file VARCHAR,
        source_line BIGINT,
        reason      VARCHAR,
        raw         BLOB        -- the line's bytes as read (credentials and key-like strings masked)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS duplicate_lines (
        batch_id    VARCHAR,
        source_file VARCHAR,
        source_line BIGINT,
        request_id  VARCHAR
    )
    """,
    # Labels from every source; human (metadata) labels win over relay over rules.
    """
    CREATE TABLE IF NOT EXISTS labels (
        request_id VARCHAR,
        task_type  VARCHAR,
        source     VARCHAR,     -- 'metadata' | 'relay' | 'rules'
        annotator  VARCHAR,     -- model that labeled it (relay), rule name (rules)
        created_at TIMESTAMP
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS predictions (
        request_id         VARCHAR,
        task_type          VARCHAR,
        confidence         DOUBLE,
        uncertain          BOOLEAN,
        classifier_version VARCHAR,
        prediction_run     VARCHAR,
        predicted_at       TIMESTAMP
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS samples (
        sample_id  VARCHAR,     -- one sampling draw (seed + sizes + warehouse state)
        request_id VARCHAR,
        task_type  VARCHAR,
        uncertain  BOOLEAN,
        created_at TIMESTAMP,
        stratum    VARCHAR      -- 'type' (the per-type quota) | 'uncertain' (extra unsure ones)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS replays (
        replay_id             VARCHAR,  -- = cache_key: candidate fingerprint + request hash + params
        request_id            VARCHAR,
        candidate             VARCHAR,
        candidate_fingerprint VARCHAR,
        output_text           VARCHAR,
        ttft_ms               DOUBLE,
        latency_ms            DOUBLE,
        prompt_tokens         INTEGER,
        completion_tokens     INTEGER,
        tokens_estimated      BOOLEAN,
        tokens_per_s          DOUBLE,
        peak_rss_mb           DOUBLE,
        cost_usd              DOUBLE,
        error_kind            VARCHAR,  -- NULL when the replay succeeded
        error_message         VARCHAR,
        attempts              INTEGER,
        created_at            TIMESTAMP,
        content_key           VARCHAR,  -- request hash + params without the fingerprint (v2)
        served_model          VARCHAR,  -- relay: the response's model, e.g. an alias resolved (v2)
        system_fingerprint    VARCHAR   -- relay: the response's system_fingerprint (v2)
    )
    """,
    # Each sampled request's content key as the last replay computed it (v2): the evidence maps a
    # replay to every sampled request with its content key.
    """
    CREATE TABLE IF NOT EXISTS request_content (
        request_id  VARCHAR,
        content_key VARCHAR,
        updated_at  TIMESTAMP
    )
    """,
    # What a relay candidate serves (v2): one row each time its answers name another model or
    # system fingerprint; the latest row per candidate_fingerprint is current, and only replays
    # served by it are evidence.
    """
    CREATE TABLE IF NOT EXISTS relay_serving (
        candidate_fingerprint VARCHAR,
        candidate             VARCHAR,
        served_model          VARCHAR,
        system_fingerprint    VARCHAR,
        since                 TIMESTAMP,
        answers               INTEGER   -- answers of the run that saw it that named it
    )
    """,
    # The classifier's sentence-encoder vectors (v3), keyed by the encoder's digest and the
    # text it read (classifiers.encoder.prompt_hash): computed once per prompt and encoder.
    """
    CREATE TABLE IF NOT EXISTS embeddings (
        key        VARCHAR PRIMARY KEY,
        vector     FLOAT[],
        created_at TIMESTAMP
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS scores (
        replay_id  VARCHAR,
        metric     VARCHAR,
        value      DOUBLE,
        scorer     VARCHAR,
        created_at TIMESTAMP
    )
    """,
)


# Version -> the statements that bring a file of the version before up to it.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE replays ADD COLUMN IF NOT EXISTS content_key VARCHAR",
        "ALTER TABLE replays ADD COLUMN IF NOT EXISTS served_model VARCHAR",
        "ALTER TABLE replays ADD COLUMN IF NOT EXISTS system_fingerprint VARCHAR",
    ),
}


def schema_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The version a warehouse was last written with (None: a new file)."""
    rows = con.execute("SELECT value FROM schema_info WHERE key = 'version'").fetchall()
    return int(rows[0][0]) if rows else None


def create_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create every table that is missing and upgrade an older file in place; existing rows are
    left alone."""
    for statement in DDL:
        con.execute(statement)
    version = schema_version(con)
    if version is None:
        con.execute("INSERT INTO schema_info VALUES ('version', ?)", [str(SCHEMA_VERSION)])
        return
    if version >= SCHEMA_VERSION:
        return
    con.begin()
    try:
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS.get(step, ()):
                con.execute(statement)
        con.execute("UPDATE schema_info SET value = ? WHERE key = 'version'", [str(SCHEMA_VERSION)])
        con.commit()
    except BaseException:
        con.rollback()
        raise
