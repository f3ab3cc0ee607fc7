"""The LDS maths (subset draws, predicted sums, per-query Spearman and its standard error) against
hand-computed and independent oracles; the measured objectives against sums done by hand."""

import math

import numpy as np
import polars as pl
import pytest

from drift_assets.core.study.lds import (
    MeasuredSequences,
    QueryObjectives,
    column_spearman,
    fine_tune_key,
    half_pools,
    lds,
    predicted_effects,
    query_objectives,
    summarize,
)
from drift_assets.core.training.sft import SftOptions

IDS = [f"e{i:02d}" for i in range(20)]


def test_half_pools_are_seeded_halves_independent_of_input_order_and_of_m():
    subsets = half_pools(IDS, 8, seed=3)
    assert len(subsets) == 8 and all(len(subset) == 10 and len(set(subset)) == 10 for subset in subsets)
    assert all(set(subset) <= set(IDS) and subset == sorted(subset) for subset in subsets)
    assert half_pools(list(reversed(IDS)), 8, seed=3) == subsets
    assert half_pools(IDS, 4, seed=3) == subsets[:4]  # more subsets extend the draw, they do not redraw it
    assert half_pools(IDS, 8, seed=4) != subsets
    assert len({tuple(subset) for subset in subsets}) == 8
    # Each example is in about half of many subsets (the draw is uniform).
    counts = {i: 0 for i in IDS}
    for subset in half_pools(IDS, 400, seed=0):
        for example_id in subset:
            counts[example_id] += 1
    assert all(150 < count < 250 for count in counts.values())
    with pytest.raises(ValueError, match="at least 2"):
        half_pools(IDS, 1)
    with pytest.raises(ValueError, match="duplicate"):
        half_pools(IDS + IDS[:1], 4)


def test_predicted_effects_are_the_sums_of_the_subsets_scores():
    ids = ["a", "b", "c", "d"]
    scores = np.array([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0], [8.0, 80.0]])  # examples × queries
    predicted = predicted_effects(scores, ids, [["a", "c"], ["b", "c", "d"], ["d"]])
    assert predicted.tolist() == [[5.0, 50.0], [14.0, 140.0], [8.0, 80.0]]  # by hand
    with pytest.raises(ValueError, match="without a score"):
        predicted_effects(scores, ids, [["a", "z"]])


def test_column_spearman_matches_scipy_and_leaves_constant_measurements_out():
    stats = pytest.importorskip("scipy.stats", reason="scipy (the dev and bench extras) is the independent oracle here")
    rng = np.random.default_rng(0)
    predicted = rng.normal(size=(32, 6))
    measured = 0.5 * predicted + rng.normal(size=(32, 6))
    measured[:, 2] = np.round(measured[:, 2])  # ties: average ranks, as scipy
    measured[:, 4] = 7.25  # constant: no ranking
    values = column_spearman(predicted, measured)
    for j in (0, 1, 2, 3, 5):
        assert values[j] == pytest.approx(stats.spearmanr(predicted[:, j], measured[:, j]).statistic, abs=1e-12)
    assert math.isnan(values[4])


def test_summary_is_the_mean_and_standard_error_over_the_varying_queries():
    summary = summarize(np.array([0.2, 0.4, np.nan, 0.9]))
    mean = (0.2 + 0.4 + 0.9) / 3
    sd = math.sqrt(((0.2 - mean) ** 2 + (0.4 - mean) ** 2 + (0.9 - mean) ** 2) / 2)  # by hand, n − 1
    assert summary.mean == pytest.approx(mean)
    assert summary.se == pytest.approx(sd / math.sqrt(3))
    assert (summary.queries, summary.constant) == (3, 1)
    assert math.isnan(summarize(np.array([np.nan])).mean)


def test_scores_that_are_the_true_linear_effects_reach_an_lds_of_one_and_noise_reaches_about_zero():
    rng = np.random.default_rng(1)
    ids = [f"x{i:03d}" for i in range(200)]
    effects = rng.normal(size=(200, 5))  # true additive effect of each example on each query
    subsets = half_pools(ids, 40, seed=0)
    measured = predicted_effects(effects, ids, subsets) + 3.0  # a datamodel that is exactly linear
    summary, per_query = lds(effects, ids, [f"q{j}" for j in range(5)], subsets, measured, [f"q{j}" for j in range(5)])
    assert summary.mean == pytest.approx(1.0) and summary.queries == 5
    assert set(per_query) == {f"q{j}" for j in range(5)}
    # Any increasing transform of the measurement keeps it at 1 (ranks only); a sign flip gives −1.
    flipped, _ = lds(-effects, ids, [f"q{j}" for j in range(5)], subsets, np.exp(measured / 10), [f"q{j}" for j in range(5)])
    assert flipped.mean == pytest.approx(-1.0)
    # Scores unrelated to the effects: about 0 (40 subsets, 5 queries: well within ±0.3).
    noise, _ = lds(rng.normal(size=(200, 5)), ids, [f"q{j}" for j in range(5)], subsets, measured, [f"q{j}" for j in range(5)])
    assert abs(noise.mean) < 0.3
    # Noisy measurement of a linear truth: between the two.
    noisy = measured + rng.normal(scale=np.std(measured, axis=0), size=measured.shape)
    partial, _ = lds(effects, ids, [f"q{j}" for j in range(5)], subsets, noisy, [f"q{j}" for j in range(5)])
    assert 0.4 < partial.mean < 0.9


