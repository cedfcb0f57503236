"""Chat-log records stored as Parquet (one file, or a folder such as a hive-partitioned
``logs/date=2026-11-01/part-0.parquet``), read as the same records as the JSONL format.

Each row becomes one JSON line (``to_json`` of the row) and takes the chat-log reader's path,
so every guarantee holds: bad rows are rejected with a reason, located by file and row number
(from 1, in file order); duplicates, counting and idempotence (by the file's bytes) work as for
JSONL. Nested fields may be Parquet structs and lists, or JSON text in a string column. Hive
partition columns (``date=...``) live in the path, not the file: they are not read — the
record's own ``timestamp`` is what the warehouse keeps.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import duckdb

from warehouse.errors import FormatError, InputPathError

MAGIC = b"PAR1"
# Top-level fields that are objects in the chat-log format: a string column holding JSON text
# is read as that JSON (text that is not JSON stays a string, and the reader rejects it).
_OBJECT_FIELDS = ("request", "response", "metadata", "error")


def is_parquet(path: Path) -> bool:
    """A file whose first bytes are Parquet's magic number."""
    try:
        with path.open("rb") as handle:
            return handle.read(4) == MAGIC
    except OSError as exc:
        raise InputPathError(path, f"cannot read file: {exc}") from exc


def content_hash(path: Path) -> str:
    """sha256 of the file's bytes: re-ingesting the same file changes nothing."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while block := handle.read(16 * 1024 * 1024):
                digest.update(block)
    except OSError as exc:
        raise InputPathError(path, f"cannot read file: {exc}") from exc
    return digest.hexdigest()


def _json_text(expr: str) -> str:
    return f"CASE WHEN json_valid({expr}) THEN ({expr})::JSON ELSE to_json({expr}) END"


def parquet_lines_sql(con: duckdb.DuckDBPyConnection, path: Path) -> tuple[str, int]:
    """A SELECT of the file's rows as JSON lines (``$path``), in file order, and its row count."""
    try:
        columns = con.execute(
            "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM "
            "read_parquet($path, hive_partitioning = false))",
            {"path": str(path)},
        ).fetchall()
        ((rows,),) = con.execute(
            "SELECT count(*) FROM read_parquet($path, hive_partitioning = false)",
            {"path": str(path)},
        ).fetchall()
    except duckdb.Error as exc:
        raise FormatError(path, f"cannot read Parquet: {str(exc).splitlines()[0]}") from exc
    types = {name: str(kind) for name, kind in columns}
    replace = []
    for name in _OBJECT_FIELDS:
        kind = types.get(name)
        if kind == "VARCHAR":
            replace.append(f"{_json_text(name)} AS {name}")
    request = types.get("request", "")
    if request.startswith("STRUCT(") and re.search(r"[(,] *messages VARCHAR[,)]", request):
        replace.append(
            f"struct_update(request, messages := {_json_text('request.messages')}) AS request"
        )
    project = f"* REPLACE ({', '.join(replace)})" if replace else "*"
    return (
        f"""
        SELECT to_json(t)::VARCHAR AS line
        FROM (SELECT {project} FROM read_parquet($path, hive_partitioning = false)) t
    """,
        int(rows),
    )
