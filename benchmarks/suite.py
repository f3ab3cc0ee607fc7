"""The task suite: every embedded task through the pipeline, then each method's selection fine-tuned over seeds.

    make benchmark                                          # every method on three draws of the demo's task
    make suite                                              # every task, four draws, the methods that judge a default
    .venv/bin/python -m benchmarks.suite                    # every task, four draws, every default method, one seed
    .venv/bin/python -m benchmarks.suite --tasks sort,spell --seeds 0,1 --methods full,random,drift
    .venv/bin/python -m benchmarks.suite --draws 0,1 --output data/suite/two-draws.json   # two draws of each task
    .venv/bin/python -m benchmarks.suite --report data/suite/results.json,data/suite/two-draws.json
    .venv/bin/python -m benchmarks.suite --methods drift --set projection.validation_span=completion --tag completion \
        --output data/suite/completion.json     # the default with one setting changed, joined to the default's run by --report

Each task gets a workspace under ``data/suite/<task>/`` (settings file, data, model, warehouse,
Dagster instance), built from ``data/settings.yaml`` with the task's own demo, answer marker,
selection share and fine-tuning length. The arithmetic task is the demo itself, so it shares the
demo's model and data with ``make demo``. A rerun materializes only what is stale or missing.

A *draw* is one ``demo.seed``: the task's pool, validation and test queries drawn anew, on the
task's pinned base model (the same on every machine: drift_assets/tasks/pinned.py). The SFT seeds'
standard errors say nothing of how a method fares on other data, which varies more than the seeds
do; each task runs on every draw of ``--draws`` (``<task>-draw<n>/``), and the report gives each
method's difference from full-data SFT as mean ± s.e. over the draws, with the smallest difference
that spread can detect.

Two settings differ from a user's run, for speed on 2 CPU cores: rollouts are sampled with
transformers (on these 0.5M-parameter models it starts far sooner than vLLM's engine, and it
samples the same distribution), and the method benchmark's fine-tunes run in two one-thread
processes (``benchmark.workers``).

It prints, per task, each method's accuracy after SFT and its paired difference from full-data SFT
and from a random selection of the same size (mean ± standard error over the seeds), with its
selection's noisy share, the noise AUC of its score and of its selection order, and what choosing the
examples cost (× one full-pool SFT run, ``drift_assets.core.runtime.cost``); then each method's difference from full on every task, the mean over the tasks that choose
defaults, and the held-out task on its own. The numbers also go to ``data/suite/results.json``
(``--output``); ``--report`` prints several runs' files as one report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "data" / "suite"


def workspace(task_name: str, draw: int) -> Path:
    """The task draw's workspace: ``data/suite/<task>/`` for ``demo.seed`` 0, ``<task>-draw<n>/`` for n > 0."""
    return SUITE / (task_name if draw == 0 else f"{task_name}-draw{draw}")


def draw_label(task_name: str, draw: int) -> str:
    """``sort`` for the task's first draw (``demo.seed`` 0), ``sort#1`` for ``demo.seed`` 1 (other data, another base model)."""
    return task_name if draw == 0 else f"{task_name}#{draw}"


def result_label(result: dict) -> str:
    return draw_label(result["task"], result.get("draw", 0))


