"""The checkpoints the pool is scored at, as Dagster partitions, and the model behind each.

The base model is checkpoint ``base``; where ``warmup.steps`` is set, each warm-up step is one
more. Rollouts, grades, the projection basis and the validation gradients are partitioned by
checkpoint, the training gradients by checkpoint × shard, so a checkpoint (or one shard of it)
re-runs alone and the base model's tables stay fresh when only the warm-up run changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from dagster import (
    AssetDep,
    MultiPartitionsDefinition,
    PartitionsDefinition,
    StaticPartitionMapping,
    StaticPartitionsDefinition,
)

from drift_assets.core.attribution.trajectory import BASE
from drift_assets.core.gradients.tables import shard_keys
from drift_assets.core.training.adapters import is_adapter
from drift_assets.resources import ModelResource, Warehouse

WARMUP = "warmup_checkpoints"


def checkpoint_partitions(checkpoints: list[str]) -> StaticPartitionsDefinition:
    return StaticPartitionsDefinition(checkpoints)


def warmup_partitions(checkpoints: list[str]) -> StaticPartitionsDefinition:
    return StaticPartitionsDefinition(checkpoints[1:])


def checkpoint_shard_partitions(checkpoints: list[str], shards: int) -> MultiPartitionsDefinition:
    return MultiPartitionsDefinition(
        {"checkpoint": checkpoint_partitions(checkpoints), "shard": StaticPartitionsDefinition(shard_keys(shards))}
    )


@dataclass(frozen=True)
class Partitioned:
    """The partitioned assets, by how a run takes them (read from their partitions, not their names):
    ``at_checkpoint`` one run per checkpoint, ``sharded`` (checkpoint × shard) one run per shard, and
    ``over_steps`` (the warm-up's steps, partitions of their own) one run over the whole range, which
    trains once and saves each step."""

    at_checkpoint: tuple[str, ...]
    sharded: tuple[str, ...]
    over_steps: tuple[str, ...]


def partitioned(partitions: Mapping[str, PartitionsDefinition | None]) -> Partitioned:
    """Sorts ``partitions`` (asset name → its partitions, in the graph's order): the checkpoints are
    the ``checkpoint`` dimension of the checkpoint × shard partitions."""
    sharded = [name for name, p in partitions.items() if isinstance(p, MultiPartitionsDefinition)]
    checkpoints = {
        dimension.partitions_def
        for name in sharded
        for dimension in partitions[name].partitions_defs
        if dimension.name == "checkpoint"
    }
    single = [(name, p) for name, p in partitions.items() if p is not None and name not in sharded]
    return Partitioned(
        at_checkpoint=tuple(name for name, p in single if p in checkpoints),
        sharded=tuple(sharded),
        over_steps=tuple(name for name, p in single if p not in checkpoints),
    )


def model_deps(checkpoints: list[str]) -> list:
    """What the model at a checkpoint comes from: the base model, and for a warm-up step its saved
    checkpoint (the base partition depends on no warm-up partition, so a new warm-up run leaves it fresh)."""
    steps = checkpoints[1:]
    deps: list = ["base_model"]
    if steps:
        deps.append(AssetDep(WARMUP, partition_mapping=StaticPartitionMapping({key: key for key in steps})))
    return deps


def saved_checkpoint(model: ModelResource, path: str | Path) -> ModelResource:
    """The model a warm-up checkpoint saved at ``path`` stands for: a whole model directory, or a
    LoRA adapter on top of the base ``model``."""
    if is_adapter(path):
        return ModelResource(path=model.path, adapter=str(path), dtype=model.dtype, device=model.resolved_device)
    return ModelResource(path=str(path), dtype=model.dtype, device=model.resolved_device)


def checkpoint_model(checkpoint: str, model: ModelResource, warehouse: Warehouse) -> ModelResource:
    """The model at ``checkpoint``: the base model, or the warm-up checkpoint saved at that step,
    checked against the fingerprint recorded when it was saved."""
    if checkpoint == BASE:
        return model
    saved = (
        warehouse.scan(WARMUP).filter(pl.col("checkpoint") == checkpoint).collect()
        if warehouse.exists(WARMUP)
        else pl.DataFrame()
    )
    if saved.is_empty() or not Path(saved["path"][0]).is_dir():
        where = f" ({saved['path'][0]} is gone)" if not saved.is_empty() else ""
        raise ValueError(f"{WARMUP} has no checkpoint {checkpoint}{where}: materialize {WARMUP}[{checkpoint}]")
    at_checkpoint = saved_checkpoint(model, saved["path"][0])
    if at_checkpoint.fingerprint() != saved["model_fingerprint"][0]:
        raise ValueError(f"{at_checkpoint.path} changed since {WARMUP} saved it: re-materialize {WARMUP}[{checkpoint}]")
    return at_checkpoint
