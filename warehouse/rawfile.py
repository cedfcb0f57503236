"""One streaming pass over a log file's bytes before DuckDB reads it.

DuckDB reads the lines in bulk (fast), but it cannot keep a line that is not valid UTF-8 with its
original bytes, a raw control byte or CR would break its line reading, and it has no line numbers
of its own. This pass hashes the content (re-ingesting the same file is a no-op) and counts the
lines (the counts DuckDB's read must match). A plain file is then read where it is; a compressed
one (or one the slow pass below rewrites) goes into chunk files of whole lines, each with the
number of its first line (chunks bound the disk and memory a large ingest needs at a time).

The fast pass leaves UTF-8 to DuckDB, which refuses a chunk that is not valid UTF-8; the ingest then
scans again with ``check_utf8``, and this slow pass checks every line, replacing each bad line by a
marker in the chunk files and keeping its bytes for ``rejected_lines``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from warehouse.credentials import mask_raw_line
from warehouse.errors import InputPathError

CHUNK = 16 * 1024 * 1024
MAX_LINE_BYTES = 64 * 1024 * 1024
# DuckDB's read_json reads lines up to this long (its buffers hold twice this); a chunk holding a
# longer one is read as raw lines. The fast pass sends a file with one to the slow pass, which
# marks such chunks (a line inside one block is shorter than CHUNK: only lines across block
# edges need measuring).
LONG_LINE_BYTES = 16 * 1024 * 1024
# Bytes of whole lines per chunk file of a compressed log (a plain file is read where it is).
CHUNK_FILE_BYTES = 128 * 1024 * 1024
# A bad line is replaced by this (a line holding one STX byte) in the chunk files.
MARKER = "\x02"
_FORBIDDEN = (b"\x00", b"\x01", b"\x02")


@dataclass
class BadLine:
    line_no: int
    reason: str
    raw: bytes


# Empty lines are found (up to this many per chunk) so that a reader that skips them, as DuckDB's
# read_json does, can still number the other lines.
MAX_BLANK_LINES = 100


@dataclass
class Chunk:
    path: Path
    first_line: int  # number of its first line in the original file (from 1)
    n_lines: int
    copy: bool = True  # a chunk file of ours (False: the original file, read in place)
    long_lines: bool = False  # holds a line over LONG_LINE_BYTES (found by the slow pass)

    def release(self) -> None:
        """Done with it: a copy is deleted at once (never the original)."""
        if self.copy:
            self.path.unlink(missing_ok=True)


@dataclass
class ScannedFile:
    path: Path
    content_hash: str
    n_lines: int
    n_bytes: int
    chunks: list[Chunk] = field(default_factory=list)
    utf8_checked: bool = False  # the careful scan: every line checked, long lines expected
    bad_lines: list[BadLine] = field(default_factory=list)
    _tmpdir: tempfile.TemporaryDirectory[str] | None = None

    def cleanup(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None


class _ChunkWriter:
    """Writes bytes into chunk files of about ``limit`` bytes, each ending at a line end."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder, self.limit = folder, limit
        self.chunks: list[Chunk] = []
        self._out: object = None
        self._path = folder
        self._bytes = self._lines = 0
        self._lines_before = 0
        self._last = b""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        pos, size = 0, len(data)
        while pos < size:
            if self._out is None:
                self._path = self.folder / f"chunk-{len(self.chunks):05d}.jsonl"
                self._out = self._path.open("wb")
            end = size
            room = self.limit - self._bytes
            if size - pos > room:
                newline = data.find(b"\n", pos + max(room, 1) - 1)
                if newline != -1:
                    end = newline + 1
            self._out.write(view[pos:end])  # type: ignore[attr-defined]
            self._bytes += end - pos
            self._lines += data.count(b"\n", pos, end)
            self._last = data[end - 1 : end]
            pos = end
            if self._bytes >= self.limit and self._last == b"\n":
                self._close()

    def _close(self) -> None:
        if self._out is None:
            return
        self._out.close()  # type: ignore[attr-defined]
        lines = self._lines + (1 if self._bytes and self._last != b"\n" else 0)
        self.chunks.append(Chunk(self._path, self._lines_before + 1, lines))
        self._lines_before += lines
        self._out, self._bytes, self._lines = None, 0, 0

    def finish(self) -> list[Chunk]:
        self._close()
        return self.chunks


