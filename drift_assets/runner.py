"""Materializing the graph from Python, in the order Dagster's UI or a backfill would.

Runs go through the instance given (``DagsterInstance.get()`` under ``DAGSTER_HOME`` for the CLI,
so ``make ui`` afterwards shows every run, as runs of the code location: see ``code_location``):
one for the warm-up run (where ``warmup.steps`` is set), then at each checkpoint one for its
rollouts → validation gradients and one per training-gradient shard.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, Definitions, RunsFilter

from drift_assets import staleness
from drift_assets.code_location import execute_run
from drift_assets.core.runtime.processes import is_alive
from drift_assets.defs.automation import PIPELINE_GROUPS
from drift_assets.defs.checkpoints import WARMUP, Partitioned, partitioned
from drift_assets.terminal import terminal_run_config

logger = logging.getLogger(__name__)

# Dagster's tags for one run over a range of partitions (what a single-run backfill sets).
PARTITION_RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


class InstanceError(RuntimeError):
    """$DAGSTER_HOME names no usable Dagster instance."""


@contextmanager
def instance_for_runs() -> Iterator[DagsterInstance]:
    """The instance under $DAGSTER_HOME; without it, one in a temporary directory whose run history
    goes with it (an in-memory instance cannot answer the GraphQL staleness queries). Raises
    :class:`InstanceError`, naming the variable, where $DAGSTER_HOME is unusable."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        with tempfile.TemporaryDirectory(prefix="drift-dagster-") as home, DagsterInstance.local_temp(home) as instance:
            yield instance
        return
    if not os.path.isabs(home):
        raise InstanceError(f"DAGSTER_HOME={home} is a relative path: set it to the absolute path of a directory")
    if not os.path.isdir(home):
        raise InstanceError(
            f"DAGSTER_HOME={home} does not exist or is not a directory: create it, or unset DAGSTER_HOME to keep "
            "this run's history in a temporary instance"
        )
    try:
        instance = DagsterInstance.get()
    except Exception as error:  # a dagster.yaml that does not parse or validate
        first = " ".join(str(error).split())
        raise InstanceError(f"DAGSTER_HOME={home}: its Dagster instance cannot be opened: {first}") from None
    with instance:
        yield instance


@dataclass(frozen=True)
class Order:
    """What :func:`materialize_pipeline` runs, in order, read from the asset graph: the demo's setup,
    the unpartitioned assets the partitioned ones read (``upstream``), the partitioned ones (the
    warm-up's range, then each checkpoint's chain and its shards), then the unpartitioned rest."""

    demo: list[str]
    upstream: list[str]
    partitioned: Partitioned
    downstream: list[str]


def run_order(defs: Definitions) -> Order:
    graph = defs.resolve_asset_graph()
    nodes = [graph.get(key) for key in graph.toposorted_asset_keys if graph.get(key).is_materializable]
    pipeline = {node.key.to_user_string(): node for node in nodes if node.group_name in PIPELINE_GROUPS}
    parts = partitioned({name: node.partitions_def for name, node in pipeline.items()})
    # First: what reads only the sources (a bad input file fails before any model step) and every
    # ancestor of a partitioned asset, each with the other outputs of its multi-asset.
    first = {name for name, node in pipeline.items() if not node.parent_keys & {n.key for n in pipeline.values()}}
    frontier = [node.key for node in pipeline.values() if node.partitions_def is not None]
    while frontier:
        for parent in graph.get(frontier.pop()).parent_keys:
            if parent.to_user_string() in pipeline and parent.to_user_string() not in first:
                first.add(parent.to_user_string())
                frontier.append(parent)
    first |= {key.to_user_string() for name in first for key in defs.resolve_assets_def(name).keys}
    unpartitioned = [name for name, node in pipeline.items() if node.partitions_def is None]
    return Order(
        demo=[node.key.to_user_string() for node in nodes if node.group_name == "demo"],
        upstream=[name for name in unpartitioned if name in first],
        partitioned=parts,
        downstream=[name for name in unpartitioned if name not in first],
    )


