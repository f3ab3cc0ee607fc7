"""From gradient tables to the target gradient, and the same-checkpoint/same-projection guard."""

import numpy as np
import polars as pl
import pytest

from drift_assets.core.attribution.scores import check_same_checkpoint, target_gradient, weighted_rollouts
from drift_assets.core.grading.weighting import DegenerateGradesError


def validation_table(projection: str = "basis-a") -> pl.DataFrame:
    grads = [[1.0, 0.0], [0.0, 2.0], [4.0, 4.0], [3.0, 1.0], [10.0, 10.0]]
    return pl.DataFrame(
        {
            "rollout_id": ["q1-0", "q1-1", "q1-2", "q2-0", "reference-q1"],
            "query_id": ["q1", "q1", "q1", "q2", "q1"],
            "target": ["rollout"] * 4 + ["reference"],
            "grad": pl.Series(grads, dtype=pl.List(pl.Float32)),
            "model_fingerprint": ["model-a"] * 5,
            "projection_fingerprint": [projection] * 5,
        }
    )


GRADES = pl.DataFrame(
    {
        "rollout_id": ["q1-0", "q1-1", "q1-2", "q2-0"],
        "query_id": ["q1", "q1", "q1", "q2"],
        "correct": [True, True, False, True],
        "reward": [1.0, 1.0, 0.0, 1.0],
    }
)


def test_signed_target_is_the_weighted_sum_of_rollout_gradients():
    target = target_gradient(validation_table(), GRADES, "onpolicy", "signed", "skip")
    # q1: +1/2 for each correct rollout, −1 for the wrong one; q2 is all correct, so skipped.
    assert target.vector == pytest.approx(np.array([0.5 * 1 + 0.5 * 0 - 4, 0.5 * 0 + 0.5 * 2 - 4]))
    assert target.summary.queries_used == 1 and target.summary.queries_all_correct == 1
    assert (target.model_fingerprint, target.projection_fingerprint) == ("model-a", "basis-a")
    offpolicy = target_gradient(validation_table(), GRADES, "offpolicy", "signed")
    assert offpolicy.vector == pytest.approx([10.0, 10.0]) and offpolicy.n_targets == 1


def test_an_unsolved_query_contrasts_its_reference_with_the_wrong_rollouts():
    unsolved = GRADES.with_columns(correct=pl.col("rollout_id") == "q2-0")  # q1: no rollout correct
    with pytest.raises(DegenerateGradesError, match="0 of 2 queries"):  # q1 all wrong, q2 all correct: no contrast left
        target_gradient(validation_table(), unsolved, "onpolicy", "signed", "skip")
    target = target_gradient(validation_table(), unsolved, "onpolicy", "signed", "reference")
    # q1: +1 for the reference [10, 10], −1/3 for each of its three wrong rollouts; q2 all correct, skipped.
    wrong = (np.array([1.0, 0.0]) + np.array([0.0, 2.0]) + np.array([4.0, 4.0])) / 3
    assert target.vector == pytest.approx(np.array([10.0, 10.0]) - wrong)
    assert target.references_for_unsolved == 1 and target.summary.queries_used == 1
    # A query some rollout solves keeps its own contrast: the reference is not added there.
    assert target_gradient(validation_table(), GRADES, "onpolicy", "signed", "reference").vector == pytest.approx(
        target_gradient(validation_table(), GRADES, "onpolicy", "signed", "skip").vector
    )
    positive = target_gradient(validation_table(), unsolved, "onpolicy", "positive", "reference")
    assert positive.vector == pytest.approx((np.array([10.0, 10.0]) + np.array([3.0, 1.0])) / 2)
    # The rows the target sums, as weighted_rollouts gives them: the reference and q1's wrong rollouts.
    rows, _, added = weighted_rollouts(validation_table(), unsolved, "signed", "reference")
    assert added == 1
    assert dict(zip(rows["rollout_id"], rows["weight"])) == pytest.approx(
        {"reference-q1": 1.0, "q1-0": -1 / 3, "q1-1": -1 / 3, "q1-2": -1 / 3}
    )
    with pytest.raises(ValueError, match="influence.unsolved must be one of"):
        weighted_rollouts(validation_table(), unsolved, "signed", "always")
    without_references = validation_table().filter(pl.col("target") == "rollout")
    with pytest.raises(ValueError, match="have no reference gradient"):
        target_gradient(without_references, unsolved, "onpolicy", "signed", "reference")


def test_gradients_from_another_checkpoint_or_projection_are_refused():
    target = target_gradient(validation_table(), GRADES, "onpolicy", "signed")
    check_same_checkpoint({("model-a", "basis-a")}, target)
    with pytest.raises(ValueError, match="training gradients come from model \\['model-b'\\]"):
        check_same_checkpoint({("model-a", "basis-a"), ("model-b", "basis-a")}, target)
    with pytest.raises(ValueError, match="projected with basis \\['basis-b'\\].*re-materialize projection_basis"):
        check_same_checkpoint({("model-a", "basis-b")}, target)
    mixed = pl.concat([validation_table(), validation_table("basis-b").with_columns(pl.col("rollout_id") + "-x")])
    with pytest.raises(ValueError, match="mixes models .* or projections"):
        target_gradient(mixed, GRADES, "onpolicy", "signed")
