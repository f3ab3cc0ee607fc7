"""From gradient tables to influence scores: target gradient, curvature, scores, diagnostics.

This is the glue between the pipeline's tables and the maths of :mod:`influence` and
:mod:`weighting`, shared by the ``influence_scores`` asset and the method benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import polars as pl

from drift_assets.core.attribution.influence import Debias, Hessian, PoolScores
from drift_assets.core.gradients.tables import vectors
from drift_assets.core.grading.weighting import Weighting, WeightingSummary, combine, rollout_weights
from drift_assets.core.study.stats import roc_auc, spearman

Targets = Literal["onpolicy", "offpolicy"]
Unsolved = Literal["reference", "skip"]
# How the pool is ordered for the selection: by the score, or the validation queries taking turns.
Ranking = Literal["score", "round_robin"]
TARGETS: tuple[str, ...] = get_args(Targets)
UNSOLVED: tuple[str, ...] = get_args(Unsolved)


@dataclass(frozen=True)
class ScoringSettings:
    """The influence settings one score is computed with. Its defaults are the defaults of
    ``influence`` in the settings file (which takes them from here)."""

    targets: Targets = "onpolicy"
    weighting: Weighting = "positive"
    hessian: Hessian = "identity"
    damping: float = 0.1
    debias: Debias = "unit"
    unsolved: Unsolved = "skip"
    debias_strength: float = 1.0
    ranking: Ranking = "round_robin"
    likelihood_blend: float = 0.5


@dataclass
class TargetGradient:
    vector: np.ndarray  # g = Σ w_jk ĝ_jk, float64 (k,)
    summary: WeightingSummary | None
    n_targets: int
    model_fingerprint: str
    projection_fingerprint: str
    references_for_unsolved: int = 0  # queries no rollout solved, whose reference answer stood in as the correct one
    reference_share: float = 0.0  # gᵀg_ref / gᵀg: how much of the target the reference answers make (1 off-policy)


def with_references_for_unsolved(
    validation_gradients: pl.DataFrame, grades: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """The reference answer of every query no rollout solves, added as one more (correct) rollout.

    Signed weighting needs a correct and a wrong rollout to contrast, so it would skip these queries:
    the hardest ones, where the model most needs to learn. Their reference answer is the correct
    trajectory the model did not find; it is pulled up against the wrong rollouts.
    """
    solved = grades.group_by("query_id").agg(pl.col("correct").any())
    unsolved = solved.filter(~pl.col("correct"))["query_id"]
    references = validation_gradients.filter((pl.col("target") == "reference") & pl.col("query_id").is_in(unsolved.implode()))
    missing = set(unsolved) - set(references["query_id"])
    if missing:
        raise ValueError(
            f"influence.unsolved='reference', but queries {sorted(missing)[:5]} have no reference gradient: "
            "re-materialize validation_gradients"
        )
    added = references.with_columns(target=pl.lit("rollout"))
    graded = references.select("rollout_id", "query_id", correct=pl.lit(True), reward=pl.lit(1.0))
    return pl.concat([validation_gradients, added]), pl.concat([grades, graded], how="vertical_relaxed"), references.height


def target_gradient(
    validation_gradients: pl.DataFrame, grades: pl.DataFrame, targets: str, weighting: str, unsolved: str = "skip"
) -> TargetGradient:
    """``onpolicy``: graded rollouts with signed weights; ``offpolicy``: reference answers, equal weights.

    ``unsolved``: ``reference`` adds the reference answer as a correct rollout to every query no
    rollout solves (:func:`with_references_for_unsolved`); ``skip`` leaves such queries out.
    """
    if targets not in TARGETS:
        raise ValueError(f"influence.targets must be one of {TARGETS} (got {targets!r})")
    check_unsolved(unsolved)
    fingerprints = validation_gradients["model_fingerprint"].unique().to_list()
    projections = validation_gradients["projection_fingerprint"].unique().to_list()
    if len(fingerprints) != 1 or len(projections) != 1:
        raise ValueError(f"validation_gradients mixes models {fingerprints} or projections {projections}: re-materialize it")
    checkpoint = {"model_fingerprint": fingerprints[0], "projection_fingerprint": projections[0]}
    if targets == "offpolicy":
        references = validation_gradients.filter(pl.col("target") == "reference")
        if references.is_empty():
            raise ValueError("offpolicy targets need reference gradients, and validation_gradients has none")
        weights = np.full(references.height, 1.0 / references.height)
        return TargetGradient(combine(vectors(references), weights), None, references.height, **checkpoint, reference_share=1.0)
    rows, summary, added = weighted_rollouts(validation_gradients, grades, weighting, unsolved)
    gradients, weights = vectors(rows), rows["weight"].to_numpy()
    vector = combine(gradients, weights)
    from_references = (
        rows["rollout_id"].is_in(validation_gradients.filter(pl.col("target") == "reference")["rollout_id"].implode()).to_numpy()
    )
    share = share_of(vector, combine(gradients[from_references], weights[from_references])) if from_references.any() else 0.0
    return TargetGradient(vector, summary, rows.height, **checkpoint, references_for_unsolved=added, reference_share=share)


def share_of(total: np.ndarray, part: np.ndarray) -> float:
    """partᵀtotal / totalᵀtotal: the share of ‖total‖² that ``part`` (a summand of ``total``) accounts for."""
    squared = float(total @ total)
    return float(part @ total) / squared if squared > 0 else 0.0


def check_unsolved(unsolved: str) -> None:
    if unsolved not in UNSOLVED:
        raise ValueError(f"influence.unsolved must be one of {UNSOLVED} (got {unsolved!r})")


def weighted_rollouts(
    validation_gradients: pl.DataFrame, grades: pl.DataFrame, weighting: str, unsolved: str = "skip"
) -> tuple[pl.DataFrame, WeightingSummary, int]:
    """The rows the on-policy target sums: each rollout's gradient row with its nonzero ``weight``.

    With ``unsolved='reference'`` the reference answers of queries no rollout solves are among them
    (:func:`with_references_for_unsolved`; their rows keep the reference's rollout_id). Also returns
    the weighting summary and how many such references were added.
    """
    check_unsolved(unsolved)
    grades = grades.select("rollout_id", "query_id", "correct", "reward")
    added = 0
    if unsolved == "reference":
        validation_gradients, grades, added = with_references_for_unsolved(validation_gradients, grades)
    rollouts = validation_gradients.filter(pl.col("target") == "rollout")
    weights, summary = rollout_weights(grades, weighting)
    joined = rollouts.join(weights.select("rollout_id", "weight"), on="rollout_id", how="inner")
    if joined.height != weights.height:
        raise ValueError(
            f"{weights.height} graded rollouts but only {joined.height} have gradients: re-materialize validation_gradients"
        )
    return joined.filter(pl.col("weight") != 0), summary, added


def scores_frame(scores: PoolScores, training_pool: pl.DataFrame) -> pl.DataFrame:
    """example_id, score_raw, score, rank (1 = most helpful), grad_norm, self_influence, n_tokens."""
    frame = pl.DataFrame(
        {
            "example_id": scores.example_ids,
            "score_raw": scores.score_raw,
            "score": scores.score,
            "grad_norm": scores.grad_norm,
            "self_influence": scores.self_influence,
        }
    )
    missing = set(training_pool["example_id"]) - set(scores.example_ids)
    if missing:
        raise ValueError(
            f"{len(missing)} pool examples have no gradient row (e.g. {sorted(missing)[:3]}): "
            "materialize every shard of training_gradient_projections"
        )
    frame = frame.filter(pl.col("example_id").is_in(training_pool["example_id"].implode()))
    lengths = training_pool.select("example_id", n_tokens=pl.col("n_prompt_tokens") + pl.col("n_response_tokens"))
    frame = frame.join(lengths, on="example_id", how="left")
    return ranked(frame).select("example_id", "score_raw", "score", "rank", "grad_norm", "self_influence", "n_tokens")


def ranked(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (example_id, score, …) sorted best first with its ``rank`` (1 = best; ties by example_id)."""
    return (
        frame.sort(["score", "example_id"], descending=[True, False])
        .with_row_index("rank", offset=1)
        .with_columns(pl.col("rank").cast(pl.Int64))
    )


def diagnostics(scores: pl.DataFrame, training_pool: pl.DataFrame) -> dict[str, float]:
    """The gradient-hacking diagnostics (Spearman of the score with gradient norm, with the base
    model's loss per token where ``scores`` has ``loss_per_token``, and with length), plus the noise
    AUC where the pool carries ``is_corrupted``."""
    result = {
        "spearman_score_vs_grad_norm": spearman(scores["score"].to_numpy(), scores["grad_norm"].to_numpy()),
        "spearman_score_vs_length": spearman(scores["score"].to_numpy(), scores["n_tokens"].to_numpy()),
        "spearman_raw_vs_grad_norm": spearman(scores["score_raw"].to_numpy(), scores["grad_norm"].to_numpy()),
    }
    if "loss_per_token" in scores.columns:
        result["spearman_score_vs_loss"] = spearman(scores["score"].to_numpy(), scores["loss_per_token"].to_numpy())
    auc = noise_auc(scores, training_pool)
    if auc is not None:
        result["noise_auc"] = auc
    return result


def noise_auc(scores: pl.DataFrame | None, training_pool: pl.DataFrame) -> float | None:
    """ROC-AUC of ``score`` for clean against corrupted rows, where the pool has ``is_corrupted``."""
    if scores is None or "is_corrupted" not in training_pool.columns:
        return None
    joined = scores.join(training_pool.select("example_id", "is_corrupted"), on="example_id")
    # Higher score = keep, so the AUC asks how well the score ranks clean examples above noisy ones.
    return roc_auc(joined["score"].to_numpy(), ~joined["is_corrupted"].to_numpy().astype(bool))


def check_same_checkpoint(training_fingerprints: set[tuple[str, str]], target: TargetGradient) -> None:
    """Training rows (model, projection fingerprints) must match the validation gradients' ones."""
    models = {model for model, _ in training_fingerprints} - {target.model_fingerprint}
    if models:
        raise ValueError(
            f"training gradients come from model {sorted(models)}, validation gradients from {target.model_fingerprint}: "
            "re-materialize training_gradient_projections so that both use the same checkpoint"
        )
    projections = {projection for _, projection in training_fingerprints} - {target.projection_fingerprint}
    if projections:
        raise ValueError(
            f"training gradients were projected with basis {sorted(projections)}, validation gradients with "
            f"{target.projection_fingerprint}: re-materialize projection_basis and both gradient assets"
        )
