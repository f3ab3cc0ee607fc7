"""The graph on a user's own model and data, as the README's "Use your own model and data" sets it up:
a chat-template BPE model, a Parquet pool of chat `messages` (with system turns), JSONL validation
and test queries with a `module:function` grader, no demo assets. Materialized for real through
Dagster by the command the README gives (``DRIFT_ASSETS_SETTINGS=… python -m drift_assets materialize``)."""

import inspect
import json
import os
import subprocess
import sys

import datasets
import numpy as np
import polars as pl
import pytest
from dagster import DagsterInstance
from transformers import AutoTokenizer

from drift_assets.core.data.sequences import encode_prompt, render_messages_prompt
from drift_assets.settings import load_settings
from drift_assets.tasks.chat_model import save_chat_model
from drift_assets_tests.conftest import write_settings
from drift_assets_tests.helpers.materialized import read


def same_parity(completion: str, reference: str) -> bool:
    """A stand-in for a real checker: true for about half of any model's completions, so that a
    random model's rollouts have mixed grades (the grades check would stop the run otherwise)."""
    return len(completion.strip()) % 2 == int(reference) % 2


def pool_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        messages = [
            {"role": "user", "content": f"What is {i} + {i + 2}?"},
            {"role": "assistant", "content": f"Answer: {2 * i + 2}"},
        ]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": "Answer briefly."})
        rows.append({"messages": messages, "source": f"batch-{i % 2}"})
    return rows


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    directory = tmp_path_factory.mktemp("own")
    (directory / "my_grader.py").write_text(inspect.getsource(same_parity))  # the materialize process imports it
    save_chat_model(directory / "model")
    pl.DataFrame(pool_rows(40)).write_parquet(directory / "pool.parquet")
    queries = [
        {"prompt": f"What is {i} + {i + 5}?", "reference": str(2 * i + 5), "grader": "my_grader:same_parity"} for i in range(6)
    ]
    (directory / "val.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    tests = [
        {"prompt": f"What is {i} + {i + 7}?", "reference": str(2 * i + 7), "grader": "my_grader:same_parity"} for i in range(10)
    ]
    (directory / "test.jsonl").write_text("".join(json.dumps(q) + "\n" for q in tests))
    settings = load_settings(
        write_settings(
            directory,
            {
                "model": {"path": "model", "dtype": "float32", "device": "cpu"},
                "data": {
                    "training_pool": "pool.parquet",
                    "validation_queries": "val.jsonl",
                    "test_queries": "test.jsonl",
                    "max_example_tokens": 128,
                },
                "demo": {"enabled": False},
                "rollout": {"backend": "transformers", "samples_per_query": 4, "max_tokens": 16},
                "projection": {"shards": 2},
                "warmup": {"steps": []},
                "benchmark": {"sft": {"steps": 10, "batch_size": 8}},
                # The query files may name only graders listed here. A random model runs to max_tokens: the
                # rollouts check would (rightly) stop the run.
                "grading": {"custom_graders": ["my_grader:same_parity"], "max_empty_or_truncated_fraction": 1.0},
            },
        )
    )
    (directory / "dagster_home").mkdir()
    environment = {
        **os.environ,
        "DRIFT_ASSETS_SETTINGS": str(directory / "settings.yaml"),
        "DAGSTER_HOME": str(directory / "dagster_home"),
        "PYTHONPATH": os.pathsep.join([str(directory), os.environ.get("PYTHONPATH", "")]),
    }  # where my_grader lives
    command = subprocess.run(
        [sys.executable, "-m", "drift_assets", "materialize"], env=environment, capture_output=True, text=True, timeout=600
    )
    assert command.returncode == 0, command.stderr[-3000:]
    instance = DagsterInstance.from_config(str(directory / "dagster_home"))
    done = {key.to_user_string() for key in instance.get_asset_keys() if instance.get_latest_materialization_event(key)}
    yield settings, done, command
    instance.dispose()


def test_the_whole_graph_runs_without_demo_assets(own):
    settings, done, _ = own
    assert not {"demo_task_files", "demo_base_model"} & done
    assert {"rollouts", "influence_scores", "refined_dataset", "refined_model_evaluation"} <= done


