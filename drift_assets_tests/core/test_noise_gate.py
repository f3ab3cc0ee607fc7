"""The training-dynamics noise gate: a two-component mixture fitted by EM, checked on samples whose
populations are known."""

import numpy as np
import pytest

from drift_assets.core.attribution.noise_gate import dynamics_loss, fit_two_components, gate


def test_two_separated_populations_are_recovered_and_the_high_one_gated():
    rng = np.random.default_rng(0)
    clean, noise = rng.normal(-1.0, 0.3, 700), rng.normal(1.5, 0.4, 300)
    values = np.concatenate([clean, noise])
    mixture = fit_two_components(values)
    assert mixture.weights == pytest.approx((0.7, 0.3), abs=0.02)
    assert mixture.means == pytest.approx((-1.0, 1.5), abs=0.05)
    assert mixture.stds == pytest.approx((0.3, 0.4), abs=0.05)
    kept, _ = gate(values)
    assert kept[:700].mean() > 0.99 and kept[700:].mean() < 0.01
    # The boundary sits where the two weighted densities cross, between the means.
    assert values[kept].max() < values[~kept].min()


def test_one_population_is_not_gated():
    values = np.random.default_rng(1).normal(0.0, 1.0, 1000)
    kept, mixture = gate(values)
    assert kept.all() and mixture.separation <= 2.0


def test_the_dynamics_loss_is_the_mean_log_loss_over_checkpoints():
    losses = np.array([[1.0, np.e], [np.e**2, np.e**2]])
    assert dynamics_loss(losses) == pytest.approx([0.5, 2.0])


def test_too_few_or_constant_values_are_an_error():
    with pytest.raises(ValueError, match="at least 4 distinct values"):
        fit_two_components(np.ones(10))
