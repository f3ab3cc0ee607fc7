"""The code location as runs started from Python see it, and its GraphQL API served in this process.

A run started from Python (``make demo``, ``python -m drift_assets``, the tests and benchmarks) is
recorded as a run of the code location that workspace.yaml names, with the job snapshot the UI
loads from it: the UI puts it on the Overview timeline and re-executes it without a version
warning, as it does a run it launched itself. It still executes here, in the caller's process, so
the terminal shows its progress and the model is loaded once per run.

Dagster 1.13 has no public Python call that creates a run for a code location (its own CLI does it
with internal calls, as this module does); what the instance records is checked against the UI's
own GraphQL answers in the tests.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from dagster import AssetKey, DagsterInstance, Definitions, JobDefinition

# What workspace.yaml names (the tests hold the two together).
LOCATION_NAME = "drift_assets"
DEFINITIONS_MODULE = "drift_assets.definitions"


def job_path(job_name: str) -> str:
    """The UI's page of a job of this code location (relative to the webserver's root), where it is
    launched: a Definitions' single repository is named by its location alone."""
    return f"/locations/{LOCATION_NAME}/jobs/{job_name}"


def _job_origin(job_name: str):
    from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
    from dagster._core.remote_origin import ManagedGrpcPythonEnvCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
    from dagster._core.workspace.load_target import ModuleTarget

    [origin] = ModuleTarget(
        module_name=DEFINITIONS_MODULE, attribute=None, working_directory=os.getcwd(), location_name=LOCATION_NAME
    ).create_origins()
    assert isinstance(origin, ManagedGrpcPythonEnvCodeLocationOrigin)
    return RemoteJobOrigin(RemoteRepositoryOrigin(origin, SINGLETON_REPOSITORY_NAME), job_name)


def execute_run(
    job: JobDefinition,
    instance: DagsterInstance,
    *,
    run_config: Mapping[str, object],
    tags: Mapping[str, str],
    asset_selection: Sequence[AssetKey] | None = None,
    partition_key: str | None = None,
):
    """One run of ``job`` (of ``asset_selection``, of one partition), created as the code location's
    and executed in this process; returns Dagster's result and raises where a step fails."""
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.execution.api import execute_run as execute_existing_run
    from dagster._core.execution.execute_in_process import merge_run_tags

    tags = merge_run_tags(
        job_def=job,
        partition_key=partition_key,
        tags=tags,
        asset_selection=asset_selection,
        instance=instance,
        run_config=run_config,
    )
    run = instance.create_run_for_job(
        job_def=job,
        run_config=run_config,
        tags=tags,
        asset_selection=frozenset(asset_selection) if asset_selection else None,
        remote_job_origin=_job_origin(job.name),
    )
    return execute_existing_run(InMemoryJob(job), run, instance, raise_on_error=True)


# The definitions the in-process location serves: the module attribute its code pointer names.
served: Definitions | None = None


def graphql(defs: Definitions, instance: DagsterInstance, query: str, variables: Mapping[str, object] | None = None) -> dict:
    """Dagster's GraphQL API (the UI's) answering ``query`` about ``defs`` and ``instance``, served in
    this process; raises with the errors where there are any."""
    global served
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster_graphql.cli import execute_query

    served = defs
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name=__name__, attribute="served"),
        location_name=LOCATION_NAME,
    )
    try:
        with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context:
            result = execute_query(context, query, variables)
    finally:
        served = None
    if result.get("errors"):
        raise RuntimeError(f"Dagster's GraphQL API answered with errors: {result['errors']}")
    return result["data"]