def test_lds_pairs_queries_by_id_and_skips_the_ones_only_one_side_has():
    ids = ["a", "b", "c", "d"]
    subsets = [["a", "b"], ["a", "c"], ["b", "d"], ["c", "d"]]
    scores = np.array([[1.0, 0.0], [2.0, 0.0], [4.0, 0.0], [8.0, 1.0]])  # columns: q1, q2
    measured = predicted_effects(scores, ids, subsets)[:, [1, 0]]  # columns: q2, q1
    summary, per_query = lds(scores, ids, ["q1", "q2"], subsets, np.column_stack([measured, np.ones(4)]), ["q2", "q1", "q3"])
    assert per_query == {"q1": pytest.approx(1.0), "q2": pytest.approx(1.0)}
    assert summary.queries == 2
    with pytest.raises(ValueError, match="no validation query in common"):
        lds(scores, ids, ["q1", "q2"], subsets, measured, ["q8", "q9"])


def test_query_objectives_weigh_the_rollouts_as_drifts_target_does():
    grades = pl.DataFrame(
        {
            "rollout_id": ["r1", "r2", "r3", "r4", "r5"],
            "query_id": ["q1", "q1", "q1", "q2", "q2"],
            "correct": [True, True, False, False, False],
            "reward": [1.0, 1.0, 0.0, 0.0, 0.0],
        }
    )
    gradients = pl.DataFrame(
        {
            "rollout_id": ["r1", "r2", "r3", "r4", "r5", "reference-q1", "reference-q2"],
            "query_id": ["q1", "q1", "q1", "q2", "q2", "q1", "q2"],
            "target": ["rollout"] * 5 + ["reference"] * 2,
            "grad": [[0.0]] * 7,
        }
    )
    logprobs = {"r1": -1.0, "r2": -3.0, "r3": -9.0, "r4": -5.0, "r5": -6.0, "reference-q1": -2.0, "reference-q2": -4.0}
    positive = query_objectives(gradients, grades, "positive", "skip")
    # q1: its two correct rollouts, 1/2 each, over the 1 query used; q2 has no correct rollout.
    assert positive.onpolicy_query_ids == ["q1"]
    assert positive.onpolicy(logprobs).tolist() == [pytest.approx((-1.0 - 3.0) / 2)]
    assert positive.offpolicy_query_ids == ["q1", "q2"] and positive.offpolicy(logprobs).tolist() == [-2.0, -4.0]
    # unsolved=reference: q2's reference stands in as its one correct rollout; 2 queries used.
    with_reference = query_objectives(gradients, grades, "positive", "reference")
    assert with_reference.onpolicy(logprobs).tolist() == [pytest.approx(-2.0 / 2), pytest.approx(-4.0 / 2)]
    signed = query_objectives(gradients, grades, "signed", "skip")  # q1 only: right minus wrong
    assert signed.onpolicy(logprobs).tolist() == [pytest.approx((-1.0 - 3.0) / 2 - (-9.0))]
    assert isinstance(signed, QueryObjectives)


def test_the_fine_tune_key_changes_with_each_thing_that_determines_the_measurement():
    measured = MeasuredSequences(["r1"], [[1, 2]], [[3]])
    base = fine_tune_key("arithmetic", ["a", "b"], SftOptions(), "model1", measured.fingerprint())
    assert fine_tune_key("arithmetic", ["b", "a"], SftOptions(), "model1", measured.fingerprint()) == base
    assert fine_tune_key("sort", ["a", "b"], SftOptions(), "model1", measured.fingerprint()) != base
    assert fine_tune_key("arithmetic", ["a", "c"], SftOptions(), "model1", measured.fingerprint()) != base
    assert fine_tune_key("arithmetic", ["a", "b"], SftOptions(seed=1), "model1", measured.fingerprint()) != base
    assert fine_tune_key("arithmetic", ["a", "b"], SftOptions(), "model2", measured.fingerprint()) != base
    other = MeasuredSequences(["r1"], [[1, 2]], [[4]])
    assert fine_tune_key("arithmetic", ["a", "b"], SftOptions(), "model1", other.fingerprint()) != base
