"""Ranks, Spearman, ROC-AUC, intervals; influence scores s_i = gᵀ H⁻¹ ĥ_i and their debiasing.

Every expected value is computed here independently (brute force, numpy.linalg.inv, closed forms,
re-solving a weighted least-squares problem), never by calling the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from drift_assets.core.attribution.influence import debias, fit_curvature, score_pool
from drift_assets.core.study.stats import average_ranks, roc_auc, spearman, wilson_interval

# ---------- stats ----------


def brute_force_ranks(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    below = (values[None, :] < values[:, None]).sum(axis=1)
    equal = (values[None, :] == values[:, None]).sum(axis=1)
    return 1 + below + (equal - 1) / 2


def pearson(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def brute_force_auc(scores, positives) -> float:
    scores, positives = np.asarray(scores, float), np.asarray(positives, bool)
    pos, neg = scores[positives], scores[~positives]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_average_ranks_with_and_without_ties():
    np.testing.assert_array_equal(average_ranks(np.array([10.0, 30.0, 20.0])), [1.0, 3.0, 2.0])
    np.testing.assert_array_equal(average_ranks(np.array([5, 1, 5, 5, 0])), [4.0, 2.0, 4.0, 4.0, 1.0])
    np.testing.assert_array_equal(average_ranks(np.array([2.0, 2.0])), [1.5, 1.5])
    rng = np.random.default_rng(1)
    for _ in range(20):
        values = rng.integers(0, 6, size=rng.integers(1, 30)).astype(float)
        np.testing.assert_array_equal(average_ranks(values), brute_force_ranks(values))
    tie_free = rng.normal(size=50)
    np.testing.assert_array_equal(average_ranks(tie_free), np.argsort(np.argsort(tie_free)) + 1)


def test_spearman_matches_pearson_on_ranks_and_the_closed_form():
    rng = np.random.default_rng(2)
    a = rng.normal(size=40)
    b = a + rng.normal(scale=1.5, size=40)
    rank_a, rank_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    assert spearman(a, b) == pytest.approx(pearson(rank_a, rank_b), abs=1e-12)
    n, d = 40, rank_a - rank_b
    assert spearman(a, b) == pytest.approx(1 - 6 * float(d @ d) / (n * (n * n - 1)), abs=1e-12)
    # Monotone transforms give ±1.
    assert spearman(a, np.exp(a)) == pytest.approx(1.0)
    assert spearman(a, -(a**3)) == pytest.approx(-1.0)


def test_spearman_with_ties_is_pearson_on_average_ranks():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4, size=30).astype(float)
    b = rng.integers(0, 5, size=30).astype(float) + a
    assert spearman(a, b) == pytest.approx(pearson(brute_force_ranks(a), brute_force_ranks(b)), abs=1e-12)


def test_spearman_undefined_cases_are_nan():
    assert math.isnan(spearman(np.array([1.0]), np.array([2.0])))
    assert math.isnan(spearman(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])))


def test_roc_auc_matches_the_pairwise_definition():
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([1, 1, 0, 0])) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5]), np.array([1, 0, 0])) == 0.5
    rng = np.random.default_rng(4)
    for _ in range(20):
        size = int(rng.integers(2, 40))
        scores = np.round(rng.normal(size=size), 1)  # rounding makes ties
        positives = rng.random(size) < 0.4
        if positives.all() or not positives.any():
            continue
        assert roc_auc(scores, positives) == pytest.approx(brute_force_auc(scores, positives), abs=1e-12)


def test_roc_auc_without_both_classes_is_nan():
    assert math.isnan(roc_auc(np.array([1.0, 2.0]), np.array([True, True])))
    assert math.isnan(roc_auc(np.array([1.0, 2.0]), np.array([False, False])))


def test_wilson_interval_known_values():
    # Published values of the 95% Wilson score interval.
    low, high = wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(81, 263)
    assert (low, high) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_wilson_interval_holds_the_proportion_at_every_count():
    # All or none correct: in floating point the bound used to miss p by an ulp (10/10 gave high < 1).
    for trials in range(1, 301):
        for successes in sorted({0, 1, trials // 2, trials - 1, trials}):
            low, high = wilson_interval(successes, trials)
            assert 0.0 <= low <= successes / trials <= high <= 1.0, (successes, trials)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0


# ---------- influence ----------


def batches_of(vectors: np.ndarray, size: int, ids=None):
    ids = ids if ids is not None else [f"ex{i}" for i in range(len(vectors))]

    def generate():
        for start in range(0, len(vectors), size):
            yield ids[start : start + size], vectors[start : start + size]

    return generate


def arrays_only(generate):
    return (gradients for _, gradients in generate())


@pytest.fixture
def pool():
    rng = np.random.default_rng(5)
    n, k = 37, 6
    # Columns of very different scales make the Fisher far from a multiple of I.
    phi = rng.normal(size=(n, k)) * np.array([3.0, 1.0, 0.5, 0.2, 2.0, 0.05])
    target = rng.normal(size=k)
    return phi.astype(np.float32), target


def test_identity_scores_are_dot_products(pool):
    phi, target = pool
    curvature = fit_curvature("identity", [], dimension=phi.shape[1])
    scores = score_pool(batches_of(phi, 5), target, curvature, "none")
    phi64 = phi.astype(np.float64)
    np.testing.assert_allclose(scores.score_raw, [float(row @ target) for row in phi64], rtol=1e-10)
    np.testing.assert_array_equal(scores.score, scores.score_raw)
    np.testing.assert_allclose(scores.grad_norm, np.sqrt((phi64**2).sum(axis=1)), rtol=1e-10)
    np.testing.assert_allclose(scores.self_influence, (phi64**2).sum(axis=1), rtol=1e-10)
    assert scores.example_ids == [f"ex{i}" for i in range(len(phi))]


def test_fisher_scores_match_an_explicit_inverse(pool):
    phi, target = pool
    n, k = phi.shape
    damping = 0.1
    curvature = fit_curvature("fisher", arrays_only(batches_of(phi, 8)), dimension=k, damping=damping)
    phi64 = phi.astype(np.float64)
    fisher = phi64.T @ phi64 / n
    lam = damping * np.trace(fisher) / k
    inverse = np.linalg.inv(fisher + lam * np.eye(k))
    assert curvature.damping_value == pytest.approx(lam, rel=1e-10)
    assert curvature.n_examples == n

    scores = score_pool(batches_of(phi, 8), target, curvature, "none")
    expected_raw = np.array([target @ inverse @ row for row in phi64])
    expected_self = np.array([row @ inverse @ row for row in phi64])
    np.testing.assert_allclose(scores.score_raw, expected_raw, rtol=1e-8)
    np.testing.assert_allclose(scores.self_influence, expected_self, rtol=1e-8)
    # The preconditioner matters here: the identity would rank differently.
    assert not np.allclose(expected_raw, phi64 @ target, rtol=1e-2)

    si = score_pool(batches_of(phi, 8), target, curvature, "self_influence")
    np.testing.assert_allclose(si.score, expected_raw / np.sqrt(expected_self), rtol=1e-8)
    unit = score_pool(batches_of(phi, 8), target, curvature, "unit")
    np.testing.assert_allclose(unit.score, expected_raw / np.linalg.norm(phi64, axis=1), rtol=1e-8)


def test_fisher_does_not_depend_on_batching(pool):
    phi, target = pool
    k = phi.shape[1]
    one = fit_curvature("fisher", [phi], k)
    many = fit_curvature("fisher", arrays_only(batches_of(phi, 3)), k)
    a = score_pool(batches_of(phi, 100), target, one, "none").score_raw
    b = score_pool(batches_of(phi, 3), target, many, "none").score_raw
    np.testing.assert_allclose(a, b, rtol=1e-10)


def test_a_batch_of_the_whole_pool_is_scored_in_float64_slices(pool, monkeypatch):
    """A warm-up checkpoint's pool arrives as one batch; its float64 copy is made a slice at a time."""
    import drift_assets.core.attribution.influence as influence

    phi, target = pool
    curvature = fit_curvature("fisher", [phi], phi.shape[1])
    whole = score_pool(batches_of(phi, 100), target, curvature, "self_influence")
    monkeypatch.setattr(influence, "_ROWS_IN_FLOAT64", 4)  # 37 rows: ten slices, the last of one row
    sliced = score_pool(batches_of(phi, 100), target, curvature, "self_influence")
    assert sliced.example_ids == whole.example_ids
    for field in ("score_raw", "score", "grad_norm", "self_influence"):
        np.testing.assert_allclose(getattr(sliced, field), getattr(whole, field), rtol=1e-12)


