"""Failed checks and failing steps that say why (the reliability probe of 2026-12-05: N11, N24,
N25, N26): every blocking check's failure carries its reason to the terminal, non-finite weights are
named before anything is computed from them, a custom grader has a timeout, and query ids reach no
file name.

The checks' results are tested on tables built here; the cases that need the pipeline run the
command line (or one run of the base checkpoint's steps) on a copy of the demo, with the
transformers engine (a few seconds on the tiny model).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch
from dagster import AssetCheckResult, AssetCheckSpec, AssetKey, DagsterInstance, MetadataValue, Output, asset, materialize

from drift_assets.cli import check_reason, failure_paragraph, main
from drift_assets.core.data.finite import NonFiniteWeightsError, check_finite_weights, non_finite_tensors
from drift_assets.core.data.stored import REPAIR_DUPLICATES
from drift_assets.core.gradients.projection import ProjectionBasis, ProjectionOptions, random_basis
from drift_assets.core.runtime.progress import Progress
from drift_assets.defs.checks import (
    influence_complete_result,
    rollouts_complete_result,
    rollouts_not_degenerate_result,
    schema_and_ids_result,
    selection_result,
    vectors_result,
)
from drift_assets.resources import Warehouse
from drift_assets.tasks.tiny_model import TinyLlamaShape, build_char_tokenizer, build_tiny_llama
from drift_assets_tests.conftest import settings_in

NAN_TENSOR = "model.layers.1.mlp.down_proj.weight"


def tiny_model():
    return build_tiny_llama(
        build_char_tokenizer(), TinyLlamaShape(hidden_size=32, num_layers=2, num_heads=1, intermediate_size=48)
    )


def with_nan(model, name: str = NAN_TENSOR, count: int = 5):
    with torch.no_grad():
        dict(model.named_parameters())[name].view(-1)[:count] = float("nan")
    return model


# ---------- N11: non-finite weights are named; nothing is computed from them ----------


def test_N11_non_finite_weights_are_named_in_the_loaded_model_and_in_its_files(tmp_path):
    model = tiny_model()
    check_finite_weights(model, "model.path /m")  # finite: nothing to say
    with_nan(model)
    size = dict(model.named_parameters())[NAN_TENSOR].numel()
    with pytest.raises(
        NonFiniteWeightsError,
        match=rf"^model\.path /m: non-finite weights \(NaN or inf\) in {NAN_TENSOR} \(5 of {size} values\); "
        r"nothing can be sampled, differentiated or fine-tuned from them: restore the model's weights$",
    ):
        check_finite_weights(model, "model.path /m")
    model.save_pretrained(tmp_path)
    assert non_finite_tensors(tmp_path) == [(f"model.safetensors: {NAN_TENSOR}", 5, size)]


def test_N11_a_basis_with_non_finite_values_names_its_layers():
    model = tiny_model()
    basis = random_basis(model, ProjectionOptions(rank=2, basis="random"))
    assert basis.non_finite_layers() == []
    name = sorted(basis.matrices)[3]
    basis.matrices[name][1][0, 0] = float("nan")
    assert basis.non_finite_layers() == [name]
    again = ProjectionBasis.from_frame(basis.to_frame(), basis.options)
    assert again.non_finite_layers() == [name]


# ---------- every blocking check's failure says why ----------


def rollouts(n_queries: int = 2, per_query: int = 4, **columns) -> pl.DataFrame:
    n = n_queries * per_query
    table = {
        "checkpoint": ["base"] * n,
        "rollout_id": [f"q{i // per_query}-{i % per_query}" for i in range(n)],
        "query_id": [f"q{i // per_query}" for i in range(n)],
        "completion": ["Answer: 2"] * n,
        "finish_reason": ["stop"] * n,
        "logprob_sum": [-1.0] * n,
    }
    return pl.DataFrame({**table, **columns})


def message(result: AssetCheckResult) -> str:
    return result.metadata["message"].value


def test_rollouts_complete_names_the_queries_with_the_wrong_count():
    assert rollouts_complete_result(rollouts(), 4).passed
    short = rollouts().filter(pl.col("rollout_id") != "q1-3")
    result = rollouts_complete_result(short, 4)
    assert not result.passed
    assert message(result) == "1 of 2 queries do not have rollout.samples_per_query = 4 rollouts: q1 (3)"


def test_N11_rollouts_not_degenerate_gives_its_shares_its_hint_and_what_non_finite_log_probabilities_mean():
    n = 8
    assert rollouts_not_degenerate_result(rollouts(), 0.2).passed
    truncated = rollouts(finish_reason=["length"] * 6 + ["stop"] * 2)
    result = rollouts_not_degenerate_result(truncated, 0.2)
    assert not result.passed
    assert message(result) == (
        "0% of the completions are empty and 75% truncated, above grading.max_empty_or_truncated_fraction = 0.2: "
        "raise rollout.max_tokens if many are truncated"
    )
    # What a model with NaN weights samples: every completion runs to max_tokens, with a NaN log-probability.
    nan = rollouts(completion=[""] * n, finish_reason=["length"] * n, logprob_sum=[math.nan] * n)
    result = rollouts_not_degenerate_result(nan, 0.2, lambda: f"non-finite weights in {NAN_TENSOR} (5 of 12288 values)")
    assert not result.passed and result.metadata["non_finite_logprobs"].value == n
    assert message(result) == (
        "8 of 8 rollouts have a non-finite log-probability: the model computes NaN or inf "
        f"(non-finite weights in {NAN_TENSOR} (5 of 12288 values)); "
        "100% of the completions are empty and 100% truncated, above grading.max_empty_or_truncated_fraction = 0.2"
    )


def test_schema_and_vector_checks_say_what_is_wrong():
    table = rollouts().with_columns(pl.lit("q0-0").alias("rollout_id"))
    result = schema_and_ids_result(
        "rollouts_schema_and_ids", table, {"rollout_id": pl.String, "n_tokens": pl.Int64}, "rollout_id"
    )
    assert not result.passed and message(result) == "missing column 'n_tokens'; 7 duplicate rollout_id"
    grads = pl.DataFrame({"grad": [[1.0, 2.0], [math.nan, 0.0], [math.inf, 1.0]]}, schema={"grad": pl.List(pl.Float32)})
    result = vectors_result("vectors_finite", grads)
    assert not result.passed
    assert message(result) == (
        "2 vectors with NaN or inf: the model's weights are not finite, or the gradient pass overflows at "
        "model.dtype (float32 is the safe choice)"
    )
    assert message(vectors_result("vectors_finite", grads.head(1))) == "ok"


def test_influence_and_selection_checks_say_what_is_wrong():
    pool = pl.DataFrame({"example_id": ["a", "b", "c"]})
    scores = pl.DataFrame({"example_id": ["a", "a", "d"], "score": [1.0, math.nan, 0.5]})
    result = influence_complete_result(scores, pool)
    assert not result.passed
    counts = "2 pool examples unscored, 1 scored example not in the pool, 1 non-finite score, 1 duplicate row"
    assert message(result).startswith(counts + "; influence_scores should hold one row per pool example (3)")
    assert message(result).endswith(REPAIR_DUPLICATES)  # and says how to repair it
    assert influence_complete_result(pl.DataFrame({"example_id": ["a", "b", "c"], "score": [1.0, 2.0, 3.0]}), pool).passed
    refined = pl.DataFrame({"example_id": ["a", "b", "c"], "selected": [True, True, False]})
    assert selection_result(refined, pool, 2).passed
    result = selection_result(refined, pool, 1)
    assert not result.passed and message(result) == "2 examples selected where the settings ask for 1"
    result = selection_result(refined.head(2), pool, 2)
    assert message(result) == (
        f"refined_dataset should hold one row per pool example (3), but holds 1 pool example(s) missing (e.g. c): {REPAIR_DUPLICATES}"
    )


def test_a_check_without_a_message_reaches_the_terminal_with_its_metadata(tmp_path):
    """Any check (one added later, or another library's) that fails without a "message" still says why."""

    @asset(check_specs=[AssetCheckSpec("toy_check", asset="toy", blocking=True)])
    def toy():
        yield Output(1)
        yield AssetCheckResult(
            check_name="toy_check", passed=False, metadata={"empty_share": 0.5, "limit": 0.2, "hint": "raise the limit"}
        )

    with DagsterInstance.ephemeral() as instance:
        with pytest.raises(Exception) as raised:
            materialize([toy], instance=instance)
        paragraph = failure_paragraph(raised.value, instance)
    assert paragraph.splitlines()[1] == "  check toy_check on toy failed: empty_share 0.5, limit 0.2; hint: raise the limit"
    metadata = {"message": MetadataValue.text("why"), "rows": MetadataValue.int(3)}
    assert check_reason(metadata) == "why" and check_reason({}) == ""


def test_progress_lines_name_the_unit_in_the_singular():
    now = [0.0]
    lines: list[str] = []
    progress = Progress("rollouts", 8, lines.append, unit="queries", clock=lambda: now[0])
    now[0] = 9.0
    progress.advance()
    assert lines == ["rollouts: 1/8 (9.0 s per query, ETA 1m03s, 9s so far)"]


# ---------- through the command line and the pipeline ----------


def s0_workspace(demo_dir: Path, tmp_path: Path, pool_rows: int = 40, queries: int = 4) -> Path:
    """The probe's setup S0, smaller: a copy of the demo model, the first pool rows and queries."""
    shutil.copytree(demo_dir / "demo" / "model", tmp_path / "demo" / "model")
    for name, count in (("training_pool.jsonl", pool_rows), ("validation_queries.jsonl", queries)):
        lines = (demo_dir / "demo" / name).read_text().splitlines()[:count]
        (tmp_path / "demo" / name).write_text("\n".join(lines) + "\n")
    return tmp_path


def fast_settings(directory: Path, **overrides):
    base = {
        "demo": {"enabled": False},
        "data": {"test_queries": None},
        "rollout": {"backend": "transformers", "samples_per_query": 2, "max_tokens": 8},
        "grading": {"max_empty_or_truncated_fraction": 1.0},  # 8 tokens truncate most answers; that is not the point here
        "projection": {"shards": 1},
    }
    for group, values in overrides.items():
        base[group] = {**base.get(group, {}), **values}
    return settings_in(directory, **base)


def failure(capsys) -> list[str]:
    error = capsys.readouterr().err
    return error[error.index("error: the materialization failed.") :].splitlines()


def test_N11_nan_weights_fail_naming_the_tensor_and_no_basis_is_committed(demo_dir, tmp_path, capsys, monkeypatch):
    workspace = s0_workspace(demo_dir, tmp_path)
    from safetensors.torch import load_file, save_file

    weights = workspace / "demo" / "model" / "model.safetensors"
    tensors = load_file(weights)
    tensors[NAN_TENSOR].view(-1)[:5] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    settings = fast_settings(workspace)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["materialize", "--settings", str(workspace / "settings.yaml")]) == 1
    lines = failure(capsys)
    assert f"non-finite weights (NaN or inf) in {NAN_TENSOR} (5 of " in lines[1], lines
    assert str(workspace / "demo" / "model") in lines[1]
    warehouse = Warehouse.from_settings(settings)
    assert warehouse.exists("training_pool")  # what ran before is there: the table path is the one looked at
    if warehouse.exists("projection_basis"):
        assert warehouse.scan("projection_basis").collect()["values"].explode().is_finite().all()


