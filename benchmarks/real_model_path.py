"""What the parts of the pipeline that differ between the demo and a real model do, measured on CPU.

1. Rollout tokens: on a random tiny Llama with a byte-level BPE tokenizer and a ChatML template
   (``drift_assets/tasks/chat_model.py``), how often re-encoding a rollout's text gives other
   tokens than the engine sampled, and how far the re-encoded log-prob is from the engine's.
2. bfloat16 fine-tuning (after ``make demo``): the demo model cast to bfloat16, fine-tuned at an
   LLM's learning rate with float32 master weights (what ``core.training.sft.fine_tune`` does) and with its
   16-bit weights stepped directly (what it did before), against float32.

Usage: ``.venv/bin/python -m benchmarks.real_model_path [--steps 200] [--learning-rate 1e-5]``
"""

from __future__ import annotations

import argparse
import copy
import random

import polars as pl
import torch

from benchmarks.demo_warehouse import demo_warehouse
from drift_assets.core.data.sequences import (
    collate_pairs,
    encode_prompt,
    encode_response,
    render_prompt,
    teacher_forced_logprobs,
    training_step,
)
from drift_assets.core.generation.engines import SamplingSettings, TransformersEngine
from drift_assets.core.generation.rollouts import rollout_rows
from drift_assets.core.gradients.tables import pool_token_pairs, response_token_pairs
from drift_assets.core.training.sft import SftOptions, fine_tune
from drift_assets.resources import model_resource
from drift_assets.tasks.chat_model import build_chat_tokenizer
from drift_assets.tasks.tiny_model import build_tiny_llama


def rollout_tokens() -> None:
    queries = pl.DataFrame(
        {"query_id": [f"q{i}" for i in range(6)], "prompt": [f"What is {i} + {2 * i + 3}?\n" for i in range(6)]}
    )
    tokenizer = build_chat_tokenizer()
    model = build_tiny_llama(tokenizer, seed=0).eval()
    prompt_ids = [encode_prompt(tokenizer, render_prompt(tokenizer, p)) for p in queries["prompt"]]
    report = TransformersEngine(model, tokenizer, device="cpu").generate(prompt_ids, SamplingSettings(n=4, max_tokens=24, seed=0))
    table = rollout_rows(queries, report, "random-chat-model", seed=0)
    engine = torch.tensor(table["logprob_sum"].to_list(), dtype=torch.float64)
    sampled = teacher_forced_logprobs(
        model, tokenizer, *response_token_pairs(tokenizer, table["prompt"], table["completion"], table["token_ids"])
    )
    re_encoded_ids = [
        encode_response(tokenizer, text, append_eos=eos) for text, eos in zip(table["completion"], table["ended_with_eos"])
    ]
    differ = sum(ids != sampled_ids for ids, sampled_ids in zip(re_encoded_ids, table["token_ids"].to_list()))
    re_encoded = teacher_forced_logprobs(
        model, tokenizer, *response_token_pairs(tokenizer, table["prompt"], table["completion"], re_encoded_ids)
    )
    gap = (re_encoded - engine).abs()
    print(
        f"rollout tokens (random tiny Llama, byte-level BPE + ChatML, {table.height} rollouts): re-encoded text differs from "
        f"the sampled tokens in {differ}; its log-prob is off the engine's by {gap.median():.0f} nats (median, max {gap.max():.0f}); "
        f"the sampled ids give it back to {(sampled - engine).abs().max():.0e}"
    )


def fine_tune_16_bit_weights_directly(model, tokenizer, messages, options: SftOptions) -> None:
    """The loop before master weights: AdamW steps the 16-bit weights themselves."""
    torch.manual_seed(options.seed)
    rng = random.Random(options.seed)
    prompts, responses = pool_token_pairs(tokenizer, sorted(messages))
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / options.steps)
    model.train()
    order: list[int] = []
    for _ in range(options.steps):
        if len(order) < options.batch_size:
            order += rng.sample(range(len(prompts)), len(prompts))
        chosen = [order.pop() for _ in range(options.batch_size)]
        training_step(model, optimizer, collate_pairs(tokenizer, [prompts[i] for i in chosen], [responses[i] for i in chosen]))
        scheduler.step()
    model.eval()


def bfloat16_fine_tuning(steps: int, learning_rate: float) -> None:
    settings, warehouse = demo_warehouse(("training_pool",))
    messages = warehouse.scan("training_pool").collect()["messages"].to_list()[:200]
    resource = model_resource(settings)
    tokenizer, start = resource.load_tokenizer(), resource.load_model().float()
    options = SftOptions(steps=steps, batch_size=8, learning_rate=learning_rate)
    full = copy.deepcopy(start)
    fine_tune(full, tokenizer, messages, options, log=lambda _: None)
    master = copy.deepcopy(start).to(torch.bfloat16)
    fine_tune(master, tokenizer, messages, options, log=lambda _: None)
    direct = copy.deepcopy(start).to(torch.bfloat16)
    fine_tune_16_bit_weights_directly(direct, tokenizer, messages, options)

    def update(model) -> torch.Tensor:
        return torch.cat(
            [(p.detach().float() - q.detach()).flatten() for p, q in zip(model.parameters(), start.parameters(), strict=True)]
        )

    pairs = pool_token_pairs(tokenizer, messages)

    def loss(model) -> float:  # scored in float32 (a bf16 model's weights are exact in it)
        return float(
            -teacher_forced_logprobs(copy.deepcopy(model).float(), tokenizer, *pairs).sum() / sum(len(r) for r in pairs[1])
        )

    reference = update(full)
    print(
        f"bfloat16 fine-tuning (demo model, {len(messages)} examples, {steps} steps, lr {learning_rate:g}): loss per token, "
        f"and cosine of the weight update with float32's"
    )
    for name, model in (
        ("float32", full),
        ("bf16, float32 master weights (now)", master),
        ("bf16 weights stepped directly (before)", direct),
    ):
        cosine = torch.nn.functional.cosine_similarity(reference, update(model), dim=0)
        print(f"  {name:40s} loss {loss(model):.3f}  update cosine {cosine:.3f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    args = parser.parse_args(argv)
    rollout_tokens()
    bfloat16_fine_tuning(args.steps, args.learning_rate)


if __name__ == "__main__":
    main()
