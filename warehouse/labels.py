"""Storage of task-type labels: one ``labels`` row per (request, source, annotator).

Sources: ``metadata`` (copied from ``requests.label_task_type``), ``rules`` (heuristics) and
``relay`` (an LLM annotator). Metadata and rules labels can always be derived again, so a run
replaces them; relay labels were paid for, so they are only ever added: they are the cache that
keeps a request (or an exact repeat of its prompt) from being sent to the annotator twice. A relay
row with a NULL ``task_type`` records an answer that was not a valid label (paid for, not used).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import duckdb

from warehouse.connection import iter_id_messages
from warehouse.errors import WarehouseError

LabelRow = tuple[str, str | None, str | None]  # (request_id, task_type, annotator)
_INSERT = (
    "INSERT INTO labels (request_id, task_type, source, annotator, created_at) "
    "SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), ?, unnest(?::VARCHAR[]), now()::TIMESTAMP"
)
_SOURCES = ("metadata", "rules", "relay")


def _check_source(source: str) -> None:
    if source not in _SOURCES:
        raise WarehouseError(f"unknown label source {source!r} (known: {', '.join(_SOURCES)})")


def _insert(con: duckdb.DuckDBPyConnection, source: str, rows: Sequence[LabelRow]) -> None:
    if rows:
        con.execute(
            _INSERT, [[r[0] for r in rows], [r[1] for r in rows], source, [r[2] for r in rows]]
        )


def replace_labels(con: duckdb.DuckDBPyConnection, source: str, rows: Sequence[LabelRow]) -> int:
    """Replace every label of ``source`` with ``rows``, atomically; returns the rows written."""
    _check_source(source)
    con.begin()
    try:
        con.execute("DELETE FROM labels WHERE source = ?", [source])
        _insert(con, source, rows)
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return len(rows)


def add_labels(con: duckdb.DuckDBPyConnection, source: str, rows: Sequence[LabelRow]) -> int:
    """Append labels (the relay cache); a row already stored for the same request and annotator
    is replaced."""
    _check_source(source)
    if not rows:
        return 0
    con.begin()
    try:
        con.execute(
            "DELETE FROM labels WHERE source = ? AND (request_id, coalesce(annotator, '')) IN "
            "(SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]))",
            [source, [r[0] for r in rows], [r[2] or "" for r in rows]],
        )
        _insert(con, source, rows)
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return len(rows)


def metadata_label_rows(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(request_id, raw label) for every request logged with ``metadata.task_type``."""
    return [
        (str(r[0]), str(r[1]))
        for r in con.execute(
            "SELECT request_id, label_task_type FROM requests "
            "WHERE label_task_type IS NOT NULL AND trim(label_task_type) <> '' ORDER BY request_id"
        ).fetchall()
    ]


def read_labels(
    con: duckdb.DuckDBPyConnection, sources: Sequence[str] = _SOURCES
) -> list[tuple[str, str, str, str | None]]:
    """(request_id, task_type, source, annotator) of valid labels (non-NULL task type)."""
    return [
        (str(r[0]), str(r[1]), str(r[2]), r[3])
        for r in con.execute(
            "SELECT request_id, task_type, source, annotator FROM labels "
            "WHERE task_type IS NOT NULL AND source IN (SELECT unnest(?::VARCHAR[])) "
            "ORDER BY source, request_id, annotator",
            [list(sources)],
        ).fetchall()
    ]


def label_counts(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, int]]:
    """Per source: valid labels and stored invalid answers."""
    out = {s: {"labels": 0, "invalid": 0} for s in _SOURCES}
    for source, valid, invalid in con.execute(
        "SELECT source, count(task_type), count(*) - count(task_type) FROM labels GROUP BY source"
    ).fetchall():
        out.setdefault(str(source), {"labels": 0, "invalid": 0})
        out[str(source)] = {"labels": int(valid), "invalid": int(invalid)}
    return out


def unlabeled_for_annotation(
    con: duckdb.DuckDBPyConnection, annotator: str, limit: int, seed: int = 0
) -> list[tuple[str, str]]:
    """(request_id, messages JSON) of up to ``limit`` requests with no human label whose prompt
    the annotator has not answered yet (one request per distinct prompt), in a seeded order."""
    if limit <= 0:
        return []
    rows = con.execute(
        """
        WITH answered AS (
            SELECT DISTINCT coalesce(r.prompt_hash, r.request_id) AS key
            FROM labels AS l JOIN requests AS r USING (request_id)
            WHERE l.source = 'relay' AND l.annotator = ?
        )
        SELECT request_id, messages::VARCHAR
        FROM requests
        WHERE (label_task_type IS NULL OR trim(label_task_type) = '')
          AND coalesce(prompt_hash, request_id) NOT IN (SELECT key FROM answered)
        QUALIFY row_number() OVER (
            PARTITION BY coalesce(prompt_hash, request_id) ORDER BY request_id) = 1
        ORDER BY md5(request_id || ':' || ?::VARCHAR)
        LIMIT ?
        """,
        [annotator, str(seed), limit],
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def request_messages(
    con: duckdb.DuckDBPyConnection, request_ids: Sequence[str]
) -> list[tuple[str, str]]:
    """(request_id, messages JSON) of the given requests, in request_id order."""
    if not request_ids:
        return []
    return [
        (str(r[0]), str(r[1]))
        for r in con.execute(
            "SELECT request_id, messages::VARCHAR FROM requests "
            "WHERE request_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY request_id",
            [list(request_ids)],
        ).fetchall()
    ]


def iter_unlabeled_messages(
    con: duckdb.DuckDBPyConnection, batch_size: int = 20_000
) -> Iterator[list[tuple[str, str]]]:
    """Batches of (request_id, messages JSON) of requests with no human label (for the rules)."""
    return iter_id_messages(
        con,
        "SELECT request_id, messages::VARCHAR FROM requests "
        "WHERE label_task_type IS NULL OR trim(label_task_type) = '' ORDER BY request_id",
        [],
        batch_size,
    )


def labels_by(
    con: duckdb.DuckDBPyConnection, source: str, annotator: str | None = None
) -> dict[str, str]:
    """request_id -> task type of one source's valid labels (``annotator``: only its own)."""
    _check_source(source)
    rows = con.execute(
        "SELECT request_id, any_value(task_type) FROM labels WHERE source = ? "
        "AND task_type IS NOT NULL AND (? IS NULL OR annotator = ?) GROUP BY request_id",
        [source, annotator, annotator],
    ).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def request_conversations(
    con: duckdb.DuckDBPyConnection, request_ids: Sequence[str]
) -> dict[str, str | None]:
    """request_id -> conversation_id (from the log, else derived at ingest)."""
    return _request_column(con, request_ids, "conversation_id")


def request_files(
    con: duckdb.DuckDBPyConnection, request_ids: Sequence[str]
) -> dict[str, str | None]:
    """request_id -> the log file it was ingested from."""
    return _request_column(con, request_ids, "source_file")


def _request_column(
    con: duckdb.DuckDBPyConnection, request_ids: Sequence[str], column: str
) -> dict[str, str | None]:
    if column not in ("conversation_id", "source_file"):  # a name of ours, never user input
        raise ValueError(f"not a request column this reads: {column!r}")
    if not request_ids:
        return {}
    rows = con.execute(
        f"SELECT request_id, {column} FROM requests "
        "WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
        [list(request_ids)],
    ).fetchall()
    return {str(r[0]): None if r[1] is None else str(r[1]) for r in rows}
