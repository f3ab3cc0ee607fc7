"""The warehouse root comes from the settings: local directories and s3:// URIs need no code change."""

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
