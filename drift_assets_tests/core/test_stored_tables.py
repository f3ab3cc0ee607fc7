"""The stored tables as they are configured now: real Delta tables written through the pipeline's IO
manager by small partitioned assets, and a real Dagster instance recording them.

A partitioned table keeps the partitions that are no longer configured (fewer ``projection.shards``,
a warm-up step removed): the reads must not see them, the runner deletes them, and a partition
deleted that way and configured again is materialized again.
"""

import logging
import shutil
from pathlib import Path

import polars as pl
import pytest
from dagster import (
    Definitions,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
    asset,
    instance_for_test,
    materialize,
)
from deltalake import DeltaTable

from drift_assets.cli import _summary
from drift_assets.core.data.stored import (
    REPAIR_DUPLICATES,
    ConfiguredTables,
    base_losses,
    one_row_per_example,
    shard_batches,
)
from drift_assets.core.gradients.tables import shard_keys, shard_of
from drift_assets.resources import Warehouse
from drift_assets.runner import WARMUP, prune_unconfigured_partitions, repair_damaged_tables
from drift_assets.settings import parse_settings
from drift_assets.staleness import needs_materialization

GRADIENTS = "training_gradient_projections"
POOL = [f"example-{index:03d}" for index in range(40)]


def loss_of(example_id: str) -> float:
    return float(POOL.index(example_id) + 1)


def gradients_asset(n_shards: int, checkpoints=("base",)):
    """training_gradient_projections as the pipeline lays it out: one partition per checkpoint and shard."""

    @asset(
        name=GRADIENTS,
        kinds={"delta"},
        partitions_def=MultiPartitionsDefinition(
            {
                "checkpoint": StaticPartitionsDefinition(list(checkpoints)),
                "shard": StaticPartitionsDefinition(shard_keys(n_shards)),
            }
        ),
        metadata={"partition_expr": {"checkpoint": "checkpoint", "shard": "shard"}},
    )
    def gradients(context) -> pl.DataFrame:
        keys = context.partition_key.keys_by_dimension
        ids = [example_id for example_id in POOL if shard_of(example_id, n_shards) == keys["shard"]]
        return pl.DataFrame(
            {
                "checkpoint": [keys["checkpoint"]] * len(ids),
                "shard": [keys["shard"]] * len(ids),
                "example_id": ids,
                "grad": [[loss_of(i), 1.0] for i in ids],
                "loss": [2 * loss_of(i) for i in ids],
                "n_tokens": [2] * len(ids),
                "model_fingerprint": ["model"] * len(ids),
                "projection_fingerprint": ["projection"] * len(ids),
            },
            schema_overrides={"grad": pl.List(pl.Float32)},
        )

    return gradients


def checkpoint_asset(name: str, checkpoints: list[str], rows=lambda checkpoint: [checkpoint]):
    """A table partitioned by checkpoint (rollouts, grades, …); ``rows``: a partition's example ids."""

    @asset(
        name=name,
        kinds={"delta"},
        partitions_def=StaticPartitionsDefinition(checkpoints),
        metadata={"partition_expr": "checkpoint"},
    )
    def table(context) -> pl.DataFrame:
        ids = rows(context.partition_key)
        return pl.DataFrame(
            {"checkpoint": [context.partition_key] * len(ids), "example_id": ids},
            schema={"checkpoint": pl.String, "example_id": pl.String},
        )

    return table


@pytest.fixture
def warehouse(tmp_path) -> Warehouse:
    return Warehouse.from_settings(parse_settings({"warehouse": {"root": "wh"}}, "settings.yaml", tmp_path))


@pytest.fixture
def instance():
    with instance_for_test() as test_instance:
        yield test_instance


def materialize_every_partition(assets_def, warehouse: Warehouse, instance) -> Definitions:
    for key in assets_def.partitions_def.get_partition_keys():
        materialize([assets_def], resources={"io_manager": warehouse.io_manager()}, instance=instance, partition_key=key)
    return Definitions(assets=[assets_def], resources={"io_manager": warehouse.io_manager()})


