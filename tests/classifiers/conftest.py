"""Shared fixtures: a warehouse of generated chat logs, and one trained classifier folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest

from demo.logs import write_chat_log
from pipeline.classify import train_from_warehouse
from warehouse.connection import open_warehouse
from warehouse.ingest import ingest_paths

DATA = Path(__file__).parent / "data"
CROSSSOURCE = DATA / "crosssource.jsonl"


def filled_warehouse(
    folder: Path, n: int = 1500, seed: int = 1, path: str = ":memory:"
) -> duckdb.DuckDBPyConnection:
    log = folder / f"log-{seed}-{n}.jsonl"
    write_chat_log(log, n, seed)
    con = open_warehouse(path)
    ingest_paths(con, [log])
    return con


@pytest.fixture
def make_warehouse(tmp_path: Path) -> Iterator[Callable[..., duckdb.DuckDBPyConnection]]:
    """Factory: an in-memory (or file) warehouse filled with ``n`` generated requests."""
    opened: list[duckdb.DuckDBPyConnection] = []

    def make(n: int = 600, seed: int = 1, path: str = ":memory:") -> duckdb.DuckDBPyConnection:
        con = filled_warehouse(tmp_path, n, seed, path)
        opened.append(con)
        return con

    yield make
    for con in opened:
        con.close()


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier trained (metadata labels) on 1,500 generated requests; read-only for tests."""
    folder = tmp_path_factory.mktemp("trained")
    con = filled_warehouse(folder)
    try:
        train_from_warehouse(con, folder / "classifier", use="metadata")
    finally:
        con.close()
    return folder / "classifier"
