"""GPU check: the pipeline's heavy steps on a ~1B-parameter model, timed, with their peak memory.

No download: a Llama of about 1.1B parameters (TinyLlama-1.1B's shape) is built from its config
with random weights, in bfloat16, with the demo's character tokenizer. Random weights sample
random text, which is what a throughput figure needs. Printed, as one markdown table:

- rollouts: vLLM against the transformers fallback, generated tokens/s on the same prompts;
- the projected gradient pass (projection.rank 16, random basis) against a plain training step
  on the same batches, examples/s and their ratio;
- the PCA basis fit on 64 reference sequences (covariances, eigendecompositions), seconds;
- a LoRA warm-up (rank 16), optimizer steps/s;
- each step's peak device memory (torch.cuda.max_memory_allocated; vLLM reserves its share of the
  GPU up front, so its figure is that reservation).

    bash benchmarks/gpu_check.sh                              # on a GPU machine (≤ 8 min on one GPU)
    .venv/bin/python benchmarks/gpu_check.py --tiny           # the same code on the CPU, a tiny model

``--tiny`` exists so that the script is known to run before a GPU is lent: a test runs it.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from drift_assets.core.adapters import LoraOptions, add_adapter
from drift_assets.core.generation import SamplingSettings, TransformersEngine, VllmEngine
from drift_assets.core.projection import LinearGradientProjector, ProjectionOptions, fit_basis
from drift_assets.core.sequences import collate_pairs, encode_prompt, encode_response, render_prompt, training_step
from drift_assets.core.sft import SftOptions, fine_tune
from drift_assets.core.tiny_model import TinyLlamaShape, build_char_tokenizer, build_tiny_llama

GiB = 2**30


@dataclass(frozen=True)
class Scale:
    hidden_size: int
    intermediate_size: int
    layers: int
    heads: int
    vocab_size: int
    prompts: int  # rollout prompts (each sampled `samples` times)
    samples: int
    new_tokens: int
    batches: int  # gradient-pass and training-step batches
    batch_size: int
    sequence: int  # tokens per training sequence (prompt + response)
    lora_steps: int
    references: int  # sequences the PCA basis is fitted on


ONE_B = Scale(
    2048,
    5632,
    22,
    32,
    32_000,
    prompts=64,
    samples=4,
    new_tokens=128,
    batches=8,
    batch_size=8,
    sequence=512,
    lora_steps=20,
    references=64,
)
TINY = Scale(
    128, 384, 2, 2, 128, prompts=8, samples=2, new_tokens=16, batches=2, batch_size=4, sequence=48, lora_steps=3, references=8
)


def build_model(directory: Path, scale: Scale, dtype: torch.dtype):
    tokenizer = build_char_tokenizer("roles")
    shape = TinyLlamaShape(
        hidden_size=scale.hidden_size,
        num_layers=scale.layers,
        num_heads=scale.heads,
        intermediate_size=scale.intermediate_size,
        max_positions=2048,
        vocab_size=scale.vocab_size,
    )
    model = build_tiny_llama(tokenizer, shape, seed=0).to(dtype)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


def random_text(rng: random.Random, length: int) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 +-*=") for _ in range(length))


def pairs(tokenizer, scale: Scale, count: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    rng = random.Random(seed)
    prompts = [encode_prompt(tokenizer, render_prompt(tokenizer, random_text(rng, scale.sequence // 4))) for _ in range(count)]
    responses = [encode_response(tokenizer, random_text(rng, scale.sequence - len(p) - 1)) for p in prompts]
    return prompts, responses


class Peak:
    """Peak device memory over a block (CUDA), or None on the CPU."""

    def __init__(self, device: str):
        self.device, self.bytes = device, None

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated()
        self.seconds = time.perf_counter() - self.started

    @property
    def memory(self) -> str:
        return "–" if self.bytes is None else f"{self.bytes / GiB:.1f} GiB"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU (checks that the script runs)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    scale = TINY if args.tiny else ONE_B
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    dtype_name = "bfloat16" if dtype == torch.bfloat16 else "float32"
    rows: list[tuple[str, str, str]] = []
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch) / "model"
        model, tokenizer = build_model(directory, scale, dtype)
        parameters = sum(p.numel() for p in model.parameters())
        print(f"model: Llama, {parameters / 1e9:.2f}B parameters, {dtype_name}, on {device}", flush=True)
        rng = random.Random(1)
        prompts = [encode_prompt(tokenizer, render_prompt(tokenizer, random_text(rng, 32))) for _ in range(scale.prompts)]
        sampling = SamplingSettings(n=scale.samples, temperature=1.0, max_tokens=scale.new_tokens, seed=0)

        with Peak(device) as start:
            engine = VllmEngine(str(directory), dtype=dtype_name, gpu_memory_utilization=0.5, max_model_len=1024)
        try:
            engine.generate(prompts[:2], sampling)  # warm-up: the first requests compile and allocate
            with Peak(device) as sampled:
                report = engine.generate(prompts, sampling)
        finally:
            engine.close()
        figures["vllm_tokens_per_s"] = report.generated_tokens / sampled.seconds
        rows.append(
            ("vLLM rollouts", f"{figures['vllm_tokens_per_s']:,.0f} tokens/s (engine start {start.seconds:.0f} s)", "reserved")
        )

        model = model.to(device)
        with Peak(device) as sampled:
            report = TransformersEngine(model, tokenizer, device=device).generate(prompts, sampling)
        figures["transformers_tokens_per_s"] = report.generated_tokens / sampled.seconds
        figures["vllm_over_transformers"] = figures["vllm_tokens_per_s"] / figures["transformers_tokens_per_s"]
        rows.append(
            (
                "transformers rollouts",
                f"{figures['transformers_tokens_per_s']:,.0f} tokens/s (vLLM: {figures['vllm_over_transformers']:.2f}×)",
                sampled.memory,
            )
        )

        prompt_ids, response_ids = pairs(tokenizer, scale, scale.batches * scale.batch_size, seed=2)
        batches = [
            collate_pairs(tokenizer, prompt_ids[i : i + scale.batch_size], response_ids[i : i + scale.batch_size]).to(device)
            for i in range(0, len(prompt_ids), scale.batch_size)
        ]
        options = ProjectionOptions(rank=16, basis="random")
        projector = LinearGradientProjector(model, options)
        projector.project(batches[0])  # warm-up: kernels, allocator
        with Peak(device) as projected:
            for batch in batches:
                projector.project(batch)
        figures["gradient_examples_per_s"] = len(prompt_ids) / projected.seconds
        rows.append(
            (
                f"projected gradient pass (k = {projector.dimension:,})",
                f"{figures['gradient_examples_per_s']:,.1f} examples/s",
                projected.memory,
            )
        )

        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        autocast = torch.bfloat16 if dtype == torch.bfloat16 else None
        training_step(model, optimizer, batches[0], autocast)
        with Peak(device) as trained:
            for batch in batches:
                training_step(model, optimizer, batch, autocast)
        del optimizer
        figures["training_examples_per_s"] = len(prompt_ids) / trained.seconds
        figures["gradient_over_training"] = figures["gradient_examples_per_s"] / figures["training_examples_per_s"]
        rows.append(
            (
                "plain training step (AdamW)",
                f"{figures['training_examples_per_s']:,.1f} examples/s (gradient pass: {figures['gradient_over_training']:.2f}×)",
                trained.memory,
            )
        )

        references = pairs(tokenizer, scale, scale.references, seed=3)
        with Peak(device) as fitted:
            fit_basis(model, ProjectionOptions(rank=16, basis="pca"), tokenizer, *references, scale.batch_size)
        figures["pca_fit_s"] = fitted.seconds
        rows.append((f"PCA basis fit (rank 16, {scale.references} references)", f"{fitted.seconds:.1f} s", fitted.memory))

        adapted = add_adapter(model, LoraOptions(rank=16, alpha=32.0), seed=0)
        messages = [
            json.dumps(
                [{"role": "user", "content": random_text(rng, 64)}, {"role": "assistant", "content": random_text(rng, 256)}]
            )
            for _ in range(scale.batch_size * 4)
        ]
        with Peak(device) as warmed:
            fine_tune(
                adapted, tokenizer, messages, SftOptions(steps=scale.lora_steps, batch_size=scale.batch_size), log=lambda _: None
            )
        figures["lora_steps_per_s"] = scale.lora_steps / warmed.seconds
        rows.append(("LoRA warm-up (rank 16)", f"{figures['lora_steps_per_s']:.2f} steps/s", warmed.memory))

    print("\n| step | throughput | peak device memory |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
