"""Influence scores s_i = gᵀ H⁻¹ ĥ_i and their debiasing against gradient norm (docs/method.md).

g = Σ_jk w_jk ĝ_jk is the weighted validation gradient (k-dim); H⁻¹g is solved once, then every
training example costs one dot product, so the pool is scored streaming, batch by batch, and
memory never holds more than one batch of vectors plus a k × k matrix.

Hessians:
- ``identity``: H = I.
- ``fisher``: projected empirical Fisher over the training pool, F = ΦᵀΦ/N + λI with
  λ = damping · mean eigenvalue of ΦᵀΦ/N (= damping · trace/k), as Kronfluence damps.

Debiasing (``score`` from ``score_raw``):
- ``none``: score = raw.
- ``unit``: raw / ‖ĥ_i‖ (cosine-like, as LESS does).
- ``self_influence``: raw / √(ĥ_iᵀ H⁻¹ ĥ_i) (RelatIF).
- ``residual``: the residual of an OLS fit raw ≈ a + b·log‖ĥ_i‖.
- ``log_orthogonal``: the score's magnitude orthogonalized against the gradient norm in log space,
  with a strength β: fit log|raw_i| ≈ a + b·log‖ĥ_i‖ (OLS), then
  score_i = sign(raw_i)·exp(log|raw_i| − β·b·(log‖ĥ_i‖ − mean log‖ĥ‖)). β = 1 leaves log|score|
  uncorrelated with log‖ĥ‖ whatever power of the norm the raw scores follow (``unit`` assumes
  the power is 1); β = 0 is ``none``.

A positive score means a gradient step on the example raises the weighted validation objective
J = Σ w_jk log π(y_jk | q_j): higher is better, keep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

Hessian = Literal["identity", "fisher"]
Debias = Literal["none", "unit", "self_influence", "residual", "log_orthogonal"]
HESSIANS: tuple[str, ...] = get_args(Hessian)
DEBIAS_METHODS: tuple[str, ...] = get_args(Debias)
_TINY = 1e-12
_ROWS_IN_FLOAT64 = 4096


@dataclass
class Curvature:
    """H as a Cholesky factor (None for the identity)."""

    kind: str
    dimension: int
    cholesky: np.ndarray | None = None
    damping_value: float = 0.0
    n_examples: int = 0

    def solve(self, vector: np.ndarray) -> np.ndarray:
        """H⁻¹ v (``v`` a vector, or vectors as its columns)."""
        if self.cholesky is None:
            return vector.astype(np.float64)
        y = np.linalg.solve(self.cholesky, vector)
        return np.linalg.solve(self.cholesky.T, y)

    def inverse_quadratic(self, rows: np.ndarray) -> np.ndarray:
        """ĥᵀ H⁻¹ ĥ for every row of ``rows`` (n, k)."""
        rows = rows.astype(np.float64)
        if self.cholesky is None:
            return np.einsum("ij,ij->i", rows, rows)
        whitened = np.linalg.solve(self.cholesky, rows.T)  # L⁻¹ĥ, so ‖L⁻¹ĥ‖² = ĥᵀH⁻¹ĥ
        return np.einsum("ij,ij->j", whitened, whitened)


def fit_curvature(kind: str, batches: Iterable[np.ndarray], dimension: int, damping: float = 0.1) -> Curvature:
    if kind not in HESSIANS:
        raise ValueError(f"influence.hessian must be one of {HESSIANS} (got {kind!r})")
    if kind == "identity":
        return Curvature("identity", dimension)
    gram = np.zeros((dimension, dimension), dtype=np.float64)
    n = 0
    for batch in batches:
        batch = batch.astype(np.float64)
        gram += batch.T @ batch
        n += batch.shape[0]
    if n == 0:
        raise ValueError("the fisher Hessian needs training gradients, and the pool is empty")
    # In place: at LLM scale k × k float64 is gigabytes, so the peak stays at this matrix and its factor.
    fisher = gram
    fisher /= n
    damping_value = damping * float(np.trace(fisher)) / dimension
    if damping_value <= 0:
        damping_value = _TINY  # all-zero gradients: keep the factor defined
    fisher[np.diag_indices(dimension)] += damping_value
    cholesky = np.linalg.cholesky(fisher)
    return Curvature("fisher", dimension, cholesky, damping_value, n)


def float64_slices(matrix: np.ndarray) -> Iterator[np.ndarray]:
    """``matrix``'s rows as float64, ``_ROWS_IN_FLOAT64`` at a time: an n × k float64 copy of a pool's
    gradients would double the float32 matrix (18.7 GiB at 100k examples, k = 50k)."""
    for start in range(0, len(matrix), _ROWS_IN_FLOAT64):
        yield matrix[start : start + _ROWS_IN_FLOAT64].astype(np.float64)


def row_norms(matrix: np.ndarray) -> np.ndarray:
    """‖row‖ in float64 for every row of ``matrix``."""
    return np.concatenate([np.linalg.norm(rows, axis=1) for rows in float64_slices(matrix)] or [np.zeros(0)])


@dataclass
class PoolScores:
    example_ids: list[str]
    score_raw: np.ndarray
    score: np.ndarray
    grad_norm: np.ndarray
    self_influence: np.ndarray
    # (examples, queries): each query's own part of the target, scored and debiased as the score is
    per_query: np.ndarray | None = None
    query_ids: list[str] | None = None  # the columns of per_query


def debias(raw: np.ndarray, grad_norm: np.ndarray, self_influence: np.ndarray, method: str, strength: float = 1.0) -> np.ndarray:
    """The debiased score (``strength`` is β of ``log_orthogonal``; the other methods ignore it)."""
    if method not in DEBIAS_METHODS:
        raise ValueError(f"influence.debias must be one of {DEBIAS_METHODS} (got {method!r})")
    if method == "none":
        return raw.copy()
    if method == "unit":
        return raw / np.maximum(grad_norm, _TINY)
    if method == "self_influence":
        return raw / np.sqrt(np.maximum(self_influence, _TINY))
    log_norm = np.log(np.maximum(grad_norm, _TINY))
    if method == "log_orthogonal":
        # sign(raw)·exp(log|raw| − β·b·(log‖ĥ‖ − mean)), b the OLS slope of log|raw| on log‖ĥ‖.
        log_magnitude = np.log(np.maximum(np.abs(raw), _TINY))
        centered = log_norm - log_norm.mean()
        spread = float(centered @ centered)
        slope = float(centered @ (log_magnitude - log_magnitude.mean())) / spread if spread > 0 else 0.0
        return np.sign(raw) * np.exp(log_magnitude - strength * slope * centered)
    design = np.column_stack([np.ones_like(log_norm), log_norm])
    coefficients, *_ = np.linalg.lstsq(design, raw, rcond=None)
    return raw - design @ coefficients


def score_pool(
    batches: Callable[[], Iterator[tuple[list[str], np.ndarray]]],
    target_gradient: np.ndarray,
    curvature: Curvature,
    debias_method: str,
    debias_strength: float = 1.0,
    query_targets: tuple[list[str], np.ndarray] | None = None,
) -> PoolScores:
    """Stream (example_ids, gradients (n, k)) batches once and score every example; with
    ``query_targets`` (query ids, their (queries, k) gradients: the summands of the target), also
    against each of them."""
    if target_gradient.shape != (curvature.dimension,):
        raise ValueError(
            f"dimension mismatch: the validation gradient has shape {target_gradient.shape}, "
            f"the training gradients have k={curvature.dimension} (were both computed with the same projection settings?)"
        )
    query_ids, query_gradients = query_targets if query_targets is not None else (None, np.zeros((0, curvature.dimension)))
    targets = [target_gradient, *query_gradients]
    directions = curvature.solve(np.stack(targets, axis=1).astype(np.float64))  # H⁻¹g (and H⁻¹g_j), solved once
    ids: list[str] = []
    raw, norms, self_influence = [], [], []
    for batch_ids, gradients in batches():
        if gradients.shape[1] != curvature.dimension:
            raise ValueError(
                f"dimension mismatch: training gradients have k={gradients.shape[1]}, expected {curvature.dimension}"
            )
        ids.extend(batch_ids)
        for rows in float64_slices(gradients):  # a warm-up checkpoint comes as one batch of the whole pool
            raw.append(rows @ directions)
            norms.append(np.linalg.norm(rows, axis=1))
            self_influence.append(curvature.inverse_quadratic(rows))
    if not ids:
        raise ValueError("the training pool is empty: nothing to score")
    raw_columns, norms_all, self_all = np.concatenate(raw), np.concatenate(norms), np.concatenate(self_influence)
    raw_all = raw_columns[:, 0]
    per_query = None
    if query_ids is not None:
        per_query = np.zeros((len(ids), len(targets) - 1))
        for j in range(len(targets) - 1):
            per_query[:, j] = debias(raw_columns[:, j + 1], norms_all, self_all, debias_method, debias_strength)
    return PoolScores(
        ids,
        raw_all,
        debias(raw_all, norms_all, self_all, debias_method, debias_strength),
        norms_all,
        self_all,
        per_query,
        query_ids,
    )
