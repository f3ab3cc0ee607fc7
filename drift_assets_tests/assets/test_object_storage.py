"""The warehouse on an S3 API: a real S3-compatible server (moto's, in a process of its own) on the
loopback interface, concurrent commits to it, and the pipeline reading and writing its tables there."""

import json
import subprocess
import sys

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from drift_assets.code_location import graphql
from drift_assets.definitions import build_definitions
from drift_assets.production import LOCAL_S3_ENVIRONMENT, local_s3, s3_client
from drift_assets.resources import Warehouse
from drift_assets.runner import materialize_pipeline
from drift_assets.settings import SettingsError
from drift_assets_tests.conftest import instance_in, settings_in

WRITER = """
import json, sys
import polars as pl
for i in range(10):
    pl.DataFrame({"writer": [sys.argv[2]], "i": [i]}).write_delta(
        "s3://drift/commits", mode="append", storage_options=json.loads(sys.argv[1])
    )
"""
# One partition of a new table per round through the pipeline's IO manager, both processes at once.
PARTITION_WRITER = """
import json, sys, time
from pathlib import Path
import polars as pl
from dagster import StaticPartitionsDefinition, asset, materialize
from drift_assets.resources import Warehouse
options, partition, rounds, barrier = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
io_manager = Warehouse(root="s3://drift/first-writes", storage_options=options).io_manager()
for round in range(rounds):
    @asset(name=f"table_{round}", partitions_def=StaticPartitionsDefinition(["a", "b"]), metadata={"partition_expr": "part"})
    def table(context):
        return pl.DataFrame({"part": [context.partition_key] * 3, "i": [1, 2, 3]})
    (barrier / f"{partition}-{round}").touch()
    while not all((barrier / f"{p}-{round}").exists() for p in "ab"):
        time.sleep(0.01)
    assert materialize([table], partition_key=partition, resources={"io_manager": io_manager}).success
"""


SHOWN_BY_THE_UI = """
{
  repositoriesOrError { ... on RepositoryConnection { nodes {
    allTopLevelResourceDetails { name configuredValues { key value } }
    assetNodes { assetKey { path } assetMaterializations { metadataEntries { label __typename
      ... on TextMetadataEntry { text } ... on JsonMetadataEntry { jsonString } ... on MarkdownMetadataEntry { mdStr }
      ... on PathMetadataEntry { path } ... on UrlMetadataEntry { url } ... on TableSchemaMetadataEntry { label } } } }
  } } }
  runsOrError { ... on Runs { results { runId runConfigYaml tags { key value } } } }
}
"""


@pytest.fixture(scope="module")
def s3_options():
    with local_s3("drift") as options:
        yield options


def test_commits_from_processes_side_by_side_all_land(s3_options):
    """Shard runs in parallel commit to one table: deltalake's commits use the S3 API's conditional
    writes (put if absent), so neither overwrites the other's log entry. No lock, no unsafe rename."""
    assert "allow_unsafe_rename" not in s3_options
    pl.DataFrame({"writer": ["-"], "i": [0]}).write_delta("s3://drift/commits", storage_options=s3_options)
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, json.dumps(s3_options), name], stderr=subprocess.PIPE, text=True)
        for name in "ab"
    ]
    outcomes = [(writer.wait(timeout=300), writer.stderr.read()) for writer in writers]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    table = pl.read_delta("s3://drift/commits", storage_options=s3_options)
    assert table.group_by("writer").len().sort("writer").rows() == [("-", 1), ("a", 10), ("b", 10)]
    assert table.filter(pl.col("writer") == "a")["i"].sort().to_list() == list(range(10))


def test_shard_runs_that_create_a_table_together_both_land(s3_options, tmp_path):
    """The first runs of a fresh warehouse each write a table that does not exist yet; the later
    commit fails (deltalake: "Metadata changed since last commit") and the IO manager writes again,
    now into the table the other created, replacing only its own partition."""
    rounds = 3
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", PARTITION_WRITER, json.dumps(s3_options), partition, str(rounds), str(tmp_path)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for partition in "ab"
    ]
    outcomes = [(writer.wait(timeout=300), writer.stderr.read()[-3000:]) for writer in writers]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    for round in range(rounds):
        table = pl.read_delta(f"s3://drift/first-writes/drift/table_{round}", storage_options=s3_options)
        assert table.group_by("part").len().sort("part").rows() == [("a", 3), ("b", 3)], round


@pytest.mark.vllm
def test_an_s3_warehouse_takes_over_from_a_local_one_and_scores_the_same(private_materialized, s3_options):
    """The session's local tables up to the training gradients copied into the bucket, the rest left
    out: the pipeline finds what is missing there, reads the sharded gradients back from S3, writes
    the same scores and selection as on local disk, and is up to date on a second run. (The UI test
    materializes the whole graph into the S3 API; this one checks the tables against local disk.)"""
    workspace = private_materialized
    local = Warehouse.from_settings(settings_in(workspace))
    # The evaluation fine-tunes twice and reads what the scores are checked on here: left out.
    s3_warehouse = {"root": "s3://drift/warehouse", "storage_options": s3_options}
    settings = settings_in(workspace, warehouse=s3_warehouse, data={"test_queries": None})
    warehouse = Warehouse.from_settings(settings)
    rebuilt = {"influence_scores", "refined_dataset", "refined_dataset_export", "refined_model_evaluation"}
    copied = sorted(path.name for path in (workspace / "warehouse" / "drift").iterdir() if path.name not in rebuilt)
    assert {"rollouts", "training_gradient_projections", "validation_gradients"} <= set(copied)
    for name in copied:
        table = DeltaTable(local.table_uri(name))
        write_deltalake(
            warehouse.table_uri(name),
            table.to_pyarrow_table(),
            partition_by=table.metadata().partition_columns or None,
            storage_options=s3_options,
        )
    defs = build_definitions(settings)
    with instance_in(workspace) as instance:
        done = materialize_pipeline(defs, instance, include_demo=False, only_stale=True, warehouse=warehouse)
        again = materialize_pipeline(defs, instance, include_demo=False, only_stale=True, warehouse=warehouse)
    assert {"influence_scores", "refined_dataset"} <= set(done), done
    assert not [name for name in done if name.split("[")[0] in copied], done  # nothing recomputed upstream
    assert again == []  # read back, versioned and found up to date
    listed = s3_client(s3_options).list_objects_v2(Bucket="drift", Prefix="warehouse/drift/", MaxKeys=1000)["Contents"]
    assert {"influence_scores", "refined_dataset"} <= {item["Key"].split("/")[2] for item in listed}
    for name, key in [("influence_scores", "example_id"), ("training_gradient_projections", ["checkpoint", "example_id"])]:
        assert warehouse.scan(name).collect().sort(key).equals(local.scan(name).collect().sort(key)), name
    selected = [
        sorted(table.filter(pl.col("selected"))["example_id"])
        for table in (local.scan("refined_dataset").collect(), warehouse.scan("refined_dataset").collect())
    ]
    assert selected[0] == selected[1] and selected[0]
    # N41: the store's credentials came from the environment; the UI's answer about the resources, the
    # runs' config and every materialization's metadata holds none of them.
    with instance_in(workspace) as instance:
        answer = json.dumps(graphql(defs, instance, SHOWN_BY_THE_UI))
    assert '"num_rows"' in answer and '"runId"' in answer and s3_options["endpoint"] in answer  # it shows what it has
    assert not [value for value in LOCAL_S3_ENVIRONMENT.values() if value in answer], answer


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
