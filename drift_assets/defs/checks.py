"""Data-quality checks shared across stages; each stage module adds its own specific ones.

Checks are *blocking* where a bad table must not flow downstream: in a run, assets below a failed
blocking check are not materialized. A partitioned asset checks the partition it just wrote, inside
its own step (its ``check_specs``): a separate check would have to load every partition.

Each result's metadata holds a ``message``: "ok", or the sentence the terminal prints when the check
fails (the figures, and what to do).
"""

from collections.abc import Callable

import numpy as np
import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity

from drift_assets.core.attribution.guards import contrast_guard
from drift_assets.core.data.stored import one_row_per_example
from drift_assets.core.grading.weighting import usable_queries

OK = "ok"


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
        check_name=check_name,
        passed=not problems,
        metadata={"rows": table.height, "problems": "; ".join(problems) or "none", "message": "; ".join(problems) or OK},
    )


def vectors_result(check_name: str, table: pl.DataFrame) -> AssetCheckResult:
    """Every vector of ``grad`` finite and of one dimension (an empty table passes: a shard can be empty)."""
    problem = message = None
    dimension = 0
    if not table.is_empty():
        lengths = table["grad"].list.len().unique().to_list()
        if len(lengths) != 1:
            problem = message = f"ragged vectors: lengths {sorted(lengths)[:5]}"
        else:
            dimension = lengths[0]
            non_finite = int((~np.isfinite(table["grad"].list.to_array(dimension).to_numpy())).any(axis=1).sum())
            if non_finite:
                problem = f"{non_finite} vectors with NaN or inf"
                message = (
                    f"{problem}: the model's weights are not finite, or the gradient pass overflows at model.dtype "
                    "(float32 is the safe choice)"
                )
    return AssetCheckResult(
        check_name=check_name,
        passed=problem is None,
        metadata={"dimension": dimension, "rows": table.height, "problems": problem or "none", "message": message or OK},
    )


def rollouts_complete_result(table: pl.DataFrame, samples_per_query: int) -> AssetCheckResult:
    """Every query has exactly ``samples_per_query`` rollouts."""
    counts = table.group_by("query_id", maintain_order=True).len()
    wrong = counts.filter(pl.col("len") != samples_per_query)
    named = ", ".join(f"{query_id} ({n})" for query_id, n in wrong.head(5).iter_rows())
    return AssetCheckResult(
        check_name="rollouts_complete",
        passed=wrong.is_empty(),
        metadata={
            "queries": counts.height,
            "queries_with_wrong_count": wrong.height,
            "expected_per_query": samples_per_query,
            "message": OK
            if wrong.is_empty()
            else f"{wrong.height} of {counts.height} queries do not have rollout.samples_per_query = {samples_per_query} "
            f"rollouts: {named}",
        },
    )


def rollouts_not_degenerate_result(
    table: pl.DataFrame, limit: float, weights_problem: Callable[[], str | None] | None = None
) -> AssetCheckResult:
    """Empty and truncated completions under ``limit`` (grading.max_empty_or_truncated_fraction), and
    every log-probability finite. ``weights_problem`` names the model's non-finite weights (it is
    called only when log-probabilities are not finite, as it reads the weights)."""
    empty = float((table["completion"].str.strip_chars() == "").mean()) if table.height else 0.0
    truncated = float((table["finish_reason"] == "length").mean()) if table.height else 0.0
    non_finite = int((~table["logprob_sum"].is_finite()).sum()) if "logprob_sum" in table.columns else 0
    shares = (
        f"{empty:.0%} of the completions are empty and {truncated:.0%} truncated, above "
        f"grading.max_empty_or_truncated_fraction = {limit:g}"
    )
    hint = "raise rollout.max_tokens if many are truncated"
    passed = empty <= limit and truncated <= limit and non_finite == 0
    if passed:
        message = OK
    elif non_finite:
        cause = weights_problem() if weights_problem is not None else None
        message = (
            f"{non_finite} of {table.height} rollouts have a non-finite log-probability: the model computes NaN or inf "
            f"({cause or 'its weights are finite: the arithmetic overflows at model.dtype'})"
            + (f"; {shares}" if empty > limit or truncated > limit else "")
        )
    else:
        message = f"{shares}: {hint}"
    return AssetCheckResult(
        check_name="rollouts_not_degenerate",
        passed=passed,
        metadata={
            "empty_share": empty,
            "truncated_share": truncated,
            "non_finite_logprobs": non_finite,
            "limit": limit,
            "hint": hint,
            "message": message,
        },
    )


