"""Grades: every rollout checked against its query's reference."""

import polars as pl
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetExecutionContext, MetadataValue, asset, asset_check

from drift_assets.assets.metadata import table_metadata
from drift_assets.core.grading import grade_answer
from drift_assets.core.rollouts import grade_summary
from drift_assets.settings import Settings, code_version

GRADES_VERSION = "1"
GRADE_SCHEMA = {
    "rollout_id": pl.String, "query_id": pl.String, "correct": pl.Boolean, "reward": pl.Float64,
    "extracted_answer": pl.String, "grader": pl.String, "model_fingerprint": pl.String,
}


def build_grade_assets(settings: Settings) -> list:
    options = settings.grading.options()

    @asset(
        group_name="rollouts",
        code_version=code_version("grades", GRADES_VERSION, settings),
        kinds={"python", "delta"},
        description="Correctness and reward of every rollout; metadata gives pass@1 and the mixed-grade share.",
    )
    def grades(context: AssetExecutionContext, rollouts: pl.DataFrame, validation_queries: pl.DataFrame) -> pl.DataFrame:
        joined = rollouts.join(validation_queries.select("query_id", "reference", "grader"), on="query_id", how="left")
        missing = joined.filter(pl.col("reference").is_null())["query_id"].unique().to_list()
        if missing:
            raise ValueError(f"rollouts reference queries not in validation_queries: {missing[:5]} (re-materialize rollouts)")
        rows = []
        for row in joined.iter_rows(named=True):
            grade = grade_answer(row["completion"], row["reference"], row["grader"], options)
            rows.append({
                "rollout_id": row["rollout_id"], "query_id": row["query_id"], "correct": grade.correct,
                "reward": grade.reward, "extracted_answer": grade.extracted_answer, "grader": row["grader"],
                "model_fingerprint": row["model_fingerprint"],
            })
        table = pl.DataFrame(rows, schema=GRADE_SCHEMA)
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
