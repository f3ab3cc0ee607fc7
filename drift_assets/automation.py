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
SHARDS = AssetSelection.assets("training_gradient_projections")
CHECKPOINTS = AssetSelection.assets("checkpoint_gradients")


def build_jobs(trajectory: bool = False) -> list:
    """Jobs for the UI and schedules. Partitioned assets run one run per partition (a backfill).

    A job holds assets of one partitioning only, so the warm-up checkpoints' gradients (partitioned
    by checkpoint, built when ``warmup.steps`` is set) get a job of their own.
    """
    unsharded = PIPELINE - SHARDS - CHECKPOINTS if trajectory else PIPELINE - SHARDS
    checkpoint_jobs = (
        [
            define_asset_job(
                "warmup_checkpoint_gradients",
                selection=CHECKPOINTS,
                description="Rollouts and gradients at each warm-up checkpoint; launch as a backfill over all checkpoints.",
            ),
        ]
        if trajectory
        else []
    )
    return [
        define_asset_job(
            "observe_sources",
            selection=AssetSelection.groups("sources", include_sources=True),
            description="Record the content hash of every input file and of the model directory.",
        ),
        define_asset_job(
            "refresh_unsharded",
            selection=unsharded,
            description="Inputs, rollouts, grades, validation gradients, scores, refined dataset and evaluation.",
        ),
        *checkpoint_jobs,
        define_asset_job(
            "training_gradients",
            selection=SHARDS,
            description="Training-gradient shards; launch as a backfill over all partitions (one run per shard).",
        ),
        define_asset_job(
            "attribution_only",
            selection=AssetSelection.assets(
                "validation_gradients", "influence_scores", "refined_dataset", "refined_dataset_export"
            ),
            description="Re-score and re-select from existing rollouts (after changing weighting, Hessian, debias or selection).",
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