def test_unit_debias_is_cosine_under_the_identity(pool):
    phi, target = pool
    curvature = fit_curvature("identity", [], phi.shape[1])
    scores = score_pool(batches_of(phi, 10), target, curvature, "unit")
    phi64 = phi.astype(np.float64)
    cosine = phi64 @ target / np.linalg.norm(phi64, axis=1)
    np.testing.assert_allclose(scores.score, cosine, rtol=1e-10)
    # Scaling an example's gradient leaves its unit score alone.
    scaled = phi64.copy()
    scaled[0] *= 1000.0
    rescored = score_pool(batches_of(scaled, 10), target, curvature, "unit")
    assert rescored.score[0] == pytest.approx(scores.score[0], rel=1e-10)
    assert rescored.score_raw[0] == pytest.approx(1000.0 * scores.score_raw[0], rel=1e-10)


def test_residual_debias_is_uncorrelated_with_log_gradient_norm():
    rng = np.random.default_rng(6)
    norms = np.exp(rng.normal(size=200))
    raw = 3.0 * np.log(norms) + 0.5 + rng.normal(scale=0.3, size=200)  # strongly norm-driven
    residual = debias(raw, norms, np.ones_like(raw), "residual")
    log_norm = np.log(norms)
    assert abs(residual.sum()) < 1e-8
    assert abs(residual @ log_norm) < 1e-8
    # Equal to the residual of numpy's own straight-line fit.
    slope, intercept = np.polyfit(log_norm, raw, 1)
    np.testing.assert_allclose(residual, raw - (slope * log_norm + intercept), atol=1e-9)
    assert abs(np.corrcoef(raw, log_norm)[0, 1]) > 0.9
    # A score that is exactly linear in log-norm has nothing left.
    np.testing.assert_allclose(debias(2.0 * log_norm - 1.0, norms, np.ones_like(raw), "residual"), 0.0, atol=1e-9)


