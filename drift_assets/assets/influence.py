"""Influence scores of every pool example, streamed shard by shard from the gradient table."""

import numpy as np
import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetIn,
    MetadataValue,
    Output,
    asset,
    asset_check,
)

from drift_assets.assets.metadata import finite_or_none, histogram_markdown, markdown_table, table_metadata
from drift_assets.core.attribution import check_same_checkpoint, diagnostics, noise_auc, scores_frame, target_gradient
from drift_assets.core.guards import hacking_guard, target_guard
from drift_assets.core.influence import fit_curvature, score_pool
from drift_assets.core.stats import histogram
from drift_assets.core.stored import base_losses, shard_batches, warmup_checkpoints_along
from drift_assets.core.trajectory import (
    checkpoint_target,
    combine_checkpoints,
    score_checkpoint,
)
from drift_assets.resources import Warehouse
from drift_assets.settings import Reads, Settings

INFLUENCE_VERSION = "1"


def build_influence_assets(settings: Settings) -> list:
    reads = Reads(settings, "influence_scores", "influence", "warmup_steps")
    influence = reads.influence
    steps = reads.warmup_steps
    n_shards = reads.projection.shards

    @asset(
        group_name="attribution",
        code_version=reads.code_version(INFLUENCE_VERSION),
        metadata=reads.metadata(),
        deps=[AssetDep("training_gradient_projections")] + ([AssetDep("checkpoint_gradients")] if steps else []),
        kinds={"numpy", "delta"},
        check_specs=[
            AssetCheckSpec(
                "influence_target_on_policy",
                asset="influence_scores",
                description=(
                    "The target is on-policy: the reference answers of unsolved queries make at most half of ‖g‖² (mean over "
                    "the checkpoints scored)."
                ),
            ),
            AssetCheckSpec(
                "influence_not_gradient_hacking",
                asset="influence_scores",
                description=(
                    "No gradient hacking: the score does not rise with gradient norm or with the base model's loss per token."
                ),
            ),
        ],
        description="s_i = gᵀH⁻¹ĥ_i against the signed, graded on-policy rollouts; debiased against gradient norm"
        + (f"; averaged (standardized) with the scores at warm-up steps {steps}." if steps else "."),
    )
    def influence_scores(
        context: AssetExecutionContext,
        validation_gradients: pl.DataFrame,
        grades: pl.DataFrame,
        training_pool: pl.DataFrame,
        warehouse: Warehouse,
    ):
        target = target_gradient(validation_gradients, grades, influence.targets, influence.weighting, influence.unsolved)
        stream = shard_batches(warehouse, n_shards)
        fingerprints: set[tuple[str, str]] = set()

        def gradients_only():
            for ids, matrix, shard_fingerprints in stream():
                fingerprints.update(shard_fingerprints)
                yield ids, matrix

        dimension = target.vector.shape[0]
        if influence.hessian == "fisher":
            context.log.info(
                f"fitting the fisher Hessian: a {dimension}×{dimension} float64 matrix and its Cholesky factor, "
                f"{2 * dimension**2 * 8 / 2**30:.2f} GiB, at each of {1 + len(steps)} checkpoint(s)"
            )
        curvature = fit_curvature(influence.hessian, (m for _, m in gradients_only()), dimension, influence.damping)
        scores = score_pool(gradients_only, target.vector, curvature, influence.debias, influence.debias_strength)
        check_same_checkpoint(fingerprints, target)
        base_table = scores_frame(scores, training_pool)
        along = [scores]
        checkpoint_rows = [
            {
                "checkpoint": "base",
                "pass_at_1": float(grades["correct"].mean()),
                "reference_share": target.reference_share,
                "noise_auc": noise_auc(base_table, training_pool),
            }
        ]
        for checkpoint in warmup_checkpoints_along(warehouse, steps):
            at_checkpoint = checkpoint_target(checkpoint, influence.scoring())
            along.append(score_checkpoint(checkpoint, influence.scoring(), target=at_checkpoint))
            checkpoint_rows.append(
                {
                    "checkpoint": checkpoint.checkpoint,
                    "pass_at_1": float(checkpoint.grades["correct"].mean()),
                    "reference_share": at_checkpoint.reference_share,
                    "noise_auc": noise_auc(scores_frame(along[-1], training_pool), training_pool),
                }
            )
            context.log.info(f"scored at checkpoint {checkpoint.checkpoint}: {checkpoint_rows[-1]}")
        table = scores_frame(combine_checkpoints(along), training_pool) if len(along) > 1 else base_table
        table = table.join(base_losses(warehouse, training_pool), on="example_id", how="left")
        figures = diagnostics(table, training_pool)
        reference_share = float(np.mean([row["reference_share"] for row in checkpoint_rows]))
        summary = target.summary
        context.log.info(", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
        yield Output(
            table,
            metadata={
                **table_metadata(table),
                **{name: finite_or_none(value) for name, value in figures.items()},
                "targets": influence.targets,
                "weighting": influence.weighting,
                "queries_used": summary.queries_used if summary else target.n_targets,
                "queries_skipped": summary.queries_skipped if summary else 0,
                "queries_all_correct": summary.queries_all_correct if summary else 0,
                "queries_all_wrong": summary.queries_all_wrong if summary else 0,
                "references_for_unsolved": target.references_for_unsolved,
                "reference_share_of_target": reference_share,
                "hessian_damping": curvature.damping_value,
                "score_histogram": MetadataValue.md(histogram_markdown(histogram(table["score"].to_numpy()), "score")),
                **(
                    {"checkpoints": MetadataValue.md(markdown_table(pl.DataFrame(checkpoint_rows), len(checkpoint_rows)))}
                    if steps
                    else {}
                ),
            },
        )
        for name, (passed, message) in {
            "influence_target_on_policy": target_guard(reference_share),
            "influence_not_gradient_hacking": hacking_guard(
                figures["spearman_score_vs_grad_norm"], figures.get("spearman_score_vs_loss")
            ),
        }.items():
            if not passed:
                context.log.warning(message)
            yield AssetCheckResult(
                check_name=name, passed=passed, severity=AssetCheckSeverity.WARN, metadata={"message": message}
            )

    @asset_check(
        asset=influence_scores,
        blocking=True,
        additional_ins={"training_pool": AssetIn("training_pool")},
        description="Every pool example is scored exactly once, with finite scores.",
    )
    def influence_scores_complete(
        context: AssetCheckExecutionContext, influence_scores: pl.DataFrame, training_pool: pl.DataFrame
    ) -> AssetCheckResult:
        scored = set(influence_scores["example_id"])
        pool = set(training_pool["example_id"])
        non_finite = int((~np.isfinite(influence_scores["score"].to_numpy())).sum())
        duplicates = influence_scores.height - len(scored)
        return AssetCheckResult(
            passed=scored == pool and non_finite == 0 and duplicates == 0,
            metadata={
                "unscored_examples": len(pool - scored),
                "unknown_examples": len(scored - pool),
                "non_finite_scores": non_finite,
                "duplicates": duplicates,
            },
        )

    return [influence_scores, influence_scores_complete]