def _whole(defs: Definitions, names: list[str]) -> list[str]:
    """``names`` and the assets each must run with (the other outputs of a multi-asset that cannot
    run some of its outputs alone), in the order given."""
    whole = list(names)
    for name in names:
        definition = defs.resolve_assets_def(name)
        if not definition.can_subset:
            whole += [key.to_user_string() for key in definition.keys if key.to_user_string() not in whole]
    return whole


# Runs started from Python carry their process, so that a later start can tell a run whose
# process was killed (which Dagster would show as STARTED forever) from one still going.
PROCESS_TAG = "drift_assets/process"


def _run(job, instance: DagsterInstance, verbose: bool, tags: dict[str, str] | None = None, **selection):
    """One run of ``job`` started from this process: tagged with it (``fail_abandoned_runs``), logged
    to the terminal (``verbose``: Dagster's DEBUG events and stack traces)."""
    tags = {PROCESS_TAG: f"{socket.gethostname()}:{os.getpid()}", **(tags or {})}
    return execute_run(job, instance, run_config=terminal_run_config(verbose), tags=tags, **selection)


def materialize_assets(
    defs: Definitions,
    instance: DagsterInstance,
    keys: list[AssetKey],
    partition_key: str | None = None,
    verbose: bool = False,
    partition_range: tuple[str, str] | None = None,
) -> None:
    """One run that materializes ``keys`` (of one partition, or of a range of partitions, for
    partitioned assets); raises if it fails. ``verbose``: Dagster's DEBUG events and stack traces in
    the terminal."""
    if not keys:
        return
    job = defs.resolve_implicit_global_asset_job_def()
    tags = dict(zip(PARTITION_RANGE_TAGS, partition_range, strict=True)) if partition_range else None
    result = _run(job, instance, verbose, tags, asset_selection=keys, partition_key=partition_key)
    if not result.success:
        raise RuntimeError(f"run {result.run_id} failed while materializing {[k.to_user_string() for k in keys]}")


def run_method_benchmark(defs: Definitions, instance: DagsterInstance, verbose: bool = False) -> None:
    """One run of the ``method_benchmark`` job (it writes the method_benchmark table); raises if it fails.
    The pipeline's tables must be materialized: the job reads them from the warehouse."""
    result = _run(defs.resolve_job_def("method_benchmark"), instance, verbose)
    if not result.success:
        raise RuntimeError(f"run {result.run_id} of the method_benchmark job failed")


def fail_abandoned_runs(instance: DagsterInstance) -> list[str]:
    """Mark as failed the runs this machine started from Python whose process is gone (killed);
    returns their ids."""
    abandoned = []
    prefix = f"{socket.gethostname()}:"
    for run in instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING])):
        label = run.tags.get(PROCESS_TAG, "")
        if not label.startswith(prefix) or is_alive(int(label.rsplit(":", 1)[1])):
            continue
        instance.report_run_failed(run, f"its process ({label}) ended without finishing the run (killed?)")
        abandoned.append(run.run_id)
    return abandoned


def observe_sources(defs: Definitions, instance: DagsterInstance, verbose: bool = False) -> None:
    """Record the current content hash of every input file and the model directory."""
    _run(defs.resolve_job_def("observe_sources"), instance, verbose)


def partition_keys(defs: Definitions, asset_name: str) -> list[str]:
    """The partitions of ``asset_name``; none where the definitions do not have it."""
    if not defs.resolve_asset_graph().has(AssetKey(asset_name)):
        return []
    return list(defs.resolve_assets_def(asset_name).partitions_def.get_partition_keys())


def repair_damaged_tables(defs: Definitions, instance: DagsterInstance, warehouse) -> set[str]:
    """Find materialized assets whose table is gone, unreadable or missing data files, and tables laid
    out by an earlier release (other partition columns); move those aside and return their names: they
    are materialized again with what lies downstream of them. So are the partitions whose rows are gone
    and the models that a table names but that are gone from disk ("name[partition]" names)."""
    damaged = staleness.damaged_tables(defs, instance, warehouse)
    for name, problem in damaged.items():
        if warehouse.exists(name):
            problem += f"; moved to {warehouse.set_aside(name)}"
        logger.warning(f"{name}: {problem}; materializing it again")
    relaid = staleness.relaid_tables(defs, warehouse)
    for name, problem in relaid.items():
        logger.warning(f"{name}: {problem}; moved to {warehouse.set_aside(name, 'previous-layout')}, materializing it again")
    vanished = staleness.vanished_partitions(defs, instance, warehouse)
    for name, problem in vanished.items():
        logger.warning(f"{name}: {problem}; materializing it again")
    return set(damaged) | set(relaid) | set(vanished) | missing_models(defs, warehouse)


