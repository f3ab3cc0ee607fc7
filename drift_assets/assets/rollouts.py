"""On-policy rollouts: the base model's own samples for every validation query."""

import importlib.util
import time

import polars as pl
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetExecutionContext, asset, asset_check

from drift_assets.assets.metadata import table_metadata
from drift_assets.checks import schema_and_ids_check
from drift_assets.core.rollouts import sample_rollouts
from drift_assets.resources import ModelResource, RolloutEngineResource
from drift_assets.settings import Reads, Settings

ROLLOUTS_VERSION = "2"  # 2: the sampled token_ids are kept


def _engine_kind(settings: Settings) -> str:
    """The UI's kind tag: the engine the backend setting will pick (an import check, not an import)."""
    if settings.rollout.backend == "transformers":
        return "pytorch"
    return "vllm" if settings.rollout.backend == "vllm" or importlib.util.find_spec("vllm") else "pytorch"


def build_rollout_assets(settings: Settings) -> list:
    # The model and rollout-engine resources sample with these.
    reads = Reads(settings, "rollouts", "rollout", "model.dtype")

    @asset(
        group_name="rollouts",
        code_version=reads.code_version(ROLLOUTS_VERSION),
        metadata=reads.metadata(),
        deps=["base_model"],
        kinds={_engine_kind(settings), "delta"},
        pool="gpu",
        description="K samples per validation query from the base model (vLLM; transformers as fallback).",
    )
    def rollouts(
        context: AssetExecutionContext,
        validation_queries: pl.DataFrame,
        model: ModelResource,
        rollout_engine: RolloutEngineResource,
    ) -> pl.DataFrame:
        tokenizer = model.load_tokenizer()
        sampling = rollout_engine.sampling()
        context.log.info(f"sampling {sampling.n} completions for each of {validation_queries.height} queries")
        started = time.perf_counter()
        with rollout_engine.open_engine(model, context.log) as engine:
            table, report = sample_rollouts(
                engine,
                tokenizer,
                validation_queries,
                sampling,
                model.fingerprint(),
                progress=lambda done, total: (
                    context.log.info(f"rollouts: {done}/{total} queries") if done % 16 == 0 or done == total else None
                ),
            )
        seconds = time.perf_counter() - started
        context.add_output_metadata(
            {
                **table_metadata(table, preview_columns=["query_id", "sample_idx", "completion", "n_tokens", "finish_reason"]),
                "engine": report.engine,
                "generated_tokens": report.generated_tokens,
                "tokens_per_second": report.generated_tokens / seconds if seconds else 0.0,
                "truncated_share": float((table["finish_reason"] == "length").mean()),
                "model_fingerprint": table["model_fingerprint"][0],
            }
        )
        return table

    @asset_check(asset=rollouts, blocking=True, description="Every query has exactly rollout.samples_per_query rollouts.")
    def rollouts_complete(context: AssetCheckExecutionContext, rollouts: pl.DataFrame) -> AssetCheckResult:
        counts = rollouts.group_by("query_id").len()
        wrong = counts.filter(pl.col("len") != settings.rollout.samples_per_query)
        return AssetCheckResult(
            passed=wrong.is_empty(),
            metadata={
                "queries": counts.height,
                "queries_with_wrong_count": wrong.height,
                "expected_per_query": settings.rollout.samples_per_query,
            },
        )

    @asset_check(
        asset=rollouts,
        blocking=True,
        description="Empty or truncated completions stay under grading.max_empty_or_truncated_fraction.",
    )
    def rollouts_not_degenerate(context: AssetCheckExecutionContext, rollouts: pl.DataFrame) -> AssetCheckResult:
        limit = settings.grading.max_empty_or_truncated_fraction
        empty = float((rollouts["completion"].str.strip_chars() == "").mean())
        truncated = float((rollouts["finish_reason"] == "length").mean())
        return AssetCheckResult(
            passed=empty <= limit and truncated <= limit,
            metadata={
                "empty_share": empty,
                "truncated_share": truncated,
                "limit": limit,
                "hint": "raise rollout.max_tokens if many are truncated",
            },
        )

    return [
        rollouts,
        rollouts_complete,
        rollouts_not_degenerate,
        schema_and_ids_check(rollouts, {"rollout_id": pl.String, "query_id": pl.String, "logprob_sum": pl.Float64}, "rollout_id"),
    ]
