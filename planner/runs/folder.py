"""Run folders: ``out/<run-id>/``, written to a temporary folder and moved into place only when
complete, so a failed run never leaves half a plan where a good one is expected."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path


def new_run_id(now: datetime | None = None) -> str:
    """The one run-id format: UTC ``YYYYMMDD-HHMMSS-xxxx`` (sorts by time; four hex digits keep
    two runs started in the same second apart). Plans, nightly runs, the demo and prediction
    runs (``pr-`` + this) all use it."""
    return (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


@contextmanager
def run_folder(out_dir: Path, run_id: str) -> Iterator[Path]:
    """Yield a scratch folder: on success it becomes ``out_dir/run_id``; on failure, removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / f".{run_id}.partial"
    scratch.mkdir()
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    final = out_dir / run_id
    scratch.rename(final)
