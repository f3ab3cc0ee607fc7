"""Influence scores of every pool example at every checkpoint, streamed shard by shard from the gradient table, combined."""

import time

import polars as pl
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    MetadataValue,
    Output,
    asset,
    asset_check,
)

from drift_assets.assets.gradients import progress_logger
from drift_assets.assets.metadata import markdown_table, rounded, score_picture, table_metadata
from drift_assets.checks import influence_complete_result
from drift_assets.core.attribution import diagnostics, noise_auc, scores_frame
from drift_assets.core.cost import StageCost
from drift_assets.core.guards import MAX_REFERENCE_SHARE, MAX_SPEARMAN, hacking_guard, target_guard
from drift_assets.core.stored import (
    ConfiguredTables,
    base_losses,
    base_reference_losses,
    gradients_along,
    losses_along,
    one_row_per_example,
)
from drift_assets.core.trajectory import ranked_scores, score_along
from drift_assets.resources import Warehouse
from drift_assets.settings import Reads, Settings

INFLUENCE_VERSION = "2"  # 2: likely, the rows the likelihood guard ranks first


def build_influence_assets(settings: Settings) -> list:
    reads = Reads(settings, "influence_scores", "influence", "checkpoints")
    influence = reads.influence
    checkpoints = reads.checkpoints

    @asset(
        group_name="attribution",
        code_version=reads.code_version(INFLUENCE_VERSION),
        metadata=reads.metadata(),
        # Every partition of these, read checkpoint by checkpoint from the warehouse (streaming the shards).
        deps=["validation_gradients", "grades", "training_gradient_projections"],
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
        + (f"; the standardized scores averaged over checkpoints {checkpoints}" if len(checkpoints) > 1 else "")
        + (
            "; ranked with the validation queries taking turns, each by its own part of the target"
            if influence.ranking == "round_robin"
            else "; ranked by score"
        )
        + (
            f", the {influence.likelihood_guard:.0%} of the pool the base model finds likeliest first"
            if influence.likelihood_guard < 1
            else ""
        )
        + (
            f"; blended with the base model's likelihood order (weight {influence.likelihood_blend:g})."
            if influence.likelihood_blend > 0
            else "."
        ),
    )
    def influence_scores(context: AssetExecutionContext, training_pool: pl.DataFrame, warehouse: Warehouse):
        started = time.perf_counter()
        tables = ConfiguredTables.configured_by(reads, warehouse)
        tick = progress_logger(context, "scoring", "checkpoints")
        along = score_along(
            gradients_along(tables),
            influence.scoring(),
            log=context.log.info,
            progress=lambda done: tick(done, len(checkpoints)),
        )
        checkpoint_rows = [
            {
                "checkpoint": at.checkpoint,
                "pass_at_1": rounded(at.pass_at_1),
                "reference_share": rounded(at.target.reference_share),
                "noise_auc": rounded(noise_auc(scores_frame(at.scores, training_pool), training_pool)),
            }
            for at in along.checkpoints
        ]
        losses = base_losses(tables, training_pool)
        gate_losses = losses_along(tables, training_pool) if influence.noise_gate == "mixture" else None
        references = base_reference_losses(tables) if influence.noise_gate == "reference" else None
        table = ranked_scores(
            along,
            training_pool,
            losses,
            influence.likelihood_guard,
            influence.noise_gate,
            gate_losses,
            references,
            influence.likelihood_blend,
            influence.length_strata,
        )
        table = table.join(losses, on="example_id", how="left", maintain_order="left")
        problem = one_row_per_example(table, training_pool["example_id"], "influence_scores")
        if problem:  # nothing of it is committed
            raise ValueError(problem)
        figures = diagnostics(table, training_pool)
        base_target = along.checkpoints[0].target
        summary = base_target.summary
        context.log.info(", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
        yield Output(
            table,
            metadata={
                **table_metadata(table),
                **{name: rounded(value) for name, value in figures.items()},
                "targets": influence.targets,
                "weighting": influence.weighting,
                "ranking": influence.ranking,
                "likelihood_guard": influence.likelihood_guard,
                "likelihood_blend": influence.likelihood_blend,
                "length_strata": influence.length_strata,
                **({"queries_taking_turns": len(along.queries.query_ids)} if along.queries else {}),
                "queries_used": summary.queries_used if summary else base_target.n_targets,
                "queries_skipped": summary.queries_skipped if summary else 0,
                "queries_all_correct": summary.queries_all_correct if summary else 0,
                "queries_all_wrong": summary.queries_all_wrong if summary else 0,
                "references_for_unsolved": base_target.references_for_unsolved,
                "reference_share_of_target": rounded(along.reference_share),
                "hessian_damping": float(f"{along.checkpoints[0].curvature.damping_value:.3g}"),
                "score_distribution": score_picture(table),
                "checkpoints": MetadataValue.md(markdown_table(pl.DataFrame(checkpoint_rows), len(checkpoint_rows))),
                # Products of stored gradients: no pass of the model, its seconds only.
                **StageCost("scoring", 0, 0, time.perf_counter() - started).metadata(),
            },
        )
        # Each guard's figures and limit as numbers, which the check's Plots tab draws run after run.
        guard_figures = {
            "influence_target_on_policy": {
                "reference_share_of_target": rounded(along.reference_share),
                "limit": MAX_REFERENCE_SHARE,
            },
            "influence_not_gradient_hacking": {
                "spearman_score_vs_grad_norm": rounded(figures["spearman_score_vs_grad_norm"]),
                "spearman_score_vs_loss": rounded(figures.get("spearman_score_vs_loss")),
                "limit": MAX_SPEARMAN,
            },
        }
        for name, (passed, message) in {
            "influence_target_on_policy": target_guard(along.reference_share),
            "influence_not_gradient_hacking": hacking_guard(
                figures["spearman_score_vs_grad_norm"], figures.get("spearman_score_vs_loss")
            ),
        }.items():
            if not passed:
                context.log.warning(message)
            yield AssetCheckResult(
                check_name=name,
                passed=passed,
                severity=AssetCheckSeverity.WARN,
                metadata={"message": message, **guard_figures[name]},
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
        return influence_complete_result(influence_scores, training_pool)

    return [influence_scores, influence_scores_complete]
