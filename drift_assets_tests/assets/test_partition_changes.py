"""A changed set of partitions (fewer shards, a warm-up step removed), tables damaged under their log
and saved checkpoints deleted, through the command line as a user runs it (reliability probe of
2026-12-05: N42, N43, N44, N50)."""

import logging
import math
import shutil
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance
from deltalake import DeltaTable

from drift_assets.cli import main
from drift_assets.core.data.stored import REPAIR_DUPLICATES
from drift_assets.resources import Warehouse
from drift_assets_tests.conftest import settings_in

GRADIENTS = "training_gradient_projections"
UP_TO_DATE = "materialized nothing (everything was up to date)"


def materialize(settings, capsys, *flags: str) -> tuple[int, str, str]:
    """``drift-assets materialize`` on ``settings``' file, in this process: (exit status, stdout, stderr)."""
    status = main(["materialize", "--settings", str(Path(settings.base_dir) / "settings.yaml"), *flags])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def home(monkeypatch):
    """Points DAGSTER_HOME at a directory (as a user's shell does), writing its dagster.yaml."""

    def at(directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / "dagster.yaml").exists():
            (directory / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        monkeypatch.setenv("DAGSTER_HOME", str(directory))
        return directory

    return at


def one_row_per_pool_example(settings) -> pl.DataFrame:
    """The refined dataset, after asserting that it and influence_scores hold each pool example once."""
    warehouse = Warehouse.from_settings(settings)
    pool = sorted(warehouse.scan("training_pool").collect()["example_id"])
    for name in ("influence_scores", "refined_dataset"):
        assert sorted(warehouse.scan(name).collect()["example_id"]) == pool, name
    return warehouse.scan("refined_dataset").collect()


def delete_a_gradient_file(settings) -> Path:
    """Deletes a data file of the gradient table's current version (not one an earlier version replaced)."""
    live = DeltaTable(Warehouse.from_settings(settings).table_uri(GRADIENTS)).file_uris()
    gone = Path(sorted(uri for uri in live if "/shard=000/" in uri)[0])
    gone.unlink()
    return gone


def test_44_50_fewer_shards_and_a_missing_data_file_through_the_cli(private_materialized, home, capsys, caplog):
    """projection.shards 3 → 2 on a materialized warehouse: each pool example is scored once and the
    configured share is selected; then a gradient data file is deleted under an intact log (N50); then
    an influence_scores table with duplicates (what 7fedcc0 committed) is refused with advice that works."""
    caplog.set_level(logging.INFO, logger="drift_assets.runner")
    home(private_materialized / "dagster_home")
    # Without test queries the graph has no evaluation assets: this test is about the tables.
    settings = settings_in(private_materialized, projection={"shards": 2}, data={"test_queries": None})
    warehouse = Warehouse.from_settings(settings)
    status, out, err = materialize(settings, capsys)
    assert status == 0, err[-3000:]
    refined = one_row_per_pool_example(settings)
    assert refined.filter("selected").height == math.ceil(0.5 * refined.height)
    export = Path(settings.resolve(settings.selection.export_dir)) / "refined_dataset.jsonl"
    assert len(export.read_text().splitlines()) == math.ceil(0.5 * refined.height)
    assert warehouse.partitions_held(GRADIENTS) == {("base", "000"), ("base", "001")}
    assert any(m.startswith(f"{GRADIENTS}: deleted the ") and m.endswith("(base|002)") for m in caplog.messages)
    assert f"influence_scores         {refined.height} scored" in out
    assert UP_TO_DATE in materialize(settings, capsys)[1]

    # N50: one data file gone, the log intact.
    gone = delete_a_gradient_file(settings)
    status, out, err = materialize(settings, capsys)
    assert status == 0, err[-3000:]
    assert any(f"names data files that are gone: {gone}" in m and "; moved to " in m for m in caplog.messages)
    assert len(list(Path(warehouse.table_uri(GRADIENTS)).parent.glob(f"{GRADIENTS}.damaged-*"))) == 1
    one_row_per_pool_example(settings)

    # influence_scores with duplicates, as an earlier release committed it: refused, with the repair to run.
    scores = warehouse.scan("influence_scores").collect()
    warehouse.write("influence_scores", pl.concat([scores, scores.head(7)]))
    settings = settings_in(
        private_materialized, projection={"shards": 2}, data={"test_queries": None}, selection={"fraction": 0.3}
    )
    status, out, err = materialize(settings, capsys)
    assert status == 1
    assert "influence_scores should hold one row per pool example" in err and REPAIR_DUPLICATES in err
    # Following the advice (with a data file gone again: --all repairs that too).
    delete_a_gradient_file(settings)
    status, out, err = materialize(settings, capsys, "--all")
    assert status == 0, err[-3000:]
    refined = one_row_per_pool_example(settings)
    assert refined.filter("selected").height == math.ceil(0.3 * refined.height)
    assert len(export.read_text().splitlines()) == math.ceil(0.3 * refined.height)


def test_42_43_a_warm_up_step_removed_then_its_checkpoints_deleted_through_the_cli(demo_dir, tmp_path, home, capsys, caplog):
    """warmup.steps [2, 4] → [2]: only the configured checkpoints are summarized and kept in the tables,
    the unused checkpoint directory is reported; then the checkpoint directory is deleted (N43): a
    plain materialize trains the warm-up run again."""
    caplog.set_level(logging.INFO, logger="drift_assets.runner")
    (tmp_path / "demo").mkdir()
    shutil.copytree(demo_dir / "demo" / "model", tmp_path / "demo" / "model")
    for name, rows in (("training_pool.jsonl", 120), ("validation_queries.jsonl", 8)):
        lines = (demo_dir / "demo" / name).read_text().splitlines(keepends=True)[:rows]
        (tmp_path / "demo" / name).write_text("".join(lines))
    home(tmp_path / "home")
    groups = dict(
        demo={"enabled": False},
        data={"test_queries": None},
        # The transformers engine: this test is about the checkpoints, not about vLLM.
        rollout={"backend": "transformers", "samples_per_query": 4},
        projection={"shards": 2},
        benchmark={"sft": {"steps": 4, "batch_size": 8}},
    )
    settings = settings_in(tmp_path, warmup={"steps": [2, 4]}, **groups)
    status, out, err = materialize(settings, capsys)
    assert status == 0, err[-3000:]
    warehouse = Warehouse.from_settings(settings)
    [removed] = warehouse.scan("warmup_checkpoints").filter(pl.col("step") == 4).collect()["path"]

    settings = settings_in(tmp_path, warmup={"steps": [2]}, **groups)
    status, out, err = materialize(settings, capsys)
    assert status == 0, err[-3000:]
    [summary] = [line for line in out.splitlines() if line.startswith("warm-up checkpoints")]
    assert summary.startswith("warm-up checkpoints      pass@1 2 steps ") and "4 steps" not in summary
    with DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(AssetKey("influence_scores"))
    table = event.asset_materialization.metadata["checkpoints"].value
    assert [line.split(" | ")[0].strip("| ") for line in table.splitlines()[2:]] == ["base", "000002"]
    for name in ("rollouts", "grades", "projection_basis", "validation_gradients", GRADIENTS, "warmup_checkpoints"):
        assert sorted(warehouse.scan(name).collect()["checkpoint"].unique()) == (
            ["000002"] if name == "warmup_checkpoints" else ["000002", "base"]
        ), name
    assert (
        f"warmup_checkpoints: {removed} holds a checkpoint no longer configured: delete it to free the space" in caplog.messages
    )
    assert Path(removed).is_dir()  # reported, not deleted: another warehouse may use it

    # N43: the checkpoint directory deleted.
    [kept] = warehouse.scan("warmup_checkpoints").collect()["path"]
    shutil.rmtree(tmp_path / "checkpoints")
    status, out, err = materialize(settings, capsys)
    assert status == 0, err[-3000:]
    assert f"warmup_checkpoints[000002]: {kept} is gone; training the warm-up run again" in caplog.messages
    assert Path(kept).is_dir()
    settings = settings_in(
        tmp_path,
        warmup={"steps": [2]},
        projection={"shards": 2, "rank": 8},
        **{k: v for k, v in groups.items() if k != "projection"},
    )
    status, out, err = materialize(settings, capsys)
    assert status == 0, err[-3000:]
    assert UP_TO_DATE in materialize(settings, capsys)[1]


# What held on 7fedcc0 and must still hold: staleness follows content, not paths (N13, N18, N19, N31).

IGNORED = {"demo_task_files", "demo_base_model", "method_benchmark"}  # not part of the refresh


@pytest.fixture
def refresh(private_materialized):
    """A materialized workspace of its own without its demo assets (``configure``: other settings),
    and the Dagster instance its runs are recorded in."""
    from drift_assets.definitions import build_definitions
    from drift_assets_tests.conftest import instance_in

    def configure(**groups):
        settings = settings_in(private_materialized, demo={"enabled": False}, **groups)
        return settings, build_definitions(settings)

    with instance_in(private_materialized) as instance:
        yield private_materialized, configure, instance


def stale_closure(defs, instance) -> set[str]:
    from drift_assets.runner import observe_sources
    from drift_assets.staleness import needs_materialization

    observe_sources(defs, instance)
    return needs_materialization(defs, instance) - IGNORED


def test_18_19_an_identical_model_elsewhere_recomputes_nothing_another_with_its_config_everything(refresh):
    from drift_assets.runner import materialize_assets
    from drift_assets_tests.helpers.demo_graph import MODEL_DEPENDENTS
    from drift_assets_tests.helpers.materialized import latest_metadata

    directory, configure, instance = refresh
    assert stale_closure(configure()[1], instance) == set()
    shutil.copytree(directory / "demo" / "model", directory / "elsewhere" / "model")
    assert stale_closure(configure(model={"path": "elsewhere/model"})[1], instance) == set()  # N19

    # N18: the same config and tokenizer, other MLP weights.
    from safetensors.torch import load_file, save_file

    weights_path = directory / "elsewhere" / "model" / "model.safetensors"
    weights = load_file(weights_path)
    for name in [name for name in weights if ".mlp." in name]:
        weights[name] = weights[name] * 1.01
    save_file(weights, weights_path, metadata={"format": "pt"})
    settings, defs = configure(model={"path": "elsewhere/model"})
    assert MODEL_DEPENDENTS <= stale_closure(defs, instance)
    materialize_assets(defs, instance, [AssetKey("projection_basis")], partition_key="base")
    materialize_assets(defs, instance, [AssetKey(GRADIENTS)], partition_key="base|000")
    metadata = latest_metadata(instance, GRADIENTS)
    assert metadata["rows_reused"] == 0 and metadata["rows_computed"] > 0


def test_31_a_symlinked_pool_retargeted_makes_the_pool_and_everything_after_it_stale(refresh):
    directory, configure, instance = refresh
    pool = directory / "demo" / "training_pool.jsonl"
    lines = pool.read_text().splitlines(keepends=True)
    pool.rename(directory / "demo" / "pool_a.jsonl")
    (directory / "demo" / "pool_b.jsonl").write_text("".join(lines[:100]))
    pool.symlink_to("pool_a.jsonl")
    defs = configure()[1]
    assert stale_closure(defs, instance) == set()  # the same content through a link
    pool.unlink()
    pool.symlink_to("pool_b.jsonl")
    assert {"training_pool", "influence_scores", "refined_dataset", "refined_dataset_export"} <= stale_closure(defs, instance)


def test_13_a_row_edited_in_place_recomputes_that_examples_gradient_only_and_leaves_no_trace_of_it(refresh):
    import json

    from drift_assets.runner import materialize_pipeline

    directory, configure, instance = refresh
    settings, defs = configure(data={"test_queries": None})
    warehouse = Warehouse.from_settings(settings)
    before = set(warehouse.scan("training_pool").collect()["example_id"])
    pool = directory / "demo" / "training_pool.jsonl"
    lines = pool.read_text().splitlines(keepends=True)
    row = json.loads(lines[4])
    lines[4] = json.dumps({**row, "response": row["response"] + " (edited)"}) + "\n"
    pool.write_text("".join(lines))
    done = materialize_pipeline(defs, instance, include_demo=False, only_stale=True, warehouse=warehouse)
    assert not any(name.startswith(("rollouts", "grades", "validation_gradients", "projection_basis")) for name in done)
    after = set(warehouse.scan("training_pool").collect()["example_id"])
    [old], [new] = before - after, after - before
    computed = [
        record.asset_materialization.metadata["rows_computed"].value
        for record in instance.fetch_materializations(AssetKey(GRADIENTS), limit=3).records
    ]
    assert sorted(computed) == [0, 0, 1]
    for name in (GRADIENTS, "influence_scores", "refined_dataset"):
        ids = set(warehouse.scan(name).collect()["example_id"])
        assert old not in ids and new in ids, name
    export = Path(settings.resolve(settings.selection.export_dir))
    for path in export.glob("refined_dataset.*"):
        assert old.encode() not in path.read_bytes()


def test_36_a_run_stopped_and_terminated_at_the_influence_scores_commit_leaves_it_whole(private_materialized, home, capsys):
    """SIGSTOP as soon as a new data file of influence_scores appears, then SIGTERM and SIGCONT: the
    table is the previous one or the new one, whole, and the rerun recomputes nothing before it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    home(private_materialized / "dagster_home")
    settings = settings_in(private_materialized, data={"test_queries": None}, influence={"weighting": "signed"})
    warehouse = Warehouse.from_settings(settings)
    before = warehouse.scan("influence_scores").collect().sort("example_id")
    table = Path(warehouse.table_uri("influence_scores"))
    files = set(table.glob("*.parquet"))

    def upstream_writes() -> int:
        with DagsterInstance.get() as instance:
            return sum(
                len(instance.fetch_materializations(AssetKey(name), limit=100).records) for name in ("rollouts", GRADIENTS)
            )

    written = upstream_writes()
    command = [sys.executable, "-m", "drift_assets", "materialize", "--settings", str(Path(settings.base_dir) / "settings.yaml")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not set(table.glob("*.parquet")) - files and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before writing influence_scores"
    process.send_signal(signal.SIGSTOP)
    process.send_signal(signal.SIGTERM)
    os.kill(process.pid, signal.SIGCONT)
    process.wait(timeout=60)
    # The previous table or the new one, whole: it reads, one row per pool example.
    assert sorted(warehouse.scan("influence_scores").collect()["example_id"]) == before["example_id"].to_list()
    status, out, err = materialize(settings, capsys)
    assert status == 0, err[-3000:]
    one_row_per_pool_example(settings)
    assert upstream_writes() == written
