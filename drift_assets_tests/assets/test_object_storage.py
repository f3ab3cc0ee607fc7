"""The warehouse on an S3 API: a real S3-compatible server (moto's, in a process of its own) on the
loopback interface, concurrent commits to it, and the whole graph materialized into it."""

import json
import shutil
import subprocess
import sys

import polars as pl
import pytest

from drift_assets.definitions import build_definitions
from drift_assets.production import local_s3, s3_client
from drift_assets.resources import Warehouse
from drift_assets.runner import materialize_pipeline
from drift_assets.settings import SettingsError
from drift_assets_tests.assets.test_pipeline import read
from drift_assets_tests.conftest import instance_in, settings_in

WRITER = """
import json, sys
import polars as pl
for i in range(20):
    pl.DataFrame({"writer": [sys.argv[2]], "i": [i]}).write_delta(
        "s3://drift/commits", mode="append", storage_options=json.loads(sys.argv[1])
    )
"""


@pytest.fixture(scope="module")
def s3_options():
    with local_s3("drift") as options:
        yield options


def test_commits_from_processes_side_by_side_all_land(s3_options):
    """Shard runs in parallel commit to one table: deltalake's commits use the S3 API's conditional
    writes (put if absent), so neither overwrites the other's log entry. No lock, no unsafe rename."""
    assert "allow_unsafe_rename" not in s3_options
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, json.dumps(s3_options), name]) for name in "ab"]
    assert [writer.wait(timeout=300) for writer in writers] == [0, 0]
    table = pl.read_delta("s3://drift/commits", storage_options=s3_options)
    assert table.group_by("writer").len().sort("writer").rows() == [("a", 20), ("b", 20)]
    assert table.filter(pl.col("writer") == "a")["i"].sort().to_list() == list(range(20))


@pytest.mark.vllm
def test_an_s3_warehouse_holds_the_same_tables_as_a_local_one(materialized, tmp_path, s3_options):
    options = s3_options  # what a MinIO or R2 user sets: the endpoint, and plain HTTP for a local one
    workspace = tmp_path / "workspace"
    shutil.copytree(materialized / "demo", workspace / "demo")
    # The evaluation fine-tunes twice and reads what the scores are checked on here: left out.
    settings = settings_in(
        workspace, warehouse={"root": "s3://drift/warehouse", "storage_options": options}, data={"test_queries": None}
    )
    warehouse = Warehouse.from_settings(settings)
    defs = build_definitions(settings)
    with instance_in(workspace) as instance:
        done = materialize_pipeline(defs, instance, include_demo=False)
        again = materialize_pipeline(defs, instance, include_demo=False, only_stale=True, warehouse=warehouse)
    assert "influence_scores" in done and again == []  # read back, versioned and found up to date
    listed = s3_client(options).list_objects_v2(Bucket="drift", Prefix="warehouse/drift/", MaxKeys=1000)["Contents"]
    tables = {item["Key"].split("/")[2] for item in listed if "/_delta_log/" in item["Key"]}
    assert {
        "training_pool",
        "rollouts",
        "grades",
        "training_gradient_projections",
        "influence_scores",
        "refined_dataset",
    } <= tables
    assert not (workspace / "warehouse").exists()  # nothing went to local disk instead
    local = settings_in(materialized)
    for name, key in [("influence_scores", "example_id"), ("training_gradient_projections", ["checkpoint", "example_id"])]:
        assert warehouse.scan(name).collect().sort(key).equals(read(local, name).sort(key)), name
    selected = [
        sorted(table.filter(pl.col("selected"))["example_id"])
        for table in (read(local, "refined_dataset"), warehouse.scan("refined_dataset").collect())
    ]
    assert selected[0] == selected[1] and selected[0]


def test_storage_options_take_deltalakes_aws_spellings_and_refuse_unknown_ones(tmp_path):
    aws = {"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    settings = settings_in(tmp_path, warehouse={"root": "s3://drift/warehouse", "storage_options": aws})
    assert settings.warehouse.storage_options == {
        "region": "eu-west-1",
        "endpoint": "http://minio:9000",
        "allow_unsafe_rename": "true",
    }
    with pytest.raises(SettingsError, match=r"warehouse.storage_options.*'AWS_REGOIN'.*S3Config"):
        settings_in(tmp_path, warehouse={"root": "s3://drift/warehouse", "storage_options": {"AWS_REGOIN": "eu-west-1"}})
