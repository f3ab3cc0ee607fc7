"""What a user sees of the method benchmark and of a pass in shards (issue 42), on a copy of the
session's materialized workspace with the benchmark run once (one method, one seed, a few steps):
the benchmark is reported stale when a setting it reads changes or an input it read gets a new
data version, its cause naming the setting with its old and new values, and its page links to the
job that writes it; the training gradients' shards each print a line for the whole pass."""

from __future__ import annotations

import json
import logging
import re
import shutil

import pytest
from dagster import AssetKey

from drift_assets.code_location import graphql
from drift_assets.definitions import build_definitions
from drift_assets.resources import Warehouse
from drift_assets.runner import materialize_assets, observe_sources, partition_keys, run_method_benchmark
from drift_assets.staleness import asset_statuses, stale_causes
from drift_assets.tasks.demo_task import training_pool_rows
from drift_assets_tests.conftest import instance_in, settings_in
from drift_assets_tests.helpers.current_check import shown_check, tick
from drift_assets_tests.helpers.study_graph import study_graph

# The benchmark at its cheapest: one method, one seed, a few SFT steps.
CHEAP_BENCHMARK = {"benchmark": {"methods": ["random"], "seeds": [0], "sft": {"steps": 4, "batch_size": 8}}}
JOB_PATH = "/locations/drift_assets/jobs/method_benchmark"
ASSET_PAGE = """
query Page($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    description
    metadataEntries { label ... on UrlMetadataEntry { url } }
  }
}
"""


@pytest.fixture(scope="module")
def benchmarked(materialized, tmp_path_factory):
    """A copy of the materialized workspace whose method benchmark was run (nothing else changed)."""
    directory = tmp_path_factory.mktemp("benchmarked") / "workspace"
    shutil.copytree(materialized, directory)
    defs = build_definitions(settings_in(directory, **CHEAP_BENCHMARK))
    with instance_in(directory) as instance:
        assert asset_statuses(defs, instance)["method_benchmark"] == "MISSING"
        run_method_benchmark(defs, instance)
        yield directory, defs, instance


def test_the_method_benchmark_shows_stale_naming_the_setting_that_changed_and_links_its_job(benchmarked):
    directory, defs, instance = benchmarked
    assert asset_statuses(defs, instance)["method_benchmark"] == "FRESH"
    assert "method_benchmark" not in stale_causes(defs, instance)
    changed = build_definitions(settings_in(directory, **CHEAP_BENCHMARK, selection={"fraction": 0.3}))
    assert asset_statuses(changed, instance)["method_benchmark"] == "STALE"
    assert stale_causes(changed, instance)["method_benchmark"] == ["settings changed: selection.fraction: 0.5 → 0.3"]
    # Still kept out of "Materialize all": the UI's page shows it with a link to the job that writes it.
    assert AssetKey("method_benchmark") not in changed.resolve_asset_graph().executable_asset_keys
    [page] = graphql(changed, instance, ASSET_PAGE, {"keys": [{"path": ["method_benchmark"]}]})["assetNodes"]
    assert {"label": "job", "url": JOB_PATH} in page["metadataEntries"]
    assert f"]({JOB_PATH})" in page["description"]
    # Back to the settings it was run with: fresh.
    assert asset_statuses(defs, instance)["method_benchmark"] == "FRESH"


def test_the_ui_shows_the_method_benchmark_stale_as_its_failed_current_check_and_current_once_the_settings_are_back(benchmarked):
    """The sensor's ticks over the real definitions (the settings the benchmark ran with, a changed
    setting, the first again), each verdict read back as the asset page's Checks tab shows it."""
    directory, defs, instance = benchmarked
    changed = build_definitions(settings_in(directory, **CHEAP_BENCHMARK, selection={"fraction": 0.3}))
    events, cursor = tick(defs, instance)
    assert [event.passed for event in events] == [True]
    assert shown_check(defs, instance, "method_benchmark", "method_benchmark_current")["latest"]["status"] == "SUCCEEDED"
    events, cursor = tick(changed, instance, cursor)
    assert [event.passed for event in events] == [False]
    stale = shown_check(changed, instance, "method_benchmark", "method_benchmark_current")["latest"]
    assert (stale["status"], stale["severity"]) == ("FAILED", "WARN")
    assert stale["metadata"]["causes"] == "- settings changed: selection.fraction: 0.5 → 0.3"
    assert stale["metadata"]["job"] == JOB_PATH
    assert "Launch the method_benchmark job" in stale["description"]
    events, _ = tick(defs, instance, cursor)
    assert [event.passed for event in events] == [True]
    assert shown_check(defs, instance, "method_benchmark", "method_benchmark_current")["latest"]["status"] == "SUCCEEDED"