def _open(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:  # type: ignore[operator]
            while chunk := handle.read(CHUNK):
                yield chunk
    except (gzip.BadGzipFile, EOFError, OSError) as exc:
        raise InputPathError(path, f"cannot read file: {exc}") from exc


def scan_file(path: Path, *, check_utf8: bool = False) -> ScannedFile:
    """Hash, count lines, split into chunk files; find lines DuckDB could not read as they are."""
    tmpdir = tempfile.TemporaryDirectory(prefix="planner-ingest-")
    try:
        scanned = _fast_pass(path, Path(tmpdir.name), check_utf8)
        if scanned is None:
            tmpdir.cleanup()
            tmpdir = tempfile.TemporaryDirectory(prefix="planner-ingest-")
            scanned = _slow_pass(path, Path(tmpdir.name))
    except BaseException:
        tmpdir.cleanup()
        raise
    scanned._tmpdir = tmpdir
    return scanned


def _fast_pass(path: Path, folder: Path, check_utf8: bool) -> ScannedFile | None:
    """The whole file as chunk files, or None when a line needs the slow pass."""
    import codecs

    digest = hashlib.sha256()
    hashing = _Hasher(digest)
    decoder = codecs.getincrementaldecoder("utf-8")()
    # A plain file is read where it is (DuckDB's own reads bound the memory); a compressed one
    # is decompressed into chunk files.
    in_place = not path.name.endswith(".gz")
    writer = None if in_place else _ChunkWriter(folder, CHUNK_FILE_BYTES)
    n_newlines = n_bytes = 0
    last = b""
    run = 0  # bytes of the line the previous block ended in
    try:
        for block in _open(path):
            hashing.add(block)
            # A line longer than LONG_LINE_BYTES (or MAX_LINE_BYTES: a bad one) takes the slow
            # pass, which measures it. Only a line across block edges can be one: its length is
            # the end of a block and the start of the next (CHUNK <= LONG_LINE_BYTES).
            newlines = block.count(b"\n")
            if newlines == 0 and len(block) == CHUNK:
                return None
            head = block.find(b"\n") if newlines else len(block)
            if run + head > LONG_LINE_BYTES:
                return None
            run = run + head if not newlines else len(block) - block.rfind(b"\n") - 1
            # DuckDB's line reader also ends a line at a lone CR: CRs take the slow pass
            if any(b in block for b in _FORBIDDEN) or b"\r" in block:
                return None
            if check_utf8 and not block.isascii():
                try:
                    decoder.decode(block)
                except UnicodeDecodeError:
                    return None
            if writer is not None:
                writer.write(block)
            n_bytes += len(block)
            n_newlines += newlines
            last = block[-1:]
    finally:
        hashing.close()
    if check_utf8:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return None
    n_lines = n_newlines + (1 if n_bytes and last != b"\n" else 0)
    if writer is not None:
        chunks = writer.finish()
    else:
        chunks = [Chunk(path, 1, n_lines, copy=False)] if n_lines else []
    return ScannedFile(
        path,
        digest.hexdigest(),
        n_lines,
        n_bytes,
        chunks=chunks,
        utf8_checked=check_utf8,
    )


def empty_lines(chunk: Chunk) -> list[int] | None:
    """The numbers of a chunk file's empty lines (in the original file), or None past
    MAX_BLANK_LINES. A search for a newline after a newline: fast, as they are rare."""
    found: list[int] = []
    seen, last = chunk.first_line - 1, b"\n"  # newlines before the block; its last byte
    try:
        with chunk.path.open("rb") as handle:
            while block := handle.read(CHUNK):
                if block[:1] == b"\n" and last == b"\n":  # the block starts with one
                    found.append(seen + 1)
                pos = 0
                while (i := block.find(b"\n\n", pos)) != -1:
                    seen += block.count(b"\n", pos, i + 1)
                    pos = i + 1
                    found.append(seen + 1)  # the line after the newline at i is empty
                    if len(found) > MAX_BLANK_LINES:
                        return None
                seen += block.count(b"\n", pos)
                last = block[-1:]
    except OSError as exc:
        raise InputPathError(chunk.path, f"cannot read file: {exc}") from exc
    return found if len(found) <= MAX_BLANK_LINES else None


class _Hasher:
    """sha256 on a second thread (hashlib releases the GIL on large blocks): the scan's other
    work runs meanwhile."""

    def __init__(self, digest: hashlib._Hash) -> None:
        import queue
        import threading

        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self._thread = threading.Thread(target=self._run, args=(digest,), daemon=True)
        self._thread.start()

    def _run(self, digest: hashlib._Hash) -> None:
        while (block := self._queue.get()) is not None:
            digest.update(block)

    def add(self, block: bytes) -> None:
        self._queue.put(block)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


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


def _slow_pass(path: Path, folder: Path) -> ScannedFile:
    """Only for files with bad lines: line by line, each bad line replaced by the marker."""
    digest = hashlib.sha256()
    writer = _ChunkWriter(folder, CHUNK_FILE_BYTES)
    bad: list[BadLine] = []
    long: list[int] = []
    line_no = n_bytes = 0
    pending = b""
    for block in _open(path):
        digest.update(block)
        n_bytes += len(block)
        pending += block
        *lines, pending = pending.split(b"\n")
        out = []
        for line in lines:
            line_no += 1
            out.append(_checked(line, line_no, bad))
            if len(out[-1]) > LONG_LINE_BYTES:
                long.append(line_no)
        if out:
            writer.write(b"\n".join(out) + b"\n")
    if pending:
        line_no += 1
        writer.write(_checked(pending, line_no, bad) + b"\n")
    chunks = writer.finish()
    for chunk in chunks:
        chunk.long_lines = any(
            chunk.first_line <= n < chunk.first_line + chunk.n_lines for n in long
        )
    return ScannedFile(
        path,
        digest.hexdigest(),
        line_no,
        n_bytes,
        chunks=chunks,
        utf8_checked=True,
        bad_lines=bad,
    )


def _checked(line: bytes, line_no: int, bad: list[BadLine]) -> bytes:
    """The line as DuckDB should read it: CRLF's CR dropped, a CR inside (JSON whitespace, when
    the line is valid JSON) made a space, a bad line replaced by the marker."""
    body = line[:-1] if line.endswith(b"\r") else line
    reason = _bad_reason(body)
    if reason is None and b"\r" in body:
        try:
            json.loads(body)
        except ValueError:
            reason = "not valid JSON (raw carriage return)"
        else:
            body = body.replace(b"\r", b" ")
    if reason is None:
        return body
    bad.append(BadLine(line_no, reason, mask_raw_line(body[:MAX_LINE_BYTES])))
    return MARKER.encode()