def test_44_after_fewer_shards_every_read_sees_each_example_once(warehouse, instance):
    """projection.shards 3 → 2: the shard partitions 000 and 001 are rewritten, 002 stays in the table."""
    materialize_every_partition(gradients_asset(3), warehouse, instance)
    materialize_every_partition(gradients_asset(2), warehouse, instance)
    assert warehouse.scan(GRADIENTS).filter(pl.col("shard") == "002").collect().height > 0  # what made duplicates
    tables = ConfiguredTables(warehouse, ("base",), 2)
    pool = pl.DataFrame({"example_id": POOL})

    losses = base_losses(tables, pool).sort("example_id")
    assert losses["example_id"].to_list() == POOL
    assert losses["loss_per_token"].to_list() == [loss_of(i) for i in POOL]  # 2·loss over 2 tokens
    streamed = [
        (example_id, float(row[0]))
        for ids, matrix in shard_batches(tables)()
        for example_id, row in zip(ids, matrix, strict=True)
    ]
    assert sorted(streamed) == [(i, loss_of(i)) for i in POOL]


def test_44_the_runner_deletes_the_rows_of_shards_no_longer_configured_in_one_commit(warehouse, instance, caplog):
    materialize_every_partition(gradients_asset(3), warehouse, instance)
    defs = materialize_every_partition(gradients_asset(2), warehouse, instance)
    old_rows = warehouse.scan(GRADIENTS).filter(pl.col("shard") == "002").collect().height
    version = DeltaTable(warehouse.table_uri(GRADIENTS)).version()
    with caplog.at_level(logging.INFO, logger="drift_assets.runner"):
        assert prune_unconfigured_partitions(defs, warehouse) == {GRADIENTS: old_rows}
    assert DeltaTable(warehouse.table_uri(GRADIENTS)).version() == version + 1  # one commit
    assert warehouse.partitions_held(GRADIENTS) == {("base", "000"), ("base", "001")}
    assert sorted(warehouse.scan(GRADIENTS).collect()["example_id"]) == POOL
    assert f"{GRADIENTS}: deleted the {old_rows} rows of partitions no longer configured (base|002)" in caplog.messages
    assert prune_unconfigured_partitions(defs, warehouse) == {}  # nothing more: no commit
    assert DeltaTable(warehouse.table_uri(GRADIENTS)).version() == version + 1


def test_42_a_checkpoint_removed_then_configured_again_is_materialized_again(warehouse, instance):
    """Dagster keeps the removed partition's materialization: its rows, deleted meanwhile, must come back.
    A partition that was written empty (a shard no example hashes to) is not missing."""
    every = ["base", "000002", "000004", "000006"]
    rows = lambda checkpoint: [] if checkpoint == "000006" else [f"{checkpoint}-a", f"{checkpoint}-b"]  # noqa: E731
    defs = materialize_every_partition(checkpoint_asset("grades", every, rows), warehouse, instance)
    fewer = Definitions(
        assets=[checkpoint_asset("grades", ["base", "000002", "000006"], rows)], resources={"io_manager": warehouse.io_manager()}
    )
    assert prune_unconfigured_partitions(fewer, warehouse) == {"grades": 2}
    assert repair_damaged_tables(fewer, instance, warehouse) == set()
    assert repair_damaged_tables(defs, instance, warehouse) == {"grades[000004]"}
    assert needs_materialization(defs, instance, {"grades[000004]"}) == {"grades[000004]"}
    materialize(
        [defs.resolve_assets_def("grades")],
        resources={"io_manager": warehouse.io_manager()},
        instance=instance,
        partition_key="000004",
    )
    assert repair_damaged_tables(defs, instance, warehouse) == set()


def saved_warmup_asset(tmp_path):
    """A warm-up asset of two steps that saves a directory per checkpoint under ``tmp_path``."""

    @asset(
        name=WARMUP,
        kinds={"delta"},
        partitions_def=StaticPartitionsDefinition(["000002", "000004"]),
        metadata={"partition_expr": "checkpoint"},
    )
    def warmup(context) -> pl.DataFrame:
        path = tmp_path / "checkpoints" / context.partition_key
        path.mkdir(parents=True)
        # As the warm-up asset's: a trained checkpoint has its step (one warmup.checkpoints listed has none).
        return pl.DataFrame({"checkpoint": [context.partition_key], "step": [int(context.partition_key)], "path": [str(path)]})

    return warmup


