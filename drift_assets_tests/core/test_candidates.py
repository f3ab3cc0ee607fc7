"""The default's building blocks beside DRIFT's scores: the likelihood blend in the ranking, the
checkpoints a method scores at, the agreement with the loss filter, and the benchmark methods that
choose among selections by the validation queries."""

import numpy as np
import polars as pl
import pytest

from drift_assets.core.attribution.scores import ScoringSettings
from drift_assets.core.attribution.trajectory import CheckpointGradients, ranked_scores, score_along


def _checkpoint():
    """Four queries whose signed contrasts share the direction e0 ("answer higher") and differ along ±e1, ±e2."""
    right = {"q0": [1.0, 1.0, 0], "q1": [1.0, -1.0, 0], "q2": [1.0, 0, 1.0], "q3": [1.0, 0, -1.0]}
    rows = []
    for query, gradient in right.items():
        rows.append((f"{query}-right", query, gradient, True))
        rows.append((f"{query}-wrong", query, [-1.0, 0, 0], False))
    validation = pl.DataFrame(
        {
            "rollout_id": [r[0] for r in rows],
            "query_id": [r[1] for r in rows],
            "target": ["rollout"] * len(rows),
            "grad": [r[2] for r in rows],
            "model_fingerprint": "m",
            "projection_fingerprint": "p",
        },
        schema_overrides={"grad": pl.List(pl.Float32)},
    )
    grades = validation.select("rollout_id", "query_id").with_columns(
        correct=pl.Series([r[3] for r in rows]), reward=pl.Series([float(r[3]) for r in rows])
    )
    ids = ["e0", "e1", "e2"]
    training = np.eye(3, dtype=np.float32)  # example e_i's gradient is the axis i
    return CheckpointGradients.in_memory("base", ids, training, validation, grades, {("m", "p")}), ids


def _scored_pool(n: int, seed: int):
    """A pool of ``n`` rows with random gradients against :func:`_checkpoint`'s queries, scored with
    signed weights by score: (ids, pool, the scores along the one checkpoint, the plain order)."""
    rng = np.random.default_rng(seed)
    ids = [f"e{i:02d}" for i in range(n)]
    template, _ = _checkpoint()
    checkpoint = CheckpointGradients.in_memory(
        "base", ids, rng.normal(size=(n, 3)).astype(np.float32), template.validation_gradients, template.grades, {("m", "p")}
    )
    pool = pl.DataFrame({"example_id": ids, "n_prompt_tokens": [3] * n, "n_response_tokens": [2] * n})
    along = score_along([checkpoint], ScoringSettings(weighting="signed", debias="none", ranking="score"))
    return ids, pool, along, ranked_scores(along, pool)["example_id"].to_list()


def test_the_likelihood_guard_warns_where_the_selection_shares_no_more_with_the_loss_filter_than_chance():
    from drift_assets.core.attribution.guards import likelihood_agreement_guard

    losses = {f"e{i}": float(i) for i in range(10)}  # e0 is the likeliest
    above = likelihood_agreement_guard(["e0", "e1", "e7", "e9"], losses)  # 2 of the filter's 4 (e0 … e3)
    assert above == (True, "50% of the selection is also in the loss filter's (a random selection: 40%)")
    agreeing = likelihood_agreement_guard(["e0", "e1", "e2", "e9"], losses)
    assert agreeing == (True, "75% of the selection is also in the loss filter's (a random selection: 40%)")
    at_chance = likelihood_agreement_guard(["e0", "e5", "e7", "e9"], losses)  # 1 of 4 = 25% ≤ 40%
    assert not at_chance[0] and "run the method_benchmark job" in at_chance[1]
    assert likelihood_agreement_guard([f"e{i}" for i in range(10)], losses)[0]


