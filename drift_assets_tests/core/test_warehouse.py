"""The warehouse root comes from the settings: local directories and s3:// URIs need no code change;
Delta writes through its IO manager record their row count and size."""

import os
import subprocess
import sys

import polars as pl
import pytest
from dagster import AllPartitionMapping, AssetIn, BackfillPolicy, StaticPartitionsDefinition, asset, materialize
from dagster_deltalake import LocalConfig, S3Config

from drift_assets.resources import Warehouse, WarehouseBusyError, WarehouseError
from drift_assets.settings import parse_settings


def test_local_root_resolves_against_the_settings_file(tmp_path):
    settings = parse_settings({"warehouse": {"root": "wh"}}, "settings.yaml", tmp_path)
    warehouse = Warehouse.from_settings(settings)
    assert warehouse.table_uri("rollouts") == f"{tmp_path}/wh/drift/rollouts"
    manager = warehouse.io_manager()
    assert manager.root_uri == f"{tmp_path}/wh"
    assert isinstance(manager.storage_options, LocalConfig)


def test_s3_root_uses_s3_storage_options(tmp_path):
    settings = parse_settings(
        {
            "warehouse": {
                "root": "s3://bucket/drift",
                "storage_options": {"region": "eu-west-1", "endpoint": "http://127.0.0.1:9000"},
            }
        },
        "settings.yaml",
        tmp_path,
    )
    warehouse = Warehouse.from_settings(settings)
    assert warehouse.table_uri("grades") == "s3://bucket/drift/drift/grades"
    manager = warehouse.io_manager()
    assert isinstance(manager.storage_options, S3Config)
    assert (manager.storage_options.region, manager.storage_options.endpoint) == ("eu-west-1", "http://127.0.0.1:9000")


def _materialize_with_warehouse(tmp_path, assets, **run):
    """The first asset's materialization metadata; ``run``: partition_key, tags, selection."""
    settings = parse_settings({"warehouse": {"root": "wh"}}, "settings.yaml", tmp_path)
    result = materialize(assets, resources={"io_manager": Warehouse.from_settings(settings).io_manager()}, **run)
    return result.asset_materializations_for_node(assets[0].op.name)[0].metadata


def test_delta_writes_record_row_count_and_size(tmp_path):
    @asset
    def numbers() -> pl.DataFrame:
        return pl.DataFrame({"value": list(range(7))})

    # dagster-deltalake drops both figures (and logs a warning) when it cannot compute them.
    metadata = _materialize_with_warehouse(tmp_path, [numbers])
    assert metadata["num_rows"].value == 7
    assert metadata["size_bytes"].value > 0


def test_partitioned_delta_writes_count_the_partition_only(tmp_path):
    @asset(partitions_def=StaticPartitionsDefinition(["a", "b", "c"]), metadata={"partition_expr": "shard"})
    def sharded(context) -> pl.DataFrame:
        rows = {"a": 3, "b": 5, "c": 0}[context.partition_key]
        return pl.DataFrame(
            {"shard": [context.partition_key] * rows, "value": list(range(rows))}, schema_overrides={"value": pl.Int64}
        )

    assert _materialize_with_warehouse(tmp_path, [sharded], partition_key="a")["num_rows"].value == 3
    assert _materialize_with_warehouse(tmp_path, [sharded], partition_key="b")["num_rows"].value == 5
    assert (
        _materialize_with_warehouse(tmp_path, [sharded], partition_key="c")["num_rows"].value == 0
    )  # a small pool's empty shard


def test_a_new_release_may_add_a_column_to_a_table_an_earlier_one_wrote(tmp_path):
    @asset(name="table")
    def earlier() -> pl.DataFrame:
        return pl.DataFrame({"value": [1, 2]})

    @asset(name="table")
    def later() -> pl.DataFrame:
        return pl.DataFrame({"value": [3], "token_ids": [[4, 5]]})

    _materialize_with_warehouse(tmp_path, [earlier])
    _materialize_with_warehouse(tmp_path, [later])
    settings = parse_settings({"warehouse": {"root": "wh"}}, "settings.yaml", tmp_path)
    assert Warehouse.from_settings(settings).scan("table").collect().to_dicts() == [{"value": 3, "token_ids": [4, 5]}]


