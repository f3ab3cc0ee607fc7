"""DRIFT along a warm-up run: the pool scored at several checkpoints, the scores combined.

First-order influence at one checkpoint measures how a small step on an example pushes against the
model's *current* errors. When those errors lean one way (the demo's base model answers too low
more often than too high), the signed target points "answer higher", and examples whose answers
are too high score above correct ones. Full SFT is not a small step. LESS scores over the
checkpoints of a short warm-up run and TracIn-CP sums over a training trajectory for the same
reason: the errors the model makes change along the run, and so does what pushes against them.

Every checkpoint keeps the same-checkpoint rule (docs/method.md): its own rollouts, grades, basis
and gradients. The scores of each checkpoint are standardized (their scale follows ‖g‖, which
shrinks as the model improves) and averaged, the base model's included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from drift_assets.core.attribution import ScoringSettings, TargetGradient, check_same_checkpoint, target_gradient
from drift_assets.core.gradients import GRADIENT_SCHEMA, vectors
from drift_assets.core.influence import Curvature, PoolScores, fit_curvature, score_pool
from drift_assets.core.sft import SftOptions, fine_tune

CHECKPOINT_SCHEMA = {
    "checkpoint": pl.String,
    "role": pl.String,
    "id": pl.String,
    "query_id": pl.String,
    "completion": pl.String,
    "correct": pl.Boolean,
    "reward": pl.Float64,
    **GRADIENT_SCHEMA,
}
ROLES = ("training", "rollout", "reference")


def checkpoint_key(step: int) -> str:
    """The partition key of a warm-up step: zero-padded so that keys sort as steps do."""
    return f"{step:06d}"


def warm_up(
    model,
    tokenizer,
    messages_json: Sequence[str],
    options: SftOptions,
    steps: Sequence[int],
    save: Callable[[int], None],
    log: Callable[[str], None],
) -> dict[int, float]:
    """Fine-tune ``model`` up to the last of ``steps``, calling ``save(step)`` at each; returns the loss at each."""
    wanted = set(steps)
    losses: dict[int, float] = {}

    def after_step(step: int, loss: float) -> None:
        if step in wanted:
            save(step)
            losses[step] = loss
            log(f"warm-up checkpoint at step {step}: loss {loss:.4f}")

    fine_tune(model, tokenizer, messages_json, options, log=log, after_step=after_step)
    return losses


def checkpoint_table(
    checkpoint: str, training: pl.DataFrame, validation: pl.DataFrame, grades: pl.DataFrame, rollouts: pl.DataFrame
) -> pl.DataFrame:
    """One table for a checkpoint: its training gradients, its rollouts' gradients with grades, the references' gradients.

    ``training`` is a gradient frame keyed by example_id, ``validation`` one as ``validation_gradients``
    has it (rollout_id, query_id, target), ``grades`` and ``rollouts`` the tables of those names.
    """
    gradient_columns = list(GRADIENT_SCHEMA)
    graded = validation.join(grades.select("rollout_id", "correct", "reward"), on="rollout_id", how="left").join(
        rollouts.select("rollout_id", "completion"), on="rollout_id", how="left"
    )
    parts = [
        training.select(*gradient_columns, role=pl.lit("training"), id=pl.col("example_id")),
        graded.select(
            "query_id", "completion", "correct", "reward", *gradient_columns, role=pl.col("target"), id=pl.col("rollout_id")
        ),
    ]
    table = pl.concat(parts, how="diagonal_relaxed").with_columns(checkpoint=pl.lit(checkpoint))
    return table.select([pl.col(name).cast(dtype) for name, dtype in CHECKPOINT_SCHEMA.items()])


@dataclass
class CheckpointGradients:
    """What one checkpoint contributes to scoring, in the shapes the base model's tables have."""

    checkpoint: str
    example_ids: list[str]
    training: np.ndarray  # (n, k)
    validation_gradients: pl.DataFrame  # rollout_id, query_id, target, grad, fingerprints
    grades: pl.DataFrame  # rollout_id, query_id, correct, reward
    training_fingerprints: set[tuple[str, str]]  # {(model, projection)} of the training rows


