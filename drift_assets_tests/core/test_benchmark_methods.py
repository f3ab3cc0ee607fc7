"""Which examples each benchmark method selects, on hand-made pools."""

import polars as pl
import pytest

from drift_assets.core.attribution import noise_auc
from drift_assets.core.benchmark import ScoringSettings, loss_scores, scoring_for, selected_ids

POOL = pl.DataFrame({
    "example_id": [f"ex{i}" for i in range(10)],
    "is_corrupted": [i % 3 == 0 for i in range(10)],  # ex0, ex3, ex6, ex9
})


def choose(method, seed=0, scores=None, size=4):
    return selected_ids(method, seed, POOL, scores, size, "top_fraction", 0.4, None)


def test_full_random_and_oracle_selections():
    assert choose("full") == POOL["example_id"].to_list()
    first = choose("random", seed=0)
    assert len(set(first)) == 4 and first == choose("random", seed=0) and set(first) != set(choose("random", seed=1))
    oracle = choose("oracle", seed=0)
    assert len(oracle) == 4 and not {"ex0", "ex3", "ex6", "ex9"} & set(oracle)
    assert sorted(choose("oracle", size=20)) == ["ex1", "ex2", "ex4", "ex5", "ex7", "ex8"]  # no more clean rows than exist
    with pytest.raises(ValueError, match="'oracle' needs an is_corrupted column"):
        selected_ids("oracle", 0, POOL.drop("is_corrupted"), None, 4, "top_fraction", 0.4, None)


def test_loss_selection_keeps_the_lowest_loss_per_token():
    losses = pl.DataFrame({
        "example_id": ["ex0", "ex1", "ex2", "ex3", "ex4"],
        "loss": [9.0, 2.0, 4.0, 1.0, 0.0],
        "n_tokens": [3, 1, 8, 1, 0],  # per token: 3, 2, 0.5, 1, 0 (an empty response counts one token)
    })
    scores = loss_scores(losses)
    assert scores["example_id"].to_list() == ["ex4", "ex2", "ex3", "ex1", "ex0"]
    assert scores["rank"].to_list() == [1, 2, 3, 4, 5]
    assert scores["score"].to_list() == pytest.approx([0.0, -0.5, -1.0, -2.0, -3.0])
    assert selected_ids("loss", 0, POOL, scores, 2, "top_fraction", 0.4, None) == ["ex4", "ex2"]
    # ex0 and ex3 are corrupted: ex3 outranks clean ex1 and corrupted ex0 comes last; 5 of 6 pairs ordered right.
    assert noise_auc(scores, POOL) == pytest.approx(5 / 6)


def test_scoring_settings_per_method():
    drift = ScoringSettings(debias="residual")
    assert scoring_for("drift", drift) == drift
    assert scoring_for("offpolicy", drift) == ScoringSettings(targets="offpolicy", debias="unit")
    assert scoring_for("drift_positive", drift).weighting == "positive"
    assert scoring_for("drift_nodebias", drift).debias == "none"
    assert all(scoring_for(m, drift) is None for m in ("full", "random", "loss", "oracle"))
    with pytest.raises(ValueError, match="unknown method 'best'"):
        scoring_for("best", drift)
