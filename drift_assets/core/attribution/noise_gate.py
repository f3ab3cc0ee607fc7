"""A noise gate from training dynamics: which pool rows the model keeps finding unlikely.

Along a fine-tune on the whole pool, rows that agree with the rest (the task, in a noisy pool)
are learned and their loss falls; rows that contradict it (wrong answers, another task) stay
unlikely much longer (Data Maps' "hard to learn" region; DivideMix and Co-teaching gate on the
same small-loss criterion). The gate fits a two-component Gaussian mixture to each row's loss
(log loss per response token, averaged over the checkpoints it was measured at) and gates out the
rows the high-loss component claims: its size comes from the data, not from a share fixed in
advance. Where the losses are not bimodal (the components overlap: Ashman's D ≤ 2) there is no
second population to gate, and every row is kept: a clean pool loses none of its hard rows.

Where noise is not a separate mode of the losses (a consistent wrong rule the model finds only
somewhat unlikely), :func:`reference_gate` sizes the gate from a sample of clean rows instead: the
validation queries' reference answers, whose loss under the same model says how unlikely a clean
row of this task can be; a pool row less likely than all but a tenth of them is an outlier (a
conformal test at 10%).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_FLOOR = 1e-6  # a variance no component collapses below (rows with equal losses)


@dataclass(frozen=True)
class Mixture:
    """Two Gaussian components of a 1-D sample: ``weights``, ``means`` and ``stds``, low mean first."""

    weights: tuple[float, float]
    means: tuple[float, float]
    stds: tuple[float, float]
    iterations: int

    @property
    def separation(self) -> float:
        """Ashman's D: |μ₁ − μ₀| / √((σ₀² + σ₁²)/2); above 2, the two components are distinct populations."""
        return abs(self.means[1] - self.means[0]) / np.sqrt((self.stds[0] ** 2 + self.stds[1] ** 2) / 2)

    def high_posterior(self, values: np.ndarray) -> np.ndarray:
        """P(high component | value) for each value."""
        densities = np.stack([w * _normal(values, m, s) for w, m, s in zip(self.weights, self.means, self.stds, strict=True)])
        total = densities.sum(axis=0)
        # Far out in a tail both densities underflow: the nearer mean's component takes the value.
        nearer_high = np.abs(values - self.means[1]) < np.abs(values - self.means[0])
        return np.where(total > 0, densities[1] / np.where(total > 0, total, 1.0), nearer_high.astype(float))


def _normal(values: np.ndarray, mean: float, std: float) -> np.ndarray:
    return np.exp(-0.5 * ((values - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi))


def fit_two_components(values: np.ndarray, iterations: int = 500, tolerance: float = 1e-9) -> Mixture:
    """Expectation-maximisation from a deterministic start (the lower and upper thirds)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 4 or np.ptp(values) == 0:
        raise ValueError(f"a two-component mixture needs at least 4 distinct values (got {len(values)})")
    low, high = np.quantile(values, [1 / 6, 5 / 6])
    spread = max(float(values.std()), _FLOOR)
    weights, means, stds = np.array([0.5, 0.5]), np.array([low, high]), np.array([spread / 2, spread / 2])
    previous, iteration = -np.inf, 0
    while iteration < iterations:
        iteration += 1
        densities = np.stack([w * _normal(values, m, s) for w, m, s in zip(weights, means, stds, strict=True)]) + 1e-300
        likelihood = float(np.log(densities.sum(axis=0)).sum())
        responsibilities = densities / densities.sum(axis=0)
        mass = responsibilities.sum(axis=1)
        weights = mass / len(values)
        means = (responsibilities @ values) / mass
        stds = np.sqrt(np.maximum((responsibilities * (values - means[:, None]) ** 2).sum(axis=1) / mass, _FLOOR**2))
        if likelihood - previous < tolerance * abs(likelihood):
            break
        previous = likelihood
    order = np.argsort(means)
    return Mixture(
        tuple(float(weights[i]) for i in order),
        tuple(float(means[i]) for i in order),
        tuple(float(stds[i]) for i in order),
        iteration,
    )


def dynamics_loss(loss_per_token_by_checkpoint: np.ndarray) -> np.ndarray:
    """Each row's training-dynamics loss: the mean over checkpoints (columns) of log loss per token."""
    return np.log(np.maximum(np.asarray(loss_per_token_by_checkpoint, dtype=np.float64), 1e-8)).mean(axis=1)


MIN_SEPARATION = 2.0


def gate(values: np.ndarray) -> tuple[np.ndarray, Mixture]:
    """Rows kept (True) where the low-loss component is the likelier, every row where the two
    components are not distinct (separation ≤ :data:`MIN_SEPARATION`); and the fitted mixture."""
    values = np.asarray(values, dtype=np.float64)
    mixture = fit_two_components(values)
    if mixture.separation <= MIN_SEPARATION:
        return np.ones(len(values), dtype=bool), mixture
    return mixture.high_posterior(values) < 0.5, mixture


REFERENCE_QUANTILE = 0.9


def reference_gate(
    pool_loss_per_token: np.ndarray, reference_loss_per_token: np.ndarray, quantile: float = REFERENCE_QUANTILE
) -> tuple[np.ndarray, float]:
    """Rows kept (True) whose loss per token is at most the ``quantile`` of the references' (clean
    answers to the validation queries, under the same model); and that threshold."""
    references = np.asarray(reference_loss_per_token, dtype=np.float64)
    references = references[np.isfinite(references)]
    if len(references) < 10:
        raise ValueError(
            f"influence.noise_gate reference: {len(references)} validation references with a finite loss; "
            "the gate needs at least 10 to size itself"
        )
    threshold = float(np.quantile(references, quantile))
    return np.asarray(pool_loss_per_token, dtype=np.float64) <= threshold, threshold
