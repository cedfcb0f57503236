"""The price table: USD per 1M input/output tokens by model, shipped as data, overridable."""

from __future__ import annotations

import json
from importlib import resources

import duckdb

Prices = dict[str, tuple[float, float]]


def default_prices() -> Prices:
    """The shipped table (warehouse/data/prices.json)."""
    text = resources.files("warehouse").joinpath("data/prices.json").read_text(encoding="utf-8")
    return {model: (float(p[0]), float(p[1])) for model, p in json.loads(text)["prices"].items()}


def price_table(overrides: Prices | None = None) -> Prices:
    """The shipped table with ``overrides`` (from planner.toml) applied on top."""
    table = default_prices()
    table.update(overrides or {})
    return table


def match_price(model: str | None, prices: Prices) -> tuple[str, float, float] | None:
    """The longest entry equal to ``model`` or a prefix of it followed by '-' (dated snapshots)."""
    if not model:
        return None
    best = None
    for name, (p_in, p_out) in prices.items():
        if (model == name or model.startswith(name + "-")) and (
            best is None or len(name) > len(best[0])
        ):
            best = (name, p_in, p_out)
    return best


def load_price_table(con: duckdb.DuckDBPyConnection, models: list[str], prices: Prices) -> None:
    """Fill the temp table ``_prices(model, price_in, price_out)`` for the models seen in a file."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _prices (model VARCHAR, price_in DOUBLE, price_out DOUBLE)"
    )
    rows = []
    for model in models:
        hit = match_price(model, prices)
        if hit is not None:
            rows.append((model, hit[1], hit[2]))
    if rows:
        con.executemany("INSERT INTO _prices VALUES (?, ?, ?)", rows)
