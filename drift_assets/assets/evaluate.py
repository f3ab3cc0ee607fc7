"""Closing the loop: fine-tune on a selection and measure accuracy on held-out test queries."""

import contextlib
import tempfile
import time

import numpy as np
import polars as pl
from dagster import AssetExecutionContext, MetadataValue, asset

from drift_assets.assets.metadata import png_markdown, rounded, table_metadata
from drift_assets.core.attribution import noise_auc
from drift_assets.core.benchmark import (
    FineTuneJob,
    MethodScorer,
    fine_tune_from_disk,
    run_fine_tunes,
    scoring_for,
    selected_ids,
    similarity_scores,
    summary_markdown,
    summary_table,
)
from drift_assets.core.charts import curves_markdown, intervals_markdown
from drift_assets.core.generation import TransformersEngine, VllmEngine, resolve_max_model_len
from drift_assets.core.progress import Progress
from drift_assets.core.selection import select
from drift_assets.core.sft import Evaluation, evaluate, fine_tune
from drift_assets.core.stored import gradients_along, pool_loss_scores
from drift_assets.core.tiny_model import save_model
from drift_assets.resources import ModelResource, RolloutEngineResource, Warehouse
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
    losses = fine_tune(network, tokenizer, job.messages, job.options, log=log).losses if job.messages else []
    with evaluation_engine(network, tokenizer, reads.benchmark.eval_backend, rollout_engine, model.dtype) as engine:
        result = evaluate(engine, tokenizer, job.queries, job.max_tokens, job.grading)
    result.train_losses = losses
    return result, time.perf_counter() - started


