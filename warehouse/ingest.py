"""Ingest log files into the warehouse without losing a line.

For every file: lines read = loaded + duplicates + rejected + blank (+ joined, for the output file
of an OpenAI batch, whose lines merge into their requests). Each file is one transaction, recorded
in ``ingest_batches`` with its content hash, so re-ingesting the same content changes nothing.

This module is long because the one transaction per file (stage, dedupe, reject bookkeeping, the
count identity) reads best in one place; the readers per format live beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import duckdb

from warehouse.batch import extract_batch
from warehouse.chatlog import extract_chat_log, stage_chat_log_json_sql, stage_chat_log_sql
from warehouse.connection import fetch_one
from warehouse.errors import FormatError, InputPathError, WarehouseError
from warehouse.normalize import LineCounts, finish_stage, load_prices, stage_requests
from warehouse.parquet import content_hash as parquet_hash
from warehouse.parquet import is_parquet, parquet_lines_sql
from warehouse.pricing import Prices, price_table
from warehouse.rawfile import MAX_LINE_BYTES, Chunk, ScannedFile, empty_lines, scan_file

FORMATS: tuple[str, ...] = ("auto", "chat-log", "openai-batch", "parquet")
LOG_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".ndjson", ".ndjson.gz", ".parquet")
Progress = Callable[[str], None]


@dataclass
class FileReport:
    path: str
    format: str
    status: Literal["ingested", "skipped"]
    batch_id: str
    output_file: str | None = None
    lines_read: int = 0
    loaded: int = 0
    duplicates: int = 0
    rejected: int = 0
    blank: int = 0
    joined: int = 0
    seconds: float = 0.0
    skipped_because: str | None = None


@dataclass
class IngestReport:
    files: list[FileReport] = field(default_factory=list)

    @property
    def totals(self) -> LineCounts:
        total = LineCounts()
        for f in self.files:
            total.add(
                LineCounts(f.lines_read, f.loaded, f.duplicates, f.rejected, f.blank, f.joined)
            )
        return total

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self.totals), "files": [asdict(f) for f in self.files]}


def expand_paths(paths: Sequence[Path | str]) -> list[Path]:
    """Files as given, and the log files inside given folders (sorted). Missing paths are errors."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputPathError(path, "no such file or directory")
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.name.endswith(LOG_SUFFIXES)
            )
            if not found:
                raise InputPathError(
                    path, f"directory holds no log files ({', '.join(LOG_SUFFIXES)})"
                )
            out.extend(found)
        else:
            out.append(path)
    return out


def detect_format(path: Path) -> str:
    """'chat-log', 'batch-input' or 'batch-output', from the first JSON line of the file."""
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:  # type: ignore[operator]
            for _ in range(50):
                line = handle.readline(MAX_LINE_BYTES)
                if not line:
                    break
                try:
                    obj = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(obj, dict):
                    return _shape(path, obj)
    except (OSError, EOFError) as exc:
        raise InputPathError(path, f"cannot read file: {exc}") from exc
    # No JSON object at all: read it as chat-log, so every line is kept in rejected_lines with
    # its reason instead of the whole file being refused.
    return "chat-log"


def _shape(path: Path, obj: dict[str, object]) -> str:
    if "custom_id" in obj and "body" in obj:
        return "batch-input"
    if "custom_id" in obj and ("response" in obj or "error" in obj):
        return "batch-output"
    if "request" in obj or "messages" in obj or ("id" in obj and "timestamp" in obj):
        return "chat-log"
    keys = ", ".join(sorted(obj)[:8])
    raise FormatError(
        path,
        f"unrecognized log format (first JSON line has keys: {keys}); "
        "supported: chat-log, openai-batch",
    )


IngestPlan = list[tuple[str, Path, Path | None]]


