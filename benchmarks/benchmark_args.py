"""Command-line options the benchmarks share, and their warning about a busy machine (no heavy
imports: ``--help`` stays instant, and rollouts.py can set vLLM's environment before torch and vLLM load)."""

from __future__ import annotations

import argparse

MODELS = ("demo", "random")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark shares: which models, the random model's shape, torch threads."""
    parser.add_argument("--demo-model", default="data/demo/model", help="save_pretrained directory of the demo model")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of: {', '.join(MODELS)}")
    parser.add_argument("--hidden", type=int, default=512, help="random model hidden size (a multiple of 64)")
    parser.add_argument("--layers", type=int, default=12, help="random model layers")
    parser.add_argument("--intermediate", type=int, default=2048, help="random model MLP size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's own)")


def warn_if_cpus_busy(load_average: float, torch_threads: int, operations: str) -> None:
    """Say so where other processes load the CPUs while this one runs several torch threads: OpenMP
    threads then wait for a descheduled peer, and the timings are not comparable with a quiet run's."""
    if load_average > 0.5 and torch_threads > 1:
        print(
            f"note: other processes are using the CPUs; with several torch threads, {operations} can then be much "
            "slower (OpenMP threads wait for a descheduled peer). Compare runs made under the same load, or pass "
            "--threads 1.",
            flush=True,
        )


def comma_list(parser: argparse.ArgumentParser, flag: str, value: str, known: tuple[str, ...], kind: str = "value") -> list[str]:
    """``value`` split on commas; an unknown item is a usage error naming ``flag`` (and the item's ``kind``)."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    for item in items:
        if item not in known:
            parser.error(f"{flag}: unknown {kind} {item!r} (known: {', '.join(known)})")
    return items