def influence_complete_result(scores: pl.DataFrame, pool: pl.DataFrame) -> AssetCheckResult:
    """Every pool example scored exactly once, with a finite score."""
    scored, examples = set(scores["example_id"]), set(pool["example_id"])
    counts = {
        "unscored_examples": len(examples - scored),
        "unknown_examples": len(scored - examples),
        "non_finite_scores": int((~np.isfinite(scores["score"].to_numpy())).sum()),
        "duplicates": scores.height - len(scored),
    }
    words = {
        "unscored_examples": ("pool example unscored", "pool examples unscored"),
        "unknown_examples": ("scored example not in the pool", "scored examples not in the pool"),
        "non_finite_scores": ("non-finite score", "non-finite scores"),
        "duplicates": ("duplicate row", "duplicate rows"),
    }
    problems = [f"{n} {words[key][n != 1]}" for key, n in counts.items() if n]
    # Rows missing or repeated: say how to repair them (every table rewritten from the configured partitions).
    repair = one_row_per_example(scores, examples, "influence_scores")
    message = ", ".join(problems) + (f"; {repair}" if repair else "")
    return AssetCheckResult(passed=not problems, metadata={**counts, "message": message or OK})


def selection_result(refined: pl.DataFrame, pool: pl.DataFrame, expected: int) -> AssetCheckResult:
    """The selection is a subset of the pool, every example appears once, and ``expected`` are selected."""
    n_selected = int(refined["selected"].sum())
    subset = set(refined["example_id"]) <= set(pool["example_id"])
    complete = refined["example_id"].n_unique() == refined.height == pool.height
    if not subset:
        message = "the selection holds examples that are not in the pool"
    elif not complete:
        message = one_row_per_example(refined, pool["example_id"], "refined_dataset")
    elif n_selected != expected:
        message = f"{n_selected} examples selected where the settings ask for {expected}"
    else:
        message = OK
    return AssetCheckResult(
        passed=message == OK,
        metadata={
            "selected": n_selected,
            "expected": expected,
            "subset_of_pool": subset,
            "every_example_once": complete,
            "message": message,
        },
    )


def grades_have_mixed_queries_result(summary: dict, targets: str, weighting: str, unsolved: str) -> AssetCheckResult:
    """The configured weighting has queries to work with (of a checkpoint's grades, :func:`~drift_assets.core.grading.graders.grade_summary`)."""
    usable = usable_queries(summary, weighting, unsolved) if targets == "onpolicy" else summary["queries"]
    return AssetCheckResult(
        check_name="grades_have_mixed_queries",
        passed=usable > 0,
        metadata={
            **summary,
            "usable_queries": usable,
            "message": OK
            if usable > 0
            else (
                f"no query gives influence.weighting {weighting!r} (unsolved: {unsolved}) anything to contrast "
                f"({summary['queries_all_correct']} all correct, {summary['queries_all_wrong']} all wrong). Raise "
                "rollout.temperature or rollout.samples_per_query, or use validation queries the model solves only sometimes."
            ),
        },
    )


def grades_enough_contrast_result(summary: dict, warn: Callable[[str], None]) -> AssetCheckResult:
    """Enough queries with mixed grades (a warning, also logged by ``warn`` where it fails)."""
    passed, message = contrast_guard(summary["queries"], summary["queries_mixed"])
    if not passed:
        warn(message)
    return AssetCheckResult(
        check_name="grades_enough_contrast",
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        metadata={"queries_mixed": summary["queries_mixed"], "queries": summary["queries"], "message": message},
    )
