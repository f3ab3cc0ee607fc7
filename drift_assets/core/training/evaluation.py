"""Fine-tune the base model on a selection, then measure its greedy accuracy on the test queries
(and, where a job asks, on the validation queries):
the one fine-tune-then-evaluate that ``refined_model_evaluation`` and the method benchmark (in
this process or in spawned worker processes) run."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import polars as pl
import torch

from drift_assets.core.generation.engines import TransformersEngine
from drift_assets.core.grading.graders import GradingOptions
from drift_assets.core.runtime.cost import StageCost
from drift_assets.core.runtime.progress import SizedProgress
from drift_assets.core.training.sft import Evaluation, SftOptions, evaluate, fine_tune

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class FineTuneJob:
    """One fine-tune of the base model on a selection, then greedy accuracy on the test queries."""

    method: str
    seed: int
    messages: list[str]
    model_path: str
    dtype: str
    device: str
    options: SftOptions
    queries: list[dict]
    max_tokens: int
    grading: GradingOptions
    # Also decoded where given, for a method that chooses between its fine-tunes by them.
    validation_queries: list[dict] = field(default_factory=list)


def load_base_model(path: str, dtype: str, device: str):
    """(model, tokenizer) of the Hugging Face directory ``path``, the model in ``dtype`` on ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).to(device)
    return model, AutoTokenizer.from_pretrained(path)


def fine_tune_and_evaluate(
    job: FineTuneJob,
    load: Callable[[], tuple] | None = None,
    open_engine: Callable[..., contextlib.AbstractContextManager] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[Evaluation, float]:
    """Fine-tune the base model on the job's selection (none: the base model itself), evaluate it;
    (the evaluation with its train losses and tokens, the seconds from loading to graded).

    ``load``: the base model and its tokenizer, a fresh copy (by default :func:`load_base_model` of
    the job's model); ``open_engine(model, tokenizer)``: the evaluation's engine over the fine-tuned
    model, a context manager (by default transformers on the job's device). With the defaults this
    is what a spawned worker process runs (a module-level function, pickled).
    """
    started = time.perf_counter()
    model, tokenizer = load() if load is not None else load_base_model(job.model_path, job.dtype, job.device)
    run = fine_tune(model, tokenizer, job.messages, job.options, log=log) if job.messages else None
    opened = (
        open_engine(model, tokenizer)
        if open_engine is not None
        else contextlib.nullcontext(TransformersEngine(model, tokenizer, device=job.device))
    )
    with opened as engine:
        result = evaluate(engine, tokenizer, job.queries, job.max_tokens, job.grading)
        if job.validation_queries:
            result.validation = evaluate(engine, tokenizer, job.validation_queries, job.max_tokens, job.grading)
    result.train_losses, result.train_tokens = (run.losses, run.tokens) if run is not None else ([], 0)
    return result, time.perf_counter() - started


@dataclass
class EvaluatedModels:
    """``refined_model_evaluation``'s table (one row per model), each fine-tune's loss curve and each
    model's cost (its fine-tune and its greedy decoding of the test queries)."""

    table: pl.DataFrame
    curves: dict[str, list[float]]
    costs: list[StageCost]

    def accuracy(self, model: str) -> float:
        return self.table.filter(pl.col("model") == model)["accuracy"][0]

    def intervals(self) -> list[tuple[str, float, float, float]]:
        """(model, accuracy, low, high) per row."""
        return list(self.table.select("model", "accuracy", "accuracy_low", "accuracy_high").iter_rows())


def evaluate_models(
    jobs: Iterable[FineTuneJob], run: Callable[[FineTuneJob], tuple[Evaluation, float]], log: Callable[[str], None]
) -> EvaluatedModels:
    """Each job (its ``method`` names the model) run in turn by ``run``, logging progress per SFT step."""
    jobs = list(jobs)
    # Timed per SFT step: fine-tuning the full pool takes many times a selection's steps (with
    # sft.epochs), and the base model takes none.
    steps = [job.options.steps_for(len(job.messages)) if job.messages else 0 for job in jobs]
    progress = SizedProgress("evaluation", steps, log, "models", "steps")
    rows, curves, costs = [], {}, []
    for job in jobs:
        result, seconds = run(job)
        # Its fine-tune (forward and backward) and its greedy decoding of the test queries (forward).
        forward = result.train_tokens + result.prompt_tokens + result.generated_tokens
        costs.append(StageCost("evaluation", forward, result.train_tokens, seconds))
        low, high = result.interval
        rows.append(
            {
                "model": job.method,
                "n_train": len(job.messages),
                "seed": job.seed,
                "accuracy": result.accuracy,
                "accuracy_low": low,
                "accuracy_high": high,
                "n_queries": result.total,
                "wall_seconds": seconds,
            }
        )
        if result.train_losses:
            curves[f"SFT on {job.method} ({len(job.messages)})"] = result.train_losses
        progress.advance(f"{job.method}: accuracy {result.accuracy:.3f} [{low:.3f}, {high:.3f}]")
    return EvaluatedModels(pl.DataFrame(rows), curves, costs)
