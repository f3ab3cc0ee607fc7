"""The code location: assembles assets, checks, resources, jobs and automation from the settings."""

from functools import cache
from pathlib import Path

from dagster import AssetChecksDefinition, Definitions, ExecutorDefinition, in_process_executor, load_from_defs_folder

from drift_assets.defs.automation import automation_sensor, build_jobs, current_checks, with_automation
from drift_assets.defs.benchmark import BenchmarkGiven, build_benchmark
from drift_assets.defs.demo import DemoGiven, build_demo_assets
from drift_assets.defs.evaluate import FineTuning, build_evaluation_assets
from drift_assets.defs.grades import GradesGiven, build_grade_assets
from drift_assets.defs.gradients import GradientsGiven, build_gradient_assets
from drift_assets.defs.influence import InfluenceGiven, build_influence_assets
from drift_assets.defs.refine import RefineGiven, build_refine_assets
from drift_assets.defs.rollouts import RolloutsGiven, build_rollout_assets
from drift_assets.defs.sources import SourcesGiven, build_source_assets
from drift_assets.defs.warmup import ListedCheckpoints, WarmupGiven, WarmupRun, build_warmup_assets
from drift_assets.resources import Warehouse, model_resource, rollout_engine_resource
from drift_assets.settings import Settings, given, load_settings
from drift_assets.terminal import hide_beta_warnings, terminal_logger

# dg, the webserver and the daemon load this module: Dagster's notices that the observable sources and
# the automation sensor's options are beta would print at every code load.
hide_beta_warnings()


def build_definitions(settings: Settings, executor: ExecutorDefinition = in_process_executor) -> Definitions:
    """Each stage is given only its part of the settings (drift_assets.settings.given)."""
    fine_tuning = given(FineTuning, settings)  # the evaluation's, and choosing among selections'
    assets = [
        *build_source_assets(given(SourcesGiven, settings)),
        *build_rollout_assets(given(RolloutsGiven, settings)),
        *build_grade_assets(given(GradesGiven, settings)),
        *build_gradient_assets(given(GradientsGiven, settings)),
        *build_influence_assets(given(InfluenceGiven, settings)),
        *build_refine_assets(given(RefineGiven, settings, choosing=fine_tuning if settings.selection.choose_among else None)),
    ]
    if settings.checkpoints[1:]:  # a warm-up run's checkpoints, or the directories warmup.checkpoints lists
        listed = bool(settings.warmup.checkpoints)  # in place of a warm-up run
        run = None if listed else given(WarmupRun, settings)
        assets += build_warmup_assets(
            given(WarmupGiven, settings, run=run, listed=given(ListedCheckpoints, settings) if listed else None)
        )
    jobs, sensors = [], [automation_sensor()]
    if settings.data.test_queries:
        assets += build_evaluation_assets(fine_tuning)
        # An external asset and the job that writes it: "Materialize all" leaves the benchmark out.
        # The job records its inputs' data versions, read from the graph it is defined in.
        benchmark, benchmark_job = build_benchmark(given(BenchmarkGiven, settings), lambda: definitions.resolve_asset_graph())
        assets.append(benchmark)
        jobs.append(benchmark_job)
        # Dagster marks no external asset "Unsynced": a check, kept current by a sensor, shows it stale.
        checks, judge = current_checks([benchmark.key.to_user_string()], lambda: definitions.resolve_asset_graph())
        assets += checks
        sensors.append(judge)
    if settings.demo.enabled:
        assets += build_demo_assets(given(DemoGiven, settings))
    assets = [with_automation(a) for a in assets]
    jobs = build_jobs(assets) + jobs
    warehouse = Warehouse.from_settings(settings)
    built = Definitions(
        # By default a run's steps share one process: the model, tokenizer and torch are loaded once
        # per run instead of once per step and check (the steps of a run are sequential on the GPU
        # pool anyway). A cluster gives each step a pod of its own instead (drift_assets.cluster).
        executor=executor,
        jobs=jobs,
        sensors=sensors,
        assets=[a for a in assets if not isinstance(a, AssetChecksDefinition)],
        asset_checks=[a for a in assets if isinstance(a, AssetChecksDefinition)],
        loggers={"console": terminal_logger},  # used where a run's config selects it (runs started from Python)
        resources={
            "warehouse": warehouse,
            "io_manager": warehouse.io_manager(),
            "model": model_resource(settings),
            "rollout_engine": rollout_engine_resource(settings),
        },
    )
    definitions = Definitions.merge(built, scaffolded_definitions())
    return definitions


@cache  # per process: a code location reloads in a new one
def scaffolded_definitions() -> Definitions:
    """What `dg scaffold defs` added to defs/: it joins the pipeline's own (whose modules hold
    factories, which the loader does not pick up)."""
    return load_from_defs_folder(path_within_project=Path(__file__).parent)


defs = build_definitions(load_settings())
