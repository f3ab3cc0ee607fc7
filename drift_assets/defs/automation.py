"""Recurring refresh and jobs.

The refresh is declarative: on a cron tick the sources are observed (content hashes of the input
files and the model directory), and an asset is requested when it is missing, when its code version
(implementation + the settings it reads) or a dependency's *data version* changes, and, whatever
happened while the sensor was off, whenever Dagster calls it "Unsynced" (:class:`Unsynced`: what
was stale before the sensor was turned on is requested on its first tick). A partition that failed
is not requested again until something changes. ``AutomationCondition.eager()`` is not used: it
re-runs on any upstream materialization even when the data did not change (dagster#25439), which
would re-run GPU steps for nothing.

:class:`Unsynced` runs Python of its own, so the automation sensor is evaluated in the code
location's process (``use_user_code_server``), not in the daemon.

The method benchmark, an external asset its own job writes, is never refreshed and never marked
"Unsynced" by Dagster: :func:`current_checks` gives it a warning check that shows in the UI whether
it is stale and why, kept current by a sensor that is on by default (it launches nothing).
"""

import json
from collections.abc import Callable

from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    AutomationResult,
    DefaultSensorStatus,
    PartitionsDefinition,
    SensorDefinition,
    SensorResult,
    asset_check,
    define_asset_job,
    sensor,
)
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus

from drift_assets.defs.checkpoints import partitioned
from drift_assets.staleness import current_check_name, current_evaluation, job_name, settings_cause

REFRESH_CRON = "0 3 * * *"  # nightly; change here or override per deployment


def observe_condition(cron: str = REFRESH_CRON) -> AutomationCondition:
    return AutomationCondition.cron_tick_passed(cron).with_label(f"observe on '{cron}'")


class Unsynced(AutomationCondition):
    """True for the partitions Dagster calls "Unsynced" (stale: a new code version, or an input with a
    new data version since they were materialized), as the UI's badge and ``staleness`` say. It logs
    each one's cause, naming changed settings with their old and new values (the sensor's tick log)."""

    @property
    def name(self) -> str:
        return "unsynced"

    @property
    def description(self) -> str:
        return "Unsynced: its code, settings or an input changed since it was materialized"

    def evaluate(self, context) -> AutomationResult:
        view = context.asset_graph_view
        resolver = CachingStaleStatusResolver(view.instance, context.asset_graph, view)
        stale = {
            partition
            for partition in context.candidate_subset.expensively_compute_asset_partitions()
            if resolver.get_status(partition.asset_key, partition.partition_key) == StaleStatus.STALE
        }
        for partition in sorted(stale, key=str):
            cause = settings_cause(context.asset_graph, view.instance, partition.asset_key, partition.partition_key)
            name = partition.asset_key.to_user_string() + (f"[{partition.partition_key}]" if partition.partition_key else "")
            context.log.info(f"{name} is unsynced" + (f": {cause}" if cause else ""))
        return AutomationResult(context, view.get_asset_subset_from_asset_partitions(context.key, stale))


