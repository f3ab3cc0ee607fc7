"""What a run costs, materialized for real on the small demo: each step's recorded cost against the
tokens its tables hold, the summary's cost line, and warmup.checkpoints scored along a fine-tune
made here (no warm-up run trained)."""

import base64
import re
import shutil

import polars as pl
import pytest
from dagster import AssetKey, AssetRecordsFilter

from drift_assets.cli import _summary
from drift_assets.core.data.fingerprint import model_fingerprint
from drift_assets.core.data.pool import reference_tokens
from drift_assets.core.data.sequences import encode_prompt, render_prompt
from drift_assets.definitions import build_definitions
from drift_assets.runner import materialize_pipeline
from drift_assets_tests.conftest import SMALL_DEMO, instance_in, settings_in, shared_settings
from drift_assets_tests.helpers.materialized import latest_metadata, read


def partition_metadata(instance, asset: str, partition: str) -> dict:
    records = instance.fetch_materializations(AssetRecordsFilter(AssetKey(asset), asset_partitions=[partition]), limit=1).records
    return {k: v.value for k, v in records[0].event_log_entry.asset_materialization.metadata.items()}


def prompt_tokens(tokenizer, prompts) -> list[int]:
    return [len(encode_prompt(tokenizer, render_prompt(tokenizer, prompt))) for prompt in prompts]


@pytest.fixture(scope="module")
def pipeline(materialized):
    """The session's materialized workspace (base checkpoint only, three shards), read-only."""
    settings = shared_settings(materialized)
    with instance_in(materialized) as instance:
        yield settings, instance


@pytest.mark.vllm
def test_each_step_records_the_tokens_it_passed_and_the_summary_adds_them_up(pipeline):
    from transformers import AutoTokenizer

    settings, instance = pipeline
    tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
    pool, queries, rollouts = read(settings, "training_pool"), read(settings, "validation_queries"), read(settings, "rollouts")
    at = {name: partition_metadata(instance, name, "base") for name in ("rollouts", "projection_basis", "validation_gradients")}
    shards = [partition_metadata(instance, "training_gradient_projections", f"base|{s:03d}") for s in range(3)]

    # Counted here from the tables and the tokenizer, not from what the steps report.
    query_prompts = prompt_tokens(tokenizer, queries["prompt"])
    assert at["rollouts"]["cost_forward_tokens"] == sum(query_prompts) + rollouts["n_tokens"].sum()  # each prompt once
    assert at["rollouts"]["cost_backward_tokens"] == 0
    references = sum(reference_tokens(tokenizer, p, r) for p, r in zip(queries["prompt"], queries["reference_response"]))
    assert at["projection_basis"]["cost_backward_tokens"] == references  # the PCA fit: one pass over the references
    validation = sum(prompt_tokens(tokenizer, rollouts["prompt"])) + rollouts["n_tokens"].sum() + references
    assert at["validation_gradients"]["cost_forward_tokens"] == validation
    pool_tokens = (pool["n_prompt_tokens"] + pool["n_response_tokens"]).to_list()
    assert sum(shard["cost_backward_tokens"] for shard in shards) == sum(pool_tokens)  # every example once
    assert all(shard["rows_computed"] == shard["dagster/row_count"] for shard in shards)

    # One full-pool SFT run of the tests' recipe: 60 steps of 16 examples of the pool's mean length.
    reference = 3 * round(60 * 16 * sum(pool_tokens) / len(pool_tokens))
    steps = [*at.values(), *shards]
    passes = sum(figures["cost_token_passes"] for figures in steps)
    # forward 1 and backward 2 per token: rollouts forward only, every gradient pass both ways
    assert passes == at["rollouts"]["cost_forward_tokens"] + 3 * (references + validation + sum(pool_tokens))
    assert at["validation_gradients"]["cost_vs_full_sft"] == round(3 * validation / reference, 4)

    refined = latest_metadata(instance, "refined_dataset")
    # Scoring passes no token; choosing between DRIFT's selection and the loss filter's (the default
    # selection.choose_among) fine-tunes each with the recipe, forward and backward, and decodes the
    # validation queries: its own figures, added to the rest.
    assert settings.selection.choose_among == ["loss"] and refined["selection_chosen"] in ("drift", "loss")
    assert 1.6 < refined["cost_backward_tokens"] / (reference / 3) < 2.4
    assert refined["cost_forward_tokens"] > refined["cost_backward_tokens"]
    chosen = refined["cost_forward_tokens"] + 2 * refined["cost_backward_tokens"]
    assert refined["cost_token_passes"] == chosen
    assert refined["pipeline_token_passes"] == passes + chosen
    assert refined["pipeline_cost_vs_full_sft"] == round((passes + chosen) / reference, 3)
    assert base64.b64decode(refined["cost_plot"].split("base64,", 1)[1].rstrip(")")).startswith(b"\x89PNG")
    assert "| gradients at base |" in refined["cost_by_stage"]
    seconds = latest_metadata(instance, "influence_scores")["cost_wall_seconds"]
    assert seconds > 0

    evaluation = latest_metadata(instance, "refined_model_evaluation")
    # Two fine-tunes of the recipe (the full pool and the selection), forward and backward.
    assert 1.6 < evaluation["cost_backward_tokens"] / (reference / 3) < 2.4
    assert evaluation["cost_forward_tokens"] > evaluation["cost_backward_tokens"]  # and the test queries decoded

    lines = _summary(settings, instance).splitlines()
    head = next(line for line in lines if line.startswith("cost "))
    split = lines[lines.index(head) + 1].strip()
    assert f"{passes + chosen:,} token passes, {(passes + chosen) / reference:.2f}× one full-pool SFT run ({reference:,})" in head
    assert re.search(r"the evaluation apart: \d+\.\d\d×, \d+ s$", head)
    assert split.startswith(f"rollouts {at['rollouts']['cost_token_passes'] / reference:.2f}× ")
    assert " | warm-up " in split and " | gradients at base " in split and re.search(r" \| scoring \d+ s \| ", split)
    assert re.search(rf" \| choice {chosen / reference:.2f}× \d+ s$", split)
    assert "cost " not in _summary(settings)  # without the instance that recorded the runs: no line


