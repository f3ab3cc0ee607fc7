"""Closing the loop: fine-tune on a selection and measure accuracy on held-out test queries."""

import contextlib
import tempfile
import time

import polars as pl
from dagster import AssetExecutionContext, asset

from drift_assets.assets.cost import full_sft_reference
from drift_assets.assets.metadata import accuracy_picture, loss_picture, rounded, table_metadata
from drift_assets.assets.placement import GPU_STEP
from drift_assets.core.benchmark import (
    FineTuneJob,
    fine_tune_from_disk,
)
from drift_assets.core.cost import StageCost, total
from drift_assets.core.generation import TransformersEngine, VllmEngine, resolve_max_model_len
from drift_assets.core.progress import SizedProgress
from drift_assets.core.sft import Evaluation, evaluate, fine_tune
from drift_assets.core.tiny_model import save_model
from drift_assets.resources import ModelResource, RolloutEngineResource
from drift_assets.settings import Reads, Settings

EVALUATE_VERSION = "5"  # 5: a bf16/fp16 model fine-tunes float32 master weights


@contextlib.contextmanager
def evaluation_engine(model, tokenizer, backend: str, rollout_engine: RolloutEngineResource, dtype: str):
    """Greedy decoding of an in-memory model: transformers directly, or vLLM from a saved copy."""
    if backend == "transformers" or (backend == "auto" and not rollout_engine.chosen_backend()[0] == "vllm"):
        yield TransformersEngine(model, tokenizer, device=next(model.parameters()).device)
        return
    with tempfile.TemporaryDirectory() as directory:
        save_model(model, tokenizer, directory)
        engine = VllmEngine(
            directory,
            dtype=dtype,
            gpu_memory_utilization=rollout_engine.gpu_memory_utilization,
            max_model_len=resolve_max_model_len(rollout_engine.max_model_len, directory),
            tensor_parallel_size=rollout_engine.tensor_parallel_size,
            engine_process=rollout_engine.engine_process,
        )
        try:
            yield engine
        finally:
            engine.close()


# Fine-tune, decode (the rollout engine's backend and context where benchmark.eval_backend is auto or vllm) and grade.
_FINE_TUNE_AND_EVALUATE = ("benchmark.eval_backend", "rollout.backend", "rollout.max_tokens", "rollout.max_model_len", "grading")


def fine_tune_job(
    reads: Reads, model: ModelResource, method: str, messages: list[str] | None, queries: list[dict], seed: int
) -> FineTuneJob:
    return FineTuneJob(
        method,
        seed,
        messages or [],
        model.path,
        model.dtype,
        model.resolved_device,
        reads.benchmark.sft.options(seed),
        queries,
        reads.rollout.max_tokens,
        reads.grading.options(),
    )


def uses_transformers(reads: Reads, rollout_engine: RolloutEngineResource) -> bool:
    backend = reads.benchmark.eval_backend
    return backend == "transformers" or (backend == "auto" and rollout_engine.chosen_backend()[0] != "vllm")


def train_and_evaluate(
    reads: Reads, model: ModelResource, rollout_engine: RolloutEngineResource, job: FineTuneJob, log
) -> tuple[Evaluation, float]:
    """Fine-tune the base model on the job's selection (none: the base model itself) and evaluate it."""
    if uses_transformers(reads, rollout_engine) and job.messages:
        return fine_tune_from_disk(job)
    started = time.perf_counter()
    network, tokenizer = model.load_model(), model.load_tokenizer()
    run = fine_tune(network, tokenizer, job.messages, job.options, log=log) if job.messages else None
    with evaluation_engine(network, tokenizer, reads.benchmark.eval_backend, rollout_engine, model.dtype) as engine:
        result = evaluate(engine, tokenizer, job.queries, job.max_tokens, job.grading)
    result.train_losses, result.train_tokens = (run.losses, run.tokens) if run is not None else ([], 0)
    return result, time.perf_counter() - started


def build_evaluation_assets(settings: Settings) -> list:
    reads = Reads(settings, "refined_model_evaluation", "benchmark.sft", "benchmark.seeds", *_FINE_TUNE_AND_EVALUATE)

    @asset(
        group_name="evaluation",
        code_version=reads.code_version(EVALUATE_VERSION),
        metadata=reads.metadata(),
        deps=["base_model"],
        kinds={"pytorch", "delta"},
        **GPU_STEP,
        description="Test accuracy of the base model, of SFT on the full pool and of SFT on the refined dataset.",
    )
    def refined_model_evaluation(
        context: AssetExecutionContext,
        refined_dataset: pl.DataFrame,
        test_queries: pl.DataFrame,
        model: ModelResource,
        rollout_engine: RolloutEngineResource,
    ) -> pl.DataFrame:
        queries = test_queries.to_dicts()
        seed = reads.benchmark.seeds[0]
        candidates = {
            "base": None,
            "full": refined_dataset["messages"].to_list(),
            "refined": refined_dataset.filter("selected")["messages"].to_list(),
        }
        # Timed per SFT step: fine-tuning the full pool takes many times a selection's steps (with
        # sft.epochs), and the base model takes none.
        options = reads.benchmark.sft.options(seed)
        steps = [options.steps_for(len(messages)) if messages else 0 for messages in candidates.values()]
        progress = SizedProgress("evaluation", steps, context.log.info, "models", "steps")
        rows, curves, costs = [], {}, []
        for name, messages in candidates.items():
            result, seconds = train_and_evaluate(
                reads, model, rollout_engine, fine_tune_job(reads, model, name, messages, queries, seed), context.log.info
            )
            # Its fine-tune (forward and backward) and its greedy decoding of the test queries (forward).
            costs.append(
                StageCost(
                    "evaluation",
                    result.train_tokens + result.prompt_tokens + result.generated_tokens,
                    result.train_tokens,
                    seconds,
                )
            )
            low, high = result.interval
            rows.append(
                {
                    "model": name,
                    "n_train": len(messages or []),
                    "seed": seed,
                    "accuracy": result.accuracy,
                    "accuracy_low": low,
                    "accuracy_high": high,
                    "n_queries": result.total,
                    "wall_seconds": seconds,
                }
            )
            if result.train_losses:
                curves[f"SFT on {name} ({len(messages)})"] = result.train_losses
            progress.advance(f"{name}: accuracy {result.accuracy:.3f} [{low:.3f}, {high:.3f}]")
        table = pl.DataFrame(rows)
        by_model = {row["model"]: row["accuracy"] for row in rows}
        context.add_output_metadata(
            {
                **table_metadata(table),
                "accuracy_refined": rounded(by_model["refined"]),
                "accuracy_full": rounded(by_model["full"]),
                "accuracy_base": rounded(by_model["base"]),
                "gain_over_full_points": rounded(100 * (by_model["refined"] - by_model["full"]), 1),
                "accuracy_chart": accuracy_picture(
                    [(r["model"], r["accuracy"], r["accuracy_low"], r["accuracy_high"]) for r in rows]
                ),
                "sft_loss_curves": loss_picture(curves),
                **total(costs, "evaluation").metadata(full_sft_reference(reads.unversioned, refined_dataset)),
            }
        )
        return table

    return [refined_model_evaluation]
