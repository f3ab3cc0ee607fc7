"""Guards against a degenerate DRIFT target: each returns (passed, message with advice).

- **Contrast**: signed weighting learns from the queries whose rollouts are some right and some
  wrong. With few of them the target is a mean over a handful of contrasts.
- **Off-policy target**: with ``influence.unsolved: reference`` the reference answers of unsolved
  queries join the target. Where most queries are unsolved they dominate it, and the target
  turns off-policy: the gradients of answers the model would not write line up with every row it
  finds unlikely, noise first.
- **Agreement with likelihood**: on the suite's noisy tasks a plain loss filter (the rows the base
  model finds likeliest) is hard to beat; a selection that shares no more of its rows with that
  filter than a random one would is betting against it, and where it did on the suite it trailed
  full-data SFT. The method benchmark measures which of the two is right on the user's task.
- **Gradient hacking**: a score that rises with an example's gradient norm or its loss under the
  model prefers the rows the model finds surprising, which is what noise looks like. The debias
  exists to prevent exactly this.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

MIN_MIXED_QUERIES = 8
MIN_MIXED_SHARE = 0.2
MAX_REFERENCE_SHARE = 0.5
MAX_SPEARMAN = 0.2


def contrast_guard(queries: int, queries_mixed: int) -> tuple[bool, str]:
    """Enough queries with mixed grades: at least MIN_MIXED_QUERIES and MIN_MIXED_SHARE of them."""
    passed = queries_mixed >= MIN_MIXED_QUERIES and queries_mixed >= MIN_MIXED_SHARE * queries
    if passed:
        return True, f"{queries_mixed} of {queries} queries have mixed grades"
    return False, (
        f"only {queries_mixed} of {queries} validation queries have mixed grades (want at least {MIN_MIXED_QUERIES} and "
        f"{MIN_MIXED_SHARE:.0%}): the on-policy contrast rests on few queries. Raise rollout.samples_per_query or "
        "rollout.temperature, or add validation queries the model solves only sometimes."
    )


def target_guard(reference_share: float) -> tuple[bool, str]:
    """The reference answers make at most MAX_REFERENCE_SHARE of the on-policy target (gᵀg_ref / gᵀg)."""
    if not math.isfinite(reference_share) or reference_share <= MAX_REFERENCE_SHARE:
        return True, f"reference answers make {reference_share:.0%} of the target"
    return False, (
        f"the reference answers of unsolved queries make {reference_share:.0%} of the target's squared norm (over "
        f"{MAX_REFERENCE_SHARE:.0%}): the target is mostly off-policy, and an off-policy target ranks the rows the model "
        "finds unlikely (noise) first. Set influence.unsolved: skip, or use validation queries the model solves sometimes."
    )


def hacking_guard(spearman_grad_norm: float | None, spearman_loss: float | None) -> tuple[bool, str]:
    """The score does not rise with gradient norm or loss (Spearman at most MAX_SPEARMAN with either)."""
    figures = {"gradient norm": spearman_grad_norm, "loss per token": spearman_loss}
    high = {name: value for name, value in figures.items() if value is not None and math.isfinite(value) and value > MAX_SPEARMAN}
    described = ", ".join(f"{name} {value:+.2f}" for name, value in figures.items() if value is not None and math.isfinite(value))
    if not high:
        return True, f"Spearman of the score with {described}"
    return False, (
        f"the score rises with {' and '.join(high)} (Spearman {described}; want at most {MAX_SPEARMAN:+.2f}): it prefers "
        "the rows the model finds surprising, as noise is. Check the target guard, set influence.unsolved: skip, or "
        "debias harder (influence.debias: log_orthogonal)."
    )


def likelihood_agreement_guard(selected: Iterable[str], loss_per_token: Mapping[str, float]) -> tuple[bool, str]:
    """The selection shares more of its rows with the loss filter of the same size (the rows of
    lowest base-model loss per token, ties by id) than a random selection would (the selected share)."""
    chosen = set(selected)
    ranked = sorted(loss_per_token, key=lambda example_id: (loss_per_token[example_id], example_id))
    if not chosen or len(chosen) >= len(ranked):
        return True, "the selection is the whole pool (or empty): nothing to compare"
    likeliest = set(ranked[: len(chosen)])
    agreement = len(chosen & likeliest) / len(chosen)
    chance = len(chosen) / len(ranked)
    described = f"{agreement:.0%} of the selection is also in the loss filter's (a random selection: {chance:.0%})"
    if agreement > chance:
        return True, described
    return False, (
        f"{described}: the selection prefers rows the base model finds unlikely, where noise is. It may still be right, "
        "but on the suite such selections trailed full-data SFT: run the method_benchmark job (it fine-tunes on this "
        "selection, the loss filter's and the full pool) before you train on it."
    )
