"""The warehouse writes its tables through a type handler of its own (no patched library code), and
what that handler takes from the objects Dagster's DbIOManager hands it (which no public module
exports) is read in drift_assets/delta_internals.py alone: these tests fail where an upgrade of
dagster or dagster-deltalake changes it."""

import ast
import dataclasses
import inspect
import time
from pathlib import Path

import numpy as np
import polars as pl
from dagster import MultiPartitionsDefinition, StaticPartitionsDefinition, asset, materialize

import drift_assets
from drift_assets import delta_internals
from drift_assets.resources import Warehouse

PINNED = Path(delta_internals.__file__).resolve()


def test_the_db_io_manager_contract_the_handler_reads_is_unchanged():
    from dagster._core.storage.db_io_manager import DbTypeHandler, TablePartitionDimension, TableSlice
    from dagster_deltalake.io_manager import TableConnection

    assert {"table", "schema", "columns", "partition_dimensions"} <= set(TableSlice._fields)
    assert TablePartitionDimension._fields == ("partition_expr", "partitions")
    assert {"table_uri", "storage_options"} <= {field.name for field in dataclasses.fields(TableConnection)}
    assert list(inspect.signature(DbTypeHandler.handle_output).parameters) == [
        "self",
        "context",
        "table_slice",
        "obj",
        "connection",
    ]
    assert list(inspect.signature(DbTypeHandler.load_input).parameters) == ["self", "context", "table_slice", "connection"]
    # The IO manager asks its class for the handlers (the extension point the warehouse uses).
    from dagster_deltalake_polars import DeltaLakePolarsIOManager

    assert isinstance(inspect.getattr_static(DeltaLakePolarsIOManager, "type_handlers"), staticmethod)
    assert "self.type_handlers()" in inspect.getsource(DeltaLakePolarsIOManager.create_io_manager)


def test_the_pinned_readers_take_what_the_db_io_manager_builds():
    from dagster._core.storage.db_io_manager import TablePartitionDimension, TableSlice
    from dagster_deltalake.io_manager import TableConnection

    table_slice = TableSlice(
        table="grades",
        schema="drift",
        columns=["score"],
        partition_dimensions=[
            TablePartitionDimension("checkpoint", ["base", "000002"]),
            TablePartitionDimension("shard", ["0"]),
        ],
    )
    assert delta_internals.partition_values(table_slice) == {"checkpoint": ["base", "000002"], "shard": ["0"]}
    assert delta_internals.selected_columns(table_slice) == ["score"]
    assert delta_internals.partition_values(TableSlice(table="t", schema="s")) == {}
    connection = TableConnection(table_uri="s3://b/drift/grades", storage_options={"region": "x"}, table_config=None)
    assert delta_internals.table_location(connection) == ("s3://b/drift/grades", {"region": "x"})


def _private_dagster_deltalake_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dagster_deltalake"):
            module = node.module or ""
            private = [alias.name for alias in node.names if alias.name.startswith("_")]
            if module not in {"dagster_deltalake", "dagster_deltalake_polars", "dagster_deltalake.config"} or private:
                found.append(f"{path.name}:{node.lineno} from {module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            found += [
                f"{path.name}:{node.lineno} import {alias.name}"
                for alias in node.names
                if alias.name.startswith("dagster_deltalake") and "." in alias.name
            ]
    return found


def test_no_module_but_the_pinned_one_imports_dagster_deltalakes_internals():
    package = Path(drift_assets.__file__).parent
    found = [
        line
        for path in sorted(package.rglob("*.py"))
        if path.resolve() != PINNED
        for line in _private_dagster_deltalake_imports(path)
    ]
    assert found == []


