"""Runs started from Python are runs of the code location the UI loads, judged by the UI's own rule.

The UI puts a run on the Overview timeline only when it has a repository origin, and re-executes it
without a warning only when that origin names a loaded location and the run's (parent) job snapshot
is the one that location serves. The oracle here is the location as ``dg dev``/``dagster dev`` load
it from workspace.yaml (a code server process of its own), asked through Dagster's GraphQL API.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster_graphql.cli import execute_query

from drift_assets.code_location import DEFINITIONS_MODULE, LOCATION_NAME
from drift_assets_tests.conftest import SMALL_DEMO, instance_in, write_settings

ROOT = Path(__file__).resolve().parents[2]

RUNS = """
{ runsOrError { ... on Runs { results {
    runId pipelineName pipelineSnapshotId parentPipelineSnapshotId
    repositoryOrigin { repositoryLocationName repositoryName }
} } } }
"""
JOBS = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name
    locationOrLoadError {
      ... on RepositoryLocation { repositories { name pipelines { name pipelineSnapshotId } } }
      ... on PythonError { message }
    }
} } } }
"""


def test_the_location_is_the_one_workspace_yaml_and_dg_name():
    origins = WorkspaceFileTarget(paths=[str(ROOT / "workspace.yaml")]).create_origins()
    assert [(o.location_name, o.loadable_target_origin.module_name) for o in origins] == [(LOCATION_NAME, DEFINITIONS_MODULE)]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dg"]["project"]
    assert (project["code_location_name"], project["code_location_target_module"]) == (LOCATION_NAME, DEFINITIONS_MODULE)


def test_runs_started_from_python_are_on_the_timeline_and_re_execute_without_a_warning(materialized, monkeypatch):
    # The code server reads the settings the runs were made with from its environment, as `make ui`
    # does, from a file in the same directory (a copy elsewhere would be another job: the warehouse's
    # absolute path is part of its snapshot).
    monkeypatch.setenv("DRIFT_ASSETS_SETTINGS", str(write_settings(materialized, SMALL_DEMO, name=None)))
    with (
        instance_in(materialized) as instance,
        WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(ROOT / "workspace.yaml")])) as context,
    ):
        runs = execute_query(context, RUNS)["data"]["runsOrError"]["results"]
        [entry] = execute_query(context, JOBS)["data"]["workspaceOrError"]["locationEntries"]
    [repository] = entry["locationOrLoadError"]["repositories"]
    served = {(job["name"], job["pipelineSnapshotId"]) for job in repository["pipelines"]}
    assert entry["name"] == LOCATION_NAME
    # observe_sources, the inputs, the chain at the base model, three shards, scores onward
    assert len(runs) >= 7 and {run["pipelineName"] for run in runs} == {"__ASSET_JOB", "observe_sources"}
    for run in runs:
        assert run["repositoryOrigin"] == {"repositoryLocationName": LOCATION_NAME, "repositoryName": repository["name"]}
        assert (run["pipelineName"], run["parentPipelineSnapshotId"] or run["pipelineSnapshotId"]) in served, run