def test_43_a_warm_up_checkpoint_whose_directory_is_gone_is_materialized_again(warehouse, instance, tmp_path):
    warmup = saved_warmup_asset(tmp_path)
    defs = materialize_every_partition(warmup, warehouse, instance)
    assert repair_damaged_tables(defs, instance, warehouse) == set()
    shutil.rmtree(tmp_path / "checkpoints" / "000002")
    assert repair_damaged_tables(defs, instance, warehouse) == {f"{WARMUP}[000002]"}


def test_42_the_model_directory_of_a_removed_warm_up_step_is_reported(warehouse, instance, tmp_path, caplog):
    warmup = saved_warmup_asset(tmp_path)
    materialize_every_partition(warmup, warehouse, instance)
    fewer = Definitions(assets=[checkpoint_asset(WARMUP, ["000002"])], resources={"io_manager": warehouse.io_manager()})
    with caplog.at_level(logging.INFO, logger="drift_assets.runner"):
        assert prune_unconfigured_partitions(fewer, warehouse) == {WARMUP: 1}
    assert (
        f"{WARMUP}: {tmp_path / 'checkpoints' / '000004'} holds a checkpoint no longer configured: delete it to free the space"
        in caplog.messages
    )
    assert warehouse.scan(WARMUP).collect()["checkpoint"].to_list() == ["000002"]


def test_50_a_data_file_gone_from_under_its_log_is_a_damaged_table_set_aside(warehouse, instance):
    defs = materialize_every_partition(gradients_asset(2), warehouse, instance)
    assert warehouse.table_problem(GRADIENTS) is None
    [gone] = Path(warehouse.table_uri(GRADIENTS), "checkpoint=base", "shard=000").glob("*.parquet")
    gone.unlink()
    assert (
        warehouse.table_problem(GRADIENTS) == f"its table {warehouse.table_uri(GRADIENTS)} names data files that are gone: {gone}"
    )
    assert repair_damaged_tables(defs, instance, warehouse) == {GRADIENTS}
    assert not warehouse.exists(GRADIENTS)
    [kept] = Path(warehouse.table_uri(GRADIENTS)).parent.glob(f"{GRADIENTS}.damaged-*")
    assert (kept / "checkpoint=base" / "shard=001").is_dir()  # kept for inspection


def test_one_row_per_example_names_what_is_wrong_and_the_repair():
    pool = ["a", "b", "c"]
    assert one_row_per_example(pl.DataFrame({"example_id": ["c", "a", "b"]}), pool, "influence_scores") is None
    problem = one_row_per_example(pl.DataFrame({"example_id": ["a", "b", "b", "b", "x"]}), pool, "influence_scores")
    assert problem == (
        "influence_scores should hold one row per pool example (3), but holds 1 example(s) more than once "
        "(2 extra rows; e.g. b 3 times); 1 pool example(s) missing (e.g. c); 1 example(s) not in the pool (e.g. x): "
        + REPAIR_DUPLICATES
    )


def test_42_the_summary_lists_only_the_configured_checkpoints(tmp_path):
    """warmup.steps [2, 4] → [2]: the tables still hold checkpoint 000004 until the runner deletes it."""
    settings = parse_settings({"warehouse": {"root": "wh"}, "warmup": {"steps": [2]}}, "settings.yaml", tmp_path)
    warehouse = Warehouse.from_settings(settings)
    # checkpoint: (query_id, correct) per rollout
    graded = {"base": [("q0", True), ("q0", False)], "000002": [("q0", True), ("q0", True)], "000004": [("q0", False)] * 2}
    rows = [{"checkpoint": c, "query_id": q, "correct": value} for c, pairs in graded.items() for q, value in pairs]
    pl.DataFrame(rows).write_delta(warehouse.table_uri("grades"), delta_write_options={"partition_by": ["checkpoint"]})
    pl.DataFrame({"checkpoint": list(graded), "engine": ["vllm"] * 3}).write_delta(
        warehouse.table_uri("rollouts"), delta_write_options={"partition_by": ["checkpoint"]}
    )
    lines = _summary(settings).splitlines()
    assert (
        lines[0] == "rollouts / grades        2 rollouts of the base model by vllm, pass@1 0.500, 1/1 queries with mixed grades"
    )
    assert lines[1] == "warm-up checkpoints      pass@1 2 steps 1.000; scores averaged with the base model's"
