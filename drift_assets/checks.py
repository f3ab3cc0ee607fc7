"""Data-quality checks shared across stages; each stage module adds its own specific ones.

Checks are *blocking* where a bad table must not flow downstream: in a run, assets below a failed
blocking check are not materialized.
"""

import numpy as np
import polars as pl
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetsDefinition, asset_check


def schema_and_ids_check(
    asset: AssetsDefinition, required_columns: dict[str, type[pl.DataType]], id_column: str, not_empty: list[str] = ()
):
    """Required columns with the right types, at least one row, unique non-null ids, no empty fields."""
    asset_name = asset.key.path[-1]

    @asset_check(
        asset=asset,
        name=f"{asset_name}_schema_and_ids",
        blocking=True,
        description=f"Columns {sorted(required_columns)} present and typed; {id_column} unique and non-null; rows > 0.",
    )
    def _check(context: AssetCheckExecutionContext, table: pl.DataFrame) -> AssetCheckResult:
        problems = []
        for column, dtype in required_columns.items():
            if column not in table.columns:
                problems.append(f"missing column {column!r}")
            elif not isinstance(table.schema[column], dtype) and table.schema[column] != dtype:
                problems.append(f"column {column!r} is {table.schema[column]}, expected {dtype}")
        if table.is_empty():
            problems.append("no rows")
        if id_column in table.columns:
            nulls = table[id_column].null_count()
            duplicates = table.height - table[id_column].n_unique()
            if nulls:
                problems.append(f"{nulls} null {id_column}")
            if duplicates:
                problems.append(f"{duplicates} duplicate {id_column}")
        for column in not_empty:
            if column in table.columns:
                empty = table.filter(pl.col(column).is_null() | (pl.col(column).cast(pl.String).str.strip_chars() == "")).height
                if empty:
                    problems.append(f"{empty} empty {column}")
        return AssetCheckResult(
            passed=not problems,
            metadata={"rows": table.height, "problems": "; ".join(problems) or "none"},
        )

    _check.__name__ = f"{asset_name}_schema_and_ids"
    return _check


def vector_problems(vectors: pl.Series, expected_dimension: int | None) -> tuple[list[str], int]:
    """Problems with a list<float32> column: wrong or ragged length, non-finite values."""
    if vectors.is_empty():
        return ["no vectors"], 0
    lengths = vectors.list.len().unique().to_list()
    if len(lengths) != 1:
        return [f"ragged vectors: lengths {sorted(lengths)[:5]}"], 0
    dimension = lengths[0]
    problems = []
    if expected_dimension is not None and dimension != expected_dimension:
        problems.append(f"dimension {dimension}, expected {expected_dimension}")
    matrix = vectors.list.to_array(dimension).to_numpy()
    non_finite = int((~np.isfinite(matrix)).any(axis=1).sum())
    if non_finite:
        problems.append(f"{non_finite} vectors with NaN or inf")
    return problems, dimension


def vector_check(asset: AssetsDefinition, column: str, expected_dimension: int | None):
    asset_name = asset.key.path[-1]

    @asset_check(
        asset=asset,
        name=f"{asset_name}_vectors_finite",
        blocking=True,
        description=f"Every {column} vector is finite and of the projection's dimension k={expected_dimension}.",
    )
    def _check(context: AssetCheckExecutionContext, table: pl.DataFrame) -> AssetCheckResult:
        problems, dimension = vector_problems(table[column], expected_dimension)
        return AssetCheckResult(
            passed=not problems,
            metadata={"dimension": dimension, "rows": table.height, "problems": "; ".join(problems) or "none"},
        )

    return _check
