"""Staleness that follows settings and data, and the recurring refresh, judged by Dagster itself."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, evaluate_automation_conditions, instance_for_test

from drift_assets.cli import main
from drift_assets.definitions import build_definitions
from drift_assets.resources import Warehouse
from drift_assets.runner import PROCESS_TAG, fail_abandoned_runs, materialize_pipeline, observe_sources
from drift_assets.staleness import asset_statuses, damaged_tables, needs_materialization
from drift_assets.tasks.demo_task import training_pool_rows
from drift_assets_tests.conftest import instance_in, settings_in, shared_settings
from drift_assets_tests.helpers.demo_graph import MODEL_DEPENDENTS
from drift_assets_tests.helpers.processes import running, vllm_engines_under


def requested(result, defs) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys() if result.get_requested_partitions(k)}


def not_fresh(defs, instance) -> dict[str, str]:
    ignored = {"demo_task_files", "demo_base_model", "method_benchmark"}  # not part of the refresh
    return {k: v for k, v in asset_statuses(defs, instance).items() if v != "FRESH" and k not in ignored}


@pytest.fixture(scope="module")
def refreshed(materialized):
    """The session's materialized workspace, read-only."""
    with instance_in(materialized) as instance:
        yield materialized, instance


def test_nothing_is_stale_after_a_full_materialization(refreshed):
    directory, instance = refreshed
    assert not_fresh(build_definitions(shared_settings(directory)), instance) == {}


def test_selection_settings_make_only_the_refined_dataset_and_its_dependents_stale(refreshed):
    directory, instance = refreshed
    defs = build_definitions(shared_settings(directory, selection={"fraction": 0.3}))
    # The export's dataset card names the settings that shaped the selection: it is stale itself.
    assert not_fresh(defs, instance) == {"refined_dataset": "STALE", "refined_dataset_export": "STALE"}
    assert needs_materialization(defs, instance) - {"demo_task_files", "demo_base_model", "method_benchmark"} == {
        "refined_dataset",
        "refined_dataset_export",
        "refined_model_evaluation",
    }


def test_weighting_makes_scores_stale_not_gradients_or_rollouts(refreshed):
    directory, instance = refreshed
    defs = build_definitions(shared_settings(directory, influence={"weighting": "advantage"}))
    assert not_fresh(defs, instance) == {"influence_scores": "STALE", "refined_dataset_export": "STALE"}
    closure = needs_materialization(defs, instance)
    assert {"influence_scores", "refined_dataset", "refined_model_evaluation"} <= closure
    assert not closure & {
        "rollouts[base]",
        "validation_gradients[base]",
        "grades[base]",
        "training_gradient_projections[base|000]",
    }


def test_rollout_settings_make_rollouts_and_everything_after_them_stale(refreshed):
    directory, instance = refreshed
    defs = build_definitions(shared_settings(directory, rollout={"temperature": 0.7}))
    assert not_fresh(defs, instance) == {"rollouts[base]": "STALE", "refined_dataset_export": "STALE"}
    closure = needs_materialization(defs, instance)
    assert {"grades[base]", "validation_gradients[base]", "influence_scores"} <= closure
    # The projection basis is fitted on the references, so the training gradients stay valid.
    assert not closure & {"projection_basis[base]", "training_gradient_projections[base|000]"}


def test_a_deleted_or_damaged_table_is_found_before_up_to_date_and_rebuilt(private_refresh):
    """Dagster's event log still calls such tables fresh; the runner looks at the tables themselves."""
    settings, defs, instance = private_refresh
    warehouse = Warehouse.from_settings(settings)
    scores = warehouse.scan("influence_scores").collect().sort("example_id")
    shutil.rmtree(warehouse.table_uri("grades"))
    log = sorted(Path(warehouse.table_uri("influence_scores"), "_delta_log").glob("*.json"))[-1]
    log.write_text("garbage")
    assert not_fresh(defs, instance) == {}  # what the event log alone says
    damaged = damaged_tables(defs, instance, warehouse)
    assert damaged == {
        "grades": f"its table {warehouse.table_uri('grades')} is missing",
        "influence_scores": damaged["influence_scores"],
    }
    assert damaged["influence_scores"].startswith(f"its table {warehouse.table_uri('influence_scores')} cannot be read (")
    done = materialize_pipeline(defs, instance, include_demo=False, only_stale=True, warehouse=warehouse)
    assert {"grades[base]", "influence_scores", "refined_dataset"} <= set(done) and "rollouts[base]" not in done
    assert damaged_tables(defs, instance, warehouse) == {} and not_fresh(defs, instance) == {}
    assert warehouse.scan("influence_scores").collect().sort("example_id").equals(scores)
    assert len(list(Path(warehouse.table_uri("influence_scores")).parent.glob("influence_scores.damaged-*"))) == 1


