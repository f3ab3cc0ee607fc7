"""Choosing the refined dataset from scores (``core.data.publish`` exports it)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import polars as pl

SelectionMethod = Literal["top_fraction", "top_k", "positive"]
SELECTION_METHODS: tuple[str, ...] = get_args(SelectionMethod)


def select(scores: pl.DataFrame, method: SelectionMethod, fraction: float = 0.5, k: int | None = None) -> pl.Series:
    """Boolean ``selected`` aligned with ``scores`` rows; ties broken by ``rank`` (so by example_id)."""
    if method not in SELECTION_METHODS:
        raise ValueError(f"selection.method must be one of {SELECTION_METHODS} (got {method!r})")
    if method == "positive":
        return (scores["score"] > 0).alias("selected")
    if method == "top_k":
        if k is None or k < 1:
            raise ValueError(f"selection.k must be >= 1 for top_k (got {k})")
        count = min(k, scores.height)
    else:
        if not 0 < fraction <= 1:
            raise ValueError(f"selection.fraction must be in (0, 1] (got {fraction})")
        count = math.ceil(fraction * scores.height)
    return (scores["rank"] <= count).alias("selected")


# A selection of fewer examples than this is too small for a fine-tune to learn from.
TINY_SELECTION = 10


def selection_warning(
    method: str, k: int | None, pool_size: int, n_selected: int | None = None, fraction: float | None = None
) -> str | None:
    """What to tell a user whose settings select the whole pool (nothing is refined) or a tiny part
    of it (``n_selected`` under :data:`TINY_SELECTION`), or None."""
    if method == "top_k":
        setting = f"selection.k = {k}"
    elif method == "top_fraction":
        setting = "selection.fraction" + (f" = {fraction:g}" if fraction is not None else "")
    else:
        setting = f"selection.method {method}"
    if method == "top_k" and k is not None and k >= pool_size:
        return f"selection.k = {k} is not below the pool's {pool_size} examples: every example is selected and nothing is refined"
    if n_selected is None:
        return None
    if method == "top_fraction" and pool_size and n_selected >= pool_size:
        return f"{setting} selects all {pool_size} examples of the pool: nothing is refined"
    if n_selected < min(TINY_SELECTION, pool_size):
        return (
            f"{setting} selects only {n_selected} of the pool's {pool_size} examples: a fine-tune on so few learns "
            "little; select more (selection.fraction, selection.k)"
        )
    return None


def refined_table(training_pool: pl.DataFrame, scores: pl.DataFrame, selected: pl.Series) -> pl.DataFrame:
    """Every pool example with score, rank, weight (1.0 selected / 0.0 not) and ``selected``."""
    chosen = scores.select("example_id", "score", "rank").with_columns(selected)
    table = training_pool.join(chosen, on="example_id", how="inner")
    return table.with_columns(weight=pl.col("selected").cast(pl.Float64)).sort("rank")


def round_robin_ranks(matrix: np.ndarray) -> np.ndarray:
    """Ranks (1 = first) of the rows of ``matrix`` (examples × queries) as the queries take turns, each
    taking its best-scored row not yet taken (ties by row order; NaN scores last). The first ``k``
    rows by this rank are the round-robin selection of ``k``, for every ``k``."""
    n, queries = matrix.shape
    if queries == 0:
        raise ValueError("round-robin ranking needs at least one validation query's scores")
    order = np.argsort(-np.nan_to_num(matrix, nan=-np.inf), axis=0, kind="stable")
    ranks = np.zeros(n, dtype=np.int64)
    pointers = np.zeros(queries, dtype=np.int64)
    # Each query's pointer only moves forward over rows already taken: at most n × queries steps.
    for rank in range(1, n + 1):
        query = (rank - 1) % queries
        while ranks[order[pointers[query], query]]:
            pointers[query] += 1
        ranks[order[pointers[query], query]] = rank
    return ranks


def base_losses_of(loss_per_token: pl.DataFrame, example_ids: Sequence[str], setting: str) -> np.ndarray:
    """Each of ``example_ids``' loss per response token under the base model (``loss_per_token``:
    example_id, loss_per_token), in their order; an example without one is an error naming ``setting``."""
    losses = dict(zip(loss_per_token["example_id"], loss_per_token["loss_per_token"], strict=True))
    missing = [example_id for example_id in example_ids if example_id not in losses]
    if missing:
        raise ValueError(f"{setting}: {len(missing)} pool examples have no base-model loss (e.g. {missing[:3]})")
    return np.array([losses[example_id] for example_id in example_ids], dtype=np.float64)


def ranks_by(keys: np.ndarray, ties: np.ndarray) -> np.ndarray:
    """Each row's rank (1 = first) by ``keys``, lowest first, ties to the lowest of ``ties``."""
    ranks = np.empty(len(keys), dtype=np.int64)
    ranks[np.lexsort((np.asarray(ties, dtype=np.float64), np.asarray(keys, dtype=np.float64)))] = np.arange(1, len(keys) + 1)
    return ranks


def blended_ranks(order_ranks: np.ndarray, losses: np.ndarray, weight: float) -> np.ndarray:
    """Ranks (1 = first) by (1 − ``weight``)·``order_ranks`` + ``weight``·the rank by ``losses`` (the
    lowest first), both over the same rows; ties (in the losses, then in the blend) go to the better
    of ``order_ranks``. A row the base model finds unlikely can still be taken early where the order
    ranks it high enough, and the reverse."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"influence.likelihood_blend: {weight:g} is not a weight in [0, 1]")
    order_ranks = np.asarray(order_ranks, dtype=np.float64)
    combined = (1.0 - weight) * order_ranks + weight * ranks_by(losses, order_ranks)
    return ranks_by(combined, order_ranks)


# The selections besides DRIFT's that selection.choose_among may name: the loss filter's (as many of
# the pool's rows, those the base model finds likeliest) and the whole pool's.
SelectionChoice = Literal["loss", "full"]
SELECTION_CHOICES: tuple[str, ...] = get_args(SelectionChoice)


def candidate_selections(scores: pl.DataFrame, selected: pl.Series, among: Sequence[str]) -> dict[str, pl.Series]:
    """DRIFT's selection (``selected``, aligned with ``scores``) and, in ``among``'s order, each other
    selection a refined dataset may be (:data:`SELECTION_CHOICES`): ``loss``, as many rows as DRIFT
    selects, the lowest ``loss_per_token`` (ties by DRIFT's rank); ``full``, every row."""
    candidates = {"drift": selected.alias("selected")}
    for choice in among:
        if choice == "loss":
            candidates[choice] = (likeliest_ranks(scores) <= int(selected.sum())).alias("selected")
        elif choice == "full":
            candidates[choice] = pl.Series("selected", [True] * scores.height)
        else:
            raise ValueError(f"selection.choose_among: {choice!r} is not one of {SELECTION_CHOICES}")
    return candidates


def likeliest_ranks(scores: pl.DataFrame) -> pl.Series:
    """Each row's rank (1 = first) by the base model's loss per response token, lowest first, ties by
    DRIFT's ``rank``: the loss filter's order, the order its selection takes."""
    return pl.Series("rank", ranks_by(scores["loss_per_token"].to_numpy(), scores["rank"].to_numpy()))


def best_selection(validation_accuracy: dict[str, float]) -> str:
    """The selection whose model answers the most validation queries; ties: the first named (DRIFT's,
    then selection.choose_among's order), so that DRIFT's is left only for a better one."""
    return max(validation_accuracy, key=lambda name: validation_accuracy[name])
