"""Which examples each benchmark method selects, on hand-made pools."""

import polars as pl
import pytest

from drift_assets.core.attribution.scores import noise_auc
from drift_assets.core.gradients.tables import LOSS_PER_TOKEN
from drift_assets.core.study.benchmark import (
    ScoringSettings,
    loss_scores,
    paired_differences,
    scoring_for,
    selected_ids,
    shared_fine_tunes,
)

POOL = pl.DataFrame(
    {
        "example_id": [f"ex{i}" for i in range(10)],
        "is_corrupted": [i % 3 == 0 for i in range(10)],  # ex0, ex3, ex6, ex9
    }
)


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
    losses = pl.DataFrame(
        {
            "example_id": ["ex0", "ex1", "ex2", "ex3", "ex4"],
            "loss": [9.0, 2.0, 4.0, 1.0, 0.0],
            "n_tokens": [3, 1, 8, 1, 0],  # per token: 3, 2, 0.5, 1, 0 (an empty response counts one token)
        }
    )
    scores = loss_scores(losses.select("example_id", LOSS_PER_TOKEN))
    assert scores["example_id"].to_list() == ["ex4", "ex2", "ex3", "ex1", "ex0"]
    assert scores["rank"].to_list() == [1, 2, 3, 4, 5]
    assert scores["score"].to_list() == pytest.approx([0.0, -0.5, -1.0, -2.0, -3.0])
    assert selected_ids("loss", 0, POOL, scores, 2, "top_fraction", 0.4, None) == ["ex4", "ex2"]
    # ex0 and ex3 are corrupted: ex3 outranks clean ex1 and corrupted ex0 comes last; 5 of 6 pairs ordered right.
    assert noise_auc(scores, POOL) == pytest.approx(5 / 6)


def test_scoring_settings_per_method():
    drift = ScoringSettings(debias="residual")
    assert scoring_for("drift", drift) == drift
    assert scoring_for("offpolicy", ScoringSettings(debias="residual")) == ScoringSettings(
        targets="offpolicy", debias="unit", ranking="score", likelihood_blend=0.0
    )
    assert scoring_for("drift_positive", drift).weighting == "positive"
    # The default blends DRIFT's order with the likelihood's; drift_unblended is DRIFT's order alone.
    assert drift.likelihood_blend == 0.5 and scoring_for("drift_unblended", drift).likelihood_blend == 0.0
    assert scoring_for("drift_nodebias", drift).debias == "none"
    assert scoring_for("drift_round_robin", drift).ranking == "round_robin"
    # LESS-style influence ranks by score whatever DRIFT ranks by; the score-ranked ablation too.
    turns = ScoringSettings(ranking="round_robin")
    assert scoring_for("offpolicy", turns).ranking == scoring_for("drift_by_score", turns).ranking == "score"
    assert all(scoring_for(m, drift) is None for m in ("full", "random", "loss", "oracle"))
    with pytest.raises(ValueError, match="unknown method 'best'"):
        scoring_for("best", drift)


def benchmark_rows(method, accuracies, seeds=None):
    seeds = seeds if seeds is not None else list(range(len(accuracies)))
    return [{"method": method, "seed": seed, "accuracy": accuracy} for seed, accuracy in zip(seeds, accuracies, strict=True)]


def test_paired_differences_pair_each_method_with_full_by_seed():
    table = pl.DataFrame(
        benchmark_rows("full", [0.60, 0.62, 0.61])
        + benchmark_rows("drift", [0.65, 0.66, 0.67])
        # seed 7 has no full run to pair with, so only seed 0 counts: one pair, no standard error
        + benchmark_rows("random", [0.50, 0.90], seeds=[0, 7])
    )
    differences = {row["method"]: row for row in paired_differences(table).iter_rows(named=True)}
    assert differences["full"]["difference_mean"] == 0.0 and differences["full"]["pairs"] == 3
    drift = differences["drift"]  # differences 0.05, 0.04, 0.06: mean 0.05, std 0.01, s.e. 0.01/√3
    assert drift["pairs"] == 3
    assert drift["difference_mean"] == pytest.approx(0.05) and drift["difference_se"] == pytest.approx(0.01 / 3**0.5)
    assert differences["random"]["pairs"] == 1
    assert differences["random"]["difference_mean"] == pytest.approx(-0.10) and differences["random"]["difference_se"] is None


def test_paired_differences_are_empty_without_the_baseline():
    table = pl.DataFrame(benchmark_rows("drift", [0.65, 0.66]))
    assert paired_differences(table).is_empty()
    assert paired_differences(table, baseline="drift")["difference_mean"].to_list() == [0.0]


def test_methods_that_select_the_same_examples_on_a_seed_share_one_fine_tune():
    selections = {("full", 0): "abc", ("full", 1): "abc", ("drift", 0): "ab", ("drift", 1): "bc", ("drift_skip", 0): "ab"}
    selections[("drift_skip", 1)] = "ac"

    def chosen(method, seed):
        return frozenset(selections[method, seed])

    plan = shared_fine_tunes(["full", "drift", "drift_skip"], [0, 1], chosen)
    # full on seed 0 and seed 1 select the same rows but are different seeds: two fine-tunes.
    assert [(seed, "".join(sorted(rows)), sharers) for seed, rows, sharers in plan] == [
        (0, "abc", ["full"]),
        (1, "abc", ["full"]),
        (0, "ab", ["drift", "drift_skip"]),
        (1, "bc", ["drift"]),
        (1, "ac", ["drift_skip"]),
    ]
