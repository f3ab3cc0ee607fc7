"""Reading the pipeline's stored tables as they are configured now: shard by shard, checkpoint by checkpoint.

These reads bypass Dagster's IO manager on purpose: reading every partition at once through it is
not supported, and streaming keeps memory at one shard. Any object with ``scan(asset_name)``
returning a polars ``LazyFrame`` serves as the tables underneath (the pipeline's ``Warehouse``, or a
test's own reader); :class:`ConfiguredTables` shows them as the settings configure them now.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import polars as pl

from drift_assets.core.attribution.scores import ScoringSettings, diagnostics, noise_auc, scores_frame
from drift_assets.core.attribution.trajectory import (
    BASE,
    Batches,
    CheckpointGradients,
    ScoredAlong,
    ranked_scores,
    score_along,
)
from drift_assets.core.gradients.tables import LOSS_PER_TOKEN, shard_keys, vectors
from drift_assets.core.study.benchmark import MethodScorer, loss_scores

# What to run where one table holds an example more than once: every table rewritten from the
# configured partitions only (the runner deletes the others first).
REPAIR_DUPLICATES = "run `python -m drift_assets materialize --all` (it rewrites every table from the configured partitions)"


class TableReader(Protocol):
    def scan(self, asset_name: str) -> pl.LazyFrame: ...


@dataclass(frozen=True)
class ConfiguredTables:
    """The tables as configured now: a table partitioned by checkpoint (× shard) shows only the rows of
    the configured checkpoints and shards.

    Such a table may still hold partitions that are no longer configured (fewer ``projection.shards``,
    a warm-up step removed): Dagster leaves them in place, and their rows repeat examples that the
    configured partitions hold. Every read that bypasses the IO manager goes through ``scan`` here.
    """

    tables: TableReader
    checkpoints: tuple[str, ...]
    n_shards: int

    @classmethod
    def configured_by(cls, settings, tables: TableReader) -> ConfiguredTables:
        """``tables`` as ``settings`` (the settings, or an asset's view of them) configure them."""
        return cls(tables, tuple(settings.checkpoints), settings.projection.shards)

    @property
    def partitions(self) -> dict[str, list[str]]:
        """The configured values of each partition column."""
        return {"checkpoint": list(self.checkpoints), "shard": shard_keys(self.n_shards)}

    def scan(self, asset_name: str) -> pl.LazyFrame:
        frame = self.tables.scan(asset_name)
        columns = frame.collect_schema().names()
        for column, values in self.partitions.items():
            if column in columns:
                frame = frame.filter(pl.col(column).is_in(values))
        return frame


def outside(partitions: Mapping[str, Sequence[str]]) -> str:
    """The Delta predicate of the rows outside ``partitions`` (column → configured values): a row
    belongs where every one of its partition columns holds a configured value."""
    return " OR ".join(
        f"{column} NOT IN ({', '.join(_sql_string(value) for value in values)})" for column, values in partitions.items()
    )


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def shard_batches(tables: ConfiguredTables, checkpoint: str = BASE) -> Batches:
    """A re-iterable stream of (example_ids, gradients) per configured shard of one checkpoint's training gradients."""
    table = tables.scan("training_gradient_projections").filter(pl.col("checkpoint") == checkpoint)

    def batches() -> Iterator[tuple[list[str], np.ndarray]]:
        for shard in shard_keys(tables.n_shards):
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


def gradients_along(tables: ConfiguredTables) -> Iterator[CheckpointGradients]:
    """The configured checkpoints' stored gradients and grades in order, the base model's first; the
    training gradients stay on disk, streamed by shard."""
    for checkpoint in tables.checkpoints:
        fingerprints = (
            tables.scan("training_gradient_projections")
            .filter(pl.col("checkpoint") == checkpoint)
            .select("model_fingerprint", "projection_fingerprint")
            .unique()
            .collect()
        )
        if fingerprints.is_empty():
            raise ValueError(f"training_gradient_projections has no rows for checkpoint {checkpoint}: materialize its partitions")
        yield CheckpointGradients(
            checkpoint,
            shard_batches(tables, checkpoint),
            rows_at(tables, "validation_gradients", checkpoint),
            rows_at(tables, "grades", checkpoint),
            set(fingerprints.iter_rows()),
        )


def base_losses(tables: ConfiguredTables, training_pool: pl.DataFrame) -> pl.DataFrame:
    """example_id, loss_per_token: each pool example's loss per response token under the base model."""
    return losses_along(tables, training_pool, BASE).drop("checkpoint")


def stored_scorer(tables: ConfiguredTables, training_pool: pl.DataFrame) -> MethodScorer:
    """The method benchmark's scorer of ``training_pool``: the stored gradients along the checkpoints,
    the base model's losses (the loss method's scores and the likelihood blend's order) and the
    losses along the checkpoints (the dynamics method's)."""
    return MethodScorer(list(gradients_along(tables)), base_losses(tables, training_pool), losses_along(tables, training_pool))


def pool_loss_scores(tables: ConfiguredTables, training_pool: pl.DataFrame) -> pl.DataFrame:
    """The ``loss`` method's scores of the pool's examples, from the base model's stored losses."""
    return loss_scores(base_losses(tables, training_pool))


def one_row_per_example(table: pl.DataFrame, example_ids: Iterable[str], name: str) -> str | None:
    """What keeps ``table`` (named ``name``) from holding exactly one row per example of ``example_ids``
    (with how to repair it), or None."""
    counts = table.group_by("example_id").len()
    repeated = counts.filter(pl.col("len") > 1).sort("example_id")
    expected = set(example_ids)
    present = set(counts["example_id"])
    problems = []
    if repeated.height:
        problems.append(
            f"{repeated.height} example(s) more than once ({table.height - counts.height} extra rows; "
            f"e.g. {repeated['example_id'][0]} {repeated['len'][0]} times)"
        )
    if expected - present:
        problems.append(f"{len(expected - present)} pool example(s) missing (e.g. {min(expected - present)})")
    if present - expected:
        problems.append(f"{len(present - expected)} example(s) not in the pool (e.g. {min(present - expected)})")
    if not problems:
        return None
    return f"{name} should hold one row per pool example ({len(expected)}), but holds {'; '.join(problems)}: {REPAIR_DUPLICATES}"


def losses_along(tables: ConfiguredTables, training_pool: pl.DataFrame, checkpoint: str | None = None) -> pl.DataFrame:
    """example_id, checkpoint, loss_per_token: each pool example's loss per response token at every
    checkpoint (at ``checkpoint`` alone, where given; an empty response counts one token)."""
    frame = tables.scan("training_gradient_projections").filter(pl.col("example_id").is_in(training_pool["example_id"].implode()))
    if checkpoint is not None:
        frame = frame.filter(pl.col("checkpoint") == checkpoint)
    return frame.select("example_id", "checkpoint", LOSS_PER_TOKEN).collect()


@dataclass(frozen=True)
class StoredInfluence:
    """``influence_scores``'s table (one row per pool example, with the base model's loss per token),
    the scores along the checkpoints it combines, its gradient-hacking diagnostics
    (:func:`~drift_assets.core.attribution.scores.diagnostics`) and a row of figures per checkpoint."""

    table: pl.DataFrame
    along: ScoredAlong
    figures: dict[str, float]
    checkpoint_rows: list[dict]


def stored_influence(
    tables: ConfiguredTables,
    training_pool: pl.DataFrame,
    scoring: ScoringSettings,
    log: Callable[[str], None],
    progress: Callable[[int], None] | None = None,
) -> StoredInfluence:
    """The pool's influence scores from the stored gradients, streamed checkpoint by checkpoint and
    shard by shard, ranked (with ``scoring``'s likelihood blend).
    Raises where the result would not hold one row per pool example."""
    along = score_along(gradients_along(tables), scoring, log=log, progress=progress)
    checkpoint_rows = [
        {
            "checkpoint": at.checkpoint,
            "pass_at_1": at.pass_at_1,
            "reference_share": at.target.reference_share,
            "noise_auc": noise_auc(scores_frame(at.scores, training_pool), training_pool),
        }
        for at in along.checkpoints
    ]
    losses = base_losses(tables, training_pool)
    table = ranked_scores(along, training_pool, losses, scoring.likelihood_blend)
    table = table.join(losses, on="example_id", how="left", maintain_order="left")
    problem = one_row_per_example(table, training_pool["example_id"], "influence_scores")
    if problem:  # nothing of it is committed
        raise ValueError(problem)
    return StoredInfluence(table, along, diagnostics(table, training_pool), checkpoint_rows)
