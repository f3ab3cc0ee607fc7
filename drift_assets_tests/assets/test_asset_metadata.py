"""What an asset page shows about its table: each column with what it holds, and the row count and
schema once (dagster-deltalake's own are left out where the asset reports them)."""

import polars as pl
from dagster import asset, materialize

from drift_assets.defs.columns import CARRIED, COLUMN_DESCRIPTIONS
from drift_assets.defs.metadata import table_metadata
from drift_assets.resources import Warehouse
from drift_assets.settings import parse_settings


def materialized_metadata(tmp_path, asset_def) -> dict:
    settings = parse_settings({"warehouse": {"root": "wh"}}, "settings.yaml", tmp_path)
    result = materialize([asset_def], resources={"io_manager": Warehouse.from_settings(settings).io_manager()})
    return result.asset_materializations_for_node(asset_def.op.name)[0].metadata


def test_a_table_reports_its_row_count_and_its_described_columns_once(tmp_path):
    @asset
    def scored(context) -> pl.DataFrame:
        table = pl.DataFrame({"example_id": ["a", "b"], "score": [0.5, -0.1], "difficulty": [1, 2]})
        context.add_output_metadata(table_metadata(table))
        return table

    metadata = materialized_metadata(tmp_path, scored)
    assert metadata["dagster/row_count"].value == 2
    columns = {c.name: c.description for c in metadata["dagster/column_schema"].value.columns}
    assert columns == {
        "example_id": COLUMN_DESCRIPTIONS["example_id"],
        "score": COLUMN_DESCRIPTIONS["score"],
        "difficulty": CARRIED,
    }
    # dagster-deltalake's undescribed schema and second row count are left out; its size stays.
    assert "table_columns" not in metadata and "num_rows" not in metadata and metadata["size_bytes"].value > 0


def test_a_table_that_reports_neither_keeps_dagster_deltalakes(tmp_path):
    @asset
    def plain() -> pl.DataFrame:
        return pl.DataFrame({"value": [1, 2, 3]})

    metadata = materialized_metadata(tmp_path, plain)
    assert metadata["num_rows"].value == 3 and "table_columns" in metadata
