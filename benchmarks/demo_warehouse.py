"""The materialized demo that the analysis benchmarks read (``make demo`` writes it)."""

from __future__ import annotations

import polars as pl

from drift_assets.resources import Warehouse
from drift_assets.settings import Settings, load_settings


def demo_warehouse(tables: tuple[str, ...], settings: Settings | None = None) -> tuple[Settings, Warehouse]:
    """The settings (``$DRIFT_ASSETS_SETTINGS`` or data/settings.yaml) and their warehouse, which must hold ``tables``."""
    settings = settings or load_settings()
    warehouse = Warehouse(settings)
    missing = [table for table in tables if not warehouse.exists(table)]
    if missing:
        tables_word = "tables" if len(missing) > 1 else "table"
        raise SystemExit(f"the warehouse {warehouse.root} has no {', '.join(missing)} {tables_word}: run `make demo` first")
    return settings, warehouse


def ground_truth_pool(warehouse: Warehouse) -> pl.DataFrame:
    """The training pool in example_id order, with the demo's hidden ``is_corrupted`` column."""
    pool = warehouse.scan("training_pool").collect().sort("example_id")
    if "is_corrupted" not in pool.columns:
        raise SystemExit("the training pool has no is_corrupted column: this needs the demo's ground truth")
    return pool
