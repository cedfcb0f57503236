"""A reproducible, stratified sample of real production requests to replay through candidates.

Only successful calls are sampled (status below 400 and an answer logged): production's answer is
the reference every replay is scored against. Each request's task type is its latest prediction,
else its human label, else ``'unknown'``. Within a task type, requests are ordered by
``md5(request_id || ':' || seed)``, so the same seed on the same data draws the same sample, and
a warehouse that grew keeps most of yesterday's sample (new requests only displace old ones they
outrank) — which is what lets a nightly replay send only what is new. Exact repeats (the same
messages, whichever production model they were logged under) are sampled once, through a copy
that has a task type if any copy has one; :attr:`SampleDraw.multi_model_prompts` says how many
prompts were logged under several models.
Multi-turn requests are sampled like any other, with the full history as logged. On top of the
per-type quota come ``uncertain`` extra requests the classifier was unsure of.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import duckdb

from warehouse.errors import EmptyWarehouseError, WarehouseError

_ELIGIBLE = """
WITH latest AS (
    SELECT request_id, task_type, uncertain
    FROM predictions
    QUALIFY row_number() OVER (
        PARTITION BY request_id
        ORDER BY predicted_at DESC NULLS LAST, prediction_run DESC NULLS LAST
    ) = 1
),
eligible AS (
    SELECT r.request_id,
           coalesce(p.task_type, r.label_task_type, 'unknown') AS task_type,
           coalesce(p.uncertain, false) AS uncertain,
           md5(r.request_id || ':' || ?) AS rank_key
    FROM requests AS r
    LEFT JOIN latest AS p USING (request_id)
    WHERE coalesce(r.status_code, 200) < 400
      AND r.response_text IS NOT NULL AND r.response_text <> ''
    QUALIFY row_number() OVER (
        PARTITION BY md5(r.messages::VARCHAR)
        ORDER BY coalesce(p.task_type, r.label_task_type) IS NULL, md5(r.request_id || ':' || ?)
    ) = 1
)
"""

# Prompts (the same messages) logged under more than one production model among the eligible.
_MULTI_MODEL = """
SELECT count(*)::INTEGER FROM (
    SELECT md5(messages::VARCHAR) FROM requests
    WHERE coalesce(status_code, 200) < 400 AND response_text IS NOT NULL AND response_text <> ''
    GROUP BY 1 HAVING count(DISTINCT coalesce(model, response_model, '')) > 1
)
"""


@dataclass(frozen=True)
class SampleDraw:
    """One sampling draw: its id and how many requests of each task type it holds."""

    sample_id: str
    seed: int
    counts: dict[str, int]
    uncertain_extra: int
    created: bool  # False when the same draw already existed (same seed, sizes and data)
    multi_model_prompts: int = 0  # prompts logged under several production models, sampled once

    @property
    def total(self) -> int:
        return sum(self.counts.values()) + self.uncertain_extra


@dataclass(frozen=True)
class SampledRequest:
    """A sampled request with what a replay needs and the production answer to compare with."""

    request_id: str
    task_type: str
    uncertain: bool
    messages: list[dict[str, Any]]
    max_tokens: int | None
    temperature: float | None
    params: dict[str, Any]
    response_text: str
    turn_index: int | None


def _sizes(per_type: int | Mapping[str, int]) -> tuple[int, list[str], list[int]]:
    """(default size, override names, override sizes) — per_type may be one size or a map."""
    if isinstance(per_type, int):
        default, overrides = per_type, {}
    else:
        default = int(per_type.get("*", 0))
        overrides = {k: int(v) for k, v in per_type.items() if k != "*"}
    for name, size in [("per_type", default), *overrides.items()]:
        if size < 0:
            raise WarehouseError(f"sample size for {name!r} must be >= 0, got {size}")
    return default, list(overrides), list(overrides.values())


def _sample_id(
    con: duckdb.DuckDBPyConnection, seed: int, per_type: int | Mapping[str, int], uncertain: int
) -> str:
    """Same seed, same sizes and same eligible data (with their task types) -> same id."""
    row = con.execute(
        _ELIGIBLE
        + """
        SELECT count(*),
               md5(coalesce(string_agg(request_id || '=' || task_type || '=' || uncertain::VARCHAR,
                                       ',' ORDER BY request_id), ''))
        FROM eligible
        """,
        [str(seed), str(seed)],
    ).fetchone()
    assert row is not None
    count, state = row
    if count == 0:
        raise EmptyWarehouseError("successful requests (status < 400 with an answer) to sample")
    sizes = per_type if isinstance(per_type, int) else sorted(per_type.items())
    ident = json.dumps([seed, sizes, uncertain, state], default=str)
    return "s-" + hashlib.sha256(ident.encode("utf-8")).hexdigest()[:16]


def draw_sample(
    con: duckdb.DuckDBPyConnection,
    *,
    per_type: int | Mapping[str, int],
    seed: int = 0,
    uncertain: int = 0,
) -> SampleDraw:
    """Draw (or find, if drawn before) the sample and write it to ``samples``.

    ``per_type`` is one size for every task type, or a map of task type -> size where the key
    ``"*"`` sets the size of types not named. ``uncertain`` extra requests are drawn from those
    the classifier was unsure of and not already in the sample; they keep their task type and
    have ``samples.uncertain`` true.
    """
    if uncertain < 0:
        raise WarehouseError(f"uncertain sample size must be >= 0, got {uncertain}")
    default, names, sizes = _sizes(per_type)
    sample_id = _sample_id(con, seed, per_type, uncertain)
    (exists,) = con.execute(  # type: ignore[misc]
        "SELECT count(*) > 0 FROM samples WHERE sample_id = ?", [sample_id]
    ).fetchone()
    if not exists:
        con.begin()
        try:
            con.execute(
                _ELIGIBLE
                + """,
                ranked AS (
                    SELECT *, row_number() OVER (PARTITION BY task_type ORDER BY rank_key) AS pos
                    FROM eligible
                ),
                quota AS (
                    SELECT * FROM ranked
                    WHERE pos <= coalesce(
                        list_extract(?::INTEGER[], list_position(?::VARCHAR[], task_type)), ?)
                ),
                extra AS (
                    SELECT * FROM eligible
                    WHERE uncertain AND request_id NOT IN (SELECT request_id FROM quota)
                    ORDER BY rank_key LIMIT ?
                )
                INSERT INTO samples (sample_id, request_id, task_type, uncertain, created_at,
                                     stratum)
                SELECT ?, request_id, task_type, uncertain, now()::TIMESTAMP, 'type' FROM quota
                UNION ALL
                SELECT ?, request_id, task_type, true, now()::TIMESTAMP, 'uncertain' FROM extra
                """,
                [str(seed), str(seed), sizes, names, default, uncertain, sample_id, sample_id],
            )
            con.commit()
        except BaseException:
            con.rollback()
            raise
    counts = dict(
        con.execute(
            """
            SELECT task_type, count(*)::INTEGER FROM samples
            WHERE sample_id = ? AND stratum = 'type' GROUP BY task_type ORDER BY task_type
            """,
            [sample_id],
        ).fetchall()
    )
    (extra,) = con.execute(  # type: ignore[misc]
        "SELECT count(*)::INTEGER FROM samples WHERE sample_id = ? AND stratum = 'uncertain'",
        [sample_id],
    ).fetchone()
    (multi,) = con.execute(_MULTI_MODEL).fetchone()  # type: ignore[misc]
    return SampleDraw(
        sample_id, seed, counts, int(extra), created=not exists, multi_model_prompts=int(multi)
    )


def sampled_requests(con: duckdb.DuckDBPyConnection, sample_id: str) -> list[SampledRequest]:
    """The sample's requests with their messages as logged, ordered by task type and id."""
    rows = con.execute(
        """
        SELECT s.request_id, s.task_type, s.uncertain, r.messages, r.max_tokens, r.temperature,
               r.params, r.response_text, r.turn_index
        FROM samples AS s JOIN requests AS r USING (request_id)
        WHERE s.sample_id = ?
        ORDER BY s.task_type, s.request_id
        """,
        [sample_id],
    ).fetchall()
    if not rows:
        raise WarehouseError(f"no sample {sample_id!r} in the warehouse")
    out = []
    for rid, task, unsure, messages, max_tokens, temperature, params, answer, turn in rows:
        parsed = json.loads(messages) if isinstance(messages, str) else messages
        extra = json.loads(params) if isinstance(params, str) else (params or {})
        out.append(
            SampledRequest(
                request_id=rid,
                task_type=task,
                uncertain=bool(unsure),
                messages=parsed,
                max_tokens=max_tokens,
                temperature=temperature,
                params=extra if isinstance(extra, dict) else {},
                response_text=answer,
                turn_index=turn,
            )
        )
    return out


