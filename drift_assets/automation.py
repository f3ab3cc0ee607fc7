"""Recurring refresh and jobs.

The refresh is declarative: on a cron tick the sources are observed (content hashes of the input
files and the model directory), and an asset is requested only when it is missing, its code
version (implementation + the settings it reads) changed, or a dependency's *data version*
changed. ``AutomationCondition.eager()`` is not used: it re-runs on any upstream materialization
even when the data did not change (dagster#25439), which would re-run GPU steps for nothing.
"""

from dagster import AssetSelection, AutomationCondition, define_asset_job

REFRESH_CRON = "0 3 * * *"  # nightly; change here or override per deployment


def observe_condition(cron: str = REFRESH_CRON) -> AutomationCondition:
    return AutomationCondition.cron_tick_passed(cron).with_label(f"observe on '{cron}'")


def refresh_condition() -> AutomationCondition:
    changed = (
        AutomationCondition.missing()
        | AutomationCondition.code_version_changed()
        | AutomationCondition.any_deps_match(AutomationCondition.data_version_changed())
    )
    return (
        changed
        # A table whose blocking check failed is not passed on to the assets that read it.
        & AutomationCondition.all_deps_blocking_checks_passed()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("refresh what is missing or whose inputs, settings or code changed, once its inputs passed their checks")


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
