"""Comparing data-selection methods by what fine-tuning on their selection does to accuracy.

Every method gets the same base model, the same SFT budget (optimizer steps, batch size, learning
rate) and the same seeds; only the data differs. Methods:

- ``full``: the whole pool.
- ``random``: a random subset of the size the DRIFT selection has.
- ``offpolicy``: influence against the *reference answers* (classic IF / LESS), unit debias.
- ``drift``: the configured on-policy influence settings.
- ``drift_positive``: DRIFT without signs (positive weighting: correct rollouts only).
- ``drift_nodebias``: DRIFT without debiasing.
- ``loss``: the examples the base model finds likeliest (lowest loss per response token) — the
  classic noise filter, which needs no validation data; a reference point, not an influence method.
- ``oracle``: a random subset of the examples that are *not* corrupted (where the pool says so, as
  the demo's hidden ``is_corrupted`` does): the accuracy a perfect noise filter reaches.

Selections (except ``full``) have the size the DRIFT selection has.
"""

from __future__ import annotations

import random
from dataclasses import replace

import polars as pl

from drift_assets.core.attribution import ScoringSettings, scores_frame
from drift_assets.core.influence import Curvature, fit_curvature
from drift_assets.core.selection import select
from drift_assets.core.trajectory import CheckpointGradients, combine_checkpoints, score_checkpoint

__all__ = ["METHODS", "MethodScorer", "ScoringSettings", "loss_scores", "paired_differences", "scoring_for", "selected_ids"]

METHODS = ("full", "random", "offpolicy", "drift", "drift_positive", "drift_nodebias", "loss", "oracle")


def scoring_for(method: str, drift: ScoringSettings) -> ScoringSettings | None:
    """The influence settings a method scores with (None: it does not score)."""
    if method not in METHODS:
        raise ValueError(f"benchmark.methods: unknown method {method!r} (known: {METHODS})")
    return {
        "full": None,
        "random": None,
        "loss": None,
        "oracle": None,
        "offpolicy": replace(drift, targets="offpolicy", debias="unit"),
        "drift": drift,
        "drift_positive": replace(drift, weighting="positive"),
        "drift_nodebias": replace(drift, debias="none"),
    }[method]


class MethodScorer:
    """Scores the pool for several methods from in-memory gradients, fitting each Hessian once per checkpoint.

    With several checkpoints (the base model and a warm-up run's), a method's score is their
    combination (:func:`~drift_assets.core.trajectory.combine_checkpoints`), as ``influence_scores`` has it.
    """

    def __init__(self, checkpoints: list[CheckpointGradients]):
        if not checkpoints:
            raise ValueError("nothing to score: no checkpoint gradients")
        self.checkpoints = checkpoints
        self._curvatures: dict[tuple[int, str, float], Curvature] = {}

    def _curvature(self, index: int, hessian: str, damping: float) -> Curvature:
        key = (index, hessian, damping)
        if key not in self._curvatures:
            training = self.checkpoints[index].training
            self._curvatures[key] = fit_curvature(hessian, [training], training.shape[1], damping)
        return self._curvatures[key]

    def scores(self, scoring: ScoringSettings, training_pool: pl.DataFrame) -> pl.DataFrame:
        along = [
            score_checkpoint(checkpoint, scoring, self._curvature(index, scoring.hessian, scoring.damping))
            for index, checkpoint in enumerate(self.checkpoints)
        ]
        return scores_frame(along[0] if len(along) == 1 else combine_checkpoints(along), training_pool)


def selected_ids(
    method: str,
    seed: int,
    training_pool: pl.DataFrame,
    scores: pl.DataFrame | None,
    selection_size: int,
    selection_method: str,
    fraction: float,
    k: int | None,
) -> list[str]:
    if method == "full":
        return training_pool["example_id"].to_list()
    if method == "random":
        ids = sorted(training_pool["example_id"].to_list())
        return random.Random(f"random-selection-{seed}").sample(ids, selection_size)
    if method == "oracle":
        if "is_corrupted" not in training_pool.columns:
            raise ValueError("benchmark method 'oracle' needs an is_corrupted column in the training pool (the demo's has one)")
        clean = sorted(training_pool.filter(~pl.col("is_corrupted"))["example_id"].to_list())
        return random.Random(f"oracle-selection-{seed}").sample(clean, min(selection_size, len(clean)))
    chosen = select(scores, selection_method, fraction, k)
    return scores.filter(chosen)["example_id"].to_list()


def loss_scores(losses: pl.DataFrame) -> pl.DataFrame:
    """example_id, score = −(loss per response token) under the base model, rank (1 = likeliest)."""
    frame = losses.select("example_id", score=-pl.col("loss") / pl.col("n_tokens").clip(lower_bound=1))
    return frame.sort(["score", "example_id"], descending=[True, False]).with_row_index("rank", offset=1).with_columns(
        pl.col("rank").cast(pl.Int64)
    )


def paired_differences(table: pl.DataFrame, baseline: str = "full") -> pl.DataFrame:
    """method, difference_mean, difference_se, pairs: accuracy minus the baseline's on the same seed.

    Every method runs on the same seeds, so the difference is taken seed by seed; the standard error
    is that of the mean of those differences (None with fewer than two pairs). Two selections share
    little through a seed (its shuffle reorders each selection differently), so on the demo this
    is about as wide as the unpaired standard error. Empty where the table has no baseline rows.
    """
    reference = table.filter(pl.col("method") == baseline).select("seed", baseline_accuracy=pl.col("accuracy"))
    schema = {"method": pl.String, "difference_mean": pl.Float64, "difference_se": pl.Float64, "pairs": pl.UInt32}
    if reference.is_empty():
        return pl.DataFrame(schema=schema)
    paired = table.join(reference, on="seed", how="inner").with_columns(difference=pl.col("accuracy") - pl.col("baseline_accuracy"))
    summary = paired.group_by("method", maintain_order=True).agg(
        difference_mean=pl.col("difference").mean(),
        difference_se=pl.col("difference").std() / pl.len().sqrt(),
        pairs=pl.len(),
    )
    return summary.with_columns(pl.when(pl.col("pairs") >= 2).then(pl.col("difference_se"))).select(
        [pl.col(name).cast(dtype) for name, dtype in schema.items()]
    )