def latest_sample_id(con: duckdb.DuckDBPyConnection) -> str | None:
    """The most recently drawn sample, if any."""
    row = con.execute(
        "SELECT sample_id FROM samples ORDER BY created_at DESC, sample_id LIMIT 1"
    ).fetchone()
    return None if row is None else str(row[0])


def sample_layout(
    con: duckdb.DuckDBPyConnection, seed: int, sample_id: str | None = None
) -> dict[str, tuple[str, str, int]]:
    """Each sampled request's (stratum, task type, position): its place in the order the draw
    ranked it within its stratum and type (``md5(request_id || ':' || seed)``), from 0.

    Rounds of replays take a type's requests in this order, so a smaller cap is a prefix of a
    larger one and the order is independent of any outcome. ``sample_id`` defaults to the
    latest sample."""
    sid = sample_id or latest_sample_id(con)
    if sid is None:
        return {}
    rows = con.execute(
        """
        SELECT request_id, stratum, task_type,
               (row_number() OVER (
                    PARTITION BY stratum, task_type ORDER BY md5(request_id || ':' || ?)
               ) - 1)::INTEGER
        FROM (SELECT request_id, any_value(coalesce(stratum, 'type')) AS stratum,
                     any_value(task_type) AS task_type
              FROM samples WHERE sample_id = ? GROUP BY request_id)
        """,
        [str(seed), sid],
    ).fetchall()
    return {str(r): (str(st), str(t), int(pos)) for r, st, t, pos in rows}
