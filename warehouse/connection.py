"""Opening the warehouse file: one place that turns DuckDB's open errors into one clear line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb

from warehouse.errors import WarehouseOpenError
from warehouse.schema import create_schema

_DUCKDB_MAGIC = b"DUCK"


def open_warehouse(
    path: Path | str, *, read_only: bool = False, create: bool = True
) -> duckdb.DuckDBPyConnection:
    """Open (create, unless ``create`` is false) the warehouse at ``path``; ``":memory:"`` works.

    A file that exists but is not a DuckDB database is refused before DuckDB touches it, so a
    mistyped path never gets overwritten.
    """
    target = str(path)
    if target != ":memory:":
        file = Path(path)
        if file.is_dir():
            raise WarehouseOpenError(file, "is a directory, not a DuckDB file")
        if file.exists():
            with file.open("rb") as handle:
                header = handle.read(16)
            if len(header) > 0 and header[8:12] != _DUCKDB_MAGIC:
                raise WarehouseOpenError(file, "not a DuckDB database file")
        elif not create or read_only:
            raise WarehouseOpenError(
                file, "no such warehouse file; run `migration-planner ingest` first"
            )
        elif not file.parent.exists():
            raise WarehouseOpenError(file, f"folder {file.parent} does not exist")
    try:
        con = duckdb.connect(target, read_only=read_only)
    except duckdb.IOException as exc:
        reason = str(exc).splitlines()[0]
        if "lock" in reason.lower():
            reason = "locked by another process (one writer at a time)"
        raise WarehouseOpenError(path, reason) from exc
    except duckdb.Error as exc:
        raise WarehouseOpenError(path, str(exc).splitlines()[0]) from exc
    con.execute("SET TimeZone = 'UTC'")
    if not read_only:
        create_schema(con)
    return con


def fetch_one(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None
) -> tuple[object, ...] | None:
    """The first row (or None), always draining the result: DuckDB 2.0 refuses ``con.sql()``
    while an ``execute()`` result is left half-read, which ``fetchone()`` does."""
    rows = con.execute(sql, params or []).fetchall()
    return tuple(rows[0]) if rows else None


def iter_id_messages(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[object], batch_size: int
) -> Iterator[list[tuple[str, str]]]:
    """Batches of (request_id, messages JSON) rows of ``sql``, read through a cursor of their
    own, so the caller may write on ``con`` between batches."""
    cursor = con.cursor()
    try:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(batch_size):
            yield [(str(r[0]), str(r[1])) for r in rows]
    finally:
        cursor.close()
