"""Errors raised by the warehouse package.

WarehouseError                  root: anything the warehouse cannot do
├── WarehouseOpenError          not a DuckDB database, or locked by another writer
├── InputPathError              a path given to ingest does not exist or holds no logs
├── FormatError                 a file is not in the format asked for, or in no format known
└── EmptyWarehouseError         a stage needs rows the warehouse does not have yet

Errors carry their context as attributes (``path``, ``line``) so the CLI can print one clear line.
"""

from __future__ import annotations

from pathlib import Path


class WarehouseError(Exception):
    """Root of every error the warehouse raises."""


class WarehouseOpenError(WarehouseError):
    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: cannot open warehouse: {reason}")


class InputPathError(WarehouseError):
    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class FormatError(WarehouseError):
    def __init__(self, path: Path | str, reason: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


class EmptyWarehouseError(WarehouseError):
    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"the warehouse has no {what} yet; run `migration-planner ingest` first")