def test_N26_a_grader_that_never_returns_fails_the_step_naming_query_grader_and_setting(demo_dir, tmp_path, capsys, monkeypatch):
    workspace = s0_workspace(demo_dir, tmp_path, queries=2)
    (workspace / "slowgrader_n26.py").write_text("import time\n\ndef grade(completion, reference):\n    time.sleep(3600)\n")
    monkeypatch.syspath_prepend(str(workspace))
    queries = workspace / "demo" / "validation_queries.jsonl"
    rows = [json.loads(line) for line in queries.read_text().splitlines()]
    rows[1]["grader"] = "slowgrader_n26:grade"
    queries.write_text("".join(json.dumps(row) + "\n" for row in rows))
    fast_settings(workspace, grading={"custom_graders": ["slowgrader_n26:grade"], "timeout_s": 2})
    import drift_assets.defs.grades as grades_module

    monkeypatch.setattr(grades_module, "PROGRESS_EVERY_S", 0.5)  # the terminal's 10 s, shortened
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["materialize", "--settings", str(workspace / "settings.yaml")]) == 1
    error = capsys.readouterr().err
    lines = error[error.index("error: the materialization failed.") :].splitlines()
    query = rows[1]["query_id"]
    assert re.fullmatch(
        rf"  GraderTimeout: query {query}, rollout \w+: grader 'slowgrader_n26:grade' did not return within "
        r"grading\.timeout_s = 2 s \(reference '\d+', completion .*\): fix the grader, or raise grading\.timeout_s",
        lines[1],
    ), lines
    # Meanwhile the progress lines said what grading waited on.
    assert re.search(rf"checkpoint base grading: \d/4 .*waiting on grader 'slowgrader_n26:grade' for query {query}", error), error


