"""Data-quality checks shared across stages; each stage module adds its own specific ones.

Checks are *blocking* where a bad table must not flow downstream: in a run, assets below a failed
blocking check are not materialized. A partitioned asset checks the partition it just wrote, inside
its own step (its ``check_specs``): a separate check would have to load every partition.
"""

import numpy as np
import polars as pl
from dagster import AssetCheckResult


def schema_and_ids_result(
    check_name: str, table: pl.DataFrame, required_columns: dict[str, type[pl.DataType]], id_column: str
) -> AssetCheckResult:
    """Required columns with the right types, at least one row, unique non-null ids."""
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
    return AssetCheckResult(
        check_name=check_name, passed=not problems, metadata={"rows": table.height, "problems": "; ".join(problems) or "none"}
    )


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


def vectors_result(check_name: str, table: pl.DataFrame, column: str = "grad") -> AssetCheckResult:
    """Every vector of ``column`` finite and of one dimension (an empty table passes: a shard can be empty)."""
    problems, dimension = vector_problems(table[column], None) if not table.is_empty() else ([], 0)
    return AssetCheckResult(
        check_name=check_name,
        passed=not problems,
        metadata={"dimension": dimension, "rows": table.height, "problems": "; ".join(problems) or "none"},
    )