def prune_unconfigured_partitions(defs: Definitions, warehouse) -> dict[str, int]:
    """Delete the rows of partitions that are no longer configured (fewer ``projection.shards``, a
    warm-up step removed) from every partitioned table, each in one Delta commit, so that the tables
    hold what is configured now (the reads see only that anyway) and stop growing. Returns the rows
    deleted per table. The model directories of removed warm-up steps are reported, not deleted:
    another warehouse may use the same ``warmup.checkpoint_dir``."""
    from drift_assets.core.data.stored import outside

    deleted = {}
    for name, partitions in staleness.configured_partitions(defs, warehouse).items():
        gone = sorted(
            values
            for values in warehouse.partitions_held(name)
            if any(value not in configured for configured, value in zip(partitions.values(), values, strict=True))
        )
        if not gone:
            continue
        if name == WARMUP:
            # Only the warm-up run's own: a directory warmup.checkpoints listed (no step) is the user's.
            trained = ~pl.col("checkpoint").is_in(partitions["checkpoint"]) & pl.col("step").is_not_null()
            for path in _saved_paths(warehouse, trained).values():
                if Path(path).exists():
                    logger.warning(f"{WARMUP}: {path} holds a checkpoint no longer configured: delete it to free the space")
        deleted[name] = warehouse.delete_rows(name, outside(partitions))
        logger.info(
            f"{name}: deleted the {deleted[name]} rows of partitions no longer configured "
            f"({', '.join('|'.join(values) for values in gone)})"
        )
    return deleted


def _saved_paths(warehouse, where: pl.Expr) -> dict[str, str]:
    """checkpoint → model directory of the warm-up table's rows ``where`` holds (none from a table
    without paths, such as an earlier release's)."""
    table = warehouse.scan(WARMUP)
    if "path" not in table.collect_schema().names():
        return {}
    return dict(table.filter(where).select("checkpoint", "path").collect().iter_rows())


def missing_models(defs: Definitions, warehouse) -> set[str]:
    """The saved models whose table row names a directory that is gone (deleted to retrain or to free
    the space, say): "demo_base_model" and the configured warm-up checkpoints ("warmup_checkpoints[key]").
    Dagster would call them up to date, and every step that loads one would fail."""
    missing = set()
    if defs.resolve_asset_graph().has(AssetKey("demo_base_model")) and warehouse.exists("demo_base_model"):
        path = warehouse.scan("demo_base_model").select("path").collect()["path"][0]
        if not Path(path).exists():
            logger.warning(f"demo_base_model: {path} is gone; training the demo model again")
            missing.add("demo_base_model")
    keys = partition_keys(defs, WARMUP)
    if keys and warehouse.exists(WARMUP):
        for checkpoint, path in _saved_paths(warehouse, pl.col("checkpoint").is_in(keys)).items():
            if not Path(path).exists():
                logger.warning(f"{WARMUP}[{checkpoint}]: {path} is gone; training the warm-up run again")
                missing.add(f"{WARMUP}[{checkpoint}]")
    return missing