def task_settings(
    task_name: str, draw: int, methods: list[str], seeds: list[int], warmup: bool, workers: int, overrides: dict
) -> Path:
    """Write ``data/suite/<task>/settings.yaml`` (``<task>-draw<n>/`` for ``demo.seed`` n > 0) and return its path."""
    import yaml

    from drift_assets.settings import DEFAULT_SETTINGS_PATH, SftSettings
    from drift_assets.tasks import get_task

    task = get_task(task_name)
    raw = yaml.safe_load(DEFAULT_SETTINGS_PATH.read_text())
    directory = workspace(task_name, draw)
    directory.mkdir(parents=True, exist_ok=True)
    sft = {**raw.get("benchmark", {}).get("sft", {}), **task.defaults.sft}
    demo = raw.get("demo", {})
    shares_the_demo = task_name == demo.get("task", "arithmetic") and draw == demo.get("seed", 0)
    demo_data = "../../demo" if shares_the_demo else "demo"
    raw.update(
        {
            "model": {**raw.get("model", {}), "path": f"{demo_data}/model"},
            "data": {
                **raw.get("data", {}),
                "training_pool": f"{demo_data}/training_pool.jsonl",
                "validation_queries": f"{demo_data}/validation_queries.jsonl",
                "test_queries": f"{demo_data}/test_queries.jsonl",
            },
            "warehouse": {"root": "warehouse", "storage_options": {}},
            # A draw is other data on the task's pinned base model (drift_assets/tasks/pinned.py).
            "demo": {**demo, "enabled": True, "task": task_name, "seed": draw, "model_seed": 0},
            "grading": {
                **raw.get("grading", {}),
                "answer_marker": task.answer_marker or raw.get("grading", {}).get("answer_marker", "Answer:"),
            },
            "rollout": {**raw.get("rollout", {}), "backend": "transformers"},
            "projection": {**raw.get("projection", {}), "shards": 1},
            "warmup": {
                **raw.get("warmup", {}),
                # One checkpoint, at the end of a full-data run of the task's SFT recipe.
                "steps": [SftSettings(**sft).options(0).steps_for(task.defaults.n_train)] if warmup else [],
                "learning_rate": sft.get("learning_rate", 1e-3),
            },
            "selection": {**raw.get("selection", {}), "fraction": task.defaults.selection_fraction, "export_dir": "exports"},
            "benchmark": {"methods": methods, "seeds": seeds, "workers": workers, "eval_backend": "transformers", "sft": sft},
        }
    )
    for dotted, value in overrides.items():
        group, key = dotted.split(".", 1)
        raw.setdefault(group, {})[key] = value
    path = directory / "settings.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def task_instance(settings_path: Path):
    """The task's own persistent Dagster instance (beside its settings file): staleness is per graph."""
    from dagster import DagsterInstance

    home = settings_path.parent / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return DagsterInstance.from_config(str(home))


def run_task(settings_path: Path, benchmark: bool = True) -> dict:
    """Materialize the task's graph (what is stale) and its method benchmark; return its figures."""
    from dagster import AssetKey, AssetRecordsFilter

    from drift_assets.definitions import build_definitions
    from drift_assets.resources import Warehouse
    from drift_assets.runner import materialize_pipeline, run_method_benchmark
    from drift_assets.settings import load_settings

    settings = load_settings(settings_path)
    instance = task_instance(settings_path)
    defs = build_definitions(settings)
    started = time.perf_counter()
    materialize_pipeline(defs, instance, only_stale=True)
    pipeline_seconds = time.perf_counter() - started
    if not benchmark:
        return {
            "task": settings.demo.task,
            "draw": settings.demo.seed,
            "pipeline_seconds": pipeline_seconds,
            "guards": guard_results(instance, defs),
        }
    run_method_benchmark(defs, instance)
    warehouse = Warehouse.from_settings(settings)

    def metadata(asset: str, partition: str | None = None) -> dict:
        records = instance.fetch_materializations(
            AssetRecordsFilter(AssetKey(asset), asset_partitions=[partition] if partition else None), limit=1
        ).records
        event = records[0].event_log_entry.asset_materialization if records else None
        return {key: value.value for key, value in event.metadata.items()} if event else {}

    grades, scores = metadata("grades", "base"), metadata("influence_scores")
    guards = guard_results(instance, defs)
    return {
        "guards": guards,
        "task": settings.demo.task,
        "draw": settings.demo.seed,
        "table": warehouse.scan("method_benchmark").collect().to_dicts(),
        "pass_at_1": grades.get("pass_at_1"),
        "mixed_share": grades.get("mixed_share"),
        "queries": grades.get("queries"),
        "drift_diagnostics": {
            key: scores.get(key)
            for key in ("noise_auc", "spearman_score_vs_grad_norm", "spearman_score_vs_loss", "reference_share_of_target")
        },
        "pipeline_seconds": pipeline_seconds,
        "benchmark_seconds": time.perf_counter() - started - pipeline_seconds,
    }