def test_a_table_an_earlier_release_laid_out_otherwise_is_set_aside_and_rebuilt(tmp_path):
    """warmup_checkpoints had a checkpoint column and no partitions before: Delta cannot write one partition into it."""
    import polars as pl
    from dagster import Definitions, StaticPartitionsDefinition, asset, in_process_executor

    from drift_assets.runner import WARMUP, materialize_assets, repair_damaged_tables
    from drift_assets.settings import parse_settings
    from drift_assets.terminal import terminal_logger

    warehouse = Warehouse.from_settings(parse_settings({"warehouse": {"root": "wh"}}, "settings.yaml", tmp_path))

    @asset(name=WARMUP, kinds={"delta"})
    def before() -> pl.DataFrame:
        return pl.DataFrame({"checkpoint": ["000050", "000150"], "release": ["before"] * 2})

    @asset(
        name=WARMUP,
        kinds={"delta"},
        partitions_def=StaticPartitionsDefinition(["000050", "000150"]),
        metadata={"partition_expr": "checkpoint"},
    )
    def after(context) -> pl.DataFrame:
        return pl.DataFrame({"checkpoint": [context.partition_key], "release": ["after"]})

    with instance_for_test() as instance:
        resources = {"io_manager": warehouse.io_manager()}
        # as the code location has them
        loggers, executor = {"console": terminal_logger}, in_process_executor
        materialize_assets(
            Definitions(assets=[before], resources=resources, loggers=loggers, executor=executor), instance, [AssetKey(WARMUP)]
        )
        defs = Definitions(assets=[after], resources=resources, loggers=loggers, executor=executor)
        with pytest.raises(Exception, match="partitioning does not match"):  # what a user got
            materialize_assets(defs, instance, [AssetKey(WARMUP)], partition_key="000050")
        assert repair_damaged_tables(defs, instance, warehouse) == {"warmup_checkpoints"}
        materialize_assets(defs, instance, [AssetKey(WARMUP)], partition_key="000050")
        assert warehouse.scan("warmup_checkpoints").collect()["release"].to_list() == ["after"]
        (kept,) = Path(warehouse.table_uri("warmup_checkpoints")).parent.glob("warmup_checkpoints.previous-layout-*")
        assert pl.read_delta(str(kept))["release"].to_list() == ["before"] * 2  # nothing of the user's is lost
        assert repair_damaged_tables(defs, instance, warehouse) == set()


def test_a_run_left_started_by_a_killed_process_is_marked_failed():
    from dagster import DagsterRunStatus
    from dagster._core.storage.dagster_run import DagsterRun

    with instance_for_test() as instance:
        alive, killed = (
            DagsterRun(
                job_name="__ASSET_JOB",
                run_id=run_id,
                status=DagsterRunStatus.STARTED,
                tags={PROCESS_TAG: f"{socket.gethostname()}:{pid}"},
            )
            for run_id, pid in (("a" * 8, os.getpid()), ("b" * 8, dead_pid()))
        )
        instance.add_run(alive)
        instance.add_run(killed)
        assert fail_abandoned_runs(instance) == [killed.run_id]
        assert instance.get_run_by_id(killed.run_id).status == DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(alive.run_id).status == DagsterRunStatus.STARTED
        assert fail_abandoned_runs(instance) == []


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_failing_materialization_ends_with_the_cause_naming_the_file(demo_dir, tmp_path, capsys, monkeypatch):
    shutil.copytree(demo_dir / "demo" / "model", tmp_path / "demo" / "model")
    (tmp_path / "demo" / "training_pool.jsonl").write_text('{"prompt": "p"}\n' * 3)
    shutil.copy(demo_dir / "demo" / "validation_queries.jsonl", tmp_path / "demo" / "validation_queries.jsonl")
    settings_in(tmp_path, rollout={"backend": "transformers"}, demo={"enabled": False}, data={"test_queries": None})
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["materialize", "--settings", str(tmp_path / "settings.yaml")]) == 1
    error = capsys.readouterr().err
    paragraph = error[error.index("error: the materialization failed.") :]
    assert paragraph.splitlines()[1] == (
        f"  InputFileError: {tmp_path / 'demo' / 'training_pool.jsonl'}: no usable examples (3 rows "
        "quarantined: 3× no 'messages' field and no 'prompt' + 'response' fields); see the "
        "training_pool_rejects table"
    )
    assert "(--verbose adds the stack traces and Dagster's DEBUG events)" in paragraph
    assert "Stack Trace" not in error and "Traceback" not in error and " - DEBUG - " not in error  # the cause is not buried


