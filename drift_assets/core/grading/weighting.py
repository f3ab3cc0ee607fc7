"""From graded rollouts to signed weights w_jk (docs/method.md).

- ``signed``:   w_jk = +1/n⁺_j for a correct rollout, −1/n⁻_j for an incorrect one.
- ``advantage``: w_jk = r_jk − mean_k r_jk.
- ``positive``: w_jk = 1/n⁺_j for correct rollouts, 0 otherwise (no push-down).

Queries whose rollouts are all correct or all wrong carry no contrast: ``signed`` and
``advantage`` skip them (advantage is zero there anyway), ``positive`` skips only all-wrong queries.
Weights are divided by the number of queries used, so J is a mean over queries and scores keep
their scale when queries are added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import polars as pl

Weighting = Literal["signed", "advantage", "positive"]
WEIGHTING_SCHEMES: tuple[str, ...] = get_args(Weighting)


class DegenerateGradesError(ValueError):
    """The grades leave the chosen weighting nothing to work with."""


@dataclass(frozen=True)
class WeightingSummary:
    scheme: str
    queries_total: int
    queries_used: int
    queries_all_correct: int
    queries_all_wrong: int
    queries_mixed: int
    rollouts_weighted: int

    @property
    def queries_skipped(self) -> int:
        return self.queries_total - self.queries_used


def rollout_weights(grades: pl.DataFrame, scheme: str) -> tuple[pl.DataFrame, WeightingSummary]:
    """``grades`` has rollout_id, query_id, correct, reward; returns (rollout_id, query_id, weight)."""
    if scheme not in WEIGHTING_SCHEMES:
        raise ValueError(f"influence.weighting must be one of {WEIGHTING_SCHEMES} (got {scheme!r})")
    if grades.is_empty():
        raise DegenerateGradesError("no graded rollouts: materialize rollouts and grades first")
    per_query = grades.group_by("query_id").agg(
        n_correct=pl.col("correct").cast(pl.Int64).sum(),
        n=pl.len(),
        mean_reward=pl.col("reward").mean(),
    )
    frame = grades.join(per_query, on="query_id")
    mixed = (pl.col("n_correct") > 0) & (pl.col("n_correct") < pl.col("n"))
    if scheme == "signed":
        used = mixed
        raw = pl.when(pl.col("correct")).then(1.0 / pl.col("n_correct")).otherwise(-1.0 / (pl.col("n") - pl.col("n_correct")))
    elif scheme == "advantage":
        used = mixed
        raw = pl.col("reward") - pl.col("mean_reward")
    else:
        used = pl.col("n_correct") > 0
        raw = pl.when(pl.col("correct")).then(1.0 / pl.col("n_correct")).otherwise(0.0)
    frame = frame.with_columns(used=used).with_columns(weight=pl.when(pl.col("used")).then(raw).otherwise(0.0))
    queries_used = frame.filter("used")["query_id"].n_unique()
    summary = WeightingSummary(
        scheme=scheme,
        queries_total=per_query.height,
        queries_used=queries_used,
        queries_all_correct=per_query.filter(pl.col("n_correct") == pl.col("n")).height,
        queries_all_wrong=per_query.filter(pl.col("n_correct") == 0).height,
        queries_mixed=per_query.filter(mixed).height,
        rollouts_weighted=frame.filter(pl.col("weight") != 0).height,
    )
    if queries_used == 0:
        need = "at least one correct rollout" if scheme == "positive" else "mixed grades (some correct, some wrong)"
        raise DegenerateGradesError(
            f"influence.weighting={scheme!r} has nothing to work with: 0 of {summary.queries_total} queries have {need} "
            f"({summary.queries_all_correct} all correct, {summary.queries_all_wrong} all wrong). Raise rollout.temperature "
            f"or rollout.samples_per_query, or use validation queries the model solves only sometimes."
        )
    frame = frame.with_columns(weight=pl.col("weight") / queries_used)
    return frame.select("rollout_id", "query_id", "weight"), summary


def usable_queries(summary: dict, scheme: str, unsolved: str) -> int:
    """How many queries ``scheme`` weighs, from :func:`~drift_assets.core.grading.graders.grade_summary`'s counts;
    with ``unsolved='reference'`` the all-wrong queries count too (their reference is the correct side)."""
    if scheme not in WEIGHTING_SCHEMES:
        raise ValueError(f"influence.weighting must be one of {WEIGHTING_SCHEMES} (got {scheme!r})")
    unsolved_used = summary["queries_all_wrong"] if unsolved == "reference" else 0
    if scheme == "positive":
        return summary["queries"] - summary["queries_all_wrong"] + unsolved_used
    return summary["queries_mixed"] + unsolved_used


def combine(gradients: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """g = Σ_jk w_jk g_jk for gradients (M, k) and weights (M,)."""
    if gradients.shape[0] != weights.shape[0]:
        raise ValueError(f"{gradients.shape[0]} gradients but {weights.shape[0]} weights")
    return weights.astype(np.float64) @ gradients.astype(np.float64)