def prepare_ingest(
    paths: Sequence[Path | str], *, fmt: str = "auto", batch_output: Path | str | None = None
) -> IngestPlan:
    """Check every path and decide each file's reader, without touching the warehouse: a missing
    file, an empty folder or an unpaired batch file is an error before anything is written."""
    if fmt not in FORMATS:
        raise FormatError(Path("."), f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    files = expand_paths(paths)
    output = Path(batch_output) if batch_output is not None else None
    if output is not None and not output.is_file():
        raise InputPathError(output, "batch output file does not exist")
    return _plan(files, fmt, output)


def ingest_paths(
    con: duckdb.DuckDBPyConnection,
    paths: Sequence[Path | str],
    *,
    fmt: str = "auto",
    batch_output: Path | str | None = None,
    prices: Prices | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest every file (folders are expanded). Detection, pairing and path errors are raised
    before anything is written; bad lines inside files are data, kept in ``rejected_lines``."""
    plan = prepare_ingest(paths, fmt=fmt, batch_output=batch_output)
    table = price_table(prices)
    report = IngestReport()
    with _bounded_memory(con):
        for kind, path, out in plan:
            started = time.perf_counter()
            if kind == "chat-log":
                rep = _ingest_chat_log(con, path, table)
            elif kind == "parquet":
                rep = _ingest_parquet(con, path, table)
            else:
                assert out is not None
                rep = _ingest_batch(con, path, out, table)
            rep.seconds = round(time.perf_counter() - started, 3)
            report.files.append(rep)
            if progress is not None:
                progress(_progress_line(rep))
    return report


def _progress_line(rep: FileReport) -> str:
    if rep.status == "skipped":
        return f"{rep.path}: skipped ({rep.skipped_because})"
    return (
        f"{rep.path}: {rep.lines_read} lines: {rep.loaded} loaded, {rep.duplicates} duplicates, "
        f"{rep.rejected} rejected, {rep.blank} blank ({rep.seconds:.1f} s)"
    )


def _plan(files: list[Path], fmt: str, output: Path | None) -> list[tuple[str, Path, Path | None]]:
    """Decide each file's reader; batch inputs are paired with their output file."""
    if fmt in ("chat-log", "parquet"):
        if output is not None:
            raise FormatError(output, "--batch-output goes with the openai-batch format")
        if fmt == "parquet":
            for f in files:
                if not is_parquet(f):
                    raise FormatError(f, "not a Parquet file (--format parquet)")
        return [(fmt, f, None) for f in files]
    kinds = {
        f: (
            "batch-input"
            if fmt == "openai-batch"
            else "parquet"
            if f.name.endswith(".parquet") or is_parquet(f)
            else detect_format(f)
        )
        for f in files
    }
    if output is not None:
        kinds = {f: k for f, k in kinds.items() if f.resolve() != output.resolve()}
    inputs = [f for f, k in kinds.items() if k == "batch-input"]
    outputs = [f for f, k in kinds.items() if k == "batch-output"]
    if output is not None:
        if len(inputs) != 1:
            raise FormatError(
                output, f"--batch-output pairs with exactly one batch input file; got {len(inputs)}"
            )
        outputs = [output, *outputs]
    if len(inputs) > 1 or len(outputs) > 1:
        raise FormatError(
            inputs[0] if inputs else outputs[0],
            "several OpenAI batch files: ingest one input with --batch-output FILE at a time",
        )
    if inputs and not outputs:
        raise FormatError(
            inputs[0], "OpenAI batch input needs its output file: pass --batch-output FILE"
        )
    if outputs and not inputs:
        raise FormatError(
            outputs[0],
            "this is an OpenAI batch output file: ingest its input file "
            "with --batch-output pointing here",
        )
    plan: list[tuple[str, Path, Path | None]] = []
    for f, kind in kinds.items():
        if kind in ("chat-log", "parquet"):
            plan.append((kind, f, None))
        elif kind == "batch-input":
            plan.append(("openai-batch", f, outputs[0]))
    return plan


def _already(con: duckdb.DuckDBPyConnection, content_hash: str) -> str | None:
    row = fetch_one(
        con, "SELECT batch_id FROM ingest_batches WHERE content_hash = ? LIMIT 1", [content_hash]
    )
    return str(row[0]) if row else None


# DuckDB's CSV reader works in buffers 16x its max_line_size, one thread per buffer: a small
# limit keeps a file's read parallel. A longer line makes DuckDB refuse the read, and the ingest
# runs again with the full limit (see _retrying).
SHORT_LINE_BYTES = 2 * 1024 * 1024


def lines_sql(long_lines: bool = False) -> str:
    """A SELECT of one chunk file's lines (``$path``), in file order: one VARCHAR per line,
    NULL for an empty one. (Chunk files hold no CR: DuckDB would end a line there.)"""
    max_line = MAX_LINE_BYTES if long_lines else SHORT_LINE_BYTES
    return f"""
        SELECT line
        FROM read_csv($path, columns = {{'line': 'VARCHAR'}}, header = false, delim = chr(1),
                      quote = '', escape = '', auto_detect = false, new_line = '\\n',
                      max_line_size = {max_line}, strict_mode = false)
    """


def _read_raw(con: duckdb.DuckDBPyConnection, table: str, scanned: ScannedFile) -> None:
    """Every line of the file as one VARCHAR (NULL for an empty line), numbered from 1."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} (line_no BIGINT, line VARCHAR)")
    for chunk in scanned.chunks:
        con.execute(
            f"INSERT INTO {table} SELECT row_number() OVER () + $first - 1, line "
            f"FROM ({lines_sql(scanned.utf8_checked)})",
            {"path": str(chunk.path), "first": chunk.first_line},
        )
    count = (fetch_one(con, f"SELECT count(*) FROM {table}") or (0,))[0]
    _check_read(scanned.path, count, scanned.n_lines)


def _check_read(source: Path, got: object, expected: int) -> None:
    if got != expected:
        raise WarehouseError(
            f"{source}: read {got} lines but the file has "
            f"{expected} there; refusing to guess line numbers"
        )


def _record_bad_lines(
    con: duckdb.DuckDBPyConnection, batch_id: str, path: Path, scanned: ScannedFile
) -> None:
    if scanned.bad_lines:
        con.executemany(
            "INSERT INTO rejected_lines VALUES (?, ?, ?, ?, ?)",
            [(batch_id, str(path), b.line_no, b.reason, b.raw) for b in scanned.bad_lines],
        )


def _record_batch(
    con: duckdb.DuckDBPyConnection, rep: FileReport, content_hash: str, fmt: str
) -> None:
    con.execute(
        "INSERT INTO ingest_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            rep.batch_id,
            rep.path,
            rep.output_file,
            fmt,
            content_hash,
            datetime.now(UTC).replace(tzinfo=None),
            rep.lines_read,
            rep.loaded,
            rep.duplicates,
            rep.rejected,
            rep.blank,
            rep.joined,
            rep.seconds,
        ],
    )


_STAGING = (
    "_raw",
    "_raw_out",
    "_slow_src",
    "_extracted",
    "_stage",
    "_stage_slow",
    "_fast",
    "_ranked",
    "_new",
    "_out",
    "_out_status",
    "_prices",
)


@contextmanager
def _staging(con: duckdb.DuckDBPyConnection, *scans: ScannedFile) -> Iterator[None]:
    """Staging tables hold raw lines (credentials unmasked) and clean copies sit in temp folders:
    none outlives its ingest, whether it committed, was skipped or failed."""
    try:
        yield
    finally:
        con.execute("DROP VIEW IF EXISTS _staged")
        for table in _STAGING:
            con.execute(f"DROP TABLE IF EXISTS {table}")
        for scanned in scans:
            scanned.cleanup()


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One file, one transaction: a failure leaves the warehouse as it was."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _skipped(path: Path, fmt: str, previous: str, output: Path | None = None) -> FileReport:
    return FileReport(
        str(path),
        fmt,
        "skipped",
        previous,
        output_file=str(output) if output else None,
        skipped_because=f"same content already ingested as batch {previous}",
    )


def _retrying(attempt: Callable[[bool], FileReport]) -> FileReport:
    """Run ``attempt`` fast: the scan leaves UTF-8 to DuckDB's reads, which also assume short
    lines. When DuckDB refuses a byte or a long line, run it again carefully (``True``): a scan
    that checks every line, so each undecodable line is kept, as bytes, in rejected_lines, and
    the full line limit (the failed attempt rolled back: nothing was written)."""
    try:
        return attempt(False)
    except duckdb.InvalidInputException as exc:
        text = str(exc).lower()
        if not any(k in text for k in ("unicode", "maximum line size", "maximum_object_size")):
            raise
    return attempt(True)


def _ingest_chat_log(con: duckdb.DuckDBPyConnection, path: Path, prices: Prices) -> FileReport:
    return _retrying(
        lambda check: _chat_log_once(con, path, prices, scan_file(path, check_utf8=check))
    )


def _chat_log_once(
    con: duckdb.DuckDBPyConnection, path: Path, prices: Prices, scanned: ScannedFile
) -> FileReport:
    with _staging(con, scanned):
        previous = _already(con, scanned.content_hash)
        if previous is not None:
            return _skipped(path, "chat-log", previous)
        batch_id = "b-" + scanned.content_hash[:16]
        with _transaction(con):
            counts = LineCounts()
            for chunk in scanned.chunks:
                counts.add(_chat_log_chunk(con, scanned, chunk, batch_id, prices))
                chunk.release()
            _record_bad_lines(con, batch_id, path, scanned)
            rep = FileReport(
                str(path),
                "chat-log",
                "ingested",
                batch_id,
                lines_read=scanned.n_lines,
                loaded=counts.loaded,
                duplicates=counts.duplicates,
                rejected=counts.rejected + len(scanned.bad_lines),
                blank=counts.blank,
            )
            _check_balance(rep)
            _record_batch(con, rep, scanned.content_hash, "chat-log")
        return rep


def _chat_log_chunk(
    con: duckdb.DuckDBPyConnection,
    scanned: ScannedFile,
    chunk: Chunk,
    batch_id: str,
    prices: Prices,
) -> LineCounts:
    """One chunk file, read with ``read_json`` (fast, parallel). It gives an empty line no row:
    when rows are missing, the empty lines are found, so rows are still numbered by line. A
    chunk with too many empty lines, with lines read_json skips although they hold something
    (spaces only), or with lines too long for it, is read as raw lines instead."""
    lines = lines_sql(scanned.utf8_checked)
    params: dict[str, object] = {"path": str(chunk.path)}
    blank: list[int] | None = None  # set when read_json's rows are numbered
    if not chunk.long_lines:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _fast AS {stage_chat_log_json_sql()}", params)
        missing = chunk.n_lines - _rows(con, "_fast")
        found = empty_lines(chunk) if missing else []
        if found is not None and len(found) == missing:
            blank = found
    if blank is None:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _fast AS {stage_chat_log_sql(lines)}", params)
    return _stage_lines(
        con,
        scanned.path,
        first_line=chunk.first_line,
        n_lines=chunk.n_lines,
        batch_id=batch_id,
        prices=prices,
        blank_lines=blank or (),
        # read_json keeps no line text: pending lines are read again (raw lines keep their own)
        raw_lines=lines if blank is not None else None,
        raw_params=params,
    )


def _rows(con: duckdb.DuckDBPyConnection, table: str) -> int:
    ((n,),) = con.execute(f"SELECT count(*) FROM {table}").fetchall()
    return int(n)


def _line_numbers(rowid: str, low: int, first_line: int, blank_lines: Sequence[int]) -> str:
    """SQL: the line number of the row ``rowid`` (the lowest is ``low``) when the rows are the
    lines from ``first_line`` on, but for the empty ``blank_lines``, which have no row. Row k
    (from 0) comes after empty line j (from 0) when k >= blank_lines[j] - first_line - j."""
    k = f"({rowid} - {low})"
    steps = " ".join(
        f"WHEN {k} >= {line - first_line - j} THEN {j + 1}"
        for j, line in reversed(list(enumerate(sorted(blank_lines))))
    )
    shift = f" + CASE {steps} ELSE 0 END" if steps else ""
    return f"({k} + {first_line}{shift})"


def _stage_lines(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    *,
    first_line: int,
    n_lines: int,
    batch_id: str,
    prices: Prices,
    blank_lines: Sequence[int] = (),
    raw_lines: str | None = None,
    raw_params: dict[str, object] | None = None,
) -> LineCounts:
    """``_fast`` (its rows in file order: the lines from ``first_line`` on, but for
    ``blank_lines``, which have none) into the warehouse: the fast path for the lines it
    understands, the general path (exact reasons) for the others. Pending lines' text is in
    ``_fast.raw``, or, when ``raw_lines`` is given, read again from that SELECT."""
    # Parallel and order-preserving: row i of _fast is the i-th line (a row_number() in the
    # staging query would run the whole parse on one thread).
    ((n, low, high, n_pending),) = con.execute(
        "SELECT count(*), min(rowid), max(rowid), count(*) FILTER (WHERE pending) FROM _fast"
    ).fetchall()
    _check_read(source, n + len(blank_lines), n_lines)
    if n and high - low + 1 != n:
        raise WarehouseError(f"{source}: chunk rows not contiguous; refusing to guess")
    # rowid counts from a base that depends on the transaction: number lines from the lowest
    line_no = _line_numbers("rowid", int(low or 0), first_line, blank_lines)
    if raw_lines is None or not n_pending:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _slow_src AS "
            f"SELECT {line_no} AS line_no, raw AS line FROM _fast WHERE pending"
        )
    else:
        # the pending lines' text, read again (a streaming read: only they are kept)
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _slow_src AS
            SELECT line_no, line FROM (
                SELECT row_number() OVER () + {first_line - 1} AS line_no, line
                FROM ({raw_lines}))
            WHERE line_no IN (SELECT {line_no} FROM _fast WHERE pending)
            """,
            raw_params or {},
        )
        _check_read(source, _rows(con, "_slow_src"), n_pending)
    extract_chat_log(con, "_slow_src")
    stage_requests(con, "_stage_slow")
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW _staged AS
        SELECT {line_no} AS line_no, * EXCLUDE (pending, raw) FROM _fast WHERE NOT pending
        UNION ALL SELECT * FROM _stage_slow
    """)
    load_prices(con, prices, stage="_staged")
    counts = finish_stage(
        con,
        batch_id=batch_id,
        source_file=str(source),
        stage="_staged",
        raw="_slow_src",
    )
    counts.blank += len(blank_lines)
    return counts


def _ingest_parquet(con: duckdb.DuckDBPyConnection, path: Path, prices: Prices) -> FileReport:
    """One Parquet file of chat-log records: row i (from 1, file order) is "line" i."""
    digest = parquet_hash(path)
    with _staging(con):
        previous = _already(con, digest)
        if previous is not None:
            return _skipped(path, "parquet", previous)
        batch_id = "b-" + digest[:16]
        with _transaction(con):
            lines, n_rows = parquet_lines_sql(con, path)
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE _fast AS {stage_chat_log_sql(lines)}",
                {"path": str(path)},
            )
            counts = _stage_lines(
                con,
                path,
                first_line=1,
                n_lines=n_rows,
                batch_id=batch_id,
                prices=prices,
            )
            rep = FileReport(
                str(path),
                "parquet",
                "ingested",
                batch_id,
                lines_read=n_rows,
                loaded=counts.loaded,
                duplicates=counts.duplicates,
                rejected=counts.rejected,
                blank=counts.blank,
            )
            _check_balance(rep)
            _record_batch(con, rep, digest, "parquet")
        return rep


def _ingest_batch(
    con: duckdb.DuckDBPyConnection, path: Path, output: Path, prices: Prices
) -> FileReport:
    return _retrying(
        lambda check: _batch_once(
            con,
            path,
            output,
            prices,
            scan_file(path, check_utf8=check),
            scan_file(output, check_utf8=check),
        )
    )


def _batch_once(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    output: Path,
    prices: Prices,
    scanned_in: ScannedFile,
    scanned_out: ScannedFile,
) -> FileReport:
    pair_hash = hashlib.sha256(
        f"{scanned_in.content_hash}:{scanned_out.content_hash}".encode()
    ).hexdigest()
    with _staging(con, scanned_in, scanned_out):
        previous = _already(con, pair_hash)
        if previous is not None:
            return _skipped(path, "openai-batch", previous, output)
        batch_id = "b-" + pair_hash[:16]
        with _transaction(con):
            _read_raw(con, "_raw", scanned_in)
            _read_raw(con, "_raw_out", scanned_out)
            fallback = datetime.fromtimestamp(output.stat().st_mtime, UTC).replace(tzinfo=None)
            out_counts = extract_batch(
                con,
                id_prefix=scanned_in.content_hash[:12] + ":",
                fallback_ts=fallback,
                batch_id=batch_id,
                output_file=str(output),
            )
            stage_requests(con)
            load_prices(con, prices)
            counts = finish_stage(con, batch_id=batch_id, source_file=str(path))
            _record_bad_lines(con, batch_id, path, scanned_in)
            _record_bad_lines(con, batch_id, output, scanned_out)
            rep = FileReport(
                str(path),
                "openai-batch",
                "ingested",
                batch_id,
                output_file=str(output),
                lines_read=scanned_in.n_lines + scanned_out.n_lines,
                loaded=counts.loaded,
                duplicates=counts.duplicates + out_counts.duplicates,
                rejected=counts.rejected
                + out_counts.rejected
                + len(scanned_in.bad_lines)
                + len(scanned_out.bad_lines),
                blank=counts.blank + out_counts.blank,
                joined=out_counts.joined,
            )
            _check_balance(rep)
            _record_batch(con, rep, pair_hash, "openai-batch")
        return rep


# DuckDB keeps temp tables in memory up to its limit (80% of RAM by default); below this it
# spills them to disk instead, which keeps a large ingest's peak RSS bounded.
INGEST_MEMORY_LIMIT_MB = 1200


@contextmanager
def _bounded_memory(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Lower the connection's memory limit for the ingest (and keep rows in insertion order),
    and give the caller its settings back."""
    ((previous, ordered),) = con.execute(
        "SELECT current_setting('memory_limit'), current_setting('preserve_insertion_order')"
    ).fetchall()
    try:
        ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        ram_mb = INGEST_MEMORY_LIMIT_MB * 2
    con.execute(f"SET memory_limit = '{min(INGEST_MEMORY_LIMIT_MB, int(ram_mb * 0.8))}MB'")
    # Line numbers are row positions in file order (see _chat_log_chunk).
    con.execute("SET preserve_insertion_order = true")
    try:
        yield
    finally:
        con.execute(f"SET memory_limit = '{previous}'")
        con.execute(f"SET preserve_insertion_order = {'true' if ordered else 'false'}")


def _check_balance(rep: FileReport) -> None:
    """The promise of this module, checked on every file before it is committed."""
    accounted = rep.loaded + rep.duplicates + rep.rejected + rep.blank + rep.joined
    if accounted != rep.lines_read:
        raise WarehouseError(
            f"{rep.path}: {rep.lines_read} lines read but {accounted} accounted "
            "for; nothing was written"
        )
