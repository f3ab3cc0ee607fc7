"""On-policy rollouts: the model's own samples for every validation query, at each checkpoint."""

import time
from dataclasses import dataclass

import polars as pl
from dagster import AssetCheckSpec, AssetExecutionContext, Output, asset

from drift_assets.core.data.finite import describe, non_finite_tensors
from drift_assets.core.generation.rollouts import query_progress, sample_rollouts
from drift_assets.core.runtime.cost import generation_cost
from drift_assets.defs.checkpoints import checkpoint_model, checkpoint_partitions, model_deps
from drift_assets.defs.checks import rollouts_complete_result, rollouts_not_degenerate_result, schema_and_ids_result
from drift_assets.defs.cost import CostPlan, stored_reference
from drift_assets.defs.metadata import table_metadata
from drift_assets.defs.placement import GPU_STEP
from drift_assets.resources import ModelResource, RolloutEngineResource, Warehouse, engine_kind
from drift_assets.settings import RolloutSettings, setting, unhashed, versioned

ROLLOUTS_VERSION = "3"  # 2: the sampled token_ids are kept; 3: a checkpoint column, one partition per checkpoint
ROLLOUT_COLUMNS = {"checkpoint": pl.String, "rollout_id": pl.String, "query_id": pl.String, "logprob_sum": pl.Float64}


@dataclass(frozen=True)
class RolloutsGiven:
    """How the rollouts are sampled (the model and rollout-engine resources sample with these: hashed);
    not hashed: the checkpoints, the degenerate-rollouts check's limit and the cost plan."""

    rollout: RolloutSettings = setting("rollout")
    dtype: str = setting("model.dtype")
    checkpoints: list[str] = unhashed("checkpoints")
    max_empty_or_truncated_fraction: float = unhashed("grading.max_empty_or_truncated_fraction")
    cost: CostPlan


def build_rollout_assets(given: RolloutsGiven) -> list:
    samples_per_query, limit, sft = given.rollout.samples_per_query, given.max_empty_or_truncated_fraction, given.cost.sft

    @asset(
        group_name="rollouts",
        **versioned(ROLLOUTS_VERSION, given, partition_expr="checkpoint"),
        partitions_def=checkpoint_partitions(given.checkpoints),
        deps=model_deps(given.checkpoints),
        kinds={engine_kind(given.rollout.backend), "delta"},
        **GPU_STEP,
        check_specs=[
            AssetCheckSpec(
                "rollouts_complete",
                asset="rollouts",
                blocking=True,
                description="Every query has exactly rollout.samples_per_query rollouts.",
            ),
            AssetCheckSpec(
                "rollouts_not_degenerate",
                asset="rollouts",
                blocking=True,
                description="Empty or truncated completions stay under grading.max_empty_or_truncated_fraction.",
            ),
            AssetCheckSpec(
                "rollouts_schema_and_ids",
                asset="rollouts",
                blocking=True,
                description=f"Columns {sorted(ROLLOUT_COLUMNS)} present and typed; rollout_id unique and non-null; rows > 0.",
            ),
        ],
        description="K samples per validation query from the model at each checkpoint (vLLM; transformers as fallback).",
    )
    def rollouts(
        context: AssetExecutionContext,
        validation_queries: pl.DataFrame,
        model: ModelResource,
        rollout_engine: RolloutEngineResource,
        warehouse: Warehouse,
    ):
        checkpoint = context.partition_key
        at_checkpoint = checkpoint_model(checkpoint, model, warehouse)
        tokenizer = at_checkpoint.load_tokenizer()
        sampling = rollout_engine.sampling()
        what = f"checkpoint {checkpoint}: {sampling.n} completions for each of {validation_queries.height} queries by"
        started = time.perf_counter()
        with rollout_engine.open_engine(at_checkpoint, context.log, what) as engine:
            progress = query_progress(f"checkpoint {checkpoint} rollouts", validation_queries.height, context.log.info)
            fingerprint = at_checkpoint.fingerprint()
            table, report = sample_rollouts(engine, tokenizer, validation_queries, sampling, fingerprint, progress)
        seconds = time.perf_counter() - started
        table = table.select(pl.lit(checkpoint).alias("checkpoint"), pl.all())
        reference = stored_reference(sft, warehouse)
        yield Output(table, metadata=_rollout_metadata(table, report, seconds, checkpoint, reference))
        yield rollouts_complete_result(table, samples_per_query)
        yield rollouts_not_degenerate_result(table, limit, lambda: _weights_problem(at_checkpoint))
        yield schema_and_ids_result("rollouts_schema_and_ids", table, ROLLOUT_COLUMNS, "rollout_id")

    return [rollouts]


def _rollout_metadata(table: pl.DataFrame, report, seconds: float, checkpoint: str, reference) -> dict:
    """The rollouts' preview, how fast the engine generated them, and what they cost."""
    cost = generation_cost("rollouts", [report.prompt_tokens], [report.generated_tokens], seconds, checkpoint)
    return {
        **table_metadata(table, preview_columns=["query_id", "sample_idx", "completion", "n_tokens", "finish_reason"]),
        "engine": report.engine,
        "generated_tokens": report.generated_tokens,
        "tokens_per_second": report.generated_tokens / seconds if seconds else 0.0,
        "truncated_share": float((table["finish_reason"] == "length").mean()),
        "model_fingerprint": table["model_fingerprint"][0],
        **cost.metadata(reference),
    }


def _weights_problem(model: ModelResource) -> str | None:
    """The non-finite weights in the files the engine read (the base model's, and an adapter's)."""
    found = non_finite_tensors(model.path) + (non_finite_tensors(model.adapter) if model.adapter else [])
    where = f"model.path {model.path}" + (f" with adapter {model.adapter}" if model.adapter else "")
    return f"{where}: non-finite weights in {describe(found)}" if found else None
