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
from drift_assets.core.benchmark import per_token_loss
from drift_assets.core.gradients import shard_keys, vectors
from drift_assets.core.guards import hacking_guard, target_guard
from drift_assets.core.influence import fit_curvature, score_pool
from drift_assets.core.stats import histogram
from drift_assets.core.trajectory import (
    CheckpointGradients,
    checkpoint_key,
    checkpoint_target,
    combine_checkpoints,
    score_checkpoint,
    split_checkpoint_table,
)
from drift_assets.resources import Warehouse
from drift_assets.settings import Reads, Settings

INFLUENCE_VERSION = "1"


def shard_batches(warehouse: Warehouse, n_shards: int):
    """A re-iterable stream of (example_ids, gradients, {(model, projection fingerprint)}) per shard, from Delta.

    It bypasses the IO manager on purpose: reading every partition at once through it is not
    supported, and streaming keeps memory at one shard.
    """
    table = warehouse.scan("training_gradient_projections")

    def batches():
        for shard in shard_keys(n_shards):
            frame = (
                table.filter(pl.col("shard") == shard)
                .select("example_id", "grad", "model_fingerprint", "projection_fingerprint")
                .collect()
            )
            if not frame.is_empty():
                fingerprints = set(zip(frame["model_fingerprint"], frame["projection_fingerprint"], strict=True))
                yield frame["example_id"].to_list(), vectors(frame), fingerprints

    return batches


def base_checkpoint(
    warehouse: Warehouse, n_shards: int, validation_gradients: pl.DataFrame, grades: pl.DataFrame
) -> CheckpointGradients:
    """The base model's gradients, every shard in memory (the method benchmark scores many ways at once)."""
    ids, matrices, fingerprints = [], [], set()
    for batch_ids, matrix, shard_fingerprints in shard_batches(warehouse, n_shards)():
        ids += batch_ids
        matrices.append(matrix)
        fingerprints |= shard_fingerprints
    return CheckpointGradients("base", ids, np.concatenate(matrices), validation_gradients, grades, fingerprints)


def warmup_checkpoints_along(warehouse: Warehouse, steps: list[int]):
    """The warm-up checkpoints' gradients, one checkpoint in memory at a time, read from Delta."""
    table = warehouse.scan("checkpoint_gradients") if steps else None
    for step in steps:
        frame = table.filter(pl.col("checkpoint") == checkpoint_key(step)).collect()
        if frame.is_empty():
            raise ValueError(
                f"checkpoint_gradients has no rows for checkpoint {checkpoint_key(step)}: materialize that partition"
            )
        yield split_checkpoint_table(frame)


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


def base_losses(warehouse: Warehouse, training_pool: pl.DataFrame) -> pl.DataFrame:
    """example_id, loss_per_token: each pool example's loss per response token under the base model."""
    losses = warehouse.scan("training_gradient_projections").select("example_id", "loss", "n_tokens")
    return per_token_loss(losses.filter(pl.col("example_id").is_in(training_pool["example_id"].implode())).collect())
