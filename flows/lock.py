"""One run at a time per warehouse: an advisory ``flock`` on ``<warehouse>.run.lock``.

DuckDB allows one writing process, and two nightly runs interleaving their history records and
run folders would be confusing even where they are safe, so a second run waits up to
``[run] lock_wait_s`` and then refuses with a line saying who holds the lock. The kernel drops a
``flock`` when its process dies, so a killed run never leaves a stale lock behind; the file's
text (pid, run id, start time) is only there for the message.

The lock is re-entrant within a process: the CLI takes it before Prefect starts (so a refused run
costs nothing) and the flow takes it again (so scheduled runs under ``serve`` are covered too).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from planner.errors import PlannerError


class RunLockedError(PlannerError):
    """Another run holds the warehouse's run lock."""


_held: dict[Path, int] = {}  # lock path -> depth, for this process
_handles: dict[Path, IO[str]] = {}  # lock path -> the open file holding its flock
_guard = threading.Lock()


def lock_path_for(warehouse: Path | str) -> Path:
    return Path(f"{Path(warehouse).resolve()}.run.lock")


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"run {info.get('run', '?')} (pid {info.get('pid', '?')}, since {info.get('at')})"
    except (OSError, ValueError):
        return "another run"


def _write_holder(handle: IO[str], run: str) -> None:
    """The lock file's text, for the message a refused run prints."""
    handle.seek(0)
    handle.truncate()
    at = datetime.now(UTC).isoformat(timespec="seconds")
    handle.write(json.dumps({"pid": os.getpid(), "run": run, "at": at}))
    handle.flush()


@contextmanager
def run_lock(warehouse: Path | str, *, wait_s: float = 0.0, run: str = "") -> Iterator[Path]:
    """Hold the warehouse's run lock for the block; wait up to ``wait_s`` seconds, then refuse."""
    path = lock_path_for(warehouse)
    with _guard:
        if path in _held:
            _held[path] += 1
            reentered = True
            if run:  # the inner taker knows more (the CLI's "starting" becomes the run id)
                _write_holder(_handles[path], run)
        else:
            reentered = False
    if reentered:
        try:
            yield path
        finally:
            with _guard:
                _held[path] -= 1
        return

    path.parent.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = path.open("a+", encoding="utf-8")
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    waited = f" after waiting {wait_s:g} s" if wait_s else ""
                    raise RunLockedError(
                        f"{_holder(path)} is using {Path(warehouse)}{waited}; "
                        "try again when it ends (or set [run] lock_wait_s to wait)"
                    ) from None
                time.sleep(min(1.0, max(deadline - time.monotonic(), 0.05)))
        _write_holder(handle, run)
        with _guard:
            _held[path] = 1
            _handles[path] = handle
        try:
            yield path
        finally:
            with _guard:
                _held.pop(path, None)
                _handles.pop(path, None)
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()
