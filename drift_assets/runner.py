"""Materializing the graph from Python, in the order Dagster's UI or a backfill would.

Runs go through the instance given (``DagsterInstance.get()`` under ``DAGSTER_HOME`` for the CLI,
so ``make ui`` afterwards shows every run), one run per shard of the partitioned gradient table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from dagster import AssetKey, AssetSelection, DagsterInstance, Definitions

logger = logging.getLogger(__name__)

UPSTREAM_OF_SHARDS = (
    "training_pool", "training_pool_rejects", "validation_queries", "test_queries", "rollouts", "grades",
    "validation_gradients",
)
SHARDED = "training_gradient_projections"
DOWNSTREAM_OF_SHARDS = ("influence_scores", "refined_dataset", "refined_model_evaluation")


def _existing(defs: Definitions, names: Iterable[str]) -> list[AssetKey]:
    known = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    return [AssetKey(name) for name in names if name in known]


def _execute(defs: Definitions, instance: DagsterInstance, keys: list[AssetKey], partition_key: str | None = None) -> None:
    if not keys:
        return
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance, asset_selection=keys, partition_key=partition_key, raise_on_error=True,
    )
    if not result.success:
        raise RuntimeError(f"run {result.run_id} failed while materializing {[k.to_user_string() for k in keys]}")


def observe_sources(defs: Definitions, instance: DagsterInstance) -> None:
    """Record the current content hash of every input file and the model directory."""
    from dagster import define_asset_job

    job_defs = Definitions.merge(
        defs, Definitions(jobs=[define_asset_job("_observe_sources", selection=AssetSelection.groups("sources", include_sources=True))])
    )
    job_defs.resolve_job_def("_observe_sources").execute_in_process(instance=instance, raise_on_error=True)


def shard_partition_keys(defs: Definitions) -> list[str]:
    assets = defs.resolve_assets_def(SHARDED)
    return list(assets.partitions_def.get_partition_keys())


def materialize_pipeline(defs: Definitions, instance: DagsterInstance, include_demo: bool = True) -> None:
    """Demo setup (if present), observe sources, upstream tables, every shard, then scores onward."""
    demo = _existing(defs, ["demo_task_files", "demo_base_model"])
    if include_demo and demo:
        logger.info("materializing the demo inputs and base model")
        _execute(defs, instance, demo)
    observe_sources(defs, instance)
    logger.info("materializing inputs, rollouts, grades and validation gradients")
    _execute(defs, instance, _existing(defs, UPSTREAM_OF_SHARDS))
    for shard in shard_partition_keys(defs):
        logger.info(f"materializing training gradients, shard {shard}")
        _execute(defs, instance, [AssetKey(SHARDED)], partition_key=shard)
    logger.info("materializing influence scores and the refined dataset")
    _execute(defs, instance, _existing(defs, DOWNSTREAM_OF_SHARDS))
