"""The DuckDB warehouse: log readers, ingestion with quarantine, profile queries, and storage of
what later stages produce.

May import: duckdb and the standard library only (no other package of the project)."""

from warehouse.connection import fetch_one, open_warehouse
from warehouse.errors import (
    EmptyWarehouseError,
    FormatError,
    InputPathError,
    WarehouseError,
    WarehouseOpenError,
)
from warehouse.ingest import FORMATS, FileReport, IngestReport, ingest_paths, prepare_ingest
from warehouse.pricing import default_prices, match_price, price_table
from warehouse.profile import profile_warehouse
from warehouse.rejects import list_rejects
from warehouse.secrets_in_text import TEXT_SECRET_PATTERNS, SecretPattern, mask_text

__all__ = [
    "FORMATS",
    "TEXT_SECRET_PATTERNS",
    "EmptyWarehouseError",
    "FileReport",
    "FormatError",
    "IngestReport",
    "InputPathError",
    "SecretPattern",
    "WarehouseError",
    "WarehouseOpenError",
    "default_prices",
    "fetch_one",
    "ingest_paths",
    "list_rejects",
    "mask_text",
    "match_price",
    "open_warehouse",
    "prepare_ingest",
    "price_table",
    "profile_warehouse",
]
