"""Grades: every rollout checked against its query's reference."""

from dataclasses import dataclass

import polars as pl
from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    MetadataValue,
    Output,
    asset,
)

from drift_assets.core.grading.graders import grade_rollouts, grade_summary
from drift_assets.core.runtime.progress import PROGRESS_EVERY_S, Progress
from drift_assets.defs.checkpoints import checkpoint_partitions
from drift_assets.defs.checks import grades_enough_contrast_result, grades_have_mixed_queries_result
from drift_assets.defs.metadata import table_metadata
from drift_assets.settings import GradingSettings, setting, unhashed, versioned

GRADES_VERSION = "2"  # 2: a checkpoint column, one partition per checkpoint


@dataclass(frozen=True)
class GradesGiven:
    """How rollouts are graded (hashed); not hashed: the checkpoints, and what the mixed-queries check
    asks of the grades (influence.targets, weighting and unsolved), which changes no table."""

    grading: GradingSettings = setting("grading")
    checkpoints: list[str] = unhashed("checkpoints")
    targets: str = unhashed("influence.targets")
    weighting: str = unhashed("influence.weighting")
    unsolved: str = unhashed("influence.unsolved")


def build_grade_assets(given: GradesGiven) -> list:
    options = given.grading.options()

    @asset(
        group_name="rollouts",
        **versioned(GRADES_VERSION, given, partition_expr="checkpoint"),
        partitions_def=checkpoint_partitions(given.checkpoints),
        kinds={"python", "delta"},
        check_specs=[
            AssetCheckSpec(
                "grades_have_mixed_queries",
                asset="grades",
                blocking=True,
                description="The configured weighting has queries to work with (signed weighting: mixed grades, or "
                "unsolved queries with influence.unsolved: reference).",
            ),
            AssetCheckSpec(
                "grades_enough_contrast",
                asset="grades",
                description=(
                    "Enough validation queries with mixed grades for the on-policy contrast to rest on (a warning: it still works with fewer)."
                ),
            ),
        ],
        description="Correctness and reward of every rollout; metadata gives pass@1 and the mixed-grade share.",
    )
    def grades(context: AssetExecutionContext, rollouts: pl.DataFrame, validation_queries: pl.DataFrame):
        checkpoint = context.partition_key
        what, log = f"checkpoint {checkpoint} grading", context.log
        progress = Progress(what, rollouts.height, log.info, unit="rollouts", every_s=PROGRESS_EVERY_S, short_log=log.debug)
        table = grade_rollouts(rollouts, validation_queries, options, progress.update).select(
            pl.lit(checkpoint).alias("checkpoint"), pl.all()
        )
        summary = grade_summary(table)
        context.log.info(
            f"checkpoint {checkpoint}: pass@1 {summary['pass_at_1']:.3f}; "
            f"{summary['queries_mixed']}/{summary['queries']} queries have mixed grades"
        )
        yield Output(
            table,
            metadata={
                **table_metadata(table),
                **summary,
                "pass_at_1": MetadataValue.float(summary["pass_at_1"]),
            },
        )
        yield grades_have_mixed_queries_result(summary, given.targets, given.weighting, given.unsolved)
        yield grades_enough_contrast_result(summary, context.log.warning)

    return [grades]