def test_a_method_scored_at_some_checkpoints_uses_each_ones_own_curvature():
    """drift_last is the default's scoring at the base model and the last checkpoint: the same as
    scoring those two alone, each with the Hessian of its own gradients (not its neighbour's)."""
    from drift_assets.core.study.benchmark import MethodScorer, checkpoints_used

    assert checkpoints_used("drift_last", 4) == [0, 3] and checkpoints_used("drift", 3) == [0, 1, 2]
    assert checkpoints_used("drift_base", 4) == [0]
    rng = np.random.default_rng(4)
    ids = [f"e{i:02d}" for i in range(12)]
    template, _ = _checkpoint()
    checkpoints = [
        CheckpointGradients.in_memory(
            name,
            ids,
            (scale * rng.normal(size=(12, 3))).astype(np.float32),
            template.validation_gradients,
            template.grades,
            {("m", "p")},
        )
        for name, scale in (("base", 1.0), ("000010", 3.0), ("000020", 0.3))
    ]
    pool = pl.DataFrame({"example_id": ids, "n_prompt_tokens": [3] * 12, "n_response_tokens": [2] * 12})
    # No likelihood blend: these checkpoints have no losses (the blend is tested on its own below).
    scoring = ScoringSettings(weighting="signed", hessian="fisher", debias="none", ranking="score", likelihood_blend=0.0)
    scorer = MethodScorer(checkpoints)
    scorer.scores(scoring, pool)  # fits every checkpoint's Hessian first, so a wrong index would find one
    expected = ranked_scores(score_along([checkpoints[0], checkpoints[2]], scoring), pool)
    got = scorer.scores(scoring, pool, at=checkpoints_used("drift_last", 3))
    np.testing.assert_allclose(got["score"].to_numpy(), expected["score"].to_numpy(), rtol=1e-6)
    assert got["example_id"].to_list() == expected["example_id"].to_list()


def test_the_likelihood_blend_ranks_by_the_weighted_mean_of_the_two_orders():
    from drift_assets.core.attribution.selection import blended_ranks

    # By hand, order ranks (1, 2, 3, 4) and loss ranks (4, 1, 2, 3): with w = 0.5 the blends are
    # 2.5, 1.5, 2.5, 3.5, so row 1 first, then the tie of rows 0 and 2 to the better order rank (0).
    losses = np.array([0.9, 0.1, 0.2, 0.3])
    assert blended_ranks(np.array([1, 2, 3, 4]), losses, 0.5).tolist() == [2, 1, 3, 4]
    assert blended_ranks(np.array([1, 2, 3, 4]), losses, 0.0).tolist() == [1, 2, 3, 4]  # the order alone
    assert blended_ranks(np.array([1, 2, 3, 4]), losses, 1.0).tolist() == [4, 1, 2, 3]  # the loss filter
    # Equal losses leave the order as it was.
    assert blended_ranks(np.array([3, 1, 2]), np.array([0.5, 0.5, 0.5]), 0.5).tolist() == [3, 1, 2]
    with pytest.raises(ValueError, match="likelihood_blend: 1.5"):
        blended_ranks(np.array([1, 2]), np.array([0.1, 0.2]), 1.5)

    ids, pool, along, plain = _scored_pool(12, seed=5)
    # The losses reverse the plain order: with equal weights every blend ties, and the order stands;
    # with more weight on the likelihood the order reverses.
    loss_per_token = pl.DataFrame({"example_id": plain, "loss_per_token": [float(12 - i) for i in range(12)]})
    assert ranked_scores(along, pool, loss_per_token, likelihood_blend=0.5)["example_id"].to_list() == plain
    assert ranked_scores(along, pool, loss_per_token, likelihood_blend=0.6)["example_id"].to_list() == plain[::-1]
    with pytest.raises(ValueError, match="likelihood_blend above 0 needs"):
        ranked_scores(along, pool, likelihood_blend=0.5)


def _scored_study(methods: list[str], n: int, seed: int, seeds: tuple[int, ...] = (0,)):
    """A method benchmark over ``n`` pool rows (e00, e01, …) with seeded random gradients at the base
    model and losses rising with the id (the loss filter keeps the first rows), its methods scored."""
    from drift_assets.core.study.benchmark import MethodBenchmark, MethodScorer

    ids = [f"e{i:02d}" for i in range(n)]
    template, _ = _checkpoint()
    grads = np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
    checkpoint = CheckpointGradients.in_memory("base", ids, grads, template.validation_gradients, template.grades, {("m", "p")})
    losses = pl.DataFrame({"example_id": ids, "loss_per_token": [0.1 * i for i in range(n)]})
    pool = pl.DataFrame({"example_id": ids, "n_prompt_tokens": [3] * n, "n_response_tokens": [2] * n, "messages": ids})
    drift = ScoringSettings(weighting="signed", debias="none", ranking="score", likelihood_blend=0.0)
    study = MethodBenchmark(methods, list(seeds), pool, pool, MethodScorer([checkpoint], losses), drift)
    study.score(None, None, [], lambda **_: None)
    return study


