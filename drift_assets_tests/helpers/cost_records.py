"""Recorded costs of a small pipeline, figured by hand: the oracle of the cost tests."""

from __future__ import annotations

from drift_assets.core.runtime.cost import Recorded, StageCost


def record(asset, checkpoint, run, forward, backward=0, seconds=1.0, partition=None):
    figures = StageCost("x", forward, backward, seconds).metadata()
    return Recorded(asset, partition or checkpoint, checkpoint, run, figures)


REFERENCE = StageCost("full-pool SFT", 1000, 1000)  # 3,000 token passes


def demo_records():
    """Two checkpoints (the base model and one warm-up step, "000010"), two shards each, the evaluation."""
    return [
        # The warm-up run saved both of its checkpoints in one run: the same figures on each partition.
        record("warmup_checkpoints", "000010", "warm", 900, 900, 20.0),
        record("warmup_checkpoints", "000020", "warm", 900, 900, 20.0),
        record("rollouts", "base", "r0", 60, seconds=2.0),
        record("rollouts", "000010", "r1", 40, seconds=2.0),
        record("projection_basis", "base", "r0", 30, 30),
        record("validation_gradients", "base", "r0", 50, 50),
        record("training_gradient_projections", "base", "s0", 100, 100, partition="base|000"),
        record("training_gradient_projections", "base", "s1", 110, 110, partition="base|001"),
        record("projection_basis", "000010", "r1", 30, 30),
        record("validation_gradients", "000010", "r1", 50, 50),
        record("training_gradient_projections", "000010", "s2", 100, 100, partition="000010|000"),
        Recorded("training_gradient_projections", "000010|001", "000010", None, {}),  # never materialized
        record("influence_scores", None, "score", 0, 0, 4.0),
        record("refined_model_evaluation", None, "eval", 2000, 1500, 30.0),
    ]
