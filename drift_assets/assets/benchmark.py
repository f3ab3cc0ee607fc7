"""The method benchmark: SFT on each method's selection (full, random, off-policy, DRIFT and its
ablations, the baselines) over several seeds, scored on the test queries.

It is a study, not a step of the pipeline, and dozens of fine-tunes long: an asset in the graph
would be swept into the UI's "Materialize all". So ``method_benchmark`` is an external asset
(shown in the lineage, never materialized by "Materialize all") whose table the ``method_benchmark``
job writes and reports, launched on purpose (Jobs → method_benchmark, or ``run_method_benchmark``).
"""

from collections.abc import Callable

import numpy as np
import polars as pl
from dagster import AssetKey, AssetMaterialization, AssetSpec, Failure, MetadataValue, OpExecutionContext, job, op

from drift_assets.assets.checkpoints import WARMUP, checkpoint_model
from drift_assets.assets.cost import pool_sequence_tokens, recorded_pipeline_cost
from drift_assets.assets.evaluate import (
    _FINE_TUNE_AND_EVALUATE,
    EVALUATE_VERSION,
    evaluation_engine,
    fine_tune_job,
    train_and_evaluate,
)
from drift_assets.assets.metadata import png_markdown, table_metadata
from drift_assets.assets.placement import GPU_OP_TAGS, GPU_POOL
from drift_assets.code_location import job_path
from drift_assets.core.benchmark import (
    LESS_METHODS,
    MethodScorer,
    Selection,
    benchmark_table,
    dynamics_scores,
    fine_tune_from_disk,
    grape_scores,
    less_scores,
    loss_scores,
    run_fine_tunes,
    scoring_for,
    selected_ids,
    selection_of,
    self_distilled,
    shared_fine_tunes,
    similarity_scores,
    summary_markdown,
    summary_table,
)
from drift_assets.core.cost import method_costs
from drift_assets.core.gradients import pool_token_pairs, query_token_pairs
from drift_assets.core.less import AdamMoments, LessScores, correct_rollouts, less_scores_along
from drift_assets.core.pool import reference_tokens
from drift_assets.core.progress import SizedProgress
from drift_assets.core.selection import select
from drift_assets.core.stored import ConfiguredTables, base_losses, gradients_along, losses_along, rows_at
from drift_assets.resources import ModelResource, RolloutEngineResource, Warehouse
from drift_assets.settings import SETTINGS_READ_KEY, SETTINGS_USED_KEY, Reads, Settings, validation_answer_marker
from drift_assets.staleness import CODE_VERSION_KEY, INPUTS_KEY, JOB_KEY, input_versions

BENCHMARK = "method_benchmark"
# Read from the warehouse: the pool and the queries, and every checkpoint's partitions of the rest.
TABLES_READ = (
    "training_pool",
    "validation_queries",
    "test_queries",
    "rollouts",  # less_onpolicy targets the correct ones at each warm-up checkpoint
    "grades",
    "validation_gradients",
    "training_gradient_projections",
)


