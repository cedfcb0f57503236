"""One streaming pass over a log file's bytes before DuckDB reads it.

DuckDB reads the lines in bulk (fast), but it cannot keep a line that is not valid UTF-8 with its
original bytes, and a raw control byte would break the one-column read. This pass hashes the
content (re-ingesting the same file is a no-op), counts the lines (the count DuckDB's read must
match), and — only when a bad line exists — writes a clean copy in which each bad line is replaced
by a marker, keeping the bad line's bytes for ``rejected_lines``.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from warehouse.credentials import mask_raw_line
from warehouse.errors import InputPathError

CHUNK = 16 * 1024 * 1024
MAX_LINE_BYTES = 64 * 1024 * 1024
# A bad line is replaced by this (a line holding one STX byte) in the clean copy.
MARKER = "\x02"
_FORBIDDEN = (b"\x00", b"\x01", b"\x02")


@dataclass
class BadLine:
    line_no: int
    reason: str
    raw: bytes


@dataclass
class ScannedFile:
    path: Path
    content_hash: str
    n_lines: int
    n_bytes: int
    read_path: Path  # what DuckDB should read: the file itself, or a clean copy
    has_cr: bool = False  # some line ends in \r\n: strip the \r after reading
    bad_lines: list[BadLine] = field(default_factory=list)
    _tmpdir: tempfile.TemporaryDirectory[str] | None = None

    def cleanup(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None


def _open(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:  # type: ignore[operator]
            while chunk := handle.read(CHUNK):
                yield chunk
    except (gzip.BadGzipFile, EOFError, OSError) as exc:
        raise InputPathError(path, f"cannot read file: {exc}") from exc


def scan_file(path: Path) -> ScannedFile:
    """Hash, count lines, and find lines DuckDB could not read as they are."""
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    n_newlines = n_bytes = 0
    clean, has_cr = True, False
    last = b""
    for chunk in _open(path):
        digest.update(chunk)
        n_bytes += len(chunk)
        newlines = chunk.count(b"\n")
        n_newlines += newlines
        last = chunk[-1:]
        has_cr = has_cr or b"\r" in chunk
        # A line longer than MAX_LINE_BYTES spans whole chunks without a newline: only then can
        # one exist, and the slow path measures it exactly.
        if newlines == 0 and len(chunk) == CHUNK:
            clean = False
        if clean:
            if any(b in chunk for b in _FORBIDDEN):
                clean = False
            elif not chunk.isascii():
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError:
                    clean = False
    if clean:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            clean = False
    n_lines = n_newlines + (1 if n_bytes and last != b"\n" else 0)
    scanned = ScannedFile(path, digest.hexdigest(), n_lines, n_bytes, path, has_cr)
    return scanned if clean else _clean_copy(scanned)


def _bad_reason(line: bytes) -> str | None:
    if len(line) > MAX_LINE_BYTES:
        return f"line longer than {MAX_LINE_BYTES // (1024 * 1024)} MB"
    for byte in _FORBIDDEN:
        if byte in line:
            return f"not valid JSON: raw control byte 0x{byte[0]:02x}"
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
    return None


def _clean_copy(scanned: ScannedFile) -> ScannedFile:
    """Slow path, only for files with bad lines: copy line by line, replacing bad ones."""
    tmpdir = tempfile.TemporaryDirectory(prefix="planner-ingest-")
    out_path = Path(tmpdir.name) / "clean.jsonl"
    bad: list[BadLine] = []
    line_no = 0
    with out_path.open("wb") as out:
        pending = b""
        for chunk in _open(scanned.path):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                line_no += 1
                out.write(_checked(line, line_no, bad) + b"\n")
        if pending:
            line_no += 1
            out.write(_checked(pending, line_no, bad) + b"\n")
    scanned.read_path = out_path
    scanned.bad_lines = bad
    scanned._tmpdir = tmpdir
    return scanned


def _checked(line: bytes, line_no: int, bad: list[BadLine]) -> bytes:
    body = line[:-1] if line.endswith(b"\r") else line
    reason = _bad_reason(body)
    if reason is None:
        return line
    bad.append(BadLine(line_no, reason, mask_raw_line(body[:MAX_LINE_BYTES])))
    return MARKER.encode()
