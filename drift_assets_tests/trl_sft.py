"""Two steps of TRL's SFTTrainer on an export, as a user would run it: the JSONL loaded with
``datasets``, the model and tokenizer from their directory, TRL's defaults otherwise."""

from pathlib import Path

import datasets
from transformers import AutoModelForCausalLM, AutoTokenizer


def train_two_steps(model_dir: Path, export_jsonl: Path, output_dir: Path) -> tuple[list[float], float, list[int]]:
    """(the two steps' training losses, how far the weights moved, the first example's token ids as
    TRL encoded it)."""
    from trl import SFTConfig, SFTTrainer

    dataset = datasets.load_dataset("json", data_files=str(export_jsonl), split="train")
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
    return losses, moved, list(trainer.train_dataset[0]["input_ids"])