def split_checkpoint_table(table: pl.DataFrame) -> CheckpointGradients:
    """The inverse of :func:`checkpoint_table` for one checkpoint's rows."""
    checkpoints = table["checkpoint"].unique().to_list()
    if len(checkpoints) != 1:
        raise ValueError(f"expected the rows of one checkpoint, got {sorted(checkpoints)}")
    unknown = set(table["role"].unique()) - set(ROLES)
    if unknown:
        raise ValueError(f"checkpoint {checkpoints[0]}: unknown roles {sorted(unknown)}")
    training = table.filter(pl.col("role") == "training").sort("id")
    validation = table.filter(pl.col("role") != "training").rename({"id": "rollout_id", "role": "target"})
    rollouts = validation.filter(pl.col("target") == "rollout")
    return CheckpointGradients(
        checkpoints[0],
        training["id"].to_list(),
        vectors(training),
        validation.select("rollout_id", "query_id", "target", "grad", "model_fingerprint", "projection_fingerprint"),
        rollouts.select("rollout_id", "query_id", "correct", "reward"),
        set(zip(training["model_fingerprint"], training["projection_fingerprint"], strict=True)),
    )


def checkpoint_target(checkpoint: CheckpointGradients, scoring: ScoringSettings) -> TargetGradient:
    """The weighted validation gradient g at one checkpoint."""
    return target_gradient(
        checkpoint.validation_gradients, checkpoint.grades, scoring.targets, scoring.weighting, scoring.unsolved
    )


def score_checkpoint(
    checkpoint: CheckpointGradients,
    scoring: ScoringSettings,
    curvature: Curvature | None = None,
    target: TargetGradient | None = None,
) -> PoolScores:
    """The pool's influence scores at one checkpoint (``curvature``: a Hessian already fitted on its
    training gradients; ``target``: its :func:`checkpoint_target`, if already computed)."""
    target = target or checkpoint_target(checkpoint, scoring)
    check_same_checkpoint(checkpoint.training_fingerprints, target)
    if curvature is None:
        curvature = fit_curvature(scoring.hessian, [checkpoint.training], checkpoint.training.shape[1], scoring.damping)
    return score_pool(
        lambda: iter([(checkpoint.example_ids, checkpoint.training)]),
        target.vector,
        curvature,
        scoring.debias,
        scoring.debias_strength,
    )


def standardized(values: np.ndarray) -> np.ndarray:
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


def combine_checkpoints(scores: Sequence[PoolScores]) -> PoolScores:
    """The mean of the checkpoints' standardized scores (raw and debiased apart), in the first one's example order.

    grad_norm and self_influence are the first checkpoint's (the base model's): the diagnostics
    compare the score with the gradient norms of the model the pool is selected for.
    """
    if not scores:
        raise ValueError("no checkpoint scores to combine")
    first = scores[0]
    order = {example_id: index for index, example_id in enumerate(first.example_ids)}
    raw, debiased = [], []
    for checkpoint in scores:
        if set(checkpoint.example_ids) != set(order):
            missing = set(order) ^ set(checkpoint.example_ids)
            raise ValueError(f"checkpoints scored different examples ({len(missing)} differ, e.g. {sorted(missing)[:3]})")
        positions = np.array([order[example_id] for example_id in checkpoint.example_ids])
        aligned_raw, aligned = np.empty(len(order)), np.empty(len(order))
        aligned_raw[positions], aligned[positions] = checkpoint.score_raw, checkpoint.score
        raw.append(standardized(aligned_raw))
        debiased.append(standardized(aligned))
    return PoolScores(
        list(first.example_ids), np.mean(raw, axis=0), np.mean(debiased, axis=0), first.grad_norm, first.self_influence
    )
