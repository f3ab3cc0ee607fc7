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

Then each stage against the roofline (rollouts, gradient pass, training step, LoRA warm-up): tokens
per second (the sequences' own, padding left out; for rollouts every prompt once and every generated
token), 512-token examples per GPU-hour, and the share of the device's 6N bound (6N FLOPs per token
at its dense bfloat16 peak, from a table of device names in ``drift_assets.core.runtime.cost``, or a timed
large matmul where the name is not in it; on the CPU a timed float32 matmul); then the same scaled
to a 7B model by parameter count, with the formula.

    bash benchmarks/gpu_check.sh                              # on a GPU machine (stopped after 8 min)
    .venv/bin/python -m benchmarks.gpu_check --tiny           # the same code on the CPU, a tiny model

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

from drift_assets.core.data.sequences import collate_pairs, encode_prompt, encode_response, render_prompt, training_step
from drift_assets.core.generation.engines import SamplingSettings, TransformersEngine, VllmEngine
from drift_assets.core.gradients.projection import LinearGradientProjector, ProjectionOptions, fit_basis
from drift_assets.core.gradients.tables import sequence_tokens
from drift_assets.core.runtime.cost import EXAMPLE_TOKENS, bound_share, examples_per_hour, peak_bf16_flops, scaled_to
from drift_assets.core.training.adapters import LoraOptions, add_adapter
from drift_assets.core.training.sft import SftOptions, fine_tune
from drift_assets.tasks.tiny_model import TinyLlamaShape, build_char_tokenizer, build_tiny_llama, save_model

GiB = 2**30
SEVEN_B = 7e9


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
    save_model(model, tokenizer, directory)
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


def timed_matmul_flops(device: str, dtype: torch.dtype, size: int, repeats: int) -> float:
    """FLOP/s of a ``size``² matrix product on ``device`` (the best of ``repeats``, after one to warm up)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best


def device_peak(device: str, tiny: bool) -> tuple[float, str]:
    """The device's peak FLOP/s and where it comes from: the table of device names, else a timed matmul."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        listed = peak_bf16_flops(name)
        if listed is not None:
            return listed, f"{name}: dense bfloat16 peak from the table of device names"
        return timed_matmul_flops("cuda", torch.bfloat16, 8192, 10), f"{name}: not in the table, a timed 8192² bfloat16 matmul"
    size = 512 if tiny else 2048
    return timed_matmul_flops("cpu", torch.float32, size, 3), f"CPU: a timed {size}² float32 matmul"


def roofline_rows(stages: dict[str, float], parameters: int, peak: float) -> tuple[list[tuple[str, ...]], dict[str, float]]:
    """Each stage's tokens/s against the roofline, measured and scaled to 7B: table rows and figures."""
    rows, figures = [], {}
    for stage, tokens_per_s in stages.items():
        per_hour = examples_per_hour(tokens_per_s)
        share = bound_share(tokens_per_s, parameters, peak)
        at_7b = scaled_to(per_hour, parameters, SEVEN_B)
        key = stage.split(" (")[0].lower().replace(" ", "_").replace("-", "_")
        figures |= {
            f"{key}_tokens_per_s": tokens_per_s,
            f"{key}_examples_per_hour": per_hour,
            f"{key}_bound_share": share,
            f"{key}_examples_per_hour_7b": at_7b,
        }
        rows.append(
            (stage, f"{tokens_per_s:,.1f}", f"{per_hour:,.0f}", f"{100 * share:.4g}%", f"{at_7b:,.1f}", f"{100 * share:.4g}%")
        )
    return rows, figures


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
    stage_tokens_per_s: dict[str, float] = {}  # the roofline's stages
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
        stage_tokens_per_s["rollouts (vLLM)"] = (report.prompt_tokens + report.generated_tokens) / sampled.seconds
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
        tokens = sequence_tokens(prompt_ids, response_ids)
        stage_tokens_per_s["gradient pass (projected)"] = tokens / projected.seconds
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
        stage_tokens_per_s["training step (AdamW)"] = tokens / trained.seconds
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
            run = fine_tune(
                adapted, tokenizer, messages, SftOptions(steps=scale.lora_steps, batch_size=scale.batch_size), log=lambda _: None
            )
        figures["lora_steps_per_s"] = scale.lora_steps / warmed.seconds
        stage_tokens_per_s["LoRA warm-up (rank 16)"] = run.tokens / warmed.seconds
        rows.append(("LoRA warm-up (rank 16)", f"{figures['lora_steps_per_s']:.2f} steps/s", warmed.memory))

    print("\n| step | throughput | peak device memory |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")

    peak, source = device_peak(device, args.tiny)
    roofline, measured = roofline_rows(stage_tokens_per_s, parameters, peak)
    figures |= measured | {"n_parameters": parameters, "peak_flops": peak}
    print(
        f"\nagainst the roofline: peak {peak:.4g} FLOP/s ({source}); N = {parameters:,} parameters; the bound is 6N "
        f"FLOPs per token for every stage (a training step's; generation needs 2N): "
        f"{examples_per_hour(peak / (6 * parameters)):,.0f} examples of {EXAMPLE_TOKENS} tokens per GPU-hour at N"
    )
    print(
        "\n| stage | tokens/s | 512-token examples per GPU-hour | share of the 6N bound "
        "| at 7B: examples per GPU-hour | at 7B: share of the 6N bound |\n|---|---|---|---|---|---|"
    )
    for row in roofline:
        print("| " + " | ".join(row) + " |")
    print(
        f"\n7B projection: examples/GPU-hour at 7B ≈ measured rate × N_measured / 7e9 = rate × {parameters:,} / 7e9; "
        f"share of the bound = tokens/s × 6N / peak, the same at 7B (the rate falls as N grows); the bound at 7B: "
        f"{examples_per_hour(peak / (6 * SEVEN_B)):,.0f} examples per GPU-hour"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
