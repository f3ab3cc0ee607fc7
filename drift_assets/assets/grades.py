"""Grades: every rollout checked against its query's reference."""

import polars as pl
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetExecutionContext, MetadataValue, asset, asset_check

from drift_assets.assets.metadata import table_metadata
from drift_assets.core.rollouts import grade_rollouts, grade_summary
from drift_assets.settings import Settings, code_version

GRADES_VERSION = "1"


def build_grade_assets(settings: Settings) -> list:
    options = settings.grading.options()

    @asset(
        group_name="rollouts",
        code_version=code_version("grades", GRADES_VERSION, settings),
        kinds={"python", "delta"},
        description="Correctness and reward of every rollout; metadata gives pass@1 and the mixed-grade share.",
    )
    def grades(context: AssetExecutionContext, rollouts: pl.DataFrame, validation_queries: pl.DataFrame) -> pl.DataFrame:
        table = grade_rollouts(rollouts, validation_queries, options)
        summary = grade_summary(table)
        context.log.info(
            f"pass@1 {summary['pass_at_1']:.3f}; {summary['queries_mixed']}/{summary['queries']} queries have mixed grades"
        )
        context.add_output_metadata({
            **table_metadata(table),
            **summary,
            "pass_at_1": MetadataValue.float(summary["pass_at_1"]),
        })
        return table

    @asset_check(asset=grades, blocking=True,
                 description="Signed weighting needs queries with mixed grades (some rollouts correct, some wrong).")
    def grades_have_mixed_queries(context: AssetCheckExecutionContext, grades: pl.DataFrame) -> AssetCheckResult:
        summary = grade_summary(grades)
        passed = summary["queries_mixed"] > 0
        return AssetCheckResult(
            passed=passed,
            metadata={
                **summary,
                "message": "ok" if passed else (
                    "no query has mixed grades: signed weighting has nothing to work with. Raise rollout.temperature "
                    "or rollout.samples_per_query, or use validation queries the model solves only sometimes."
                ),
            },
        )

    return [grades, grades_have_mixed_queries]
