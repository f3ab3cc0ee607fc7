"""A warm-up run on the pool, and rollouts, grades and gradients at each of its checkpoints.

Built unless ``warmup.steps`` is empty; ``influence_scores`` then averages the standardized scores
of the base model and of every checkpoint (:mod:`drift_assets.core.trajectory` says why).
"""

import time
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, StaticPartitionsDefinition, asset

from drift_assets.assets.gradients import PROJECTION_KEYS, progress_logger
from drift_assets.assets.metadata import table_metadata
from drift_assets.core.fingerprint import model_fingerprint
from drift_assets.core.gradients import gradient_frame, pool_token_pairs, reference_basis, validation_gradient_frame
from drift_assets.core.grading import grade_rollouts, grade_summary
from drift_assets.core.projection import LinearGradientProjector
from drift_assets.core.rollouts import sample_rollouts
from drift_assets.core.trajectory import checkpoint_key, checkpoint_table, warm_up
from drift_assets.resources import ModelResource, RolloutEngineResource
from drift_assets.settings import Reads, Settings, projection_options, validation_answer_marker

WARMUP_VERSION = "2"  # 2: a bf16/fp16 model fine-tunes float32 master weights
CHECKPOINT_GRADIENTS_VERSION = "2"  # 2: rollout gradients of the sampled token ids


def build_trajectory_assets(settings: Settings) -> list:
    warmup_reads = Reads(settings, "warmup_checkpoints", "warmup_schedule", "model.dtype")
    reads = Reads(settings, "checkpoint_gradients", "rollout", "grading", *PROJECTION_KEYS, "projection.validation_span")
    steps = warmup_reads.warmup_steps
    warmup_options = warmup_reads.warmup_options()
    directory = Path(warmup_reads.resolve(warmup_reads.warmup.checkpoint_dir))
    options = projection_options(reads)
    batch_size = reads.projection.batch_size
    grading = reads.grading.options()
    answer_marker = validation_answer_marker(reads)

    @asset(
        group_name="attribution",
        code_version=warmup_reads.code_version(WARMUP_VERSION),
        metadata=warmup_reads.metadata(),
        deps=["base_model"],
        kinds={"pytorch", "delta"},
        pool="gpu",
        description="SFT on the whole pool at a constant learning rate, saved as model directories at the warm-up steps.",
    )
    def warmup_checkpoints(context: AssetExecutionContext, training_pool: pl.DataFrame, model: ModelResource) -> pl.DataFrame:
        tokenizer, network = model.load_tokenizer(), model.load_model()
        base = model.fingerprint()
        run_directory = directory / base  # another base model never overwrites these checkpoints
        context.log.info(
            f"warm-up: {max(steps)} steps on {training_pool.height} examples; checkpoints at {steps} in {run_directory}"
        )

        def save(step: int) -> None:
            path = run_directory / checkpoint_key(step)
            network.save_pretrained(path)
            tokenizer.save_pretrained(path)

        losses = warm_up(network, tokenizer, training_pool["messages"].to_list(), warmup_options, steps, save, context.log.info)
        paths = [run_directory / checkpoint_key(step) for step in steps]
        table = pl.DataFrame(
            {
                "checkpoint": [checkpoint_key(step) for step in steps],
                "step": steps,
                "path": [str(path) for path in paths],
                "model_fingerprint": [model_fingerprint(path) for path in paths],
                "base_model_fingerprint": [base] * len(paths),
                "loss": [losses[step] for step in steps],
            }
        )
        context.add_output_metadata(table_metadata(table, preview_rows=len(paths)))
        return table

    @asset(
        group_name="attribution",
        code_version=reads.code_version(CHECKPOINT_GRADIENTS_VERSION),
        partitions_def=StaticPartitionsDefinition([checkpoint_key(step) for step in steps]),
        metadata={"partition_expr": "checkpoint", **reads.metadata()},
        kinds={"pytorch", "delta"},
        pool="gpu",
        description="At one warm-up checkpoint: fresh rollouts, their grades, a basis, and the gradients of rollouts, "
        "references and every pool example (role = rollout, reference, training).",
    )
    def checkpoint_gradients(
        context: AssetExecutionContext,
        warmup_checkpoints: pl.DataFrame,
        validation_queries: pl.DataFrame,
        training_pool: pl.DataFrame,
        model: ModelResource,
        rollout_engine: RolloutEngineResource,
    ) -> pl.DataFrame:
        key = context.partition_key
        started = time.perf_counter()
        saved = warmup_checkpoints.filter(pl.col("checkpoint") == key)
        if saved.is_empty() or not Path(saved["path"][0]).is_dir():
            where = f" ({saved['path'][0]} is gone)" if not saved.is_empty() else ""
            raise ValueError(f"warmup_checkpoints has no checkpoint {key}{where}: re-materialize warmup_checkpoints")
        checkpoint = ModelResource(path=saved["path"][0], dtype=model.dtype, device=model.device)
        fingerprint = checkpoint.fingerprint()
        if fingerprint != saved["model_fingerprint"][0]:
            raise ValueError(f"{checkpoint.path} changed since warmup_checkpoints saved it: re-materialize warmup_checkpoints")
        tokenizer = checkpoint.load_tokenizer()
        with rollout_engine.open_engine(checkpoint, context.log) as engine:
            rollouts, _ = sample_rollouts(engine, tokenizer, validation_queries, rollout_engine.sampling(), fingerprint)
        grades = grade_rollouts(rollouts, validation_queries, grading)
        summary = grade_summary(grades)
        context.log.info(
            f"checkpoint {key}: pass@1 {summary['pass_at_1']:.3f}, {summary['queries_mixed']}/{summary['queries']} queries mixed"
        )

        network = checkpoint.load_model()
        basis = reference_basis(network, options, tokenizer, validation_queries, batch_size, log=context.log.info)
        projector = LinearGradientProjector(network, options, basis)
        validation = validation_gradient_frame(
            projector,
            tokenizer,
            rollouts,
            validation_queries,
            batch_size,
            fingerprint,
            answer_marker=answer_marker,
        )
        training = gradient_frame(
            {"example_id": training_pool["example_id"].to_list()},
            projector,
            tokenizer,
            *pool_token_pairs(tokenizer, training_pool["messages"]),
            batch_size,
            fingerprint,
            progress_logger(context, f"checkpoint {key} training gradients", 512),
        )
        table = checkpoint_table(key, training, validation, grades, rollouts)
        context.add_output_metadata(
            {
                **table_metadata(table, preview_columns=["role", "id", "completion", "correct", "grad_norm", "loss"]),
                **summary,
                "model_fingerprint": fingerprint,
                "dimension": projector.dimension,
                "wall_seconds": time.perf_counter() - started,
            }
        )
        return table

    return [warmup_checkpoints, checkpoint_gradients]
