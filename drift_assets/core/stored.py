"""Reading the pipeline's stored gradient tables, shard by shard or checkpoint by checkpoint.

These reads bypass Dagster's IO manager on purpose: reading every partition at once through it is
not supported, and streaming keeps memory at one shard. Any object with ``scan(asset_name)``
returning a polars ``LazyFrame`` serves (the pipeline's ``Warehouse``, or a test's own reader).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import polars as pl

from drift_assets.core.benchmark import loss_scores, per_token_loss
from drift_assets.core.gradients import shard_keys, vectors
from drift_assets.core.trajectory import CheckpointGradients, checkpoint_key, split_checkpoint_table

ShardBatch = tuple[list[str], np.ndarray, set[tuple[str, str]]]


class TableReader(Protocol):
    def scan(self, asset_name: str) -> pl.LazyFrame: ...


def shard_batches(tables: TableReader, n_shards: int) -> Callable[[], Iterator[ShardBatch]]:
    """A re-iterable stream of (example_ids, gradients, {(model, projection fingerprint)}) per shard."""
    table = tables.scan("training_gradient_projections")

    def batches() -> Iterator[ShardBatch]:
        for shard in shard_keys(n_shards):
            frame = (
                table.filter(pl.col("shard") == shard)
                .select("example_id", "grad", "model_fingerprint", "projection_fingerprint")
                .collect()
            )
            if not frame.is_empty():
                fingerprints = set(zip(frame["model_fingerprint"], frame["projection_fingerprint"], strict=True))
                yield frame["example_id"].to_list(), vectors(frame), fingerprints

    return batches


def base_checkpoint(
    tables: TableReader, n_shards: int, validation_gradients: pl.DataFrame, grades: pl.DataFrame
) -> CheckpointGradients:
    """The base model's gradients, every shard in memory (the method benchmark scores many ways at once)."""
    ids, matrices, fingerprints = [], [], set()
    for batch_ids, matrix, shard_fingerprints in shard_batches(tables, n_shards)():
        ids += batch_ids
        matrices.append(matrix)
        fingerprints |= shard_fingerprints
    return CheckpointGradients("base", ids, np.concatenate(matrices), validation_gradients, grades, fingerprints)


def warmup_checkpoints_along(tables: TableReader, steps: list[int]) -> Iterator[CheckpointGradients]:
    """The warm-up checkpoints' gradients, one checkpoint in memory at a time."""
    table = tables.scan("checkpoint_gradients") if steps else None
    for step in steps:
        frame = table.filter(pl.col("checkpoint") == checkpoint_key(step)).collect()
        if frame.is_empty():
            raise ValueError(
                f"checkpoint_gradients has no rows for checkpoint {checkpoint_key(step)}: materialize that partition"
            )
        yield split_checkpoint_table(frame)


def base_losses(tables: TableReader, training_pool: pl.DataFrame) -> pl.DataFrame:
    """example_id, loss_per_token: each pool example's loss per response token under the base model."""
    losses = tables.scan("training_gradient_projections").select("example_id", "loss", "n_tokens")
    return per_token_loss(losses.filter(pl.col("example_id").is_in(training_pool["example_id"].implode())).collect())


def pool_loss_scores(tables: TableReader, training_pool: pl.DataFrame) -> pl.DataFrame:
    """The ``loss`` method's scores of the pool's examples, from the base model's stored losses."""
    return loss_scores(base_losses(tables, training_pool))