def build_evaluation_assets(settings: Settings) -> list:
    reads = Reads(settings, "refined_model_evaluation", "benchmark.sft", "benchmark.seeds", *_FINE_TUNE_AND_EVALUATE)
    bench_reads = Reads(
        settings, "method_benchmark", "benchmark", "influence", "checkpoints", "selection", *_FINE_TUNE_AND_EVALUATE
    )

    @asset(
        group_name="evaluation",
        code_version=reads.code_version(EVALUATE_VERSION),
        metadata=reads.metadata(),
        deps=["base_model"],
        kinds={"pytorch", "delta"},
        pool="gpu",
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
        progress = Progress("evaluation", len(candidates), context.log.info, "models")
        rows, curves = [], {}
        for name, messages in candidates.items():
            result, seconds = train_and_evaluate(
                reads, model, rollout_engine, fine_tune_job(reads, model, name, messages, queries, seed), context.log.info
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
                "accuracy_chart": MetadataValue.md(
                    intervals_markdown([(r["model"], r["accuracy"], r["accuracy_low"], r["accuracy_high"]) for r in rows])
                ),
                "sft_loss_curves": MetadataValue.md(curves_markdown(curves)),
            }
        )
        return table

    @asset(
        group_name="benchmark",
        code_version=bench_reads.code_version(EVALUATE_VERSION),
        metadata=bench_reads.metadata(),
        # Every checkpoint's partitions of these, read from the warehouse.
        deps=["base_model", "validation_gradients", "grades", "training_gradient_projections"],
        kinds={"pytorch", "delta"},
        pool="gpu",
        description="SFT on each method's selection (full, random, off-policy, DRIFT and ablations) over several seeds.",
    )
    def method_benchmark(
        context: AssetExecutionContext,
        training_pool: pl.DataFrame,
        validation_queries: pl.DataFrame,
        test_queries: pl.DataFrame,
        model: ModelResource,
        rollout_engine: RolloutEngineResource,
        warehouse: Warehouse,
    ) -> pl.DataFrame:
        benchmark, selection = bench_reads.benchmark, bench_reads.selection
        drift = bench_reads.influence.scoring()
        scorer = MethodScorer(list(gradients_along(warehouse, bench_reads.checkpoints, bench_reads.projection.shards)))
        network, tokenizer = model.load_model(), model.load_tokenizer()
        scores = {}
        for method in benchmark.methods:
            if scoring_for(method, drift) is not None:
                scores[method] = scorer.method_scores(method, drift, training_pool)
            elif method == "loss":
                scores[method] = pool_loss_scores(warehouse, training_pool)
            elif method in ("rds", "bm25"):
                scores[method] = similarity_scores(method, training_pool, validation_queries, network, tokenizer)
        # random and the others select as many examples as DRIFT does, so that they differ only in which ones.
        drift_scores = scores["drift"] if "drift" in scores else scorer.scores(drift, training_pool)
        drift_size = int(select(drift_scores, selection.method, selection.fraction, selection.k).sum())
        queries = test_queries.to_dicts()
        # A method whose selection equals another's on a seed (an ablation that restates the
        # configured setting) shares its fine-tune: SFT is deterministic, so the result is the same.
        jobs, sharing = [], {}  # sharing: (seed, selection) -> the methods that fine-tune on it
        for method in benchmark.methods:
            for seed in benchmark.seeds:
                chosen = frozenset(
                    selected_ids(
                        method,
                        seed,
                        training_pool,
                        scores.get(method),
                        drift_size,
                        selection.method,
                        selection.fraction,
                        selection.k,
                    )
                )
                if (seed, chosen) in sharing:
                    sharing[seed, chosen].append(method)
                    continue
                sharing[seed, chosen] = sharers = [method]
                messages = training_pool.filter(pl.col("example_id").is_in(list(chosen)))["messages"].to_list()
                jobs.append((fine_tune_job(bench_reads, model, method, messages, queries, seed), sharers))
        run_one = (
            fine_tune_from_disk
            if benchmark.workers > 1
            else (lambda job: train_and_evaluate(bench_reads, model, rollout_engine, job, context.log.debug))
        )
        shared = len(benchmark.methods) * len(benchmark.seeds) - len(jobs)
        context.log.info(
            f"{len(jobs)} fine-tunes ({len(benchmark.methods)} methods x {len(benchmark.seeds)} seeds"
            + (f", {shared} sharing another method's selection" if shared else "")
            + f") in {benchmark.workers} process(es)"
        )
        rows = []
        progress = Progress("fine-tunes", len(jobs), context.log.info)
        finished = run_fine_tunes([job for job, _ in jobs], run_one, benchmark.workers)
        for (_, sharers), (job, (result, seconds)) in zip(jobs, finished, strict=True):  # in job order
            low, high = result.interval
            for method in sharers:
                rows.append(
                    {
                        "method": method,
                        "seed": job.seed,
                        "n_selected": len(job.messages),
                        "accuracy": result.accuracy,
                        "accuracy_low": low,
                        "accuracy_high": high,
                        "noise_auc": noise_auc(scores.get(method), training_pool),
                        "wall_seconds": seconds if method == job.method else 0.0,
                    }
                )
            progress.advance(f"{' = '.join(sharers)} seed {job.seed}: accuracy {result.accuracy:.3f}")
        order = {method: index for index, method in enumerate(benchmark.methods)}
        table = pl.DataFrame(rows, schema_overrides={"noise_auc": pl.Float64}).sort(
            pl.col("method").replace_strict(order), "seed", maintain_order=True
        )
        context.add_output_metadata(
            {
                **table_metadata(table, preview_rows=len(rows)),
                "summary": MetadataValue.md(summary_markdown(table)),
                "plot": accuracy_plot(table),
            }
        )
        return table

    return [refined_model_evaluation, method_benchmark]


def accuracy_plot(table: pl.DataFrame) -> MetadataValue:
    """Test accuracy per method: every seed as a dot, the mean as a bar, full-data SFT as a line."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    import matplotlib.pyplot as plt

    summary = summary_table(table)
    methods = summary["method"].to_list()
    figure, axes = plt.subplots(figsize=(1.1 * len(methods) + 2, 3.5))
    axes.bar(range(len(methods)), 100 * summary["accuracy_mean"].to_numpy(), color="#9ecae1")
    for position, method in enumerate(methods):
        accuracies = 100 * table.filter(pl.col("method") == method)["accuracy"].to_numpy()
        axes.scatter(np.full(len(accuracies), position), accuracies, color="#08519c", s=12, zorder=3)
    if "full" in methods:
        axes.axhline(
            100 * summary.filter(pl.col("method") == "full")["accuracy_mean"][0], color="grey", linestyle="--", label="full"
        )
        axes.legend(loc="lower right")
    axes.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    axes.set_ylabel("test accuracy %")
    axes.set_title(f"SFT on each method's selection ({table['seed'].n_unique()} seeds)")
    plot = png_markdown(figure, "method benchmark accuracy")
    plt.close(figure)
    return plot
