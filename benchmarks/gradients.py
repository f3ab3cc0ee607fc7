"""Gradient throughput: examples per second of the projected pass against two references.

For the same batches of pool examples (batch size 32, ordered by length as the pipeline does):

- projected: ``LinearGradientProjector(model, options, basis).project(batch)`` with the pipeline's
  default projection (rank 16, PCA basis fitted once on 32 pool examples, timed apart), one
  batched forward/backward with hooks that give k = (targeted layers) x rank^2 numbers per example;
- plain: an ordinary training step's forward/backward (train mode, all parameters requiring grad,
  loss = -sequence_logprobs(...).sum(), loss.backward()) -- the cost floor for any gradient method;
- loop: the LESS-style baseline, one example at a time: the full gradient of the targeted Linear
  weights is materialised (torch.autograd.grad), flattened and randomly projected to the same k.
  Its projection is a CountSketch (each coordinate goes to one seeded random bucket with a random
  sign), the cheapest random projection there is (O(P) per example; a dense k x P Gaussian or
  Rademacher matrix as in LESS/TRAK would cost O(kP) and, for the 50M model, ~1 TB in float32), so
  the speed-up reported over the loop is a lower bound. It is timed on a handful of examples spread
  over the length range, each unpadded.

For scale, the table also gives an *estimate* of the loop with a dense k x P Rademacher projection
(LESS/TRAK-style): its projection cost per example is extrapolated from one timed slice of the
matrix (kept in memory when k x P float32 fits in 2 GiB, else regenerated from its seed in chunks),
added to the measured loop time less the CountSketch's share.

Each method is warmed up once (on 8 examples, or one example for the loop) before timing.

Run from the repository root:

    .venv/bin/python -m benchmarks.gradients            # defaults
    .venv/bin/python -m benchmarks.gradients --quick    # smoke run
    .venv/bin/python -m benchmarks.gradients --help

This prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.benchmark_args import MODELS, add_model_arguments, comma_list, warn_if_cpus_busy
from benchmarks.benchmark_models import (
    RandomLlamaShape,
    demo_model_directory,
    format_parameters,
    load,
    parameter_count,
    random_llama,
)
from drift_assets.core.data.sequences import ResponseBatch, collate_pairs, sequence_logprobs
from drift_assets.core.gradients.projection import LinearGradientProjector, ProjectionOptions, fit_basis
from drift_assets.core.gradients.tables import pool_token_pairs
from drift_assets.tasks.demo_task import training_pool_rows
from drift_assets.tasks.tiny_model import build_char_tokenizer


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=2, help="timed batches per method")
    parser.add_argument("--loop-examples", type=int, default=8, help="examples timed in the per-example loop")
    parser.add_argument("--rank", type=int, default=16, help="ProjectionOptions.rank (k = targeted layers x rank^2)")
    parser.add_argument("--basis", default="pca", choices=("pca", "random"), help="ProjectionOptions.basis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 timed batch, 4 loop examples, a 4-layer random model")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.loop_examples, args.layers = 1, 4, 4
    args.models = comma_list(parser, "--models", args.models, MODELS)
    if args.batch_size < 1 or args.batches < 1 or args.loop_examples < 1:
        parser.error("--batch-size, --batches and --loop-examples must be >= 1")
    return args


def pool_batches(tokenizer, n_examples: int, batch_size: int, seed: int):
    """(batches, pairs): length-ordered ResponseBatches over the demo pool, and the (prompt, response) ids."""
    rows = training_pool_rows(n_examples, corrupted_fraction=0.2, off_task_fraction=0.1, seed=seed)
    messages = [
        json.dumps([{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}])
        for row in rows
    ]
    prompt_ids, response_ids = pool_token_pairs(tokenizer, messages)
    pairs = sorted(zip(prompt_ids, response_ids), key=lambda pair: len(pair[0]) + len(pair[1]))
    batches = [
        collate_pairs(
            tokenizer, [p for p, _ in pairs[start : start + batch_size]], [r for _, r in pairs[start : start + batch_size]]
        )
        for start in range(0, len(pairs), batch_size)
    ]
    return batches, pairs


def plain_step(model, batch: ResponseBatch) -> None:
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    loss = -sequence_logprobs(logits, batch, "sum").sum()
    loss.backward()


class CountSketch:
    """x ↦ Σ_i sign_i x_i e_{bucket_i}: a k-dimensional sparse random projection of a P-vector."""

    def __init__(self, dimension_in: int, dimension_out: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.dimension_out = dimension_out
        self.buckets = torch.randint(dimension_out, (dimension_in,), generator=generator, dtype=torch.int64).to(torch.int32)
        self.signs = torch.randint(2, (dimension_in,), generator=generator, dtype=torch.int8).float().mul_(2).sub_(1)

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.dimension_out).index_add_(0, self.buckets, vector * self.signs)


def loop_example(model, tokenizer, weights, sketch: CountSketch, prompt_ids, response_ids) -> torch.Tensor:
    batch = collate_pairs(tokenizer, [prompt_ids], [response_ids])
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logprob = sequence_logprobs(logits, batch, "sum").sum()
    gradients = torch.autograd.grad(logprob, weights)
    flat = torch.cat([g.reshape(-1) for g in gradients])  # the full P-dimensional per-example gradient
    return sketch(flat)


@dataclass
class Measurement:
    model: str
    parameters: str
    dimension: int
    targeted_parameters: int
    projected: float  # examples per second
    plain: float
    loop: float
    dense_loop: float  # estimate


def timed(function, items) -> float:
    """Wall seconds of function(item) over items."""
    started = time.perf_counter()
    for item in items:
        function(item)
    return time.perf_counter() - started


def measure(label: str, model, tokenizer, args) -> Measurement:
    batches, pairs = pool_batches(tokenizer, args.batch_size * args.batches, args.batch_size, args.seed)
    warm_up = collate_pairs(tokenizer, [p for p, _ in pairs[:8]], [r for _, r in pairs[:8]])
    timed_examples = sum(b.input_ids.shape[0] for b in batches)
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    width = sum(b.input_ids.numel() for b in batches)
    print(
        f"  {label}: {len(batches)} timed batches, {timed_examples} examples, {tokens} tokens ({width} with padding)",
        flush=True,
    )

    # (i) projected pass
    model.eval()
    options = ProjectionOptions(rank=args.rank, basis=args.basis)
    started = time.perf_counter()
    basis = fit_basis(model, options, tokenizer, [p for p, _ in pairs[:32]], [r for _, r in pairs[:32]], args.batch_size)
    print(f"    {args.basis} basis fitted in {time.perf_counter() - started:.2f} s (once per model and settings)", flush=True)
    projector = LinearGradientProjector(model, options, basis)
    projector.project(warm_up)
    seconds = timed(projector.project, batches)
    projected = timed_examples / seconds
    print(f"    projected: {seconds:.2f} s, {projected:.1f} examples/s (k = {projector.dimension})", flush=True)

    # (ii) plain training forward/backward
    model.train()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    plain_step(model, warm_up)
    seconds = timed(lambda batch: plain_step(model, batch), batches)
    plain = timed_examples / seconds
    model.zero_grad(set_to_none=True)
    print(f"    plain forward/backward: {seconds:.2f} s, {plain:.1f} examples/s", flush=True)

    # (iii) LESS-style per-example loop, on examples spread over the length range
    model.eval()
    weights = [module.weight for _, module in projector.layers]
    targeted = sum(w.numel() for w in weights)
    sketch = CountSketch(targeted, projector.dimension, args.seed)
    step = max(1, (len(pairs) - 1) // max(1, args.loop_examples))
    chosen = [pairs[min(len(pairs) - 1, i * step + step // 2)] for i in range(args.loop_examples)]
    loop_example(model, tokenizer, weights, sketch, *chosen[0])
    seconds = timed(lambda pair: loop_example(model, tokenizer, weights, sketch, *pair), chosen)
    loop = len(chosen) / seconds
    print(
        f"    per-example loop: {seconds:.2f} s for {len(chosen)} examples, {loop:.2f} examples/s (P = {targeted:,})", flush=True
    )

    vector = torch.randn(targeted)
    sketch(vector)
    sketch_seconds = timed(lambda _: sketch(vector), range(3)) / 3
    sketch = None  # frees its tables before the dense matrix is built
    dense_seconds, how = dense_projection_seconds(targeted, projector.dimension, args.seed)
    dense_loop = 1 / (1 / loop - sketch_seconds + dense_seconds)
    print(
        f"    CountSketch projection {sketch_seconds * 1e3:.1f} ms/example; dense Rademacher projection ~{dense_seconds:.3g} s/example "
        f"({how}) -> dense-projection loop ~{dense_loop:.3g} examples/s (estimate)",
        flush=True,
    )
    return Measurement(
        label, format_parameters(parameter_count(model)), projector.dimension, targeted, projected, plain, loop, dense_loop
    )


def dense_projection_seconds(dimension_in: int, dimension_out: int, seed: int, slice_entries: int = 1 << 25) -> tuple[float, str]:
    """Estimated seconds to project one P-vector with a dense k x P Rademacher matrix, and how it is held.

    One slice of ``slice_entries`` matrix entries (128 MiB in float32, past any cache) is timed and
    the time scaled by k*P / slice_entries.
    """
    columns = max(1, min(dimension_in, slice_entries // dimension_out))
    vector = torch.randn(columns)
    generator = torch.Generator().manual_seed(seed)
    stored = dimension_out * dimension_in * 4 <= 2 << 30

    def project_slice(_):
        matrix = torch.randint(2, (dimension_out, columns), generator=generator, dtype=torch.int8).float().mul_(2).sub_(1)
        return matrix, matrix @ vector

    matrix, _ = project_slice(None)
    if stored:
        matrix @ vector
        seconds = timed(lambda _: matrix @ vector, range(3)) / 3
        how = f"{dimension_out * dimension_in * 4 / 2**30:.1f} GiB matrix kept in memory"
    else:
        seconds = timed(project_slice, range(2)) / 2
        how = f"regenerated in slices: the float32 matrix would take {dimension_out * dimension_in * 4 / 2**40:.2f} TiB"
    return seconds * dimension_in / columns, how


def markdown_table(measurements: list[Measurement]) -> str:
    lines = [
        "| model | params | k | targeted P | projected ex/s | plain fwd/bwd ex/s | per-example loop ex/s "
        "| projected/plain time (target <= 1.3x) | speed-up over loop (target >= 20x) | speed-up over dense-projection loop (est.) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in measurements:
        lines.append(
            f"| {m.model} | {m.parameters} | {m.dimension} | {format_parameters(m.targeted_parameters)} | {m.projected:.1f} "
            f"| {m.plain:.1f} | {m.loop:.2f} | {m.plain / m.projected:.2f}x | {m.projected / m.loop:.1f}x "
            f"| {m.projected / m.dense_loop:.3g}x |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_average = os.getloadavg()[0]
    print(
        f"# Gradient throughput\n\ntorch {torch.__version__} ({torch.get_num_threads()} torch threads), {os.cpu_count()} CPUs, "
        f"load average {load_average:.2f}; batch size {args.batch_size}, rank {args.rank}, "
        f"{args.batches} timed batches, {args.loop_examples} loop examples" + (" (--quick)" if args.quick else ""),
        flush=True,
    )
    warn_if_cpus_busy(load_average, torch.get_num_threads(), "small operations")
    measurements = []
    for name in args.models:
        with torch.random.fork_rng():
            if name == "demo":
                with tempfile.TemporaryDirectory(prefix="drift-gradient-benchmark-") as scratch:
                    entry = demo_model_directory(args.demo_model, Path(scratch))
                    print(f"- {entry.note}", flush=True)
                    model, tokenizer = load(entry.path)
                label = entry.label
            else:
                tokenizer = build_char_tokenizer()
                shape = RandomLlamaShape(hidden_size=args.hidden, num_layers=args.layers, intermediate_size=args.intermediate)
                model = random_llama(tokenizer, shape, seed=args.seed)
                label = f"random Llama {format_parameters(parameter_count(model))}"
                print(
                    f"- {label}: hidden {shape.hidden_size}, {shape.num_layers} layers, MLP {shape.intermediate_size}, random init",
                    flush=True,
                )
            measurements.append(measure(label, model, tokenizer, args))
            del model
    print()
    print(markdown_table(measurements))
    print(
        "\nex/s: examples per second. projected/plain time: seconds per example of the projected pass over those of a "
        "plain training forward/backward. speed-up over loop: projected ex/s over the LESS-style loop's ex/s (its "
        "projection is a CountSketch, the cheapest there is, so this is a lower bound). The dense-projection column is an "
        "estimate (see the module docstring)."
    )


if __name__ == "__main__":
    main()