def test_drift_or_loss_acc_fine_tunes_drifts_and_the_loss_filters_selections_sharing_their_fine_tunes():
    study = _scored_study(["loss", "drift", "drift_or_loss_acc"], 8, seed=3, seeds=(0, 1))  # the loss filter keeps e00-e03
    plan = study.plan(("top_fraction", 0.5, None))
    assert study.sizes == {"drift_or_loss_acc@drift": 4, "drift_or_loss_acc@loss": 4}
    assert {example_id for example_id, _ in study.selections["drift_or_loss_acc@loss", 0]} == {"e00", "e01", "e02", "e03"}
    drift_order = study.scores["drift"]["example_id"].to_list()[:4]
    assert {example_id for example_id, _ in study.selections["drift_or_loss_acc@drift", 1]} == set(drift_order)
    assert set(drift_order) != {"e00", "e01", "e02", "e03"}  # two different selections to choose between
    sharers = sorted(sorted(names) for seed, _, names in plan if seed == 0)
    assert sharers == [["drift", "drift_or_loss_acc@drift"], ["drift_or_loss_acc@loss", "loss"]]  # no fine-tune of its own


def test_drift_loss_or_full_adds_the_whole_pool_sharing_full_data_sfts_fine_tune():
    study = _scored_study(["full", "loss", "drift", "drift_loss_or_full", "drift_or_loss_acc"], 8, seed=3)
    plan = study.plan(("top_fraction", 0.5, None))
    assert study.sizes == {
        "drift_loss_or_full@drift": 4,
        "drift_loss_or_full@loss": 4,
        "drift_loss_or_full@full": 8,
        "drift_or_loss_acc@drift": 4,
        "drift_or_loss_acc@loss": 4,
    }
    assert {example_id for example_id, _ in study.selections["drift_loss_or_full@full", 0]} == {f"e{i:02d}" for i in range(8)}
    sharers = sorted(sorted(names) for _, _, names in plan)
    assert sharers == [  # three fine-tunes in all: the candidates add none
        ["drift", "drift_loss_or_full@drift", "drift_or_loss_acc@drift"],
        ["drift_loss_or_full@full", "full"],
        ["drift_loss_or_full@loss", "drift_or_loss_acc@loss", "loss"],
    ]


def test_a_choice_among_selections_keeps_the_best_on_the_validation_queries_ties_to_the_first_named():
    from drift_assets.core.study.benchmark import with_validated_choices

    # label: (size, [validation accuracy, seeds 0-3], [test accuracy, seeds 0-3]); the loss filter's rows
    # come first in the table, so that a tie kept by table order would keep it.
    tried = {
        "drift_loss_or_full@loss": (4, [0.50, 0.60, 0.50, 0.40], [0.71, 0.72, 0.73, 0.74]),
        "drift_loss_or_full@drift": (4, [0.50, 0.50, 0.40, 0.40], [0.61, 0.62, 0.63, 0.64]),
        "drift_loss_or_full@full": (8, [0.50, 0.60, 0.60, 0.45], [0.81, 0.82, 0.83, 0.84]),
    }
    rows = [
        {"method": label, "seed": seed, "n_selected": size, "accuracy": test[seed], "validation_accuracy": accuracy[seed]}
        for label, (size, accuracy, test) in tried.items()
        for seed in range(4)
    ]
    table = pl.DataFrame(rows).with_columns(wall_seconds=pl.lit(2.0))
    kept = with_validated_choices(table, ["drift_loss_or_full"]).filter(pl.col("method") == "drift_loss_or_full")
    # Seed 0: a three-way tie, DRIFT's kept; seed 1: the loss filter and the whole pool tie, the loss
    # filter named first; seeds 2 and 3: the whole pool alone is best.
    assert kept["accuracy"].to_list() == [0.61, 0.72, 0.83, 0.84]
    assert kept["n_selected"].to_list() == [4, 4, 8, 8] and kept["wall_seconds"].to_list() == [6.0] * 4
    two = table.filter(~pl.col("method").str.ends_with("@full")).with_columns(
        method=pl.col("method").str.replace("drift_loss_or_full", "drift_or_loss_acc")
    )
    kept = with_validated_choices(two, ["drift_or_loss_acc"]).filter(pl.col("method") == "drift_or_loss_acc")
    assert kept["accuracy"].to_list() == [0.61, 0.72, 0.73, 0.64]  # by accuracy, ties to DRIFT's


def test_the_pipeline_default_is_the_benchmark_method_that_chooses_among_the_same_selections():
    from drift_assets.core.study.benchmark import pipeline_default
    from drift_assets.settings import SelectionSettings

    assert pipeline_default([]) == "drift"
    assert pipeline_default(["loss"]) == "drift_or_loss_acc"  # by accuracy, as refined_dataset chooses
    assert pipeline_default(["loss", "full"]) == "drift_loss_or_full"
    assert pipeline_default(SelectionSettings().choose_among) == "drift_or_loss_acc"
    with pytest.raises(ValueError, match=r"no benchmark method chooses among \['drift', 'full'\]"):
        pipeline_default(["full"])
