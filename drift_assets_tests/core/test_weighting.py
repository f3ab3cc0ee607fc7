"""Signed weights w_jk from graded rollouts (DESIGN.md §3), checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from drift_assets.core.grading.weighting import DegenerateGradesError, combine, rollout_weights

# query a: 1 of 4 correct; query b: 2 of 3 correct; query c: all correct; query d: all wrong.
GRADES = [
    ("a0", "a", True),
    ("a1", "a", False),
    ("a2", "a", False),
    ("a3", "a", False),
    ("b0", "b", True),
    ("b1", "b", True),
    ("b2", "b", False),
    ("c0", "c", True),
    ("c1", "c", True),
    ("d0", "d", False),
    ("d1", "d", False),
    ("d2", "d", False),
]


def grades_frame(rows=GRADES, rewards=None) -> pl.DataFrame:
    frame = pl.DataFrame({"rollout_id": [r[0] for r in rows], "query_id": [r[1] for r in rows], "correct": [r[2] for r in rows]})
    reward = rewards if rewards is not None else [float(r[2]) for r in rows]
    return frame.with_columns(reward=pl.Series(reward, dtype=pl.Float64))


def weights_by_rollout(frame: pl.DataFrame) -> dict[str, float]:
    return dict(zip(frame["rollout_id"], frame["weight"]))


def test_signed_weights():
    weights, summary = rollout_weights(grades_frame(), "signed")
    used = 2  # a and b are mixed
    expected = {
        "a0": 1 / 1 / used,
        "a1": -1 / 3 / used,
        "a2": -1 / 3 / used,
        "a3": -1 / 3 / used,
        "b0": 1 / 2 / used,
        "b1": 1 / 2 / used,
        "b2": -1 / 1 / used,
        "c0": 0.0,
        "c1": 0.0,
        "d0": 0.0,
        "d1": 0.0,
        "d2": 0.0,
    }
    got = weights_by_rollout(weights)
    assert got.keys() == expected.keys()
    for rollout_id, value in expected.items():
        assert got[rollout_id] == pytest.approx(value, abs=1e-12), rollout_id
    assert weights.columns == ["rollout_id", "query_id", "weight"]
    assert dict(zip(weights["rollout_id"], weights["query_id"])) == {r[0]: r[1] for r in GRADES}
    # Each used query's weights sum to zero: a pure contrast.
    per_query = weights.group_by("query_id").agg(pl.col("weight").sum())
    assert np.allclose(per_query["weight"].to_numpy(), 0.0)

    assert summary.scheme == "signed"
    assert summary.queries_total == 4
    assert summary.queries_used == 2
    assert summary.queries_mixed == 2
    assert summary.queries_all_correct == 1
    assert summary.queries_all_wrong == 1
    assert summary.queries_skipped == 2
    assert summary.rollouts_weighted == 7


def test_advantage_weights_with_binary_and_graded_rewards():
    weights, summary = rollout_weights(grades_frame(), "advantage")
    got = weights_by_rollout(weights)
    used = 2
    mean_a, mean_b = 1 / 4, 2 / 3
    expected = {
        "a0": (1 - mean_a) / used,
        "a1": (0 - mean_a) / used,
        "a2": (0 - mean_a) / used,
        "a3": (0 - mean_a) / used,
        "b0": (1 - mean_b) / used,
        "b1": (1 - mean_b) / used,
        "b2": (0 - mean_b) / used,
    }
    for rollout_id, value in expected.items():
        assert got[rollout_id] == pytest.approx(value, abs=1e-12), rollout_id
    for rollout_id in ("c0", "c1", "d0", "d1", "d2"):
        assert got[rollout_id] == 0.0
    assert summary.queries_used == 2 and summary.queries_all_correct == 1 and summary.queries_all_wrong == 1

    # Graded rewards: r − mean(r) over each query's rollouts, still divided by queries used.
    rewards = [0.9, 0.1, 0.0, 0.2, 0.7, 0.5, 0.0, 1.0, 0.6, 0.0, 0.3, 0.0]
    weights, _ = rollout_weights(grades_frame(rewards=rewards), "advantage")
    got = weights_by_rollout(weights)
    rewards_a, rewards_b = np.array(rewards[:4]), np.array(rewards[4:7])
    for index, rollout_id in enumerate(["a0", "a1", "a2", "a3"]):
        assert got[rollout_id] == pytest.approx((rewards_a[index] - rewards_a.mean()) / 2)
    for index, rollout_id in enumerate(["b0", "b1", "b2"]):
        assert got[rollout_id] == pytest.approx((rewards_b[index] - rewards_b.mean()) / 2)
    # Queries with uniform grades stay out even when their rewards vary.
    assert got["c0"] == got["c1"] == got["d1"] == 0.0


def test_positive_keeps_only_correct_rollouts():
    weights, summary = rollout_weights(grades_frame(), "positive")
    got = weights_by_rollout(weights)
    used = 3  # a, b and the all-correct c; only the all-wrong d is skipped
    expected = {
        "a0": 1 / used,
        "a1": 0.0,
        "a2": 0.0,
        "a3": 0.0,
        "b0": 1 / 2 / used,
        "b1": 1 / 2 / used,
        "b2": 0.0,
        "c0": 1 / 2 / used,
        "c1": 1 / 2 / used,
        "d0": 0.0,
        "d1": 0.0,
        "d2": 0.0,
    }
    for rollout_id, value in expected.items():
        assert got[rollout_id] == pytest.approx(value, abs=1e-12), rollout_id
    assert all(value >= 0 for value in got.values())
    assert sum(got.values()) == pytest.approx(1.0)
    assert summary.queries_used == 3
    assert summary.queries_skipped == 1
    assert summary.rollouts_weighted == 5


def test_scale_does_not_grow_with_the_number_of_queries():
    # Duplicating every query (under new ids) halves each weight: J is a mean over queries.
    doubled = GRADES + [(f"x{rid}", f"x{qid}", correct) for rid, qid, correct in GRADES]
    single = weights_by_rollout(rollout_weights(grades_frame(), "signed")[0])
    double = weights_by_rollout(rollout_weights(grades_frame(doubled), "signed")[0])
    for rollout_id, value in single.items():
        assert double[rollout_id] == pytest.approx(value / 2)


@pytest.mark.parametrize("scheme", ["signed", "advantage"])
def test_no_mixed_queries_is_degenerate_and_mentions_temperature(scheme):
    uniform = [row for row in GRADES if row[1] in ("c", "d")]
    with pytest.raises(DegenerateGradesError) as caught:
        rollout_weights(grades_frame(uniform), scheme)
    message = str(caught.value)
    assert "temperature" in message
    assert "0 of 2 queries" in message
    assert "1 all correct, 1 all wrong" in message


def test_positive_is_degenerate_only_when_nothing_is_correct():
    all_correct = [row for row in GRADES if row[1] == "c"]
    weights, summary = rollout_weights(grades_frame(all_correct), "positive")
    assert weights["weight"].to_list() == pytest.approx([0.5, 0.5])
    all_wrong = [row for row in GRADES if row[1] == "d"]
    with pytest.raises(DegenerateGradesError, match="at least one correct rollout.*temperature"):
        rollout_weights(grades_frame(all_wrong), "positive")


def test_empty_grades_and_unknown_scheme():
    with pytest.raises(DegenerateGradesError, match="no graded rollouts"):
        rollout_weights(grades_frame([]), "signed")
    with pytest.raises(ValueError, match="influence.weighting.*'balanced'"):
        rollout_weights(grades_frame(), "balanced")


def test_combine_is_the_weighted_sum_of_gradients():
    rng = np.random.default_rng(0)
    gradients = rng.normal(size=(6, 5)).astype(np.float32)
    weights = np.array([0.5, -0.25, 0.0, 1.0, -1.0, 0.125])
    expected = sum(weights[m] * gradients[m].astype(np.float64) for m in range(6))
    combined = combine(gradients, weights)
    assert combined.dtype == np.float64
    assert combined.shape == (5,)
    np.testing.assert_allclose(combined, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="6 gradients but 5 weights"):
        combine(gradients, weights[:5])
