"""Choosing the influence defaults across the task suite: every candidate setting, fine-tuned over seeds.

    .venv/bin/python -m benchmarks.suite --tasks arithmetic,sort,spell,count --warmup on --materialize-only
    .venv/bin/python -m benchmarks.choose_defaults                       # the tasks that choose defaults
    .venv/bin/python -m benchmarks.choose_defaults --tasks sort --candidates skip/unit/signed/base,...
    .venv/bin/python -m benchmarks.choose_defaults --draws 0,1 --reuse-benchmark \
        --candidates skip/unit/positive/warmup,skip/unit/positive/warmup/round_robin

For each task (its workspace under ``data/suite/<task>/``, materialized with warm-up checkpoints)
it scores the pool with every candidate, ``unsolved/debias/weighting/checkpoints`` (e.g.
``skip/log_orthogonal/signed/warmup``: unsolved queries skipped, the log-space debias, signed
weights, averaged along the warm-up checkpoints; ``base`` scores at the base model alone), selects
the task's share of the pool (an optional fifth part says how: ``top``, the default; ``round_robin``,
the validation queries taking turns; ``filter``, a random draw from all but the lowest-scored 30%;
``guarded``, the queries taking turns over all but the 30% least likely rows under the base model;
``strata``, the top within length deciles), fine-tunes the base model on it as the method benchmark does, and
prints per candidate the noise AUC and the accuracy minus full-data SFT on the same seed (mean ±
standard error), per task and averaged. Fine-tunes are cached in ``data/suite/cache/`` by their
selection and seed, so a rerun with more candidates or seeds only runs what is new.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "data" / "suite"
CACHE = SUITE / "cache"
UNSOLVED = ("reference", "skip")
DEBIAS = ("unit", "log_orthogonal", "none")
WEIGHTING = ("signed", "positive")
CHECKPOINTS = ("base", "warmup")
GUARD = 0.7  # the guarded rule's share of the pool, likeliest first (influence.likelihood_guard)
RULES = (
    "top",
    "strata",
    "round_robin",
    "filter",
    "guarded",
)  # the optional fifth part: how the selection is drawn from the scores


def all_candidates() -> list[str]:
    return ["/".join(parts) for parts in itertools.product(UNSOLVED, DEBIAS, WEIGHTING, CHECKPOINTS)]


def parse_candidate(text: str):
    from drift_assets.core.attribution.scores import ScoringSettings

    unsolved, debias, weighting, checkpoints = text.split("/")[:4]
    rule = text.split("/")[4] if text.count("/") >= 4 else "top"
    if rule not in RULES:
        raise ValueError(f"{text!r}: the selection rule must be one of {RULES}")
    if unsolved not in UNSOLVED or debias not in DEBIAS or weighting not in WEIGHTING or checkpoints not in CHECKPOINTS:
        raise ValueError(
            f"{text!r}: expected unsolved/debias/weighting/checkpoints from {UNSOLVED}, {DEBIAS}, {WEIGHTING}, {CHECKPOINTS}"
        )
    ranking = "round_robin" if rule in ("round_robin", "guarded") else "score"
    guard = GUARD if rule == "guarded" else 1.0
    scoring = replace(
        ScoringSettings(), unsolved=unsolved, debias=debias, weighting=weighting, ranking=ranking, likelihood_guard=guard
    )
    return scoring, checkpoints == "base"


def selection_key(task: str, ids: list[str], seed: int, options) -> str:
    sft = repr(options).replace(", epochs=None", "")  # keys made before SftOptions had epochs stay valid
    text = json.dumps({"task": task, "ids": sorted(ids), "seed": seed, "sft": sft})
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (default: every task not held out)")
    parser.add_argument("--candidates", default=None, help="comma-separated unsolved/debias/weighting/checkpoints (default: all)")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--draws", default="0", help="the task draws (demo.seed) to run, as suite.py --draws made them")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-sft", action="store_true", help="noise AUC only")
    parser.add_argument(
        "--sft",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override benchmark.sft for these runs, e.g. --sft epochs=3 --sft learning_rate=3e-4",
    )
    parser.add_argument(
        "--against", default=None, help="the candidate the others are compared with, per task draw (default: the first)"
    )
    parser.add_argument(
        "--reuse-benchmark",
        action="store_true",
        help="take full, random and oracle from the suite's method_benchmark table instead of fine-tuning them again "
        "(the same selections, recipe and seeds)",
    )
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import polars as pl

    from drift_assets.core.attribution.scores import noise_auc
    from drift_assets.core.attribution.selection import length_strata, select, select_within_strata
    from drift_assets.core.attribution.trajectory import ranked_scores
    from drift_assets.core.data.stored import ConfiguredTables, base_losses, gradients_along
    from drift_assets.core.study.benchmark import MethodScorer, run_fine_tunes
    from drift_assets.core.training.evaluation import FineTuneJob, fine_tune_and_evaluate
    from drift_assets.resources import Warehouse, model_resource
    from drift_assets.settings import load_settings
    from drift_assets.tasks import TASKS

    names = args.tasks.split(",") if args.tasks else [name for name, task in TASKS.items() if not task.held_out]
    # A task's workspace for draw n > 0 (suite.py --draws) is data/suite/<task>-draw<n>/.
    tasks = [name if draw == 0 else f"{name}-draw{draw}" for name in names for draw in map(int, args.draws.split(","))]
    candidates = args.candidates.split(",") if args.candidates else all_candidates()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    CACHE.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.perf_counter()
    for task in tasks:
        settings = load_settings(SUITE / task / "settings.yaml")
        if args.sft:
            import yaml

            sft = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.sft)}
            settings = settings.with_overrides(
                benchmark={**settings.benchmark.model_dump(), "sft": {**settings.benchmark.sft.model_dump(), **sft}}
            )
        warehouse = Warehouse.from_settings(settings)
        tables = ConfiguredTables.configured_by(settings, warehouse)
        pool = warehouse.scan("training_pool").collect()
        scorer = MethodScorer(list(gradients_along(tables)), base_losses(tables, pool))
        if len(scorer.checkpoints) == 1 and any(c.endswith("/warmup") for c in candidates):
            raise SystemExit(
                f"{task}: no warm-up checkpoints in {warehouse.root}: run suite.py with --warmup on --materialize-only first"
            )
        model = model_resource(settings)
        queries = warehouse.scan("test_queries").collect().to_dicts()
        cache_path = CACHE / f"{task}.json"
        cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
        size = math.ceil(settings.selection.fraction * pool.height)
        selections = {"full": {seed: pool["example_id"].to_list() for seed in seeds}}
        import random

        selections["random"] = {
            seed: random.Random(f"random-selection-{seed}").sample(sorted(pool["example_id"]), size) for seed in seeds
        }
        clean = sorted(pool.filter(~pl.col("is_corrupted"))["example_id"])
        selections["oracle"] = {
            seed: random.Random(f"oracle-selection-{seed}").sample(clean, min(size, len(clean))) for seed in seeds
        }
        aucs = {"full": None, "random": None, "oracle": None}
        corrupted = set(pool.filter(pl.col("is_corrupted"))["example_id"])

        def noisy_share(ids: list[str], corrupted=corrupted) -> float:
            return len(corrupted.intersection(ids)) / len(ids)

        for candidate in candidates:
            scoring, base_only = parse_candidate(candidate)
            along = scorer.along(scoring, base_only=base_only)
            scores = ranked_scores(along, pool, scorer.loss_per_token, scoring.likelihood_guard)
            aucs[candidate] = noise_auc(scores, pool)
            rule = candidate.split("/")[4] if candidate.count("/") >= 4 else "top"
            if rule == "filter":
                # a filter, not a ranking: drop the lowest-scored 30%, sample the selection at random from the rest
                kept = sorted(scores.filter(pl.col("rank") <= math.ceil(0.7 * pool.height))["example_id"])
                selections[candidate] = {seed: random.Random(f"filter-selection-{seed}").sample(kept, size) for seed in seeds}
                continue
            if rule == "strata":
                chosen_mask = select_within_strata(scores, size, length_strata(scores["n_tokens"].to_numpy(), 10))
                chosen = scores.filter(chosen_mask)["example_id"].to_list()
            else:  # top, round_robin or guarded: the first by the scores' rank
                chosen = scores.filter(select(scores, "top_fraction", settings.selection.fraction))["example_id"].to_list()
            selections[candidate] = {seed: chosen for seed in seeds}
        if args.reuse_benchmark and warehouse.exists("method_benchmark"):
            cache.update(reused_fine_tunes(warehouse, task, selections, settings))
        jobs = []
        for name, by_seed in selections.items():
            for seed, ids in by_seed.items():
                options = settings.benchmark.sft.options(seed)
                key = selection_key(task, ids, seed, options)
                if key in cache or args.no_sft:
                    continue
                messages = pool.filter(pl.col("example_id").is_in(ids))["messages"].to_list()
                jobs.append(
                    (
                        key,
                        FineTuneJob(
                            name,
                            seed,
                            messages,
                            model.path,
                            model.dtype,
                            model.resolved_device,
                            options,
                            queries,
                            settings.rollout.max_tokens,
                            settings.grading.options(),
                        ),
                    )
                )
        unique = list({key: job for key, job in jobs}.items())
        print(f"{task}: {len(candidates)} candidates, {len(unique)} fine-tunes to run ({len(cache)} cached)", flush=True)
        keys = [key for key, _ in unique]
        finished = run_fine_tunes([job for _, job in unique], fine_tune_and_evaluate, args.workers)
        for index, (key, (_, (result, _))) in enumerate(zip(keys, finished, strict=True), 1):
            cache[key] = result.accuracy
            if index % 10 == 0 or index == len(unique):
                cache_path.write_text(json.dumps(cache))
                print(f"  {index}/{len(unique)} fine-tunes, {time.perf_counter() - started:.0f} s", flush=True)
        cache_path.write_text(json.dumps(cache))
        if args.no_sft:
            for name, by_seed in selections.items():
                noisy = noisy_share(by_seed[seeds[0]])
                rows.append(
                    {"task": task, "candidate": name, "seed": -1, "accuracy": None, "noise_auc": aucs[name], "noisy": noisy}
                )
            continue
        for name, by_seed in selections.items():
            for seed, ids in by_seed.items():
                accuracy = cache[selection_key(task, ids, seed, settings.benchmark.sft.options(seed))]
                rows.append(
                    {
                        "task": task,
                        "candidate": name,
                        "seed": seed,
                        "accuracy": accuracy,
                        "noise_auc": aucs[name],
                        "noisy": noisy_share(ids),
                    }
                )
    table = pl.DataFrame(rows, schema_overrides={"accuracy": pl.Float64, "noise_auc": pl.Float64, "noisy": pl.Float64})
    report(table, tasks, args.no_sft, args.against or candidates[0])
    print(f"\n{time.perf_counter() - started:.0f} s")


def reused_fine_tunes(warehouse, task: str, selections: dict, settings) -> dict[str, float]:
    """Cache entries (selection key -> accuracy) from the suite's ``method_benchmark`` for the
    selections that do not depend on the influence settings: full, random and oracle. (Its DRIFT
    rows are not reused: the table does not record the settings they were scored with, and a
    default changed since would attach their accuracy to another selection.)"""
    table = warehouse.scan("method_benchmark").collect()
    entries = {}
    for row in table.iter_rows(named=True):
        ids = selections.get(row["method"], {}).get(row["seed"]) if row["method"] in ("full", "random", "oracle") else None
        if ids is not None and len(ids) == row["n_selected"]:
            entries[selection_key(task, ids, row["seed"], settings.benchmark.sft.options(row["seed"]))] = row["accuracy"]
    return entries


def report(table, tasks: list[str], no_sft: bool, against: str | None = None) -> None:
    import polars as pl

    if no_sft:
        for values, what in (("noise_auc", "noise AUC of the score"), ("noisy", "noisy share of the selection")):
            wide = table.pivot(on="task", index="candidate", values=values)
            print(f"{what}:\n{wide.with_columns(mean=pl.mean_horizontal(tasks)).sort('mean', descending=values == 'noise_auc')}")
        return
    full = table.filter(pl.col("candidate") == "full").select("task", "seed", full=pl.col("accuracy"))
    paired = table.join(full, on=["task", "seed"]).with_columns(difference=100 * (pl.col("accuracy") - pl.col("full")))
    per_task = paired.group_by("task", "candidate").agg(
        mean=pl.col("difference").mean(),
        se=pl.col("difference").std() / pl.len().sqrt(),
        auc=pl.col("noise_auc").first(),
        noisy=pl.col("noisy").mean(),
    )
    lines = [
        "| candidate | " + " | ".join(f"{task}: vs full / AUC / noisy %" for task in tasks) + " | mean vs full | mean AUC |",
        "|---|" + "---|" * (len(tasks) + 2),
    ]
    summary = per_task.group_by("candidate").agg(
        mean=pl.col("mean").mean(), se=(pl.col("se") ** 2).sum().sqrt() / pl.len(), auc=pl.col("auc").mean()
    )
    for row in summary.sort("mean", descending=True).iter_rows(named=True):
        cells = []
        for task in tasks:
            one = per_task.filter((pl.col("task") == task) & (pl.col("candidate") == row["candidate"])).row(0, named=True)
            auc = "–" if one["auc"] is None else f"{one['auc']:.3f}"
            cells.append(f"{one['mean']:+.1f} ± {one['se']:.1f} / {auc} / {100 * one['noisy']:.0f}")
        auc = "–" if row["auc"] is None else f"{row['auc']:.3f}"
        lines.append(f"| {row['candidate']} | " + " | ".join(cells) + f" | {row['mean']:+.1f} ± {row['se']:.1f} | {auc} |")
    print("\n".join(lines))
    if against is None:
        return
    # The decision rule: a candidate replaces the default only if its mean paired difference over
    # the task draws is more than two standard errors (across the task draws) above zero.
    reference = per_task.filter(pl.col("candidate") == against).select("task", reference=pl.col("mean"))
    gaps = per_task.join(reference, on="task").with_columns(gap=pl.col("mean") - pl.col("reference"))
    decided = gaps.group_by("candidate").agg(
        mean=pl.col("gap").mean(), se=pl.col("gap").std() / pl.len().sqrt(), draws=pl.len(), per_task=pl.col("gap")
    )
    print(f"\nagainst {against} (difference per task draw, then mean ± s.e. across the {len(tasks)} task draws):")
    for row in decided.filter(pl.col("candidate") != against).sort("mean", descending=True).iter_rows(named=True):
        verdict = "beats it by more than 2 s.e." if row["mean"] > 2 * row["se"] else "does not beat it by 2 s.e."
        print(f"  {row['candidate']}: {row['mean']:+.2f} ± {row['se']:.2f} ({verdict})")


if __name__ == "__main__":
    main()
