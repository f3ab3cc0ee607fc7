"""The warehouse on an S3 API: a real S3-compatible server (moto's, in a process of its own) on the
loopback interface, and the whole graph materialized into it."""

import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import boto3
import polars as pl
import pytest

from drift_assets.definitions import build_definitions
from drift_assets.resources import Warehouse
from drift_assets.runner import materialize_pipeline
from drift_assets.settings import SettingsError
from drift_assets_tests.assets.test_pipeline import read
from drift_assets_tests.conftest import instance_in, settings_in

CREDENTIALS = {"access_key_id": "drift", "secret_access_key": "drift-secret", "region": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """An S3 API on 127.0.0.1. In its own process: deltalake holds the GIL while it waits for some
    requests, so a server thread inside the test process would never answer them."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"the S3 server on {endpoint} did not start")
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


def s3_client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["access_key_id"],
        aws_secret_access_key=CREDENTIALS["secret_access_key"],
        region_name=CREDENTIALS["region"],
    )


@pytest.mark.vllm
def test_an_s3_warehouse_holds_the_same_tables_as_a_local_one(materialized, tmp_path, s3_endpoint):
    s3_client(s3_endpoint).create_bucket(Bucket="drift")
    # What a MinIO or R2 user sets: the endpoint, and plain HTTP for a local one.
    options = {**CREDENTIALS, "endpoint": s3_endpoint, "allow_http": "true", "allow_unsafe_rename": "true"}
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
    listed = s3_client(s3_endpoint).list_objects_v2(Bucket="drift", Prefix="warehouse/drift/", MaxKeys=1000)["Contents"]
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