@pytest.fixture(scope="module")
def given(materialized, tmp_path_factory):
    """A copy of the materialized workspace scored also at a checkpoint of a short fine-tune made here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from drift_assets.core.training.sft import SftOptions, fine_tune
    from drift_assets.tasks.tiny_model import save_model

    directory = tmp_path_factory.mktemp("given") / "workspace"
    shutil.copytree(materialized, directory)
    base = shared_settings(directory)
    model = AutoModelForCausalLM.from_pretrained(base.model_path)
    tokenizer = AutoTokenizer.from_pretrained(base.model_path)
    messages = read(base, "training_pool")["messages"].to_list()
    fine_tune(model, tokenizer, messages, SftOptions(steps=5, batch_size=16, learning_rate=1e-3), log=lambda _: None)
    save_model(model, tokenizer, directory / "runs" / "checkpoint-5")
    # Without test queries the graph has no evaluation: this is about the scores.
    settings = settings_in(directory, warmup={"checkpoints": ["runs/checkpoint-5"]}, data={"test_queries": None})
    assert SMALL_DEMO["warmup"] == {"steps": []} and settings.checkpoints == ["base", "checkpoint-5"]
    with instance_in(directory) as instance:
        done = materialize_pipeline(build_definitions(settings), instance, include_demo=False, only_stale=True)
        yield settings, instance, done, directory / "runs" / "checkpoint-5"


@pytest.mark.vllm
def test_a_given_checkpoint_is_scored_at_without_a_warm_up_run(given):
    settings, instance, done, path = given
    shards = [f"training_gradient_projections[checkpoint-5|{s:03d}]" for s in range(3)]
    assert {"warmup_checkpoints[checkpoint-5]", "rollouts[checkpoint-5]", *shards, "influence_scores"} <= set(done)
    assert not [name for name in done if "[base" in name]  # the base model's partitions stay as they were
    recorded = read(settings, "warmup_checkpoints")
    assert recorded.select("checkpoint", "path", "step", "adapter").rows() == [("checkpoint-5", str(path), None, False)]
    assert recorded["model_fingerprint"][0] == model_fingerprint(path) != model_fingerprint(settings.model_path)
    # The chain at the checkpoint ran on its model: its own rollouts and gradients.
    at_checkpoint = read(settings, "rollouts").filter(pl.col("checkpoint") == "checkpoint-5")
    assert set(at_checkpoint["model_fingerprint"]) == {model_fingerprint(path)}
    checkpoints = latest_metadata(instance, "influence_scores")["checkpoints"]
    assert "| base |" in checkpoints and "| checkpoint-5 |" in checkpoints  # scored at both, averaged
    warmup = partition_metadata(instance, "warmup_checkpoints", "checkpoint-5")
    assert warmup["cost_token_passes"] == 0  # nothing trained

    lines = _summary(settings, instance).splitlines()
    assert any(re.match(r"warm-up checkpoints +pass@1 checkpoint-5 \d\.\d{3}", line) for line in lines)
    split = lines[next(i for i, line in enumerate(lines) if line.startswith("cost ")) + 1]
    assert re.search(r"\| warm-up \d+ s \|", split) and "gradients at checkpoint-5 " in split
