"""TRL's SFTTrainer on an export, as a user would run it (the folder loaded with ``datasets``, the model
and tokenizer from their directory, TRL's defaults otherwise), and the pipeline's own loss mask of
the same rows, to compare them token by token."""

from pathlib import Path

import datasets
from transformers import AutoModelForCausalLM, AutoTokenizer

IGNORED = -100  # the label of a token outside the loss (transformers' and TRL's convention)


def train_two_steps(model_dir: Path, export_dir: Path, output_dir: Path) -> tuple[list[float], float, datasets.Dataset]:
    """(the two steps' training losses, how far the weights moved, the train split as TRL prepared
    it: each row's ``input_ids`` and ``labels``)."""
    from trl import SFTConfig, SFTTrainer

    dataset = datasets.load_dataset(str(export_dir), split="train", cache_dir=str(output_dir / "datasets"))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    before = [p.detach().clone() for p in model.parameters()]
    config = SFTConfig(
        output_dir=str(output_dir),
        max_steps=2,
        per_device_train_batch_size=4,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(model_dir)
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    moved = sum(float((p.detach() - b).abs().sum()) for p, b in zip(model.parameters(), before, strict=True))
    return losses, moved, trainer.train_dataset


def pipeline_labels(tokenizer, prompt: list[dict], completion: list[dict]) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one example as the pipeline's SFT trains it: its own encoding
    (``pool_token_pairs``) and batch (``collate_pairs``), whose ``response_mask`` marks the positions
    whose next token counts; a label is that next token, shifted back to the token itself as TRL
    writes labels (the model shifts them)."""
    import json

    from drift_assets.core.data.sequences import collate_pairs
    from drift_assets.core.gradients.tables import pool_token_pairs

    prompts, responses = pool_token_pairs(tokenizer, [json.dumps(prompt + completion)])
    batch = collate_pairs(tokenizer, prompts, responses)
    ids = batch.input_ids[0].tolist()
    counted = batch.response_mask[0].tolist()
    labels = [IGNORED] + [token if counted[t - 1] else IGNORED for t, token in enumerate(ids) if t > 0]
    return ids, labels