def test_a_second_materialization_of_a_warehouse_fails_at_once_naming_the_first(tmp_path):
    (tmp_path / "settings.yaml").write_text("warehouse:\n  root: wh\n")
    warehouse = Warehouse.from_settings(parse_settings({"warehouse": {"root": "wh"}}, "s.yaml", tmp_path))
    with warehouse.lock():
        with pytest.raises(
            WarehouseBusyError, match=rf"warehouse {warehouse.root} is being materialized by pid {os.getpid()}, since "
        ):
            with warehouse.lock():
                pass
        # Another process (the CLI) is refused too, before it builds or runs anything.
        cli = subprocess.run(
            [sys.executable, "-m", "drift_assets", "materialize", "--settings", str(tmp_path / "settings.yaml")],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "DAGSTER_HOME": ""},
        )
        assert cli.returncode == 1
        assert f"WarehouseBusyError: warehouse {warehouse.root} is being materialized by pid {os.getpid()}" in cli.stderr
    with warehouse.lock():  # released with the first
        pass


def test_an_object_store_that_cannot_be_reached_is_named_before_any_work(tmp_path, monkeypatch):
    options = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")  # credentials come from the environment only
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    warehouse = Warehouse.from_settings(
        parse_settings({"warehouse": {"root": "s3://bucket/drift", "storage_options": options}}, "s.yaml", tmp_path)
    )
    with pytest.raises(
        WarehouseError,
        match=r"warehouse\.root s3://bucket/drift cannot be reached with warehouse\.storage_options "
        r"\(keys set: allow_http, endpoint, region\): Generic S3 error",
    ):
        warehouse.check_reachable()
    Warehouse.from_settings(parse_settings({}, "s.yaml", tmp_path)).check_reachable()  # a local root: nothing to check


def test_a_run_over_a_range_of_partitions_replaces_those_partitions_only(tmp_path):
    steps = StaticPartitionsDefinition(["a", "b", "c"])

    @asset(partitions_def=steps, metadata={"partition_expr": "step"}, backfill_policy=BackfillPolicy.single_run())
    def saved(context) -> pl.DataFrame:
        keys = sorted(context.partition_keys)
        return pl.DataFrame({"step": keys, "run": [",".join(keys)] * len(keys)})

    _materialize_with_warehouse(tmp_path, [saved], partition_key="a")
    _materialize_with_warehouse(tmp_path, [saved], partition_key="b")
    range_tags = {"dagster/asset_partition_range_start": "b", "dagster/asset_partition_range_end": "c"}
    metadata = _materialize_with_warehouse(tmp_path, [saved], tags=range_tags)
    table = pl.read_delta(str(tmp_path / "wh" / "drift" / "saved")).sort("step")
    # dagster-deltalake alone overwrote the whole table here (it built no predicate for several partitions).
    assert table.rows() == [("a", "a"), ("b", "b,c"), ("c", "b,c")]
    assert metadata["num_rows"].value == 2  # the figures of the partitions written (dropped with a warning before)

    @asset(ins={"saved": AssetIn(partition_mapping=AllPartitionMapping())})
    def everything(saved: pl.DataFrame) -> pl.DataFrame:
        return saved

    # Reading several partitions goes through the same filter.
    _materialize_with_warehouse(tmp_path, [everything, saved.to_source_asset()], selection=[everything])
    assert pl.read_delta(str(tmp_path / "wh" / "drift" / "everything")).sort("step").rows() == table.rows()


def test_an_empty_table_records_zero_rows_without_a_warning(tmp_path):
    @asset
    def rejects() -> pl.DataFrame:
        return pl.DataFrame({"example_id": [], "reason": []}, schema={"example_id": pl.String, "reason": pl.String})

    # dagster-deltalake dropped both figures (and logged a warning) for a table without files.
    metadata = _materialize_with_warehouse(tmp_path, [rejects])
    assert metadata["num_rows"].value == 0
