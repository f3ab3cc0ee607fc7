"""The method benchmark: SFT on each method's selection (full, random, off-policy, DRIFT and its
ablations, the baselines) over several seeds, scored on the test queries.

It is a study, not a step of the pipeline, and dozens of fine-tunes long: an asset in the graph
would be swept into the UI's "Materialize all". So ``method_benchmark`` is an external asset
(shown in the lineage, never materialized by "Materialize all") whose table the ``method_benchmark``
job writes and reports, launched on purpose (Jobs → method_benchmark, or ``run_method_benchmark``).
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
from dagster import AssetKey, AssetMaterialization, AssetSpec, Failure, MetadataValue, OpExecutionContext, job, op

from drift_assets.code_location import job_path
from drift_assets.core.attribution.less import AdamMoments, less_along
from drift_assets.core.data.stored import ConfiguredTables, stored_scorer
from drift_assets.core.gradients.tables import pool_token_pairs
from drift_assets.core.study.benchmark import (
    MethodBenchmark,
    reference_pairs,
    self_distilled,
    summary_markdown,
    summary_table,
    with_method_costs,
)
from drift_assets.core.training.evaluation import fine_tune_and_evaluate
from drift_assets.defs.checkpoints import WARMUP, checkpoint_model
from drift_assets.defs.cost import CostPlan, pool_sequence_tokens, recorded_pipeline_cost
from drift_assets.defs.evaluate import EVALUATE_VERSION, Decoding, evaluation_run, fine_tune_job
from drift_assets.defs.metadata import png_markdown, table_metadata
from drift_assets.defs.placement import GPU_OP_TAGS, GPU_POOL
from drift_assets.resources import ModelResource, RolloutEngineResource, Warehouse
from drift_assets.settings import (
    SETTINGS_READ_KEY,
    SETTINGS_USED_KEY,
    BenchmarkSettings,
    InfluenceSettings,
    setting,
    unhashed,
    versioned,
)
from drift_assets.staleness import CODE_VERSION_KEY, INPUTS_KEY, JOB_KEY, input_versions

BENCHMARK = "method_benchmark"
# Read from the warehouse: the pool and the queries, and every checkpoint's partitions of the rest.
TABLES_READ = (
    "training_pool",
    "validation_queries",
    "test_queries",
    "grades",
    "validation_gradients",
    "training_gradient_projections",
)


@dataclass(frozen=True)
class BenchmarkGiven:
    """The benchmark, the influence it scores with and where, the selection's size, which every method's
    selection takes (not how the pipeline's is chosen or exported), and how each fine-tune is decoded
    and graded (all hashed); the training gradients' shards and the cost plan (not)."""

    benchmark: BenchmarkSettings = setting("benchmark")
    influence: InfluenceSettings = setting("influence")
    checkpoints: list[str] = setting("checkpoints")
    method: str = setting("selection.method")
    fraction: float = setting("selection.fraction")
    k: int | None = setting("selection.k")
    decoding: Decoding
    shards: int = unhashed("projection.shards")
    cost: CostPlan


def build_benchmark(given: BenchmarkGiven, asset_graph: Callable[[], object]) -> tuple[AssetSpec, object]:
    """The ``method_benchmark`` asset (external: reported, not materialized) and the job that writes it;
    ``asset_graph``: the graph of the definitions they are part of (a run started from Python sets
    no repository on its op's context)."""
    spec_version = versioned(EVALUATE_VERSION, given, **{JOB_KEY: MetadataValue.url(job_path(BENCHMARK))})
    version = spec_version["code_version"]
    spec = AssetSpec(
        BENCHMARK,
        group_name="benchmark",
        # The job's page, where it is launched (an external asset has no "Materialize" button), in its metadata.
        **spec_version,
        # The warm-up's checkpoints, where there are any: LESS loads them with their optimizer state.
        deps=["base_model", *TABLES_READ, *([WARMUP] if given.checkpoints[1:] else [])],
        kinds={"pytorch", "delta"},
        description="SFT on each method's selection (full, random, off-policy, DRIFT and ablations) over several seeds; "
        f"written by the [method_benchmark job]({job_path(BENCHMARK)}), launched on purpose (Materialize all leaves "
        "it out). When it is stale, its `method_benchmark_current` check fails as a warning naming each setting it "
        "reads that changed (old → new) or each input with new data, and links the job; the "
        "`job_written_assets_current` sensor judges it every minute (`drift-assets materialize` says the same).",
    )

    @op(pool=GPU_POOL, tags=GPU_OP_TAGS, description=spec.description)
    def fine_tune_each_method(
        context: OpExecutionContext, model: ModelResource, rollout_engine: RolloutEngineResource, warehouse: Warehouse
    ) -> None:
        require_tables(warehouse)
        # The inputs' data versions before they are read: one that changes meanwhile makes the table stale.
        inputs = input_versions(asset_graph(), context.instance, AssetKey(BENCHMARK))
        training_pool, validation_queries, test_queries = (
            warehouse.scan(name).collect() for name in ("training_pool", "validation_queries", "test_queries")
        )
        benchmark, tables = given.benchmark, ConfiguredTables(warehouse, tuple(given.checkpoints), given.shards)
        scorer, drift = stored_scorer(tables, training_pool), given.influence.scoring()
        study = MethodBenchmark(benchmark.methods, benchmark.seeds, training_pool, validation_queries, scorer, drift)
        network, tokenizer = model.load_model(), model.load_tokenizer()
        less = functools.partial(
            less_matrix_of, context.log.info, given.checkpoints, model, warehouse, tokenizer, training_pool, validation_queries
        )
        study.score(network, tokenizer, given.checkpoints, less)
        distilled = distill(given, rollout_engine, model, network, tokenizer, training_pool, validation_queries, context.log.info)
        plan = study.plan((given.method, given.fraction, given.k), distilled)
        job_for = functools.partial(fine_tune_job, benchmark.sft, given.decoding, model, test_queries.to_dicts())
        in_process = evaluation_run(given.decoding, model, rollout_engine, context.log.debug)
        run_one = fine_tune_and_evaluate if benchmark.workers > 1 else in_process
        table = study.run(plan, job_for, run_one, benchmark.workers, context.log.info)
        table = with_costs(context.instance, given.cost, table, training_pool, validation_queries, tokenizer)
        warehouse.write(BENCHMARK, table)
        context.log_event(benchmark_materialization(table, version, spec.metadata[SETTINGS_READ_KEY], inputs))

    @job(
        name=BENCHMARK,
        description="The method benchmark: fine-tunes every method's selection over benchmark.seeds and writes the "
        "method_benchmark table (launch it on purpose: it is kept out of Materialize all).",
        tags={"drift_assets/code_version": version},
    )
    def method_benchmark_job():
        fine_tune_each_method()

    return spec, method_benchmark_job


def with_costs(instance, plan: CostPlan, table: pl.DataFrame, training_pool, validation_queries, tokenizer) -> pl.DataFrame:
    """Beside each method's accuracy, what choosing its examples cost (the influence methods: the
    pipeline's steps, as their latest materializations recorded them, from scratch: rows a
    materialization reused cost the method as much as the run that first computed them)."""
    pipeline = recorded_pipeline_cost(instance, plan, training_pool, before="refined_model_evaluation", whole=True)
    pool_tokens = sum(pool_sequence_tokens(training_pool))
    return with_method_costs(table, pipeline, pool_tokens, validation_queries, tokenizer)


def require_tables(warehouse: Warehouse) -> None:
    missing = [name for name in TABLES_READ if not warehouse.exists(name)]
    if missing:
        raise Failure(
            f"method_benchmark reads {', '.join(missing)}, not materialized in {warehouse.root}: "
            "materialize the pipeline first (make demo, drift-assets materialize, or Materialize all in the UI)"
        )


def benchmark_materialization(table: pl.DataFrame, code_version: str, settings_read, inputs: dict) -> AssetMaterialization:
    """The table's materialization, with what its staleness is read from (:func:`drift_assets.staleness.job_written_staleness`)."""
    return AssetMaterialization(
        BENCHMARK,
        metadata={
            **table_metadata(table, preview_rows=table.height),
            "summary": MetadataValue.md(summary_markdown(table)),
            "plot": accuracy_plot(table),
            CODE_VERSION_KEY: code_version,
            SETTINGS_USED_KEY: settings_read,
            INPUTS_KEY: MetadataValue.json(inputs),
        },
    )


ADAPTER_MODULES = r".*\.lora_[AB]\.default"


def less_matrix_of(
    log: Callable[[str], None],
    checkpoints: list[str],
    model: ModelResource,
    warehouse: Warehouse,
    tokenizer,
    training_pool,
    validation_queries,
) -> np.ndarray:
    """LESS's (pool × validation queries) scores against the references along the warm-up checkpoints,
    one model loaded at a time."""
    steps = checkpoints[1:]
    if not steps:
        raise Failure("benchmark methods less and less_round_robin score along the warm-up run: set warmup.steps")

    def checkpoints():
        for checkpoint in steps:
            at_checkpoint = checkpoint_model(checkpoint, model, warehouse)
            directory = at_checkpoint.adapter or at_checkpoint.path
            log(f"LESS: per-example gradients at checkpoint {checkpoint} ({directory})")
            # A LoRA checkpoint keeps its adapter modules: their weights are what the warm-up trained.
            network = at_checkpoint.load_model(ADAPTER_MODULES if at_checkpoint.adapter else None)
            yield checkpoint, network, AdamMoments.load(directory)

    training = pool_token_pairs(tokenizer, training_pool["messages"])
    return less_along(checkpoints(), tokenizer, training, reference_pairs(tokenizer, validation_queries))


def distill(
    given: BenchmarkGiven, rollout_engine, model: ModelResource, network, tokenizer, training_pool, validation_queries, log
) -> pl.DataFrame | None:
    """The base model's greedy answers to the pool's prompts, graded (:func:`~drift_assets.core.study.benchmark.self_distilled`),
    where the benchmark runs ``self_distill`` (else None)."""
    if "self_distill" not in given.benchmark.methods:
        return None
    decoding = given.decoding
    graders = validation_queries["grader"].unique().to_list()
    grader = graders[0] if len(graders) == 1 else decoding.grading.default_grader
    with rollout_engine.open_evaluation_engine(network, tokenizer, decoding.eval_backend, model.dtype) as engine:
        distilled = self_distilled(engine, tokenizer, training_pool, grader, decoding.max_tokens, decoding.grading.options())
    log(f"self_distill: the base model answers {distilled['correct'].sum()} of the pool's {distilled.height} prompts right")
    return distilled


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