def test_N24_N25_hostile_and_over_long_queries_are_quarantined_and_no_id_reaches_a_file_name(demo_dir, tmp_path, instance):
    from drift_assets.definitions import build_definitions
    from drift_assets.runner import materialize_assets

    workspace = s0_workspace(demo_dir, tmp_path)
    hostile = ["../../../../tmp/x_n25", "/etc/passwd", "checkpoint=base/x"]
    lines = [
        json.dumps({"query_id": query_id, "prompt": f"What is {i} + 1?\n", "reference": str(i + 1)}).encode()
        for i, query_id in enumerate(hostile)
    ]
    lines += [
        json.dumps({"query_id": "a\nb\x1b[31m", "prompt": "What is 5 + 1?\n", "reference": "6"}).encode(),
        b'{"query_id": "bytes", "prompt": "What is 9\xff?", "reference": "9"}',
        b'{"query_id": "surrogate", "prompt": "What is \\udc00?", "reference": "9"}',
        json.dumps(
            {"query_id": "long", "prompt": "What is 2 + 2?\n", "reference": "4", "reference_response": "Answer: " + "4" * 4060}
        ).encode(),
        json.dumps({"query_id": "digits", "prompt": "What is 3 + 3?\n", "reference": "6" * 3000}).encode(),
    ]
    (workspace / "demo" / "validation_queries.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    settings = fast_settings(workspace, projection={"basis": "pca"})
    defs = build_definitions(settings)
    keys = [AssetKey(name) for name in ("validation_queries", "rollouts", "projection_basis", "validation_gradients")]
    materialize_assets(defs, instance, keys[:1])
    run = instance.get_runs(limit=1)[0]
    warnings = [entry.user_message for entry in instance.all_logs(run.run_id) if entry.level >= logging.WARNING]
    for row, reason in (
        (4, "query_id has control characters ('\\n', '\\x1b')"),
        (5, "not UTF-8 (byte 0xff"),
        (6, "a lone surrogate"),
        (7, "query 'long': reference_response over the maximum length (40"),
        (8, "query 'digits': reference (its reference_response) over the maximum length (30"),
    ):
        assert any(f"validation_queries.jsonl row {row}: {reason}" in message for message in warnings), (row, warnings)
    materialize_assets(defs, instance, keys[1:], partition_key="base")
    warehouse = Warehouse.from_settings(settings)
    assert warehouse.scan("validation_queries").collect()["query_id"].to_list() == hostile  # kept, as values
    gradients = warehouse.scan("validation_gradients").collect()
    assert gradients["query_id"].unique().sort().to_list() == sorted(hostile)
    names = [path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*")]
    assert not [name for name in names if any(part in name for part in ("x_n25", "passwd", "base/x", "long", "digits"))]
    assert not Path("/tmp/x_n25").exists()
    basis = instance.get_latest_materialization_event(AssetKey("projection_basis")).asset_materialization.metadata
    assert basis["fitted_on_sequences"].value == len(hostile)  # the over-long references were never fitted on
