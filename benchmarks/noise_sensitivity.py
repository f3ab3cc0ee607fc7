"""Noise sensitivity: test accuracy after SFT against the share of noisy rows in a selection.

The method benchmark compares selections that differ both in how much noise they keep and in which
clean rows they keep. This script separates the two, on the materialized demo (run ``make demo``
first), with selections of the benchmark's size (``selection.fraction`` of the pool), its SFT
settings and seeds, and test accuracy:

1. random noise: random clean rows and random noisy rows (``is_corrupted``) in fixed shares, so
   how many points each share of noise costs, and how far above full-data SFT a perfect filter is;
2. the noise a scored selection keeps (DRIFT's, the refined dataset; the ``loss`` filter's): the
   selection as it is against the same selection with its noisy rows swapped for clean rows it
   left out, so what the noise it kept costs, beside what random noise of that share costs;
3. rows one off (``--one-off N``, the demo's arithmetic prompts): a random clean selection with N
   of its rows replaced by rows whose answer is one too high, one too low, or half each, and which
   way the fine-tuned model's wrong test answers go. It separates the harm such rows do by their
   direction (a shift of the model's answers, which first-order influence sees) from the harm
   they do by being wrong at all.

Where the ``method_benchmark`` table exists, it is printed for comparison.

    .venv/bin/python -m benchmarks.noise_sensitivity
    .venv/bin/python -m benchmarks.noise_sensitivity --shares 0,0.05,0.2 --seeds 0,1,2
    .venv/bin/python -m benchmarks.noise_sensitivity --shares '' --no-scored --one-off 100

This prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import re
import time

import numpy as np
import polars as pl

from benchmarks.demo_warehouse import demo_warehouse, evaluated_after_sft, ground_truth_pool
from drift_assets.core.data.stored import ConfiguredTables, pool_loss_scores
from drift_assets.core.grading.graders import extract_number
from drift_assets.core.study.benchmark import summary_markdown
from drift_assets.core.training.sft import Evaluation
from drift_assets.resources import Warehouse, model_resource
from drift_assets.settings import Settings

PROBLEM = re.compile(r"What is (\d+) ([+-]) (\d+)\?")  # the demo's arithmetic prompts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "--shares", default="0,0.025,0.05,0.1,0.2,pool", help="noisy shares of each selection ('pool': the pool's own share)"
    )
    parser.add_argument("--seeds", default=None, help="comma list of SFT seeds (default: benchmark.seeds)")
    parser.add_argument("--no-scored", action="store_true", help="skip part 2 (the scored selections)")
    parser.add_argument(
        "--one-off",
        type=int,
        default=0,
        metavar="N",
        help="part 3: N rows one off (+1, -1, half each) in a random clean selection (0: skip)",
    )
    return parser.parse_args(argv)


def mixed_selection(clean: list[str], noisy: list[str], size: int, share: float, seed: int) -> list[str]:
    """``size`` ids, round(share × size) of them noisy, both kinds drawn at random (seeded)."""
    n_noisy = round(share * size)
    if n_noisy > len(noisy) or size - n_noisy > len(clean):
        raise SystemExit(
            f"a selection of {size} with noise share {share} needs {n_noisy} noisy and {size - n_noisy} clean rows; "
            f"the pool has {len(noisy)} and {len(clean)}"
        )
    rng = random.Random(f"noise-sensitivity-{share}-{seed}")
    return rng.sample(clean, size - n_noisy) + rng.sample(noisy, n_noisy)


def main(argv=None) -> None:
    args = parse_args(argv)
    settings, warehouse = demo_warehouse(("training_pool", "test_queries"))
    pool = ground_truth_pool(warehouse)
    noisy_mask = pool["is_corrupted"].to_numpy().astype(bool)
    ids = pool["example_id"].to_list()
    clean = [i for i, bad in zip(ids, noisy_mask) if not bad]
    noisy = [i for i, bad in zip(ids, noisy_mask) if bad]
    noisy_set = set(noisy)
    pool_share = float(noisy_mask.mean())
    shares = [pool_share if share == "pool" else float(share) for share in args.shares.split(",") if share]
    seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else settings.benchmark.seeds
    size = round(pool.height * settings.selection.fraction)
    queries = warehouse.scan("test_queries").collect().to_dicts()
    messages = dict(zip(ids, pool["messages"], strict=True))
    resource = model_resource(settings)
    tokenizer = resource.load_tokenizer()

    def evaluated(selection: list[str], seed: int) -> Evaluation:
        return evaluated_after_sft(settings, resource, tokenizer, [messages[i] for i in sorted(selection)], queries, seed)

    def mean_std(selection_for_seed) -> tuple[float, float]:
        values = [100 * evaluated(selection_for_seed(seed), seed).accuracy for seed in seeds]
        return float(np.mean(values)), float(np.std(values))

    print(
        f"selections of {size} rows (selection.fraction {settings.selection.fraction} of {pool.height}); "
        f"the pool is {pool_share:.3f} noise; SFT seeds {seeds}, {len(queries)} test queries\n"
    )
    if shares:
        print("random noise: clean rows and noisy rows drawn at random in each share\n")
        print("| noise share | noisy rows | accuracy % (mean ± std over seeds) |")
        print("|---|---|---|")
    started = time.perf_counter()
    curve = {}
    for share in shares:
        curve[share], spread = mean_std(lambda seed, share=share: mixed_selection(clean, noisy, size, share, seed))
        print(f"| {share:.3f} | {round(share * size)} | {curve[share]:.1f} ± {spread:.1f} |", flush=True)

    selections = {} if args.no_scored else scored_selections(settings, warehouse, pool, size)
    if selections:
        print(
            "\nthe noise a scored selection keeps: the selection as it is, and with its noisy rows swapped for clean "
            "rows it left out (drawn at random per seed); beside it, random noise of the same share (interpolated above)\n"
        )
        print(
            "| selection | noise share | accuracy % | noise swapped for clean | its noise costs (points) | random noise of that share costs |"
        )
        print("|---|---|---|---|---|---|")
        shares_measured = sorted(curve)
        random_curve = [curve[share] for share in shares_measured]
        for name, chosen in selections.items():
            kept_noise = [i for i in chosen if i in noisy_set]
            share = len(kept_noise) / len(chosen)
            as_is, as_is_spread = mean_std(lambda seed, chosen=chosen: chosen)
            left_out = sorted(set(clean) - set(chosen))
            swapped, swapped_spread = mean_std(
                lambda seed, chosen=chosen, name=name, left_out=left_out, kept_noise=kept_noise: (
                    [i for i in chosen if i not in noisy_set]
                    + random.Random(f"noise-swap-{name}-{seed}").sample(left_out, len(kept_noise))
                )
            )
            random_cost = (
                f"{curve[0.0] - np.interp(share, shares_measured, random_curve):.1f}" if 0.0 in curve else "– (needs share 0)"
            )
            print(
                f"| {name} | {share:.3f} | {as_is:.1f} ± {as_is_spread:.1f} | {swapped:.1f} ± {swapped_spread:.1f} | "
                f"{swapped - as_is:.1f} | {random_cost} |",
                flush=True,
            )
    if args.one_off:
        one_off_rows(args.one_off, pool, clean, size, seeds, settings, queries, evaluated)
    print(f"\n{time.perf_counter() - started:.0f} s")

    if warehouse.exists("method_benchmark"):
        print("\nthe method benchmark, for comparison\n")
        print(summary_markdown(warehouse.scan("method_benchmark").collect()))


def answer_offset(prompt: str, response: str, marker: str) -> int | None:
    """response's final number − the correct answer, for the demo's arithmetic prompts."""
    problem, number = PROBLEM.search(prompt), extract_number(response, marker)
    if problem is None or number is None:
        return None
    left, operator, right = int(problem[1]), problem[2], int(problem[3])
    return round(float(number)) - (left + right if operator == "+" else left - right)


def one_off_rows(n_rows, pool, clean, size, seeds, settings, queries, evaluated) -> None:
    """Part 3: ``n_rows`` rows one too high, one too low, or half each, in a random clean selection of ``size``."""
    marker = settings.grading.answer_marker
    offsets = [answer_offset(prompt, response, marker) for prompt, response in zip(pool["prompt"], pool["response"], strict=True)]
    corrupted = pool["is_corrupted"].to_list()
    one_off = {
        direction: [
            i for i, offset, bad in zip(pool["example_id"], offsets, corrupted, strict=True) if bad and offset == direction
        ]
        for direction in (1, -1)
    }
    if min(len(rows) for rows in one_off.values()) < n_rows:
        raise SystemExit(
            f"--one-off {n_rows}: the pool has only {len(one_off[1])} rows one too high and {len(one_off[-1])} one too low"
        )

    def leaning(answers: list[str]) -> tuple[float, float]:
        """Shares of the test queries answered too high and too low (an answer's final number against its reference)."""
        numbers = [extract_number(answer, marker) for answer in answers]
        differences = [
            float(number) - float(query["reference"])
            for number, query in zip(numbers, queries, strict=True)
            if number is not None
        ]
        return sum(d > 0 for d in differences) / len(queries), sum(d < 0 for d in differences) / len(queries)

    def draw(kind: str, seed: int) -> list[str]:
        rng = random.Random(f"one-off-{kind}-{n_rows}-{seed}")
        noisy = {
            "none": [],
            "+1": rng.sample(one_off[1], n_rows),
            "-1": rng.sample(one_off[-1], n_rows),
            "half each": rng.sample(one_off[1], n_rows // 2) + rng.sample(one_off[-1], n_rows - n_rows // 2),
        }[kind]
        return rng.sample(clean, size - len(noisy)) + noisy

    print(
        f"\nrows one off: a random clean selection of {size} with {n_rows} rows replaced by rows one too high, "
        f"one too low, or half each; the fine-tuned models' test answers\n"
    )
    print("| rows one off | accuracy % (mean ± std over seeds) | answers too high % | answers too low % |")
    print("|---|---|---|---|")
    for kind in ("none", "+1", "-1", "half each"):
        figures = []
        for seed in seeds:
            result = evaluated(draw(kind, seed), seed)
            figures.append((100 * result.accuracy, *(100 * share for share in leaning(result.answers))))
        values = np.array(figures)
        print(
            f"| {kind} | {values[:, 0].mean():.1f} ± {values[:, 0].std():.1f} | {values[:, 1].mean():.1f} | {values[:, 2].mean():.1f} |",
            flush=True,
        )


def scored_selections(settings: Settings, warehouse: Warehouse, pool: pl.DataFrame, size: int) -> dict[str, list[str]]:
    """The DRIFT selection (the refined dataset) and the benchmark's ``loss`` selection of ``size``, where their tables exist."""
    selections = {}
    if warehouse.exists("refined_dataset"):
        refined = warehouse.scan("refined_dataset").filter(pl.col("selected")).collect()
        selections["drift (the refined dataset)"] = sorted(refined["example_id"].to_list())
    if warehouse.exists("training_gradient_projections"):
        ranked = pool_loss_scores(ConfiguredTables.configured_by(settings, warehouse), pool)
        selections["loss (lowest loss per token)"] = sorted(ranked.head(size)["example_id"].to_list())
    return selections


if __name__ == "__main__":
    main()
