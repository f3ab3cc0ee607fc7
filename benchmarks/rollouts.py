"""Rollout throughput: generated tokens per second of the vLLM and transformers engines.

Both engines sample the same prompts ("What is a + b?\\n" validation-style queries) with the same
SamplingSettings on (a) the demo model and (b) a random-initialised Llama of about 50M parameters.
"generate s" is the wall time of one ``engine.generate`` call; engine start-up (loading the model,
starting vLLM's engine, one short warm-up request) is reported separately in "startup s". vLLM runs
twice: ``vllm`` with its engine in this process (``rollout.engine_process: auto`` on the CPU) and
``vllm-separate`` in processes of its own (vLLM's default, ``auto`` on a GPU).
The random model rarely samples EOS, so its completions run close to max_tokens.

The transformers engine decodes one query at a time (its n samples as one batch), so its tokens/s
does not depend on how many prompts it is given: to keep the run short it samples only the first
``--transformers-prompts`` of them. vLLM gets all prompts at once, since batching them is where its
throughput comes from. The "prompts" column says how many each row used.

Run from the repository root:

    .venv/bin/python -m benchmarks.rollouts            # defaults
    .venv/bin/python -m benchmarks.rollouts --quick    # smoke run
    .venv/bin/python -m benchmarks.rollouts --help

This prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.benchmark_args import MODELS, add_model_arguments, comma_list, warn_if_cpus_busy

# Measured in this order: transformers before any vLLM engine, and vLLM's own processes before the
# engine in this one, so that no engine process lingering after close() shares the cores with a later row.
BACKENDS = ("transformers", "vllm-separate", "vllm")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated subset of: transformers, vllm (its engine in this process), vllm-separate (in its own)",
    )
    parser.add_argument("--prompts", type=int, default=32, help="number of distinct prompts")
    parser.add_argument(
        "--transformers-prompts",
        type=int,
        default=8,
        help="prompts the transformers engine samples (the first ones; it decodes query by query, so tokens/s does not depend on this)",
    )
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt (SamplingSettings.n)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="keep vLLM's INFO logging")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 8 prompts (4 for transformers), n=2, 32 tokens, a 4-layer random model"
    )
    args = parser.parse_args(argv)
    if args.transformers_prompts < 1 or args.prompts < 1:
        parser.error("--prompts and --transformers-prompts must be >= 1")
    if args.quick:
        args.prompts, args.samples, args.max_tokens, args.layers = 8, 2, 32, 4
        args.transformers_prompts = min(args.transformers_prompts, 4)
    args.models = comma_list(parser, "--models", args.models, MODELS)
    args.backends = comma_list(parser, "--backends", args.backends, BACKENDS)
    return args


@dataclass
class Measurement:
    model: str
    parameters: str
    backend: str
    prompts: int
    startup_seconds: float
    generate_seconds: float
    tokens: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.generate_seconds if self.generate_seconds > 0 else float("nan")


def measure(backend: str, label: str, parameters: str, directory: Path, prompt_ids, settings) -> Measurement:
    from benchmarks.benchmark_models import load
    from drift_assets.core.generation.engines import SamplingSettings, TransformersEngine, VllmEngine

    started = time.perf_counter()
    if backend == "transformers":
        engine = TransformersEngine(*load(directory))
    else:
        engine_process = "separate" if backend == "vllm-separate" else "same"
        engine = VllmEngine(
            str(directory), dtype="float32", gpu_memory_utilization=0.2, max_model_len=256, engine_process=engine_process
        )
    try:
        # One short request so that first-call costs (allocations, kernel selection) count as start-up.
        engine.generate(prompt_ids[:1], SamplingSettings(n=1, temperature=1.0, max_tokens=4, seed=settings.seed))
        startup = time.perf_counter() - started
        started = time.perf_counter()
        report = engine.generate(prompt_ids, settings)
        generate = time.perf_counter() - started
    finally:
        if hasattr(engine, "close"):
            engine.close()
    return Measurement(label, parameters, backend, len(prompt_ids), startup, generate, report.generated_tokens)


def markdown_table(measurements: list[Measurement]) -> str:
    lines = [
        "| model | params | backend | prompts | startup s | generate s | tokens | tokens/s | vs transformers |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    baseline = {m.model: m.tokens_per_second for m in measurements if m.backend == "transformers"}
    for m in measurements:
        ratio = f"{m.tokens_per_second / baseline[m.model]:.2f}x" if m.model in baseline else "n/a"
        lines.append(
            f"| {m.model} | {m.parameters} | {m.backend} | {m.prompts} | {m.startup_seconds:.1f} | {m.generate_seconds:.2f} "
            f"| {m.tokens} | {m.tokens_per_second:.0f} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    import torch
    import transformers

    from benchmarks.benchmark_models import (
        RandomLlamaShape,
        demo_model_directory,
        format_parameters,
        load,
        parameter_count,
        random_model_directory,
    )
    from drift_assets.core.data.sequences import encode_prompt, render_prompt
    from drift_assets.core.generation.engines import SamplingSettings, vllm_available
    from drift_assets.tasks.demo_task import query_rows

    if args.threads:
        torch.set_num_threads(args.threads)
    backends = list(args.backends)
    vllm_version = "not installed"
    if {"vllm", "vllm-separate"} & set(backends):
        available, reason = vllm_available()
        if available:
            import vllm

            vllm_version = vllm.__version__
        else:
            print(f"vLLM does not import here ({reason}): measuring transformers only")
            backends = [b for b in backends if not b.startswith("vllm")]
    settings = SamplingSettings(n=args.samples, temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
    load_average = os.getloadavg()[0]
    print(
        f"# Rollout throughput\n\ntorch {torch.__version__} ({torch.get_num_threads()} torch threads), transformers "
        f"{transformers.__version__}, vLLM {vllm_version}, {os.cpu_count()} CPUs, CUDA {torch.cuda.is_available()}, "
        f"load average {load_average:.2f}\n"
        f"{args.prompts} prompts x n={settings.n}, temperature {settings.temperature}, max_tokens {settings.max_tokens}, "
        f"seed {settings.seed}" + (" (--quick)" if args.quick else ""),
        flush=True,
    )
    warn_if_cpus_busy(load_average, torch.get_num_threads(), "the transformers engine's many small operations")

    measurements: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="drift-rollout-benchmark-") as scratch:
        models = []
        if "demo" in args.models:
            models.append(demo_model_directory(args.demo_model, Path(scratch)))
        if "random" in args.models:
            shape = RandomLlamaShape(hidden_size=args.hidden, num_layers=args.layers, intermediate_size=args.intermediate)
            models.append(random_model_directory(shape, Path(scratch), seed=args.seed))
        prepared = []
        for entry in models:
            print(f"- {entry.note}", flush=True)
            model, tokenizer = load(entry.path)
            queries = query_rows(args.prompts, args.seed, "validation")
            prompt_ids = [encode_prompt(tokenizer, render_prompt(tokenizer, q["prompt"])) for q in queries]
            prepared.append((entry, format_parameters(parameter_count(model)), prompt_ids))
            del model
        for backend in [b for b in BACKENDS if b in backends]:
            for entry, parameters, prompt_ids in prepared:
                print(f"  measuring {backend} on {entry.label} ...", flush=True)
                if backend == "transformers":
                    prompt_ids = prompt_ids[: args.transformers_prompts]
                measurement = measure(backend, entry.label, parameters, entry.path, prompt_ids, settings)
                print(
                    f"    startup {measurement.startup_seconds:.1f} s, generate {measurement.generate_seconds:.2f} s, "
                    f"{measurement.tokens} tokens, {measurement.tokens_per_second:.0f} tokens/s",
                    flush=True,
                )
                measurements.append(measurement)
    order = {b: i for i, b in enumerate(BACKENDS)}
    labels = [entry.label for entry, _, _ in prepared]
    measurements.sort(key=lambda m: (labels.index(m.model), order[m.backend]))
    print()
    print(markdown_table(measurements))
    print(
        "\nstartup s: load + engine start + one 4-token warm-up request; tokens/s = generated tokens (incl. EOS) / "
        "generate s; vs transformers: tokens/s relative to the transformers engine on the same model."
    )


if __name__ == "__main__":
    main()