def build_benchmark(settings: Settings, asset_graph: Callable[[], object]) -> tuple[AssetSpec, object]:
    """The ``method_benchmark`` asset (external: reported, not materialized) and the job that writes it;
    ``asset_graph``: the graph of the definitions they are part of (a run started from Python sets
    no repository on its op's context)."""
    reads = Reads(
        settings,
        BENCHMARK,
        "benchmark",
        "influence",
        "checkpoints",
        "selection",
        # The span of the rollouts less_onpolicy differentiates: read only where it runs.
        *(["projection.validation_span"] if "less_onpolicy" in settings.benchmark.methods else []),
        *_FINE_TUNE_AND_EVALUATE,
    )
    code_version = reads.code_version(EVALUATE_VERSION)
    spec = AssetSpec(
        BENCHMARK,
        group_name="benchmark",
        code_version=code_version,
        # The job's page, where it is launched (an external asset has no "Materialize" button).
        metadata={**reads.metadata(), JOB_KEY: MetadataValue.url(job_path(BENCHMARK))},
        # The warm-up's checkpoints, where there are any: LESS loads them with their optimizer state.
        deps=["base_model", *TABLES_READ, *([WARMUP] if settings.checkpoints[1:] else [])],
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
        missing = [name for name in TABLES_READ if not warehouse.exists(name)]
        if missing:
            raise Failure(
                f"method_benchmark reads {', '.join(missing)}, not materialized in {warehouse.root}: "
                "materialize the pipeline first (make demo, drift-assets materialize, or Materialize all in the UI)"
            )
        # The inputs' data versions before they are read: one that changes meanwhile makes the table stale.
        inputs = input_versions(asset_graph(), context.instance, AssetKey(BENCHMARK))
        training_pool, validation_queries, test_queries = (
            warehouse.scan(name).collect() for name in ("training_pool", "validation_queries", "test_queries")
        )
        benchmark, selection = reads.benchmark, reads.selection
        drift = reads.influence.scoring()
        tables = ConfiguredTables.configured_by(reads, warehouse)
        losses = base_losses(tables, training_pool)  # the loss method's scores and the likelihood guard's order
        scorer = MethodScorer(list(gradients_along(tables)), losses, losses_along(tables, training_pool))
        network, tokenizer = model.load_model(), model.load_tokenizer()
        methods = benchmark.methods
        scores = {}
        for method in methods:
            if scoring_for(method, drift) is not None:
                scores[method] = scorer.method_scores(method, drift, training_pool)
            elif method == "loss":
                scores[method] = loss_scores(losses)
            elif method in ("rds", "bm25", "dsir"):
                scores[method] = similarity_scores(method, training_pool, validation_queries, network, tokenizer)
            elif method == "grape":
                scores[method] = grape_scores(training_pool, losses)
            elif method == "dynamics":
                scores[method] = dynamics_scores(scorer.losses_along, reads.checkpoints)
        if any(method in LESS_METHODS for method in methods):
            less = less_matrix_of(
                context.log.info,
                reads,
                model,
                warehouse,
                tokenizer,
                training_pool,
                validation_queries,
                tables,
                reference=bool({"less", "less_round_robin"} & set(methods)),
                onpolicy="less_onpolicy" in methods,
            )
            for method in LESS_METHODS:
                if method in methods:
                    matrix = less.onpolicy if method == "less_onpolicy" else less.reference
                    scores[method] = less_scores(method, training_pool["example_id"].to_list(), matrix)
        distilled = None
        if "self_distill" in methods:
            distilled = distill(reads, rollout_engine, model, network, tokenizer, training_pool, validation_queries)
            context.log.info(
                f"self_distill: the base model answers {distilled['correct'].sum()} of the pool's {distilled.height} prompts right"
            )
        # random and the others select as many examples as DRIFT does, so that they differ only in which ones.
        drift_scores = scores["drift"] if "drift" in scores else scorer.scores(drift, training_pool)
        drift_size = int(select(drift_scores, selection.method, selection.fraction, selection.k).sum())
        queries = test_queries.to_dicts()
        pool_messages = dict(zip(training_pool["example_id"], training_pool["messages"], strict=True))
        own_answers = dict(zip(distilled["example_id"], distilled["messages"], strict=True)) if distilled is not None else {}
        selections = {}

        def choose(method: str, seed: int) -> Selection:
            chosen = selected_ids(
                method,
                seed,
                training_pool,
                scores.get(method),
                drift_size,
                selection.method,
                selection.fraction,
                selection.k,
                distilled,
            )
            selections[method, seed] = selection_of(chosen, own_answers if method == "self_distill" else pool_messages)
            return selections[method, seed]

        plan = shared_fine_tunes(methods, benchmark.seeds, choose)
        jobs = [
            fine_tune_job(reads, model, sharers[0], [messages for _, messages in sorted(chosen)], queries, seed)
            for seed, chosen, sharers in plan
        ]
        run_one = (
            fine_tune_from_disk
            if benchmark.workers > 1
            else (lambda tune: train_and_evaluate(reads, model, rollout_engine, tune, context.log.debug))
        )
        shared = len(methods) * len(benchmark.seeds) - len(jobs)
        context.log.info(
            f"{len(jobs)} fine-tunes ({len(methods)} methods x {len(benchmark.seeds)} seeds"
            + (f", {shared} sharing another method's selection" if shared else "")
            + f") in {benchmark.workers} process(es)"
        )
        # Timed per SFT step (with sft.epochs, full-pool SFT takes many times a selection's steps);
        # in parallel processes each fine-tune's own seconds, the rest shared among the workers.
        progress = SizedProgress(
            "fine-tunes",
            [tune.options.steps_for(len(tune.messages)) if tune.messages else 0 for tune in jobs],
            context.log.info,
            work="steps",
            workers=benchmark.workers,
        )

        def finished():
            for (_, _, sharers), (tune, (result, seconds)) in zip(
                plan, run_fine_tunes(jobs, run_one, benchmark.workers), strict=True
            ):
                progress.advance(
                    f"{' = '.join(sharers)} seed {tune.seed}: accuracy {result.accuracy:.3f}",
                    seconds if benchmark.workers > 1 else None,
                )
                yield sharers, tune, result, seconds

        table = benchmark_table(finished(), methods, scores, training_pool, selections)
        # Beside each method's accuracy, what choosing its examples cost (the influence methods: the
        # pipeline's steps, as their latest materializations recorded them, from scratch: rows a
        # materialization reused cost the method as much as the run that first computed them).
        pipeline = recorded_pipeline_cost(context.instance, reads.unversioned, training_pool, evaluation=False, whole=True)
        validation_tokens = sum(
            reference_tokens(tokenizer, prompt, response)
            for prompt, response in zip(validation_queries["prompt"], validation_queries["reference_response"], strict=True)
        )
        costs = method_costs(methods, pipeline, sum(pool_sequence_tokens(training_pool)), validation_tokens)
        table = table.with_columns(cost_vs_full_sft=pl.col("method").replace_strict(costs, default=None, return_dtype=pl.Float64))
        warehouse.write(BENCHMARK, table)
        context.log_event(
            AssetMaterialization(
                BENCHMARK,
                metadata={
                    **table_metadata(table, preview_rows=table.height),
                    "summary": MetadataValue.md(summary_markdown(table)),
                    "plot": accuracy_plot(table),
                    # What its staleness is read from (drift_assets.staleness.job_written_staleness).
                    CODE_VERSION_KEY: code_version,
                    SETTINGS_USED_KEY: spec.metadata[SETTINGS_READ_KEY],
                    INPUTS_KEY: MetadataValue.json(inputs),
                },
            )
        )

    @job(
        name=BENCHMARK,
        description="The method benchmark: fine-tunes every method's selection over benchmark.seeds and writes the "
        "method_benchmark table (launch it on purpose: it is kept out of Materialize all).",
        tags={"drift_assets/code_version": code_version},
    )
    def method_benchmark_job():
        fine_tune_each_method()

    return spec, method_benchmark_job


ADAPTER_MODULES = r".*\.lora_[AB]\.default"


def less_matrix_of(
    log: Callable[[str], None],
    reads: Reads | Settings,
    model: ModelResource,
    warehouse: Warehouse,
    tokenizer,
    training_pool,
    validation_queries,
    tables: ConfiguredTables,
    reference: bool = True,
    onpolicy: bool = False,
) -> LessScores:
    """LESS's (pool × validation queries) scores along the warm-up checkpoints, one model loaded at a
    time: against the references (``reference``) and/or each checkpoint's correct rollouts (``onpolicy``).
    ``reads``: the benchmark's view of the settings (benchmarks/lds.py passes the settings themselves)."""
    steps = reads.checkpoints[1:]
    if not steps:
        raise Failure("benchmark methods less, less_round_robin and less_onpolicy score along the warm-up run: set warmup.steps")
    marker = validation_answer_marker(reads) if onpolicy else None

    def checkpoints():
        for checkpoint in steps:
            at_checkpoint = checkpoint_model(checkpoint, model, warehouse)
            directory = at_checkpoint.adapter or at_checkpoint.path
            log(f"LESS: per-example gradients at checkpoint {checkpoint} ({directory})")
            correct = None
            if onpolicy:
                rollouts, grades = (rows_at(tables, name, checkpoint) for name in ("rollouts", "grades"))
                correct = correct_rollouts(tokenizer, rollouts, grades, marker, checkpoint, at_checkpoint.fingerprint())
                log(
                    f"less_onpolicy: {len(correct.query_ids)} correct rollouts of {len(set(correct.query_ids))} "
                    f"queries at checkpoint {checkpoint}"
                )
            # A LoRA checkpoint keeps its adapter modules: their weights are what the warm-up trained.
            network = at_checkpoint.load_model(ADAPTER_MODULES if at_checkpoint.adapter else None)
            yield checkpoint, network, AdamMoments.load(directory), correct

    training = pool_token_pairs(tokenizer, training_pool["messages"])
    validation = (
        query_token_pairs(tokenizer, validation_queries["prompt"].to_list(), validation_queries["reference_response"].to_list())
        if reference
        else None
    )
    return less_scores_along(checkpoints(), tokenizer, training, validation)


def distill(reads: Reads, rollout_engine, model: ModelResource, network, tokenizer, training_pool, validation_queries):
    """The base model's greedy answers to the pool's prompts, graded (:func:`~drift_assets.core.benchmark.self_distilled`)."""
    graders = validation_queries["grader"].unique().to_list()
    grader = graders[0] if len(graders) == 1 else reads.grading.default_grader
    with evaluation_engine(network, tokenizer, reads.benchmark.eval_backend, rollout_engine, model.dtype) as engine:
        return self_distilled(engine, tokenizer, training_pool, grader, reads.rollout.max_tokens, reads.grading.options())


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
