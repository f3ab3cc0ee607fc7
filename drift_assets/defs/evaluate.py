"""Closing the loop: fine-tune on a selection and measure accuracy on held-out test queries."""

import functools
from collections.abc import Callable

import polars as pl
from dagster import AssetExecutionContext, asset

from drift_assets.core.runtime.cost import StageCost, total
from drift_assets.core.training.evaluation import EvaluatedModels, FineTuneJob, evaluate_models, fine_tune_and_evaluate
from drift_assets.core.training.sft import Evaluation
from drift_assets.defs.cost import full_sft_reference
from drift_assets.defs.metadata import accuracy_picture, loss_picture, rounded, table_metadata
from drift_assets.defs.placement import GPU_STEP
from drift_assets.resources import ModelResource, RolloutEngineResource
from drift_assets.settings import Reads, Settings

EVALUATE_VERSION = "5"  # 5: a bf16/fp16 model fine-tunes float32 master weights


# Fine-tune, decode (the rollout engine's backend and context where benchmark.eval_backend is auto or vllm) and grade.
FINE_TUNE_AND_EVALUATE = ("benchmark.eval_backend", "rollout.backend", "rollout.max_tokens", "rollout.max_model_len", "grading")


def fine_tune_job(
    reads: Reads, model: ModelResource, queries: list[dict], method: str, messages: list[str] | None, seed: int
) -> FineTuneJob:
    """Fine-tune the model resource's base model on ``messages`` (none: the base model itself) with
    benchmark.sft on ``seed``, then its accuracy on ``queries``."""
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


def evaluation_run(
    reads: Reads, model: ModelResource, rollout_engine: RolloutEngineResource, log: Callable[[str], None]
) -> Callable[[FineTuneJob], tuple[Evaluation, float]]:
    """Fine-tune-then-evaluate in this process: the model resource's base model, decoded by the
    rollout-engine resource's evaluation engine (benchmark.eval_backend)."""

    def open_engine(network, tokenizer):
        return rollout_engine.open_evaluation_engine(network, tokenizer, reads.benchmark.eval_backend, model.dtype)

    def load():
        return model.load_model(), model.load_tokenizer()

    return functools.partial(fine_tune_and_evaluate, load=load, open_engine=open_engine, log=log)


def build_evaluation_assets(settings: Settings) -> list:
    reads = Reads(settings, "refined_model_evaluation", "benchmark.sft", "benchmark.seeds", *FINE_TUNE_AND_EVALUATE)

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
        seed, queries = reads.benchmark.seeds[0], test_queries.to_dicts()
        candidates = {
            "base": None,
            "full": refined_dataset["messages"].to_list(),
            "refined": refined_dataset.filter("selected")["messages"].to_list(),
        }
        jobs = [fine_tune_job(reads, model, queries, name, messages, seed) for name, messages in candidates.items()]
        evaluated = evaluate_models(jobs, evaluation_run(reads, model, rollout_engine, context.log.info), context.log.info)
        context.add_output_metadata(evaluation_metadata(evaluated, full_sft_reference(reads.unversioned, refined_dataset)))
        return evaluated.table

    return [refined_model_evaluation]


def evaluation_metadata(evaluated: EvaluatedModels, reference: StageCost) -> dict:
    """The evaluation's accuracies, the refined selection's gain over the full pool, the pictures and the cost."""
    refined, full, base = (evaluated.accuracy(name) for name in ("refined", "full", "base"))
    return {
        **table_metadata(evaluated.table),
        "accuracy_refined": rounded(refined),
        "accuracy_full": rounded(full),
        "accuracy_base": rounded(base),
        "gain_over_full_points": rounded(100 * (refined - full), 1),
        "accuracy_chart": accuracy_picture(evaluated.intervals()),
        "sft_loss_curves": loss_picture(evaluated.curves),
        **total(evaluated.costs, "evaluation").metadata(reference),
    }
