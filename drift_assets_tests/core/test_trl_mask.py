"""TRL trains what the pipeline evaluated: on the export of a demo task's pool, SFTTrainer's default
loss covers exactly the tokens the pipeline's own fine-tune trains on, token by token (its labels
after its collator, against the pipeline's encoding and batch: ``trl_sft.pipeline_labels``)."""

from __future__ import annotations

import json

import datasets
import polars as pl
import pytest

from drift_assets.core.attribution.selection import refined_table, select
from drift_assets.core.data.pool import normalize_pool, read_rows
from drift_assets.core.data.publish import export_dataset
from drift_assets.tasks import get_task
from drift_assets.tasks.tiny_model import TinyLlamaShape, build_char_tokenizer, build_tiny_llama, save_model
from drift_assets_tests.helpers.card_facts import FACTS
from drift_assets_tests.helpers.trl_sft import IGNORED, pipeline_labels


# arithmetic: the default demo's template without role tokens; sort: role tokens. (A tokenizer without
# a chat template, as the count task's, cannot render the conversational format in TRL at all.)
@pytest.mark.parametrize("task_name", ["arithmetic", "sort"])
def test_trls_loss_mask_on_the_export_is_the_pipelines_token_by_token(task_name, tmp_path):
    from trl import SFTConfig, SFTTrainer

    task = get_task(task_name)
    tokenizer = build_char_tokenizer(task.chat_template)
    model_dir = tmp_path / "model"
    shape = TinyLlamaShape(hidden_size=32, num_layers=1, num_heads=1, intermediate_size=48, max_positions=256)
    save_model(build_tiny_llama(tokenizer, shape, seed=0), tokenizer, model_dir)
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(row) + "\n" for row in task.training_pool_rows(16, task.defaults.noise, seed=0)))
    examples = normalize_pool(read_rows(pool), tokenizer, 256, source="pool.jsonl").examples
    scores = pl.DataFrame(
        {"example_id": examples["example_id"], "score": [float(-i) for i in range(examples.height)]}
    ).with_columns(rank=pl.int_range(1, examples.height + 1))
    export_dataset(refined_table(examples, scores, select(scores, "top_k", k=8)), tmp_path / "exports", FACTS)

    # As a user runs it: the folder loaded with datasets, TRL's defaults.
    train = datasets.load_dataset(str(tmp_path / "exports"), split="train", cache_dir=str(tmp_path / "cache"))
    assert train.num_rows == 8 and "is_corrupted" not in train.column_names
    config = SFTConfig(output_dir=str(tmp_path / "sft"), report_to=[], use_cpu=True, max_steps=1)
    trainer = SFTTrainer(model=str(model_dir), args=config, train_dataset=train, processing_class=tokenizer)
    prepared = trainer.train_dataset
    for row, trained in zip(train, prepared, strict=True):
        ids, labels = pipeline_labels(tokenizer, row["prompt"], row["completion"])
        batch = trainer.data_collator([trained])  # the labels the loss sees
        trl_ids, trl_labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        assert trl_ids == ids, tokenizer.decode(trl_ids)
        assert trl_labels == labels, (tokenizer.decode(trl_ids), trl_labels, labels)
        counted = [token for token in labels if token != IGNORED]
        # The response and its EOS, nothing of the prompt.
        assert tokenizer.decode(counted) == row["completion"][0]["content"] + tokenizer.eos_token
