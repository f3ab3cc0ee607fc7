"""Does the pipeline's own SFT loop (evaluation, method benchmark, warm-up) train the model TRL's
SFTTrainer would? Both fine-tune the demo's base model on the full pool and on the refined
selection with the same recipe (``benchmark.sft``: steps, batch size, learning rate, linear decay,
no weight decay, gradients clipped at 1, loss on the response tokens only), over several seeds, and
the test accuracy of each is printed side by side with the paired difference.

    .venv/bin/python -m benchmarks.trl_vs_own_sft [--seeds 0,1,2]

Needs the materialized demo (``make demo``) and the ``trl`` extra. The two differ in what the
recipe leaves open (the order examples are drawn in, padding), so they agree within seeds' noise,
not to the bit.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile

import polars as pl

from benchmarks.demo_warehouse import demo_warehouse, evaluated_after_sft
from drift_assets.core.generation.engines import TransformersEngine
from drift_assets.core.training.sft import evaluate
from drift_assets.resources import model_resource
from drift_assets.terminal import quiet_libraries


def trl_fine_tuned(settings, model_path: str, messages: list[str], seed: int):
    """The base model after TRL's SFTTrainer on ``messages`` (as prompt/completion conversations,
    so that, as in the own loop, only the assistant's turn is trained on)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(m) for m in messages]
    dataset = Dataset.from_list([{"prompt": row[:-1], "completion": row[-1:]} for row in rows])
    sft = settings.benchmark.sft
    steps = sft.options(seed).steps_for(len(messages))
    with tempfile.TemporaryDirectory() as output:
        config = SFTConfig(
            output_dir=output,
            max_steps=steps,
            per_device_train_batch_size=sft.batch_size,
            learning_rate=sft.learning_rate,
            lr_scheduler_type="linear" if sft.schedule == "linear" else "constant",
            warmup_steps=0,
            weight_decay=sft.weight_decay,
            max_grad_norm=1.0,
            seed=seed,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        )
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        network = AutoModelForCausalLM.from_pretrained(model_path)
        SFTTrainer(model=network, args=config, train_dataset=dataset, processing_class=tokenizer).train()
    return network.eval(), tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="SFT seeds, comma-separated")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    quiet_libraries()  # TRL's and datasets' progress bars
    settings, warehouse = demo_warehouse(("refined_dataset", "test_queries"))
    model = model_resource(settings)
    refined = warehouse.scan("refined_dataset").collect()
    queries = warehouse.scan("test_queries").collect().to_dicts()
    selections = {"full": refined["messages"].to_list(), "refined": refined.filter("selected")["messages"].to_list()}
    rows = []
    for name, messages in selections.items():
        for seed in seeds:
            own = evaluated_after_sft(settings, model, model.load_tokenizer(), messages, queries, seed)
            network, tokenizer = trl_fine_tuned(settings, model.path, messages, seed)
            engine = TransformersEngine(network, tokenizer, device="cpu")
            trl = evaluate(engine, tokenizer, queries, settings.rollout.max_tokens, settings.grading.options())
            rows.append({"selection": name, "seed": seed, "own": own.accuracy, "trl": trl.accuracy})
            print(f"{name} seed {seed}: own loop {own.accuracy:.3f}, TRL {trl.accuracy:.3f}", flush=True)
    table = pl.DataFrame(rows).with_columns(difference=pl.col("trl") - pl.col("own"))
    print()
    for name in selections:
        part = table.filter(pl.col("selection") == name)
        se = part["difference"].std() / math.sqrt(part.height) if part.height > 1 else float("nan")
        print(
            f"{name:8} own {100 * part['own'].mean():.1f}  TRL {100 * part['trl'].mean():.1f}  "
            f"TRL - own {100 * part['difference'].mean():+.1f} ± {100 * se:.1f} points ({part.height} seeds, {len(queries)} test queries)"
        )


if __name__ == "__main__":
    main()