def test_47_a_failed_checks_advice_reaches_the_terminal(demo_dir, tmp_path, capsys, monkeypatch):
    """One-token completions are all wrong: signed weighting with unsolved queries skipped has nothing to contrast."""
    shutil.copytree(demo_dir / "demo", tmp_path / "demo")
    settings_in(
        tmp_path,
        demo={"enabled": False},
        data={"test_queries": None},
        rollout={"backend": "transformers", "samples_per_query": 2, "max_tokens": 1},
        grading={"max_empty_or_truncated_fraction": 1.0},
        influence={"weighting": "signed", "unsolved": "skip"},
    )
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["materialize", "--settings", str(tmp_path / "settings.yaml")]) == 1
    error = capsys.readouterr().err
    lines = error[error.index("error: the materialization failed.") :].splitlines()
    assert lines[1].startswith(
        "  check grades_have_mixed_queries on grades failed: no query gives influence.weighting 'signed' "
        "(unsolved: skip) anything to contrast"
    )
    assert "Raise rollout.temperature or rollout.samples_per_query" in lines[1]


@pytest.mark.vllm
def test_runs_killed_during_rollouts_and_mid_shard_leave_no_process_and_the_next_run_completes(demo_dir, tmp_path):
    (tmp_path / "demo").mkdir()
    shutil.copytree(demo_dir / "demo" / "model", tmp_path / "demo" / "model")
    for name, rows in (("training_pool.jsonl", 120), ("validation_queries.jsonl", 8)):
        lines = (demo_dir / "demo" / name).read_text().splitlines(keepends=True)[:rows]
        (tmp_path / "demo" / name).write_text("".join(lines))
    # vLLM's engine in processes of its own, as on a GPU: what a killed run must not leave behind.
    settings = settings_in(
        tmp_path,
        demo={"enabled": False},
        data={"test_queries": None},
        rollout={"samples_per_query": 4, "engine_process": "separate"},
        projection={"shards": 2},
    )
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    environment = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "DRIFT_ASSETS_SETTINGS": str(tmp_path / "settings.yaml")}
    command = [sys.executable, "-m", "drift_assets", "materialize"]
    # 1. Killed mid-rollouts: vLLM's engine dies with it.
    first = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (engines := vllm_engines_under(first.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert engines, "the run never started a vLLM engine"
    time.sleep(2)  # mid-rollouts
    first.kill()
    first.wait()
    deadline = time.monotonic() + 30
    while [pid for pid in engines if running(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in engines if running(pid)], "vLLM's engine outlived the killed run"
    # 2. Killed in the second shard's step, the first shard committed (--verbose: the step's first
    # log line is at debug level).
    second = subprocess.Popen(
        [*command, "--verbose"], env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = []
    for line in second.stdout:
        output.append(line)
        if "shard 001:" in line and "computing" in line:  # the step's first log line
            second.kill()
            break
    second.wait()
    assert "had been left STARTED by a killed process: marked failed" in "".join(output)
    # 3. The next run marks it failed, recomputes only what is missing, and scores the whole pool.
    third = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "had been left STARTED by a killed process: marked failed" in third.stdout
    instance = DagsterInstance.from_config(str(tmp_path / "home"))
    statuses = [run.status.value for run in instance.get_runs()]
    shard_writes = {
        shard: len(
            instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey("training_gradient_projections"), asset_partitions=[f"base|{shard}"]),
                limit=10,
            ).records
        )
        for shard in ("000", "001")
    }
    instance.dispose()
    assert "STARTED" not in statuses and statuses.count("FAILURE") == 2
    assert shard_writes == {"000": 1, "001": 1}  # the committed shard was not recomputed
    pool = Warehouse.from_settings(settings).scan("training_pool").collect()
    scores = Warehouse.from_settings(settings).scan("influence_scores").collect()
    assert sorted(scores["example_id"]) == sorted(pool["example_id"]) and pool.height == 120


@pytest.fixture
def private_refresh(private_materialized):
    """A materialized workspace of its own, for tests that change inputs on disk or tables."""
    settings = settings_in(private_materialized)
    defs = build_definitions(settings)
    with instance_in(private_materialized) as instance:
        assert not_fresh(defs, instance) == {}
        yield settings, defs, instance


def test_new_pool_rows_make_the_pool_stale_and_not_rollouts_and_a_refresh_requests_it(private_refresh):
    settings, defs, instance = private_refresh
    # Nothing changed: the automation requests nothing.
    result = evaluate_automation_conditions(defs=defs, instance=instance)
    assert requested(result, defs) == set()
    new_rows = training_pool_rows(30, 0.0, 0.0, seed=99)
    with open(settings.resolve(settings.data.training_pool), "a") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in new_rows)
    observe_sources(defs, instance)  # what the cron tick does first
    assert not_fresh(defs, instance) == {"training_pool": "STALE", "training_pool_rejects": "STALE"}
    closure = needs_materialization(defs, instance)
    assert "rollouts[base]" not in closure and "grades[base]" not in closure
    assert {"influence_scores", "refined_dataset", "training_gradient_projections[base|000]"} <= closure
    result = evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert requested(result, defs) == {"training_pool", "training_pool_rejects"}
    # Materializing only the stale set brings everything back to fresh.
    done = materialize_pipeline(defs, instance, include_demo=False, only_stale=True)
    assert "rollouts[base]" not in done and "training_pool" in done
    assert not_fresh(defs, instance) == {}
    assert materialize_pipeline(defs, instance, include_demo=False, only_stale=True) == []


def test_a_new_model_makes_everything_that_uses_it_stale(private_refresh):
    settings, defs, instance = private_refresh
    config = settings.resolve("demo/model/config.json")
    data = json.loads(open(config).read())
    data["rms_norm_eps"] = data.get("rms_norm_eps", 1e-6) * 2  # another checkpoint, same shapes
    open(config, "w").write(json.dumps(data))
    observe_sources(defs, instance)
    closure = needs_materialization(defs, instance)
    assert MODEL_DEPENDENTS <= closure
    materialize_pipeline(defs, instance, include_demo=False, only_stale=True)
    assert not_fresh(defs, instance) == {}


def test_a_failed_run_leaves_the_previous_export_in_place(private_refresh):
    """The export is written only after refined_dataset's Delta commit (and its blocking check):
    here the commit fails on a corrupted transaction log, and the files users train on stay as they were."""
    settings, _, instance = private_refresh
    export_dir = Path(settings.resolve(settings.selection.export_dir))
    before = {path.name: path.read_bytes() for path in export_dir.iterdir()}
    assert set(before) == {"refined_dataset.jsonl", "refined_dataset.parquet", "unselected.jsonl", "unselected.parquet",
                           "README.md", ".drift-export.json"}  # fmt: skip
    log = sorted((Path(settings.warehouse_root) / "drift" / "refined_dataset" / "_delta_log").glob("*.json"))[-1]
    log.write_text("garbage")
    fewer = build_definitions(settings_in(Path(settings.base_dir), selection={"fraction": 0.3}))
    with pytest.raises(Exception):  # noqa: B017 - any failure will do: the test is about what it leaves behind
        materialize_pipeline(fewer, instance, include_demo=False, only_stale=True)
    assert {path.name: path.read_bytes() for path in export_dir.iterdir()} == before