def test_a_run_over_checkpoints_and_shards_replaces_those_partitions_only(tmp_path):
    """A multi-partitioned table (checkpoint × shard, as the training gradients are): a run over two
    checkpoints of one shard replaces exactly those two partitions, and reports their figures."""
    partitions = MultiPartitionsDefinition(
        {"checkpoint": StaticPartitionsDefinition(["base", "s2"]), "shard": StaticPartitionsDefinition(["0", "1"])}
    )

    def build(tag: str):
        @asset(name="grads", partitions_def=partitions, metadata={"partition_expr": {"checkpoint": "ckpt", "shard": "shard"}})
        def grads(context) -> pl.DataFrame:
            keys = context.partition_key.keys_by_dimension
            return pl.DataFrame({"ckpt": [keys["checkpoint"]] * 2, "shard": [keys["shard"]] * 2, "run": [tag, tag]})

        return grads

    warehouse = Warehouse(root=str(tmp_path / "wh"))
    resources = {"io_manager": warehouse.io_manager()}
    for checkpoint in ("base", "s2"):
        for shard in "01":
            materialize([build("first")], partition_key=f"{checkpoint}|{shard}", resources=resources)
    result = materialize([build("second")], partition_key="s2|1", resources=resources)
    metadata = result.asset_materializations_for_node("grads")[0].metadata
    assert metadata["num_rows"].value == 2 and metadata["size_bytes"].value > 0
    table = warehouse.scan("grads").collect().sort("ckpt", "shard")
    assert table.group_by("ckpt", "shard", "run").len().sort("ckpt", "shard").rows() == [
        ("base", "0", "first", 2),
        ("base", "1", "first", 2),
        ("s2", "0", "first", 2),
        ("s2", "1", "second", 2),
    ]


def test_a_write_whose_commit_conflicts_is_written_again_and_lands(tmp_path):
    """Another writer replaces the same partition while this write is under way: deltalake refuses
    the later commit (CommitFailedError), and the handler writes again, over the table as it now is.

    The rival commits once this write's data file appears, which is nearly always before this
    write commits; on a loaded machine it can land before or after instead (no conflict), so the
    race is run a few times: every round must leave a consistent table, and one must conflict."""
    import threading

    from dagster import DagsterInstance
    from deltalake import write_deltalake

    rows = 3_000_000

    def race(directory: Path) -> tuple[bool, tuple[int, bool]]:
        warehouse = Warehouse(root=str(directory))
        uri = warehouse.table_uri("wide")
        write_deltalake(uri, pl.DataFrame({"part": ["a"], "value": [0.0]}).to_arrow(), partition_by=["part"])
        partition = Path(uri) / "part=a"
        before = set(partition.iterdir())
        threads = []

        def rival():
            # Once this write has begun its data file (a staged file; its snapshot taken), replace the partition under it.
            deadline = time.monotonic() + 60
            while not set(partition.iterdir()) - before and time.monotonic() < deadline:
                time.sleep(0.001)
            other = pl.DataFrame({"part": ["a"], "value": [-1.0]}).to_arrow()
            write_deltalake(uri, other, mode="overwrite", partition_by=["part"], predicate="part = 'a'")

        @asset(name="wide", partitions_def=StaticPartitionsDefinition(["a"]), metadata={"partition_expr": "part"})
        def wide() -> pl.DataFrame:
            threads.append(threading.Thread(target=rival, daemon=True))
            threads[0].start()
            return pl.DataFrame({"part": ["a"] * rows, "value": np.random.default_rng(0).random(rows)})

        with DagsterInstance.ephemeral() as instance:
            result = materialize([wide], partition_key="a", instance=instance, resources={"io_manager": warehouse.io_manager()})
            messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
        threads[0].join(60)
        table = warehouse.scan("wide").select(pl.len(), pl.col("value").min() >= 0).collect().row(0)
        return any("writing again (2 of 5)" in message for message in messages), table

    conflicts = 0
    for round_ in range(4):
        conflicted, table = race(tmp_path / f"round{round_}")
        if conflicted:  # written again over the rival's commit: this write's rows, all of them
            assert table == (rows, True)
            conflicts += 1
            break
        # No conflict: the rival committed before this write's snapshot or after its commit; either way one whole write.
        assert table in ((rows, True), (1, False))
    assert conflicts == 1