def test_the_command_prints_the_summary_without_library_noise(own):
    settings, done, command = own
    shards = settings.projection.shards  # each shard of training_gradient_projections counts apart
    assert f"materialized {len(done) - 1 + shards} stale or missing assets/shards" in command.stdout
    for line in (
        "training_pool            40 examples (0 quarantined)",
        "rollouts / grades        24 rollouts of the base model by transformers",
        "evaluation               refined    accuracy",
    ):
        assert line in command.stdout
    # Dagster's beta warnings about the observable sources and its SQLite schema stamps are silenced.
    assert "BetaWarning" not in command.stderr and "alembic" not in command.stderr


def test_the_loop_closes_on_the_users_test_queries_with_their_grader(own):
    settings, _, _ = own
    evaluation = read(settings, "refined_model_evaluation")
    assert evaluation["model"].to_list() == ["base", "full", "refined"]
    assert evaluation["n_queries"].to_list() == [10, 10, 10]
    assert (
        (evaluation["accuracy_low"] <= evaluation["accuracy"]) & (evaluation["accuracy"] <= evaluation["accuracy_high"])
    ).all()


def test_pool_prompts_are_rendered_with_the_chat_template_and_keep_system_turns(own):
    settings, _, _ = own
    pool = read(settings, "training_pool").sort("example_id")
    assert pool.height == 40 and set(pool["source"]) == {"batch-0", "batch-1"}
    tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
    for row in pool.iter_rows(named=True):
        messages = json.loads(row["messages"])
        rendered = render_messages_prompt(tokenizer, messages[:-1])
        assert rendered.startswith(
            "<|im_start|>system\nAnswer briefly." if messages[0]["role"] == "system" else "<|im_start|>user\n"
        )
        assert row["n_prompt_tokens"] == len(encode_prompt(tokenizer, rendered))


def test_rollouts_are_graded_by_the_custom_grader_and_every_example_is_scored(own):
    settings, _, _ = own
    rollouts, grades = read(settings, "rollouts"), read(settings, "grades")
    assert rollouts.height == 6 * 4 and set(grades["grader"]) == {"my_grader:same_parity"}
    graded = rollouts.join(read(settings, "validation_queries").select("query_id", "reference"), on="query_id", how="left").join(
        grades.select("rollout_id", "correct"), on="rollout_id", how="left"
    )
    for completion, reference, correct in graded.select("completion", "reference", "correct").rows():
        assert correct == same_parity(completion, reference)
    assert 0 < grades["correct"].sum() < grades.height
    gradients = read(settings, "validation_gradients")
    assert gradients.height == rollouts.height + 6 and gradients["grad_norm"].is_finite().all()
    scores = read(settings, "influence_scores")
    assert sorted(scores["example_id"]) == sorted(read(settings, "training_pool")["example_id"])
    assert scores["score"].is_finite().all()


def test_trls_sft_trainer_trains_on_the_export(own, tmp_path):
    from drift_assets_tests.helpers.trl_sft import IGNORED, pipeline_labels, train_two_steps

    settings, _, _ = own
    losses, moved, prepared = train_two_steps(settings.model_path, settings.resolve("exports"), tmp_path)
    assert len(losses) == 2 and all(np.isfinite(losses)) and moved > 0
    # TRL's tokens and loss of each example are the pipeline's, and then the newline ChatML's template
    # writes after <|im_end|>, which TRL's completion also holds.
    tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
    exported = datasets.load_dataset(settings.resolve("exports"), split="train", cache_dir=str(tmp_path / "cache"))
    for row, trained in zip(exported, prepared, strict=True):
        ids, labels = pipeline_labels(tokenizer, row["prompt"], row["completion"])
        extra = trained["input_ids"][len(ids) :]
        assert trained["input_ids"][: len(ids)] == ids and tokenizer.decode(extra).strip() == ""
        assert trained["labels"] == labels + extra and labels.count(IGNORED) < len(labels)


def test_the_export_is_the_selection_in_prompt_completion_format(own, tmp_path):
    settings, _, _ = own
    refined = read(settings, "refined_dataset")
    exported = datasets.load_dataset(settings.resolve("exports"), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(exported) == int(refined["selected"].sum()) == 20
    with_system = [row for row in exported if row["prompt"][0]["role"] == "system"]
    assert with_system and all(
        r["prompt"][0]["content"] == "Answer briefly." and [m["role"] for m in r["completion"]] == ["assistant"]
        for r in with_system
    )
