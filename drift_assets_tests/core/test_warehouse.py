"""The warehouse root comes from the settings: local directories and s3:// URIs need no code change;
Delta writes through its IO manager record their row count and size."""

import polars as pl
from dagster import StaticPartitionsDefinition, asset, materialize
from dagster_deltalake import LocalConfig, S3Config

from drift_assets.resources import Warehouse
from drift_assets.settings import parse_settings


def test_local_root_resolves_against_the_settings_file(tmp_path):
    settings = parse_settings({"warehouse": {"root": "wh"}}, "settings.yaml", tmp_path)
    warehouse = Warehouse(settings)
    assert warehouse.table_uri("rollouts") == f"{tmp_path}/wh/drift/rollouts"
    manager = warehouse.io_manager()
    assert manager.root_uri == f"{tmp_path}/wh"
    assert isinstance(manager.storage_options, LocalConfig)


def test_s3_root_uses_s3_storage_options(tmp_path):
    settings = parse_settings(
        {"warehouse": {"root": "s3://bucket/drift", "storage_options": {"region": "eu-west-1", "endpoint": "http://127.0.0.1:9000"}}},
        "settings.yaml", tmp_path,
    )
    warehouse = Warehouse(settings)
    assert warehouse.table_uri("grades") == "s3://bucket/drift/drift/grades"
    manager = warehouse.io_manager()
    assert isinstance(manager.storage_options, S3Config)
    assert (manager.storage_options.region, manager.storage_options.endpoint) == ("eu-west-1", "http://127.0.0.1:9000")


def _materialize_with_warehouse(tmp_path, assets, partition_key=None):
    settings = parse_settings({"warehouse": {"root": "wh"}}, "settings.yaml", tmp_path)
    result = materialize(assets, resources={"io_manager": Warehouse(settings).io_manager()}, partition_key=partition_key)
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
    @asset(partitions_def=StaticPartitionsDefinition(["a", "b"]), metadata={"partition_expr": "shard"})
    def sharded(context) -> pl.DataFrame:
        rows = 3 if context.partition_key == "a" else 5
        return pl.DataFrame({"shard": [context.partition_key] * rows, "value": list(range(rows))})

    assert _materialize_with_warehouse(tmp_path, [sharded], "a")["num_rows"].value == 3
    assert _materialize_with_warehouse(tmp_path, [sharded], "b")["num_rows"].value == 5


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
    assert Warehouse(settings).scan("table").collect().to_dicts() == [{"value": 3, "token_ids": [4, 5]}]
