"""Closing the loop: fine-tune on a selection and measure accuracy on held-out test queries."""

import functools
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl
from dagster import AssetExecutionContext, asset

from drift_assets.core.runtime.cost import StageCost, total
from drift_assets.core.training.evaluation import EvaluatedModels, FineTuneJob, evaluate_models, fine_tune_and_evaluate
from drift_assets.core.training.sft import Evaluation
from drift_assets.defs.cost import full_sft_reference
from drift_assets.defs.metadata import accuracy_picture, loss_picture, rounded, table_metadata
from drift_assets.defs.placement import GPU_STEP
from drift_assets.resources import ModelResource, RolloutEngineResource
from drift_assets.settings import GradingSettings, SftSettings, setting, versioned

EVALUATE_VERSION = "5"  # 5: a bf16/fp16 model fine-tunes float32 master weights


@dataclass(frozen=True)
class Decoding:
    """How a fine-tuned model is decoded and graded: the evaluation engine (the rollout engine's
    backend and context where benchmark.eval_backend is auto or vllm), its longest answer, the grading."""

    eval_backend: str = setting("benchmark.eval_backend")
    backend: str = setting("rollout.backend")
    max_tokens: int = setting("rollout.max_tokens")
    max_model_len: int | None = setting("rollout.max_model_len")
    grading: GradingSettings = setting("grading")


@dataclass(frozen=True)
class FineTuning:
    """Fine-tune (benchmark.sft, the first of benchmark.seeds), then decode and grade."""

    sft: SftSettings = setting("benchmark.sft")
    seeds: list[int] = setting("benchmark.seeds")
    decoding: Decoding


def fine_tune_job(
    sft: SftSettings,
    decoding: Decoding,
    model: ModelResource,
    queries: list[dict],
    method: str,
    messages: list[str] | None,
    seed: int,
) -> FineTuneJob:
    """Fine-tune the model resource's base model on ``messages`` (none: the base model itself) with
    ``sft`` on ``seed``, then its accuracy on ``queries``."""
    return FineTuneJob(
        method=method,
        seed=seed,
        messages=messages or [],
        model_path=model.path,
        dtype=model.dtype,
        device=model.resolved_device,
        options=sft.options(seed),
        queries=queries,
        max_tokens=decoding.max_tokens,
        grading=decoding.grading.options(),
    )


def evaluation_run(
    decoding: Decoding, model: ModelResource, rollout_engine: RolloutEngineResource, log: Callable[[str], None]
) -> Callable[[FineTuneJob], tuple[Evaluation, float]]:
    """Fine-tune-then-evaluate in this process: the model resource's base model, decoded by the
    rollout-engine resource's evaluation engine (benchmark.eval_backend)."""

    def open_engine(network, tokenizer):
        return rollout_engine.open_evaluation_engine(network, tokenizer, decoding.eval_backend, model.dtype)

    def load():
        return model.load_model(), model.load_tokenizer()

    return functools.partial(fine_tune_and_evaluate, load=load, open_engine=open_engine, log=log)


def build_evaluation_assets(tuning: FineTuning) -> list:

    @asset(
        group_name="evaluation",
        **versioned(EVALUATE_VERSION, tuning),
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
        seed, queries = tuning.seeds[0], test_queries.to_dicts()
        candidates = {
            "base": None,
            "full": refined_dataset["messages"].to_list(),
            "refined": refined_dataset.filter("selected")["messages"].to_list(),
        }
        jobs = [
            fine_tune_job(tuning.sft, tuning.decoding, model, queries, name, messages, seed)
            for name, messages in candidates.items()
        ]
        run = evaluation_run(tuning.decoding, model, rollout_engine, context.log.info)
        evaluated = evaluate_models(jobs, run, context.log.info)
        context.add_output_metadata(evaluation_metadata(evaluated, full_sft_reference(tuning.sft, refined_dataset)))
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
