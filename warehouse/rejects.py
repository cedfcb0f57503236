"""Reading back what could not be loaded, so a user can fix it at the source."""

from __future__ import annotations

from typing import Any

import duckdb


def list_rejects(
    con: duckdb.DuckDBPyConnection,
    *,
    limit: int = 100,
    source_file: str | None = None,
    raw_chars: int = 200,
) -> dict[str, Any]:
    """Counts by reason and the first ``limit`` rejected lines (raw text shown as UTF-8, with
    undecodable bytes replaced, cut to ``raw_chars``)."""
    where, params = ("WHERE source_file = ?", [source_file]) if source_file else ("", [])
    by_reason = con.execute(
        f"""
        SELECT reason, count(*) FROM rejected_lines {where} GROUP BY 1 ORDER BY 2 DESC, 1
    """,
        params,
    ).fetchall()
    rows = con.execute(
        f"""
        SELECT source_file, source_line, reason, raw FROM rejected_lines {where}
        ORDER BY source_file, source_line LIMIT ?
    """,
        [*params, limit],
    ).fetchall()
    ((total,),) = con.execute(f"SELECT count(*) FROM rejected_lines {where}", params).fetchall()
    lines = []
    for file, line, reason, raw in rows:
        text = bytes(raw).decode("utf-8", errors="replace") if raw is not None else ""
        lines.append(
            {
                "file": file,
                "line": int(line),
                "reason": reason,
                "raw": text if len(text) <= raw_chars else text[:raw_chars] + "…",
            }
        )
    return {
        "total": int(total),
        "by_reason": [{"reason": r, "count": int(c)} for r, c in by_reason],
        "lines": lines,
    }
