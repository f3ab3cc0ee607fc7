"""Sizing: what the projected gradients, the PCA basis and the fisher Hessian cost for a model's shape.

No weights and no download: each architecture is built on PyTorch's ``meta`` device from its
published shape, and the targeted layers are the ones ``projection.target_modules`` selects
(``core.gradients.projection.target_layers``, the default regex unless ``--target-modules`` says otherwise).
Per model and rank it prints:

- k, the projected dimension (r² per targeted layer), and the bytes of one ``grad`` row
  (list<float32>) of ``training_gradient_projections``, and of a pool of ``--pool`` examples
  (Delta compresses float32 noise little);
- the PCA basis fit's covariances, d_in² + d_out² float32 per targeted layer, all held on the
  model's device during the pass over the references, and the largest one that is
  eigendecomposed (in float64, on the CPU);
- the ``fisher`` Hessian: a k × k float64 matrix and its Cholesky factor.

    .venv/bin/python -m benchmarks.sizing
    .venv/bin/python -m benchmarks.sizing --ranks 4,8,16 --pool 1000000

Then the planned peak memory (``drift_assets.core.gradients.memory``, what the warm-up, SFT and the gradient
pass log before they start) of a warm-up/SFT step in bfloat16, fine-tuning every weight and
training rank-16 LoRA adapters on every projection, and of a projected gradient pass, at
``--batch-size`` sequences of ``--max-tokens``, with and without gradient checkpointing.

This computes sizes from shapes; it measures no time.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from drift_assets.core.gradients.memory import ModelShape, gradient_pass_plan, training_plan
from drift_assets.core.gradients.projection import ProjectionOptions, target_layers

GiB = 2**30
# The models' own vocabularies (the logits' memory grows with them).
VOCAB = {"Qwen2.5-1.5B": 151_936, "Qwen2.5-7B": 152_064, "Llama-3.1-8B": 128_256}
# Published shapes (config.json of each model); vocabulary sizes do not matter here.
SHAPES = {
    "Qwen2.5-1.5B": (
        Qwen2Config,
        Qwen2ForCausalLM,
        dict(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        ),
    ),
    "Qwen2.5-7B": (
        Qwen2Config,
        Qwen2ForCausalLM,
        dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4),
    ),
    "Llama-3.1-8B": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8),
    ),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--ranks", default="8,16", help="comma list of projection.rank values")
    parser.add_argument("--pool", type=int, default=100_000, help="pool examples, for the table's size")
    parser.add_argument("--target-modules", default=ProjectionOptions().target_modules, help="projection.target_modules")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per SFT step and per gradient pass")
    parser.add_argument("--max-tokens", type=int, default=1024, help="tokens per sequence (the longest, padded to)")
    parser.add_argument("--lora-rank", type=int, default=16, help="warmup.lora.rank of the LoRA plan")
    args = parser.parse_args(argv)
    args.ranks = [int(rank) for rank in args.ranks.split(",") if rank]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    print(
        f"| model | targeted layers | rank | k | grad row | {args.pool:,} examples | PCA covariances on the device "
        "| largest eigendecomposition | fisher Hessian and factor |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (config_class, model_class, shape) in SHAPES.items():
        with torch.device("meta"):
            model = model_class(config_class(vocab_size=32_000, **shape))
        layers = target_layers(model, args.target_modules)
        covariances = sum(module.in_features**2 + module.out_features**2 for _, module in layers) * 4
        widest = max(max(module.in_features, module.out_features) for _, module in layers)
        for rank in args.ranks:
            k = len(layers) * rank**2
            row = k * 4
            print(
                f"| {name} | {len(layers)} | {rank} | {k:,} | {row / 2**10:.0f} KiB | {row * args.pool / GiB:.1f} GiB | "
                f"{covariances / GiB:.1f} GiB | {widest:,} × {widest:,} | {2 * k * k * 8 / GiB:.1f} GiB |"
            )
    print_memory_plans(args)


def print_memory_plans(args: argparse.Namespace) -> None:
    rank = args.lora_rank
    print(
        f"\nPlanned peak memory, bfloat16, {args.batch_size} × {args.max_tokens} tokens "
        f"(LoRA rank {rank} on every projection; gradient pass at projection.rank 16):\n"
    )
    print("| model | parameters | full fine-tune step | LoRA step | LoRA step, checkpointed | gradient pass | checkpointed |")
    print("|---|---|---|---|---|---|---|")
    for name, (config_class, model_class, shape) in SHAPES.items():
        with torch.device("meta"):
            model = model_class(config_class(vocab_size=VOCAB[name], **shape)).to(torch.bfloat16)
        full = ModelShape.of(model)
        layers = target_layers(model, args.target_modules)
        adapters = sum(rank * (m.in_features + m.out_features) for _, m in layers)
        lora = replace(full, trainable=adapters, largest_trainable=max(rank * m.in_features for _, m in layers))
        k, hooked = len(layers) * 16**2, len(layers) * 2 * 16
        plans = [
            training_plan(full, args.batch_size, args.max_tokens),
            training_plan(lora, args.batch_size, args.max_tokens),
            training_plan(lora, args.batch_size, args.max_tokens, checkpointing=True),
            gradient_pass_plan(full, args.batch_size, args.max_tokens, hooked, k),
            gradient_pass_plan(full, args.batch_size, args.max_tokens, hooked, k, checkpointing=True),
        ]
        print(f"| {name} | {full.parameters / 1e9:.2f}B | " + " | ".join(f"{plan.total / GiB:.1f} GiB" for plan in plans) + " |")


if __name__ == "__main__":
    main()