GUARDS = (
    "grades_enough_contrast",
    "influence_target_on_policy",
    "influence_not_gradient_hacking",
    "refined_dataset_agrees_with_likelihood",
)


def guard_results(instance, defs) -> dict[str, dict]:
    """Each guard's latest verdict and message in the task's instance."""
    checks = [key for key in defs.resolve_asset_graph().asset_check_keys if key.name in GUARDS]
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(checks)
    results = {}
    for key in checks:
        evaluation = records[key].event.dagster_event.event_specific_data if key in records else None
        if evaluation is not None:
            results[key.name] = {"passed": evaluation.passed, "message": evaluation.metadata["message"].value}
    return results


def paired(table, baseline: str) -> dict[str, tuple[float, float | None]]:
    """method -> (mean, standard error) of its accuracy minus ``baseline``'s on the same seed, in points."""
    from drift_assets.core.study.benchmark import paired_differences

    return {
        row["method"]: (100 * row["difference_mean"], None if row["difference_se"] is None else 100 * row["difference_se"])
        for row in paired_differences(table, baseline).iter_rows(named=True)
    }


def cell(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return "–"
    mean, error = value
    return f"{mean:+.1f}" + ("" if error is None else f" ± {error:.1f}")


def task_report(result: dict) -> str:
    import polars as pl

    from drift_assets.core.study.benchmark import figure, summary_table
    from drift_assets.tasks import get_task

    table = pl.DataFrame(result["table"])
    for column in ("order_auc", "noisy_share", "wall_seconds"):  # figures written before these columns existed
        if column not in table.columns:
            table = table.with_columns(pl.lit(None, dtype=pl.Float64).alias(column))
    task = get_task(result["task"])
    versus_full, versus_random = paired(table, "full"), paired(table, "random")
    diagnostics = result["drift_diagnostics"]
    lines = [
        f"#### {result_label(result)}{' (held out)' if task.held_out else ''}: {task.description}",
        f"base model pass@1 {result['pass_at_1']:.3f}, {100 * result['mixed_share']:.0f}% of {result['queries']} validation queries with "
        f"mixed grades; DRIFT's score: Spearman with gradient norm {diagnostics['spearman_score_vs_grad_norm'] or float('nan'):+.3f}, "
        f"with loss {diagnostics['spearman_score_vs_loss'] or float('nan'):+.3f}",
        "",
        *(
            f"- guard {name}: {'passed' if verdict['passed'] else 'WARNS'}: {verdict['message']}"
            for name, verdict in result["guards"].items()
        ),
        "",
        "| method | examples | accuracy % (mean ± std) | vs full (points, paired) | vs random | noisy share | "
        "noise AUC (score) | noise AUC (selection order) | cost × full SFT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary_table(table).iter_rows(named=True):
        method = row["method"]
        lines.append(
            f"| {method} | {row['n_selected']} | {100 * row['accuracy_mean']:.1f} ± {100 * (row['accuracy_std'] or 0):.1f} | "
            f"{cell(None if method == 'full' else versus_full.get(method))} | "
            f"{cell(None if method == 'random' else versus_random.get(method))} | {figure(row['noisy_share'], '.0%')} | "
            f"{figure(row['noise_auc'])} | {figure(row['order_auc'])} | {cost_cell([row['cost_vs_full_sft']])} |"
        )
    return "\n".join(lines)


def draw_differences(results: list[dict], baseline: str = "full") -> dict[str, dict[str, list[float]]]:
    """task -> method -> the method's accuracy minus ``baseline``'s on each draw of the task, in points
    (each draw's figure the mean over its paired SFT seeds)."""
    import polars as pl

    differences: dict[str, dict[str, list[float]]] = {}
    for result in results:
        by_method = differences.setdefault(result["task"], {})
        for method, (mean, _) in paired(pl.DataFrame(result["table"]), baseline).items():
            by_method.setdefault(method, []).append(mean)
    return differences


def cost_cell(values: list[float | None]) -> str:
    """What choosing the examples cost, × one full-pool SFT run (the mean where several task draws
    give one; – where the results predate it)."""
    known = [value for value in values if value is not None]
    return f"{sum(known) / len(known):.2f}" if known else "–"


def method_cost(results: list[dict], method: str) -> str:
    """A method's :func:`cost_cell` over every task draw's table."""
    return cost_cell([row.get("cost_vs_full_sft") for result in results for row in result["table"] if row["method"] == method])


def summary_cell(values: list[float] | None) -> str:
    """mean ± s.e. over draws (the s.e. only with two draws or more), and the draws' count."""
    from drift_assets.core.study.stats import mean_and_standard_error

    if not values:
        return "–"
    return cell(mean_and_standard_error(values)) + ("" if len(values) > 1 else " (1 draw)")


def overall_report(results: list[dict]) -> str:
    """Each method's difference from full-data SFT per task (mean ± s.e. over the task's draws), over
    every development task draw together with the smallest difference that spread can detect, and
    the held-out task apart."""
    from drift_assets.core.study.stats import mean_and_standard_error, minimum_detectable_difference
    from drift_assets.tasks import get_task

    differences = draw_differences(results)
    tasks = list(dict.fromkeys(result["task"] for result in results))
    development = [task for task in tasks if not get_task(task).held_out]
    held_out = [task for task in tasks if get_task(task).held_out]
    draws = {task: sum(result["task"] == task for result in results) for task in tasks}
    methods = list(dict.fromkeys(row["method"] for result in results for row in result["table"]))
    header = ["method", *(f"{task} ({draws[task]})" for task in development), "development draws", "detectable"]
    header += [f"{task} ({draws[task]}, held out)" for task in held_out]
    header.append("cost × full SFT")
    lines = [
        "Accuracy after SFT minus full-data SFT on the same draw, points: mean ± s.e. over each task's draws (their count in "
        "brackets; each draw's figure is the mean over its paired SFT seeds); 'development draws' pools every development "
        "task draw; 'detectable' is the smallest true difference that spread detects (80% power, 5% two-sided); 'cost × "
        "full SFT' is what choosing the examples cost in token passes, against one SFT run on the full pool (mean over the "
        "draws: DRIFT's and the influence methods' are the pipeline's rollouts, warm-up and gradients).",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---|" * (len(header) - 1),
    ]
    # method -> its differences on every development task draw (full's own, all 0, count in the power line)
    pooled = {method: [value for task in development for value in differences[task].get(method, [])] for method in methods}
    errors = {method: mean_and_standard_error(values)[1] for method, values in pooled.items()}
    for method in methods:
        if method == "full":
            continue
        detectable = "–" if errors[method] is None else f"{minimum_detectable_difference(errors[method]):.1f}"
        cells = [method, *(summary_cell(differences[task].get(method)) for task in development)]
        cells += [summary_cell(pooled[method]), detectable]
        cells += [summary_cell(differences[task].get(method)) for task in held_out]
        cells.append(method_cost(results, method))
        lines.append("| " + " | ".join(cells) + " |")
    development_draws = sum(draws[task] for task in development)
    if development_draws >= 2:
        lines += ["", power_line([error for error in errors.values() if error is not None], development_draws)]
    return "\n".join(lines)


def power_line(errors: list[float], draws: int) -> str:
    """How small a difference between two methods the development draws can resolve: the spread of
    a paired difference across draws, taken from the methods measured (their median standard error)."""
    import statistics

    from drift_assets.core.study.stats import minimum_detectable_difference

    if not errors:
        return ""
    typical = statistics.median(errors)
    return (
        f"Power: {draws} development draws; a method's difference from full-data SFT has a median standard error of "
        f"{typical:.2f} points across them, so the suite detects differences of about {minimum_detectable_difference(typical):.1f} "
        "points or more (80% power, 5% two-sided); a smaller gap between two methods is within its noise."
    )


def versus_default_report(results: list[dict], default: str = "drift") -> str:
    """Each method's accuracy minus the default's (``default``) on every development task draw, pooled:
    mean ± s.e. and whether it leads or trails by more than two standard errors (the rule that
    chooses a default, benchmarks/README.md)."""
    from drift_assets.core.study.stats import mean_and_standard_error
    from drift_assets.tasks import get_task

    differences = draw_differences(results, baseline=default)
    development = [task for task in differences if not get_task(task).held_out]
    methods = list(dict.fromkeys(row["method"] for result in results for row in result["table"]))
    lines = [
        f"Each method minus the default ({default}) on the same development draw, points, pooled over the draws "
        "(mean ± s.e.; 'by > 2 s.e.' is the rule that lets a candidate replace the default):",
        "",
        "| method | draws | minus the default | by > 2 s.e. |",
        "|---|---|---|---|",
    ]
    for method in methods:
        pooled = [value for task in development for value in differences[task].get(method, [])]
        if method == default or not pooled:
            continue
        mean, error = mean_and_standard_error(pooled)
        verdict = "–" if error is None else ("leads" if mean > 2 * error else "trails" if mean < -2 * error else "no")
        lines.append(f"| {method} | {len(pooled)} | {cell((mean, error))} | {verdict} |")
    return "\n".join(lines) if len(lines) > 4 else ""  # no development draw: nothing to compare


def merged(results: list[dict]) -> list[dict]:
    """One result per task draw: where several runs measured the same draw (e.g. a method added to an
    earlier run's), their tables are joined, a later run's rows replacing an earlier run's for the
    methods both measured (on one machine a method's fine-tune repeats to the digit)."""
    by_draw: dict[tuple[str, int], dict] = {}
    for result in results:
        key = (result["task"], result.get("draw", 0))
        if key not in by_draw:
            by_draw[key] = {**result, "table": list(result["table"])}
            continue
        earlier = by_draw[key]
        methods = {row["method"] for row in result["table"]}
        earlier["table"] = [row for row in earlier["table"] if row["method"] not in methods] + list(result["table"])
    return list(by_draw.values())


def tagged(result: dict, tag: str | None) -> dict:
    """``result`` with its methods named ``METHOD+tag`` (a run with a setting changed, joined by ``merged``
    to the default's run of the same draw); unchanged without a tag."""
    if not tag or "table" not in result:
        return result
    return {**result, "table": [{**row, "method": f"{row['method']}+{tag}"} for row in result["table"]]}


def print_report(results: list[dict], default: str = "drift") -> None:
    for result in results:
        print("\n" + task_report(result))
    print("\n" + overall_report(results))
    versus_default = versus_default_report(results, default)  # "" where no result has the default
    if versus_default:
        print("\n" + versus_default)


def main() -> None:
    from benchmarks.benchmark_args import comma_list
    from drift_assets.core.study.benchmark import pipeline_default
    from drift_assets.settings import BENCHMARK_METHODS, DEMO_TASKS, BenchmarkSettings, SelectionSettings
    from drift_assets.terminal import hide_beta_warnings

    hide_beta_warnings()

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(DEMO_TASKS), help=f"comma-separated subset of {', '.join(DEMO_TASKS)}")
    parser.add_argument(
        "--methods",
        default=",".join(BenchmarkSettings().methods),
        help=f"comma-separated subset of {', '.join(BENCHMARK_METHODS)} (default: benchmark.methods' default)",
    )
    parser.add_argument(
        "--seeds",
        default="0",
        help="SFT seeds (with common random numbers a seed's paired difference varies less than a draw's: spend the "
        "time on draws)",
    )
    parser.add_argument(
        "--draws",
        default="0,1,2,3",
        help="demo.seed values: each draws the task's pool and queries anew (on its pinned base model), so that a figure "
        "does not rest on one draw of the data (draw 0 is the task's usual one)",
    )
    parser.add_argument("--output", default=str(SUITE / "results.json"), help="where the figures are written (JSON)")
    parser.add_argument(
        "--warmup",
        choices=["on", "off"],
        default="on",
        help="score along a warm-up run too (its checkpoint at the end of a full-data run of the task's SFT recipe)",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes for the fine-tunes")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="GROUP.KEY=YAML",
        help="override a setting for every task, e.g. --set influence.unsolved=skip",
    )
    parser.add_argument("--materialize-only", action="store_true", help="bring each task's pipeline up to date, no fine-tunes")
    parser.add_argument(
        "--report",
        metavar="JSON,...",
        help="print the report of earlier runs' figures (their --output files) together, runs of the same task draw "
        "joined (a later file's rows replace an earlier one's for the methods both measured); run nothing",
    )
    parser.add_argument(
        "--tag",
        help="record this run's methods as METHOD+TAG, e.g. a run with --set beside the default's run of the same draws "
        "(--report joins the two, so the setting is compared draw by draw)",
    )
    parser.add_argument(
        "--default",
        default=pipeline_default(SelectionSettings().choose_among),
        help="the method every other is compared with under the rule (by default the method that makes the "
        "pipeline's default selection; drift for the reports of runs before selection.choose_among became [loss])",
    )
    args = parser.parse_args()
    if args.report:
        print_report(
            merged([result for path in args.report.split(",") for result in json.loads(Path(path).read_text())["results"]]),
            args.default,
        )
        return
    import yaml

    tasks = comma_list(parser, "--tasks", args.tasks, DEMO_TASKS, "task")
    methods = comma_list(parser, "--methods", args.methods, BENCHMARK_METHODS, "method")
    along_the_run = [name for name in methods if name in ("less", "less_round_robin", "dynamics")]
    if args.warmup == "off" and along_the_run:
        parser.error(f"--warmup off: {', '.join(along_the_run)} read the warm-up run's checkpoints; leave them out")
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if "." not in key or not _:
            parser.error(f"--set {item!r}: expected GROUP.KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    draws = [int(draw) for draw in args.draws.split(",")]
    started = time.perf_counter()
    results = []
    for name in tasks:
        for draw in draws:
            label = draw_label(name, draw)
            path = task_settings(name, draw, methods, seeds, args.warmup == "on", args.workers, overrides)
            print(f"\n=== {label}: {path}", flush=True)
            result = tagged(run_task(path, benchmark=not args.materialize_only), args.tag)
            results.append(result)
            print(
                f"{label}: pipeline {result['pipeline_seconds']:.0f} s, benchmark {result.get('benchmark_seconds', 0):.0f} s",
                flush=True,
            )
    total = time.perf_counter() - started
    if args.materialize_only:
        for result in results:
            for name, verdict in result["guards"].items():
                print(f"{result_label(result)}: {name} {'passed' if verdict['passed'] else 'WARNS'}: {verdict['message']}")
        print(f"\nsuite: {len(results)} task draws materialized in {total / 60:.1f} min")
        return
    Path(args.output).write_text(json.dumps({"results": results, "seconds": total, "argv": sys.argv[1:]}, indent=1, default=str))
    print_report(results, args.default)
    print(f"\nsuite: {len(results)} task draws in {total / 60:.1f} min; figures in {args.output}")


if __name__ == "__main__":
    main()