def test_log_orthogonal_debias_removes_any_power_of_the_norm_and_keeps_signs():
    rng = np.random.default_rng(7)
    norms = np.exp(rng.normal(size=300))
    quality = rng.normal(size=300)  # what a debiased score should rank by
    for power in (0.5, 1.0, 2.5):
        raw = quality * norms**power
        full = debias(raw, norms, np.ones_like(raw), "log_orthogonal", strength=1.0)
        np.testing.assert_array_equal(np.sign(full), np.sign(raw))
        # log|score| has no straight-line dependence on log‖ĥ‖ left (numpy's own fit as the oracle) ...
        slope_after = np.polyfit(np.log(norms), np.log(np.abs(full)), 1)[0]
        assert abs(slope_after) < 1e-9
        # ... and what is left is the quality times one constant: |quality| carries no norm trend here.
        fitted = np.polyfit(np.log(norms), np.log(np.abs(raw)), 1)[0]
        expected = raw * np.exp(-fitted * (np.log(norms) - np.log(norms).mean()))
        np.testing.assert_allclose(full, expected, rtol=1e-12)
        np.testing.assert_allclose(debias(raw, norms, np.ones_like(raw), "log_orthogonal", strength=0.0), raw, rtol=1e-12)
    # Half strength removes half the slope.
    raw = quality * norms**2
    half = debias(raw, norms, np.ones_like(raw), "log_orthogonal", strength=0.5)
    before = np.polyfit(np.log(norms), np.log(np.abs(raw)), 1)[0]
    after = np.polyfit(np.log(norms), np.log(np.abs(half)), 1)[0]
    assert after == pytest.approx(before / 2, rel=1e-9)


def test_debias_none_copies_and_unknown_methods_fail():
    raw = np.array([1.0, -2.0])
    out = debias(raw, np.array([1.0, 2.0]), np.array([1.0, 4.0]), "none")
    np.testing.assert_array_equal(out, raw)
    assert out is not raw
    with pytest.raises(ValueError, match="influence.debias.*'cosine'"):
        debias(raw, np.ones(2), np.ones(2), "cosine")
    with pytest.raises(ValueError, match="influence.hessian.*'kfac'"):
        fit_curvature("kfac", [], 2)


def test_zero_gradients_keep_the_fisher_defined():
    curvature = fit_curvature("fisher", [np.zeros((4, 3))], dimension=3)
    assert 0 < curvature.damping_value < 1e-9
    scores = score_pool(batches_of(np.zeros((4, 3)), 2), np.ones(3), curvature, "unit")
    np.testing.assert_array_equal(scores.score_raw, 0.0)
    assert np.isfinite(scores.score).all()


