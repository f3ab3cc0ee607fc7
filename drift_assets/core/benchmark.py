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
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from drift_assets.core.attribution import scores_frame, target_gradient
from drift_assets.core.influence import Curvature, fit_curvature, score_pool
from drift_assets.core.selection import select

METHODS = ("full", "random", "offpolicy", "drift", "drift_positive", "drift_nodebias", "loss", "oracle")


@dataclass(frozen=True)
class ScoringSettings:
    targets: str = "onpolicy"
    weighting: str = "signed"
    hessian: str = "identity"
    damping: float = 0.1
    debias: str = "unit"


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
    """Scores the pool for several methods from in-memory gradients, fitting each Hessian once."""

    def __init__(self, example_ids: list[str], training_gradients: np.ndarray, validation_gradients: pl.DataFrame, grades: pl.DataFrame):
        self.example_ids = example_ids
        self.training_gradients = training_gradients
        self.validation_gradients = validation_gradients
        self.grades = grades
        self._curvatures: dict[tuple[str, float], Curvature] = {}

    def _curvature(self, hessian: str, damping: float) -> Curvature:
        key = (hessian, damping)
        if key not in self._curvatures:
            self._curvatures[key] = fit_curvature(hessian, [self.training_gradients], self.training_gradients.shape[1], damping)
        return self._curvatures[key]

    def scores(self, scoring: ScoringSettings, training_pool: pl.DataFrame) -> pl.DataFrame:
        target = target_gradient(self.validation_gradients, self.grades, scoring.targets, scoring.weighting)
        curvature = self._curvature(scoring.hessian, scoring.damping)
        pool_scores = score_pool(lambda: iter([(self.example_ids, self.training_gradients)]), target.vector, curvature, scoring.debias)
        return scores_frame(pool_scores, training_pool)


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
