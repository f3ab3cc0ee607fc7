"""The materialized demo that the analysis benchmarks read (``make demo`` writes it), and the
fine-tune-then-evaluate step they share."""

from __future__ import annotations

import polars as pl

from drift_assets.core.generation.engines import TransformersEngine
from drift_assets.core.training.sft import Evaluation, evaluate, fine_tune
from drift_assets.resources import ModelResource, Warehouse
from drift_assets.settings import Settings, load_settings


def demo_warehouse(tables: tuple[str, ...], settings: Settings | None = None) -> tuple[Settings, Warehouse]:
    """The settings (``$DRIFT_ASSETS_SETTINGS`` or data/settings.yaml) and their warehouse, which must hold ``tables``."""
    settings = settings or load_settings()
    warehouse = Warehouse.from_settings(settings)
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


def evaluated_after_sft(
    settings: Settings, model: ModelResource, tokenizer, messages: list[str], queries: list[dict], seed: int
) -> Evaluation:
    """The base model fine-tuned on ``messages`` with the method benchmark's SFT settings and ``seed``
    (no messages: the base model itself), answering ``queries`` greedily, graded."""
    network = model.load_model()
    if messages:
        fine_tune(network, tokenizer, messages, settings.benchmark.sft.options(seed), log=lambda _: None)
    engine = TransformersEngine(network, tokenizer, device=next(network.parameters()).device)
    return evaluate(engine, tokenizer, queries, settings.rollout.max_tokens, settings.grading.options())
