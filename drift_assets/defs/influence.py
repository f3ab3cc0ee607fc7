"""Influence scores of every pool example at every checkpoint, streamed shard by shard from the gradient table, combined."""

import time
from collections.abc import Iterator
from dataclasses import dataclass

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

from drift_assets.core.attribution.guards import MAX_REFERENCE_SHARE, MAX_SPEARMAN, hacking_guard, target_guard
from drift_assets.core.data.stored import ConfiguredTables, StoredInfluence, stored_influence
from drift_assets.core.runtime.cost import StageCost
from drift_assets.defs.checks import influence_complete_result
from drift_assets.defs.gradients import progress_logger
from drift_assets.defs.metadata import markdown_table, rounded, score_picture, table_metadata
from drift_assets.resources import Warehouse
from drift_assets.settings import InfluenceSettings, setting, unhashed, versioned

INFLUENCE_VERSION = "3"  # 3: no likely column (the likelihood guard and the noise gates it marked are gone)


@dataclass(frozen=True)
class InfluenceGiven:
    """How the pool is scored, and at which checkpoints (hashed); the shards the training gradients
    are read in, which lay the table out (not hashed)."""

    influence: InfluenceSettings = setting("influence")
    checkpoints: list[str] = setting("checkpoints")
    shards: int = unhashed("projection.shards")


def build_influence_assets(given: InfluenceGiven) -> list:
    influence, checkpoints = given.influence, given.checkpoints

    @asset(
        group_name="attribution",
        **versioned(INFLUENCE_VERSION, given),
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
            f"; blended with the base model's likelihood order (weight {influence.likelihood_blend:g})."
            if influence.likelihood_blend > 0
            else "."
        ),
    )
    def influence_scores(context: AssetExecutionContext, training_pool: pl.DataFrame, warehouse: Warehouse):
        started = time.perf_counter()
        tables = ConfiguredTables(warehouse, tuple(checkpoints), given.shards)
        tick = progress_logger(context, "scoring", "checkpoints")
        scored = stored_influence(
            tables, training_pool, influence.scoring(), context.log.info, lambda done: tick(done, len(checkpoints))
        )
        context.log.info(", ".join(f"{k} {v:.3f}" for k, v in scored.figures.items()))
        # Products of stored gradients: no pass of the model, its seconds only.
        cost = StageCost("scoring", 0, 0, time.perf_counter() - started)
        yield Output(scored.table, metadata={**influence_metadata(influence, scored), **cost.metadata()})
        yield from guard_results(scored, context.log.warning)

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


def influence_metadata(influence, scored: StoredInfluence) -> dict:
    """The table's metadata: the diagnostics, the settings it ranked with, the target's queries, and a row per checkpoint."""
    table, along = scored.table, scored.along
    base_target = along.checkpoints[0].target
    summary = base_target.summary
    checkpoint_rows = [{k: v if k == "checkpoint" else rounded(v) for k, v in row.items()} for row in scored.checkpoint_rows]
    return {
        **table_metadata(table),
        **{name: rounded(value) for name, value in scored.figures.items()},
        "targets": influence.targets,
        "weighting": influence.weighting,
        "ranking": influence.ranking,
        "likelihood_blend": influence.likelihood_blend,
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
    }


def guard_results(scored: StoredInfluence, warn) -> Iterator[AssetCheckResult]:
    """The two guards' results (warnings), each with its figures and limit as numbers, which the
    check's Plots tab draws run after run; a guard that fails is also logged (``warn``)."""
    share = scored.along.reference_share
    by_norm, by_loss = scored.figures["spearman_score_vs_grad_norm"], scored.figures.get("spearman_score_vs_loss")
    guards = {
        "influence_target_on_policy": (
            target_guard(share),
            {"reference_share_of_target": rounded(share), "limit": MAX_REFERENCE_SHARE},
        ),
        "influence_not_gradient_hacking": (
            hacking_guard(by_norm, by_loss),
            {"spearman_score_vs_grad_norm": rounded(by_norm), "spearman_score_vs_loss": rounded(by_loss), "limit": MAX_SPEARMAN},
        ),
    }
    for name, ((passed, message), figures) in guards.items():
        if not passed:
            warn(message)
        yield AssetCheckResult(
            check_name=name, passed=passed, severity=AssetCheckSeverity.WARN, metadata={"message": message, **figures}
        )