def test_dimension_mismatch_and_empty_pool_raise_clear_errors(pool):
    phi, target = pool
    k = phi.shape[1]
    curvature = fit_curvature("identity", [], k)
    with pytest.raises(ValueError, match="dimension mismatch.*validation gradient has shape \\(7,\\).*k=6"):
        score_pool(batches_of(phi, 5), np.ones(k + 1), curvature, "none")
    with pytest.raises(ValueError, match="dimension mismatch: training gradients have k=5, expected 6"):
        score_pool(batches_of(phi[:, :5], 5), target, curvature, "none")
    with pytest.raises(ValueError, match="training pool is empty"):
        score_pool(batches_of(np.zeros((0, k)), 5), target, curvature, "none")
    with pytest.raises(ValueError, match="pool is empty"):
        fit_curvature("fisher", [], k)


# ---------- closed form: linear regression ----------


@pytest.fixture
def regression():
    rng = np.random.default_rng(7)
    n, k, n_val = 60, 4, 25
    x = rng.normal(size=(n, k)) * np.array([1.0, 2.0, 0.5, 1.5])
    w_true = np.array([1.0, -2.0, 0.5, 3.0])
    y = x @ w_true + rng.normal(scale=0.5, size=n)
    y[:5] += rng.normal(scale=4.0, size=5)  # a few noisy labels
    x_val = rng.normal(size=(n_val, k))
    y_val = x_val @ w_true + rng.normal(scale=0.5, size=n_val)
    w_star = np.linalg.solve(x.T @ x, x.T @ y)
    # Log-likelihood gradients of a unit-variance Gaussian model: h = x (y − wᵀx) = −∇ ½(y − wᵀx)².
    h = x * (y - x @ w_star)[:, None]
    g = x_val.T @ (y_val - x_val @ w_star)  # ∇ of J(w) = −½ Σ_val (y − wᵀx)²
    return x, y, x_val, y_val, w_star, h, g


def validation_objective(w, x_val, y_val) -> float:
    return -0.5 * float(((y_val - x_val @ w) ** 2).sum())


def test_linear_regression_fisher_scores_match_numpy(regression):
    x, y, x_val, y_val, w_star, h, g = regression
    n, k = h.shape
    damping = 0.1
    curvature = fit_curvature("fisher", [h[:20], h[20:]], dimension=k, damping=damping)
    scores = score_pool(batches_of(h, 16), g, curvature, "none")
    fisher = sum(np.outer(row, row) for row in h) / n
    lam = damping * np.trace(fisher) / k
    expected = np.array([g @ np.linalg.inv(fisher + lam * np.eye(k)) @ row for row in h])
    np.testing.assert_allclose(scores.score_raw, expected, rtol=1e-8)


def test_linear_regression_exact_hessian_predicts_upweighting(regression):
    """Koh & Liang: upweighting z_i by ε moves the optimum by ε H_total⁻¹ h_i, so
    dJ/dε = gᵀ (XᵀX)⁻¹ h_i. A curvature fitted on the inputs x_i (Fisher of the Gaussian model,
    = the exact Hessian XᵀX/N of the mean loss) with no damping gives N · dJ/dε."""
    x, y, x_val, y_val, w_star, h, g = regression
    n, k = x.shape
    curvature = fit_curvature("fisher", [x], dimension=k, damping=0.0)
    scores = score_pool(batches_of(h, 16), g, curvature, "none")

    epsilon = 1e-4
    measured = []
    for i in range(n):

        def refit(eps, i=i):
            gram = x.T @ x + eps * np.outer(x[i], x[i])
            return np.linalg.solve(gram, x.T @ y + eps * x[i] * y[i])

        change = validation_objective(refit(epsilon), x_val, y_val) - validation_objective(refit(-epsilon), x_val, y_val)
        measured.append(change / (2 * epsilon))
    measured = np.array(measured)
    np.testing.assert_allclose(scores.score_raw / n, measured, rtol=1e-4, atol=1e-6)
    # Positive score = upweighting helps the validation objective; both signs occur here.
    assert (measured > 0).any() and (measured < 0).any()
    np.testing.assert_array_equal(np.sign(scores.score_raw), np.sign(measured))


def test_mean_standard_error_and_the_minimum_detectable_difference():
    from drift_assets.core.study.stats import mean_and_standard_error, minimum_detectable_difference

    mean, error = mean_and_standard_error([1.0, 2.0, 4.0, 5.0])
    assert mean == 3.0 and error == pytest.approx(math.sqrt(10 / 3) / 2)  # sample sd √(10/3), n = 4
    assert mean_and_standard_error([2.0]) == (2.0, None)
    # Two-sided 5% at 80% power: 1.959964 + 0.841621 standard errors.
    assert minimum_detectable_difference(1.0) == pytest.approx(2.801585, abs=1e-6)
    assert minimum_detectable_difference(0.5, alpha=0.10, power=0.5) == pytest.approx(0.5 * 1.644854, abs=1e-6)