def refresh_condition() -> AutomationCondition:
    changed = AutomationCondition.code_version_changed() | AutomationCondition.any_deps_match(
        AutomationCondition.data_version_changed()
    )
    # States, whenever they arose (before the sensor was on, or while a dependency was running): a
    # failed partition waits for a change instead of being requested on every tick.
    caught_up = (AutomationCondition.missing() | Unsynced()) & ~AutomationCondition.execution_failed()
    return (
        (changed | caught_up)
        # A table whose blocking check failed is not passed on to the assets that read it.
        & AutomationCondition.all_deps_blocking_checks_passed()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label(
        "refresh what is missing, unsynced, or whose inputs, settings or code changed, once its inputs passed their checks"
    )


def automation_sensor() -> AutomationConditionSensorDefinition:
    """The sensor that evaluates every asset's condition (off until turned on in the UI's Automation tab)."""
    return AutomationConditionSensorDefinition(
        "refresh",
        target=AssetSelection.all(include_sources=True),
        use_user_code_server=True,
        description="Observes the sources nightly and refreshes what is missing or unsynced (Unsynced assets are "
        "requested on the first tick, whatever changed while the sensor was off).",
    )


# The pipeline's groups: refreshed by automation and materialized by the runner; the demo and the
# benchmark stay manual.
PIPELINE_GROUPS = ("inputs", "rollouts", "attribution", "refinement", "evaluation")


def pipeline_partitions(assets: list) -> dict[str, PartitionsDefinition | None]:
    """Name → partitions of each pipeline asset among ``assets`` (asset and check definitions)."""
    return {
        key.to_user_string(): definition.partitions_def
        for definition in assets
        if isinstance(definition, AssetsDefinition) and not isinstance(definition, AssetChecksDefinition)
        for key in definition.keys
        if definition.group_names_by_key[key] in PIPELINE_GROUPS
    }


def build_jobs(assets: list) -> list:
    """Jobs for the UI and schedules, over the pipeline's ``assets``. A job holds assets of one
    partitioning only: the chain at each checkpoint, its training-gradient shards (checkpoint ×
    shard) and the warm-up run (where there is one) get jobs of their own; launch those as backfills."""
    parts = partitioned(pipeline_partitions(assets))
    at_checkpoints, shards, steps = (
        AssetSelection.assets(*names) for names in (parts.at_checkpoint, parts.sharded, parts.over_steps)
    )
    pipeline, partitioned_assets = AssetSelection.groups(*PIPELINE_GROUPS), at_checkpoints | shards | steps
    warmup_jobs = (
        [
            define_asset_job(
                "warmup_run",
                selection=steps,
                description="The warm-up SFT run; launch as a backfill over its checkpoints (one run trains once and saves each).",
            ),
        ]
        if parts.over_steps
        else []
    )
    return [
        define_asset_job(
            "observe_sources",
            selection=AssetSelection.groups("sources", include_sources=True),
            description="Record the content hash of every input file and of the model directory.",
        ),
        define_asset_job(
            "refresh_unpartitioned",
            selection=pipeline - partitioned_assets,
            description="Inputs, scores, refined dataset and evaluation.",
        ),
        define_asset_job(
            "rollouts_and_gradients",
            selection=at_checkpoints,
            description="Rollouts, grades, projection basis and validation gradients at a checkpoint; launch as a backfill "
            "over the checkpoints (base, then the warm-up steps).",
        ),
        *warmup_jobs,
        define_asset_job(
            "training_gradients",
            selection=shards,
            description="Training-gradient shards; launch as a backfill over all partitions (one run per checkpoint and shard).",
        ),
        define_asset_job(
            "attribution_only",
            selection=AssetSelection.groups("attribution", "refinement") - partitioned_assets,
            description="Re-score and re-select from the stored gradients (after changing weighting, Hessian, debias or selection).",
        ),
    ]


def with_automation(definition):
    """Pipeline assets refresh; demo and benchmark stay manual (sources carry their observe condition)."""
    if isinstance(definition, AssetChecksDefinition) or not isinstance(definition, AssetsDefinition):
        return definition
    if set(definition.group_names_by_key.values()) <= set(PIPELINE_GROUPS):
        return definition.map_asset_specs(lambda spec: spec.replace_attributes(automation_condition=refresh_condition()))
    return definition


CURRENT_SENSOR = "job_written_assets_current"


def current_checks(assets: list[str], asset_graph: Callable[[], object]) -> tuple[list, SensorDefinition]:
    """For each external asset a job writes (the method benchmark), a warning check ``<asset>_current``
    that shows in the UI whether it is stale and why, with a link to its job (Dagster's "Unsynced"
    badge leaves external assets out), and the sensor that judges them every minute and reports
    each verdict that changed, so the check is current without anyone launching the job or the check.
    ``asset_graph``: the graph of the definitions they are part of."""

    def check_of(asset: str):
        key = AssetKey(asset)

        @asset_check(
            asset=key,
            name=current_check_name(key),
            blocking=False,
            description=f"Whether {asset} is up to date with the settings it reads and the data of its inputs, "
            f"judged from what its job recorded; fails (a warning) naming each changed setting with its old "
            f"and new values, or each input with new data. The {CURRENT_SENSOR} sensor evaluates it every minute.",
        )
        def current(context) -> AssetCheckResult:
            graph = asset_graph()
            evaluation = current_evaluation(graph, context.instance, key)
            if evaluation is None:
                message = f"{asset} was never written: launch the {job_name(graph, key)} job"
                return AssetCheckResult(passed=False, severity=AssetCheckSeverity.WARN, metadata={"message": message})
            return AssetCheckResult(
                passed=evaluation.passed,
                severity=evaluation.severity,
                description=evaluation.description,
                metadata=evaluation.metadata,
            )

        return current

    @sensor(
        name=CURRENT_SENSOR,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,  # reads a few event-log records; launches nothing
        description=f"Judges whether {', '.join(assets)} (external, written by a job launched on purpose) is stale and "
        "reports the verdict as its <asset>_current check whenever it changes.",
    )
    def judge(context):
        graph = asset_graph()
        told = json.loads(context.cursor) if context.cursor else {}
        events = []
        for asset in assets:
            evaluation = current_evaluation(graph, context.instance, AssetKey(asset))
            if evaluation is None:  # never written: the UI says so itself
                told.pop(asset, None)
                continue
            verdict = [evaluation.target_materialization_data.storage_id, evaluation.passed, evaluation.description]
            if told.get(asset) != verdict:
                events.append(evaluation)
                told[asset] = verdict
        cursor = json.dumps(told, sort_keys=True)
        if not events:
            return SensorResult(skip_reason="no verdict changed", cursor=cursor)
        return SensorResult(asset_events=events, cursor=cursor)

    return [check_of(asset) for asset in assets], judge
