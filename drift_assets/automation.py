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
"""

import logging

from dagster import AssetSelection, AutomationCondition, AutomationConditionSensorDefinition, define_asset_job
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.definitions.declarative_automation.automation_condition import AutomationResult

logger = logging.getLogger(__name__)

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
        from drift_assets.staleness import settings_cause

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


PIPELINE = AssetSelection.groups("inputs", "rollouts", "attribution", "refinement", "evaluation")
AT_CHECKPOINTS = AssetSelection.assets("rollouts", "grades", "projection_basis", "validation_gradients")
SHARDS = AssetSelection.assets("training_gradient_projections")
WARMUP = AssetSelection.assets("warmup_checkpoints")


def build_jobs(warmup: bool = False) -> list:
    """Jobs for the UI and schedules. A job holds assets of one partitioning only: the chain at each
    checkpoint, its training-gradient shards (checkpoint × shard) and the warm-up run (where
    ``warmup.steps`` is set) get jobs of their own; launch those as backfills."""
    partitioned = AT_CHECKPOINTS | SHARDS | WARMUP if warmup else AT_CHECKPOINTS | SHARDS
    warmup_jobs = (
        [
            define_asset_job(
                "warmup_run",
                selection=WARMUP,
                description="The warm-up SFT run; launch as a backfill over its checkpoints (one run trains once and saves each).",
            ),
        ]
        if warmup
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
            selection=PIPELINE - partitioned,
            description="Inputs, scores, refined dataset and evaluation.",
        ),
        define_asset_job(
            "rollouts_and_gradients",
            selection=AT_CHECKPOINTS,
            description="Rollouts, grades, projection basis and validation gradients at a checkpoint; launch as a backfill "
            "over the checkpoints (base, then the warm-up steps).",
        ),
        *warmup_jobs,
        define_asset_job(
            "training_gradients",
            selection=SHARDS,
            description="Training-gradient shards; launch as a backfill over all partitions (one run per checkpoint and shard).",
        ),
        define_asset_job(
            "attribution_only",
            selection=AssetSelection.assets("influence_scores", "refined_dataset", "refined_dataset_export"),
            description="Re-score and re-select from the stored gradients (after changing weighting, Hessian, debias or selection).",
        ),
    ]


_REFRESHED_GROUPS = {"inputs", "rollouts", "attribution", "refinement", "evaluation"}


def with_automation(definition):
    """Pipeline assets refresh; demo and benchmark stay manual (sources carry their observe condition)."""
    from dagster import AssetChecksDefinition, AssetsDefinition

    if isinstance(definition, AssetChecksDefinition) or not isinstance(definition, AssetsDefinition):
        return definition
    groups = set(definition.group_names_by_key.values())
    if groups <= _REFRESHED_GROUPS:
        return definition.map_asset_specs(lambda spec: spec.replace_attributes(automation_condition=refresh_condition()))
    return definition