def test_an_input_with_new_data_makes_the_method_benchmark_stale_and_every_shard_tells_the_pass(benchmarked, caplog):
    """New pool rows, observed and materialized: the pool has a new data version, so the benchmark
    (which read the old one) is stale; then each shard's run at the base model (most rows reused)
    prints one line for the whole pass."""
    from drift_assets.runner import materialize_shards

    directory, defs, instance = benchmarked
    settings = settings_in(directory, **CHEAP_BENCHMARK)
    warehouse = Warehouse.from_settings(settings)
    before = warehouse.scan("training_pool").collect().height
    with open(settings.resolve(settings.data.training_pool), "a") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in training_pool_rows(12, 0.0, 0.0, seed=99))
    observe_sources(defs, instance)
    materialize_assets(defs, instance, [AssetKey("training_pool"), AssetKey("training_pool_rejects")])
    pool = warehouse.scan("training_pool").collect().height
    assert pool > before
    assert stale_causes(defs, instance)["method_benchmark"] == ["has a new dependency data version (training_pool)"]

    caplog.set_level(logging.INFO, logger="drift_assets.runner")
    shards = [
        key for key in partition_keys(defs, "training_gradient_projections") if key.keys_by_dimension["checkpoint"] == "base"
    ]
    assert len(shards) == 3
    materialize_shards(defs, instance, "training_gradient_projections", "base", shards)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("checkpoint base training gradients: ")]
    assert len(lines) == 3, lines
    for done, (key, line) in enumerate(zip(shards, lines, strict=True), start=1):
        assert line.startswith(f"checkpoint base training gradients: {done}/3 shards, ")
        assert f" shard {key.keys_by_dimension['shard']}: " in line
    assert "ETA" in lines[0] and ", done, " in lines[-1]
    # The pool once over the pass: the new rows computed, the others reused.
    assert lines[-1].startswith(f"checkpoint base training gradients: 3/3 shards, {pool} examples ")
    computed = [int(m) for line in lines for m in re.findall(r"(\d+) computed", line)]
    assert sum(computed) == pool - before
    assert stale_causes(defs, instance)["method_benchmark"] == [
        *(f"has a new dependency data version (training_gradient_projections[{key}])" for key in shards),
        "has a new dependency data version (training_pool)",
    ]


def test_an_external_asset_its_job_writes_is_stale_by_the_rules_dagster_applies_to_the_others():
    from dagster import instance_for_test, materialize

    def status(defs, instance):
        return asset_statuses(defs, instance)["study"], stale_causes(defs, instance).get("study")

    with instance_for_test() as instance:
        defs = study_graph(0.5)
        materialize([defs.assets[0]], instance=instance)
        assert status(defs, instance) == ("MISSING", None)
        defs.resolve_job_def("study").execute_in_process(instance=instance)
        assert status(defs, instance) == ("FRESH", None)
        assert status(study_graph(0.3), instance) == ("STALE", ["settings changed: selection.fraction: 0.5 → 0.3"])
        # Materialized again with the same code and inputs, the upstream keeps its data version.
        materialize([defs.assets[0]], instance=instance)
        assert status(defs, instance) == ("FRESH", None)
        changed = study_graph(0.5, upstream_version="2")
        materialize([changed.assets[0]], instance=instance)
        assert status(changed, instance) == ("STALE", ["has a new dependency data version (upstream)"])
        changed.resolve_job_def("study").execute_in_process(instance=instance)
        assert status(changed, instance) == ("FRESH", None)


def test_a_table_written_before_its_inputs_versions_were_recorded_is_stale_once_an_input_is_materialized_after_it():
    from dagster import instance_for_test, materialize

    with instance_for_test() as instance:
        defs = study_graph(0.5, record_inputs=False)
        materialize([defs.assets[0]], instance=instance)
        defs.resolve_job_def("study").execute_in_process(instance=instance)
        assert asset_statuses(defs, instance)["study"] == "FRESH"
        materialize([defs.assets[0]], instance=instance)
        assert stale_causes(defs, instance)["study"] == ["has a new dependency materialization (upstream)"]
