"""Reading the pipeline's stored gradient tables, shard by shard or checkpoint by checkpoint.

These reads bypass Dagster's IO manager on purpose: reading every partition at once through it is
not supported, and streaming keeps memory at one shard. Any object with ``scan(asset_name)``
returning a polars ``LazyFrame`` serves (the pipeline's ``Warehouse``, or a test's own reader).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import polars as pl

from drift_assets.core.benchmark import loss_scores, per_token_loss
from drift_assets.core.gradients import shard_keys, vectors
from drift_assets.core.trajectory import BASE, Batches, CheckpointGradients


class TableReader(Protocol):
    def scan(self, asset_name: str) -> pl.LazyFrame: ...


def shard_batches(tables: TableReader, n_shards: int, checkpoint: str = BASE) -> Batches:
    """A re-iterable stream of (example_ids, gradients) per shard of one checkpoint's training gradients."""
    table = tables.scan("training_gradient_projections").filter(pl.col("checkpoint") == checkpoint)

    def batches() -> Iterator[tuple[list[str], np.ndarray]]:
        for shard in shard_keys(n_shards):
            frame = table.filter(pl.col("shard") == shard).select("example_id", "grad").collect()
            if not frame.is_empty():
                yield frame["example_id"].to_list(), vectors(frame)

    return batches


def rows_at(tables: TableReader, asset_name: str, checkpoint: str = BASE) -> pl.DataFrame:
    """One checkpoint's rows of a table partitioned by checkpoint (the base model's by default)."""
    frame = tables.scan(asset_name).filter(pl.col("checkpoint") == checkpoint).collect()
    if frame.is_empty():
        raise ValueError(f"{asset_name} has no rows for checkpoint {checkpoint}: materialize that partition")
    return frame


def checkpoint_gradients(tables: TableReader, checkpoint: str, n_shards: int) -> CheckpointGradients:
    """One checkpoint's stored gradients and grades; the training gradients stay on disk, streamed by shard."""
    fingerprints = (
        tables.scan("training_gradient_projections")
        .filter(pl.col("checkpoint") == checkpoint)
        .select("model_fingerprint", "projection_fingerprint")
        .unique()
        .collect()
    )
    if fingerprints.is_empty():
        raise ValueError(f"training_gradient_projections has no rows for checkpoint {checkpoint}: materialize its partitions")
    return CheckpointGradients(
        checkpoint,
        shard_batches(tables, n_shards, checkpoint),
        rows_at(tables, "validation_gradients", checkpoint),
        rows_at(tables, "grades", checkpoint),
        set(fingerprints.iter_rows()),
    )


def gradients_along(tables: TableReader, checkpoints: Sequence[str], n_shards: int) -> Iterator[CheckpointGradients]:
    """The checkpoints' stored gradients in order, the base model's first."""
    for checkpoint in checkpoints:
        yield checkpoint_gradients(tables, checkpoint, n_shards)


def base_losses(tables: TableReader, training_pool: pl.DataFrame) -> pl.DataFrame:
    """example_id, loss_per_token: each pool example's loss per response token under the base model."""
    losses = (
        tables.scan("training_gradient_projections").filter(pl.col("checkpoint") == BASE).select("example_id", "loss", "n_tokens")
    )
    return per_token_loss(losses.filter(pl.col("example_id").is_in(training_pool["example_id"].implode())).collect())


def pool_loss_scores(tables: TableReader, training_pool: pl.DataFrame) -> pl.DataFrame:
    """The ``loss`` method's scores of the pool's examples, from the base model's stored losses."""
    return loss_scores(base_losses(tables, training_pool))


def losses_along(tables: TableReader, checkpoints: Sequence[str], training_pool: pl.DataFrame) -> pl.DataFrame:
    """example_id, checkpoint, loss_per_token: each pool example's loss per response token at every checkpoint."""
    ids = training_pool["example_id"].implode()
    frame = (
        tables.scan("training_gradient_projections")
        .filter(pl.col("checkpoint").is_in(list(checkpoints)) & pl.col("example_id").is_in(ids))
        .select("example_id", "checkpoint", "loss", "n_tokens")
        .collect()
    )
    return frame.select("example_id", "checkpoint", loss_per_token=pl.col("loss") / pl.col("n_tokens").clip(lower_bound=1))