def materialize_pipeline(
    defs: Definitions,
    instance: DagsterInstance,
    include_demo: bool = True,
    only_stale: bool = False,
    warehouse=None,
    verbose: bool = False,
) -> list[str]:
    """Demo setup (if present), observe sources, the inputs, the warm-up run (where configured), then
    at each checkpoint its rollouts → validation gradients and every training-gradient shard, then
    scores onward.

    ``only_stale`` materializes only what is stale or missing (and what lies downstream of it), as
    Dagster's stale-status resolver sees it, so that re-running with nothing changed costs nothing.
    Given the ``warehouse``, a table (or partition, or saved model) that was deleted or damaged since
    it was written counts as missing, and the rows of partitions no longer configured are deleted.
    ``verbose``: Dagster's DEBUG events and stack traces in the terminal. Returns what was
    materialized ("name", or "name[partition]" as Dagster writes partition keys).
    """
    done: list[str] = []

    def wanted(names: list[str]) -> list[str]:
        return [n for n in names if not only_stale or n in pending]

    def run(names: list[str], what: str, **partition) -> None:
        if names:
            logger.info(f"materializing {what}")
            materialize_assets(defs, instance, [AssetKey(n.split("[")[0]) for n in names], verbose=verbose, **partition)
            done.extend(names)

    damaged = set()
    if warehouse is not None:
        damaged = repair_damaged_tables(defs, instance, warehouse)
        prune_unconfigured_partitions(defs, warehouse)
    pending: set[str] = staleness.needs_materialization(defs, instance, damaged) if only_stale else set()
    order = run_order(defs)
    demo = wanted(order.demo)
    if include_demo:
        run(demo, f"{demo}")
    observe_sources(defs, instance, verbose)
    if only_stale:
        pending = staleness.needs_materialization(defs, instance, damaged)
        # Why each is refreshed: a settings change named with its old and new values. Only told: a
        # question Dagster cannot answer here leaves the run as it is.
        try:
            causes = staleness.stale_causes(defs, instance)
        except Exception as error:
            logger.warning(f"why the stale assets are stale could not be read ({type(error).__name__}: {error})")
            causes = {}
        graph = defs.resolve_asset_graph()
        jobs = {key.to_user_string(): staleness.job_name(graph, key) for key in staleness.job_written(graph)}
        for name, told in causes.items():
            # An external asset's job is launched on purpose, never by this refresh.
            launch = f" (not refreshed here: launch the {jobs[name]} job to bring it up to date)" if name in jobs else ""
            logger.info(f"{name} is unsynced: {'; '.join(told)}{launch}")
    upstream = _whole(defs, wanted(order.upstream))
    run(upstream, f"{upstream}")

    for name in order.partitioned.over_steps:  # one run over the range: the warm-up trains once
        steps = wanted([f"{name}[{key}]" for key in partition_keys(defs, name)])
        if steps:
            first, last = (step[len(name) + 1 : -1] for step in (steps[0], steps[-1]))
            run(steps, f"the warm-up run's checkpoints {first}..{last}", partition_range=(first, last))
    chain = list(order.partitioned.at_checkpoint)
    for checkpoint in partition_keys(defs, chain[0]) if chain else []:
        run(wanted([f"{name}[{checkpoint}]" for name in chain]), f"checkpoint {checkpoint}", partition_key=checkpoint)
        for sharded in order.partitioned.sharded:  # MultiPartitionKeys, "checkpoint|shard": one run per shard
            shards = [key for key in partition_keys(defs, sharded) if key.keys_by_dimension["checkpoint"] == checkpoint]
            keys = [key for key in shards if not only_stale or f"{sharded}[{key}]" in pending]
            done.extend(materialize_shards(defs, instance, sharded, checkpoint, keys, verbose))
    run(wanted(order.downstream), "scores onward")
    return done


def materialize_shards(
    defs: Definitions, instance: DagsterInstance, sharded: str, checkpoint: str, keys: list, verbose: bool = False
) -> list[str]:
    """One run per shard of ``sharded`` (the training gradients) at ``checkpoint`` (``keys``: their partition keys), and
    after each one line for the whole pass (:class:`~drift_assets.core.runtime.progress.PassProgress`): a
    shard done within 10 s logs its own progress at debug level only. Returns what was materialized."""
    from drift_assets.core.runtime.progress import PassProgress

    names = [f"{sharded}[{key}]" for key in keys]
    if not keys:
        return names
    progress = PassProgress(
        f"checkpoint {checkpoint} training gradients", [key.keys_by_dimension["shard"] for key in keys], logger.info
    )
    for key in keys:
        materialize_assets(defs, instance, [AssetKey(sharded)], verbose=verbose, partition_key=key)
        metadata = staleness.latest_record(instance, AssetKey(sharded), str(key)).asset_materialization.metadata
        computed, reused = (int(metadata[name].value) if name in metadata else 0 for name in ("rows_computed", "rows_reused"))
        progress.part_done(key.keys_by_dimension["shard"], computed, reused)
    return names
