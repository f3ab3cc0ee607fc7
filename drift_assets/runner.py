"""Materializing the graph from Python, in the order Dagster's UI or a backfill would.

Runs go through the instance given (``DagsterInstance.get()`` under ``DAGSTER_HOME`` for the CLI,
so ``make ui`` afterwards shows every run), one run per shard of the partitioned gradient table
and, where ``warmup.steps`` is set, one per warm-up checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from dagster import AssetKey, DagsterInstance, Definitions

logger = logging.getLogger(__name__)

UPSTREAM_OF_SHARDS = (
    "training_pool", "training_pool_rejects", "validation_queries", "test_queries", "rollouts", "grades",
    "projection_basis", "validation_gradients",
)
SHARDED = "training_gradient_projections"
WARMUP = "warmup_checkpoints"
AT_CHECKPOINTS = "checkpoint_gradients"
DOWNSTREAM_OF_SHARDS = ("influence_scores", "refined_dataset", "refined_dataset_export", "refined_model_evaluation")


def _existing(defs: Definitions, names: Iterable[str]) -> list[AssetKey]:
    known = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    return [AssetKey(name) for name in names if name in known]


def materialize_assets(defs: Definitions, instance: DagsterInstance, keys: list[AssetKey], partition_key: str | None = None) -> None:
    """One run that materializes ``keys`` (of one partition, for partitioned assets); raises if it fails."""
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
    defs.resolve_job_def("observe_sources").execute_in_process(instance=instance, raise_on_error=True)


def partition_keys(defs: Definitions, asset_name: str = SHARDED) -> list[str]:
    """The partitions of ``asset_name``; none where the definitions do not have it."""
    if not _existing(defs, [asset_name]):
        return []
    return list(defs.resolve_assets_def(asset_name).partitions_def.get_partition_keys())


def materialize_pipeline(defs: Definitions, instance: DagsterInstance, include_demo: bool = True, only_stale: bool = False) -> list[str]:
    """Demo setup (if present), observe sources, upstream tables, every shard, the warm-up run and its
    checkpoints (where configured), then scores onward.

    ``only_stale`` materializes only what is stale or missing (and what lies downstream of it), as
    Dagster's stale-status resolver sees it, so that re-running with nothing changed costs nothing.
    Returns what was materialized ("name" or "name[shard]").
    """
    from drift_assets.staleness import needs_materialization

    done: list[str] = []

    def wanted(names: list[str]) -> list[str]:
        return [n for n in names if not only_stale or n in pending]

    pending: set[str] = needs_materialization(defs, instance) if only_stale else set()
    demo = wanted([k.to_user_string() for k in _existing(defs, ["demo_task_files", "demo_base_model"])])
    if include_demo and demo:
        logger.info(f"materializing {demo}")
        materialize_assets(defs, instance, [AssetKey(n) for n in demo])
        done += demo
    observe_sources(defs, instance)
    if only_stale:
        pending = needs_materialization(defs, instance)
    upstream = wanted([k.to_user_string() for k in _existing(defs, UPSTREAM_OF_SHARDS)])
    if "training_pool" in upstream or "training_pool_rejects" in upstream:  # one multi-asset: both or neither
        upstream = sorted(set(upstream) | {"training_pool", "training_pool_rejects"})
    logger.info(f"materializing {upstream or 'nothing upstream of the shards'}")
    materialize_assets(defs, instance, [AssetKey(n) for n in upstream])
    done += upstream

    def run_partitions(asset_name: str, what: str) -> None:
        for key in partition_keys(defs, asset_name):
            if not only_stale or f"{asset_name}[{key}]" in pending:
                logger.info(f"materializing {what} {key}")
                materialize_assets(defs, instance, [AssetKey(asset_name)], partition_key=key)
                done.append(f"{asset_name}[{key}]")

    run_partitions(SHARDED, "training gradients, shard")
    warmup = wanted([k.to_user_string() for k in _existing(defs, [WARMUP])])
    if warmup:
        logger.info("materializing the warm-up run's checkpoints")
        materialize_assets(defs, instance, [AssetKey(WARMUP)])
        done += warmup
    run_partitions(AT_CHECKPOINTS, "rollouts and gradients at warm-up checkpoint")
    downstream = wanted([k.to_user_string() for k in _existing(defs, DOWNSTREAM_OF_SHARDS)])
    logger.info(f"materializing {downstream or 'nothing downstream of the shards'}")
    materialize_assets(defs, instance, [AssetKey(n) for n in downstream])
    return done + downstream
