"""The classifier's sentence-encoder vectors, cached in the warehouse by key (the encoder's
digest and the text it read), so a retrain or a nightly prediction encodes each prompt once.

:class:`WarehouseEmbeddings` has the ``get_many``/``put_many`` shape the classifier's trainer
takes (``classifiers.encoder.EmbeddingCache``); the warehouse knows nothing of encoders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import duckdb
import numpy as np


class WarehouseEmbeddings:
    """Vectors by key in the ``embeddings`` table of an open warehouse."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        if not keys:
            return {}
        rows = self.con.execute(
            "SELECT key, vector FROM embeddings WHERE key IN (SELECT unnest(?::VARCHAR[]))",
            [list(keys)],
        ).fetchall()
        return {str(k): np.asarray(v, dtype=np.float32) for k, v in rows}

    def put_many(self, items: Mapping[str, np.ndarray]) -> None:
        if not items:
            return
        keys = list(items)
        self.con.execute(
            "INSERT OR REPLACE INTO embeddings "
            "SELECT unnest(?::VARCHAR[]), unnest(?::FLOAT[][]), now()::TIMESTAMP",
            [keys, [np.asarray(items[k], dtype=np.float32).tolist() for k in keys]],
        )

    def count(self) -> int:
        row = self.con.execute("SELECT count(*) FROM embeddings").fetchone()
        return int(row[0]) if row else 0
