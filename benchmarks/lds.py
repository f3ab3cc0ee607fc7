"""The linear datamodeling score (LDS) of our attribution, beside the field's reference implementations.

    .venv/bin/python -m benchmarks.suite --tasks arithmetic,sort,spell,count,choice --draws 0 --materialize-only   # the workspaces
    .venv/bin/python -m benchmarks.lds                                  # all five development tasks, M = 32
    .venv/bin/python -m benchmarks.lds --tasks arithmetic --subsets 8 --references none

Does an attribution method's score predict what retraining does? For each task (its workspace
under ``data/suite/<task>/``, as ``suite.py`` writes and materializes it) it draws M random
half-pools, fine-tunes the task's base model on each with the task's own SFT recipe
(``benchmark.sft``) and measures every validation query after each fine-tune, two ways
(:mod:`drift_assets.core.study.lds`): the on-policy objective J_j over the base model's stored rollouts
with the configured weighting (what DRIFT's target is the gradient of) and the log-likelihood of
the query's reference answer (what LESS and classic influence target). Each method's per-query
scores τ_ij predict Σ_{i∈S} τ_ij for a subset S; LDS_j is the Spearman correlation over the M
subsets of predicted and measured, and the table gives its mean over the queries ± standard error.

Rows: our per-query scores from the stored projected gradients (identity and fisher Hessians,
on- and off-policy targets, at the base model and along the warm-up checkpoints as
``influence_scores`` combines them, raw and with the configured debias), and the same model,
pool and queries through Kronfluence's EK-FAC and TRAK (the ``bench`` extra), and LESS's
Adam-preconditioned per-query scores along the warm-up checkpoints against the references
(``less``'s matrix), where the workspace's warm-up saved its optimizer state (``suite.py --methods
less`` saves it).
Another method's row is a (pool, queries) score matrix: add a function to ``ROW_SOURCES``.

Fine-tunes are cached in ``data/suite/lds/cache/<task>/`` under a key of what determines them (the
workspace, the subset, the SFT recipe and loop, the base model, the measured sequences), and so are
the reference implementations' scores: a rerun fine-tunes nothing and computes only our scores
(from the stored gradients, about a minute a task). The table is printed and written to ``data/suite/lds/results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import inspect
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "data" / "suite"
DEVELOPMENT = ("arithmetic", "sort", "spell", "count", "choice")


@dataclass
class Row:
    """One method's per-query scores: (pool examples, queries), positive = raises the query's measurement."""

    name: str
    example_ids: list[str]
    query_ids: list[str]
    matrix: np.ndarray
    target: str  # which measurement the method aims at: onpolicy or offpolicy


@dataclass
class TaskContext:
    """What a task's rows are computed from."""

    name: str
    settings: object
    pool: object  # the training_pool table
    scorer: object  # MethodScorer over the stored checkpoints
    sequences: object  # MeasuredSequences
    objectives: object  # QueryObjectives
    model: object  # ModelResource of the base model
    args: argparse.Namespace
    cache: Path  # this task's cache directory
    model_fingerprint: str
    seconds: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def timed(context: TaskContext, stage: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        context.seconds[stage] = context.seconds.get(stage, 0.0) + time.perf_counter() - started
        print(f"  {context.name}: {stage} {context.seconds[stage]:.0f} s", flush=True)


def our_rows(context: TaskContext) -> list[Row]:
    """DRIFT's per-query scores (``influence.ranking: round_robin``'s matrix) for each setting.

    One pass along the checkpoints per target and Hessian gives the raw per-query scores at each;
    the debiased ones and the base model's alone follow from them as ``score_along`` has them
    (each column debiased as ``score_pool`` does, then combined by ``combine_query_scores``).
    """
    configured = context.settings.influence.scoring()
    rows = []
    with timed(context, "our scores"):
        for targets in ("onpolicy", "offpolicy"):
            for hessian in ("identity", "fisher"):
                scoring = replace(configured, targets=targets, hessian=hessian, debias="none", ranking="round_robin")
                rows += _rows_along(context, scoring, f"ours {targets} {hessian}", (True, False))
        # The paper's signed weighting (benchmarks/README.md, 2026-12-06).
        scoring = replace(
            configured, targets="onpolicy", hessian="identity", debias="none", ranking="round_robin", weighting="signed"
        )
        rows += _rows_along(context, scoring, "ours onpolicy signed identity", (False,))
    return rows


def _rows_along(context: TaskContext, scoring, prefix: str, where: tuple[bool, ...]) -> list[Row]:
    """``scoring``'s per-query rows at the base model alone and/or along the checkpoints (``where``:
    base_only values), raw and with the configured debias."""
    from drift_assets.core.attribution.influence import debias
    from drift_assets.core.attribution.trajectory import combine_query_scores

    configured = context.settings.influence.scoring()
    along = context.scorer.along(scoring)
    rows = []
    for base_only in where:
        if not base_only and len(along.checkpoints) == 1:
            continue
        for method in ("none", configured.debias):
            per_checkpoint = []
            for checkpoint in along.checkpoints[:1] if base_only else along.checkpoints:
                scores = checkpoint.scores
                columns = [
                    debias(column, scores.grad_norm, scores.self_influence, method, configured.debias_strength)
                    for column in scores.per_query.T
                ]
                per_query = np.column_stack(columns) if columns else scores.per_query
                per_checkpoint.append(replace(scores, per_query=per_query))
            queries = combine_query_scores(per_checkpoint)
            name = f"{prefix} {'base' if base_only else 'along'} {'raw' if method == 'none' else method}"
            rows.append(Row(name, queries.example_ids, queries.query_ids, queries.matrix, scoring.targets))
    return rows


def reference_rows(context: TaskContext) -> list[Row]:
    """The reference implementations at the base model, on the pool's and the measured sequences."""
    from transformers import AutoTokenizer

    from drift_assets.core.gradients.tables import pool_token_pairs
    from drift_assets.core.study.lds import reference_id
    from drift_assets.core.study.reference_influence import ekfac_scores, trak_scores

    wanted = [name for name in context.args.references.split(",") if name and name != "none"]
    if not wanted:
        return []
    tokenizer = AutoTokenizer.from_pretrained(context.model.path)
    network = context.model.load_model()
    example_ids = context.pool["example_id"].to_list()
    train = pool_token_pairs(tokenizer, context.pool["messages"].to_list())
    # The sequences whose gradients the measurements need: the weighted rollouts and the references.
    sequences, objectives = context.sequences, context.objectives
    position = {sequence_id: index for index, sequence_id in enumerate(sequences.ids)}
    weights = objectives.onpolicy_weights
    items = list(dict.fromkeys([*weights["rollout_id"], *(reference_id(q) for q in objectives.offpolicy_query_ids)]))
    queries = ([sequences.prompt_ids[position[i]] for i in items], [sequences.response_ids[position[i]] for i in items])
    column = {item: index for index, item in enumerate(items)}
    combine = np.zeros((len(items), len(objectives.onpolicy_query_ids)))  # J_j = Σ_k w_jk log π(y_jk)
    query_column = {query_id: index for index, query_id in enumerate(objectives.onpolicy_query_ids)}
    for rollout_id, query_id, weight in weights.select("rollout_id", "query_id", "weight").iter_rows():
        combine[column[rollout_id], query_column[query_id]] += weight
    references = [column[reference_id(q)] for q in objectives.offpolicy_query_ids]
    target_modules = context.settings.projection.target_modules
    methods: dict[str, Callable[[], np.ndarray]] = {
        "ekfac": lambda: ekfac_scores(network, tokenizer, train, queries, target_modules, damping=context.args.ekfac_damping),
        "trak": lambda: trak_scores(network, tokenizer, train, queries, target_modules, proj_dim=context.args.trak_proj_dim),
        # Exact (unprojected) gradient products: what our identity rows would be without the projection.
        "identity": lambda: ekfac_scores(network, tokenizer, train, queries, target_modules, strategy="identity"),
    }
    settings = {"ekfac": context.args.ekfac_damping, "trak": context.args.trak_proj_dim, "identity": None}
    rows = []
    for name in wanted:
        if name not in methods:
            raise SystemExit(f"--references: unknown {name!r} (known: {', '.join(methods)}, none)")
        key = reference_key(context, name, settings[name], items, target_modules)
        cached = context.cache / f"{name}-{key}.npy"
        label = {
            "ekfac": "Kronfluence EK-FAC",
            "trak": f"TRAK (proj {context.args.trak_proj_dim})",
            "identity": "Kronfluence identity (exact gradients)",
        }[name]
        try:
            with timed(context, name):
                if cached.exists():
                    scores = np.load(cached)
                else:
                    scores = methods[name]()  # (pool, items)
                    np.save(cached, scores)
        except ImportError as missing:
            print(f"  {context.name}: {label} skipped: {missing} (install the bench extra: make bench-env)", flush=True)
            continue
        rows.append(Row(f"{label} onpolicy", example_ids, objectives.onpolicy_query_ids, scores @ combine, "onpolicy"))
        rows.append(Row(f"{label} offpolicy", example_ids, objectives.offpolicy_query_ids, scores[:, references], "offpolicy"))
    return rows


@functools.cache
def adapter_source() -> str:
    """A hash of the reference adapters' source, read once (``main`` reads it first): a file edited
    during a run must not key the scores of the code the run imported as the edited code's."""
    from drift_assets.core.study import reference_influence

    return hashlib.sha256(inspect.getsource(reference_influence).encode()).hexdigest()


def reference_key(context: TaskContext, method: str, setting, items: list[str], target_modules: str) -> str:
    """What a reference implementation's scores are cached under: the method and its setting, its
    package's version and our adapter's source, the base model, the pool and the scored sequences."""
    import importlib.metadata

    package = "traker" if method == "trak" else "kronfluence"
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        version = None
    text = json.dumps(
        {
            "method": method,
            "setting": setting,
            "version": version,
            "adapter": adapter_source(),
            "model": context.model_fingerprint,
            "pool": hashlib.sha256("\n".join(context.pool["messages"]).encode()).hexdigest(),
            "sequences": context.sequences.fingerprint(),
            "items": items,
            "modules": target_modules,
        }
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def less_rows(context: TaskContext) -> list[Row]:
    """LESS's per-query scores along the warm-up checkpoints (the benchmark's ``less`` matrix), cached
    like the reference implementations'; none where the workspace has no warm-up or no saved optimizer state."""
    from drift_assets.core.attribution import less as less_module
    from drift_assets.core.attribution.less import OPTIMIZER_STATE_FILE
    from drift_assets.defs.benchmark import less_matrix_of
    from drift_assets.defs.checkpoints import checkpoint_model
    from drift_assets.resources import Warehouse

    settings = context.settings
    steps = settings.checkpoints[1:]
    if not steps:
        print(f"  {context.name}: LESS rows skipped: no warm-up checkpoints (warmup.steps)", flush=True)
        return []
    warehouse = Warehouse.from_settings(settings)
    at_checkpoints = [checkpoint_model(checkpoint, context.model, warehouse) for checkpoint in steps]
    directories = [Path(at_checkpoint.adapter or at_checkpoint.path) for at_checkpoint in at_checkpoints]
    unsaved = [str(directory) for directory in directories if not (directory / OPTIMIZER_STATE_FILE).is_file()]
    if unsaved:
        print(
            f"  {context.name}: LESS rows skipped: no {OPTIMIZER_STATE_FILE} in {', '.join(unsaved)} (materialize the "
            f"warm-up with it: python -m benchmarks.suite --tasks {context.name} --methods less --materialize-only)",
            flush=True,
        )
        return []
    queries = warehouse.scan("validation_queries").collect().sort("query_id")
    pool_ids = context.pool["example_id"].to_list()
    key_text = json.dumps(
        {
            "less": hashlib.sha256(inspect.getsource(less_module).encode()).hexdigest(),
            "state": [hashlib.sha256((d / OPTIMIZER_STATE_FILE).read_bytes()).hexdigest() for d in directories],
            "models": [at_checkpoint.fingerprint() for at_checkpoint in at_checkpoints],
            "pool": hashlib.sha256("\n".join(context.pool["messages"]).encode()).hexdigest(),
            "queries": hashlib.sha256(queries.write_json().encode()).hexdigest(),
        }
    )
    cached = context.cache / f"less-{hashlib.sha256(key_text.encode()).hexdigest()[:24]}.npy"
    with timed(context, "less"):
        if cached.exists():
            reference = np.load(cached)
        else:
            reference = less_matrix_of(
                lambda line: print(f"  {context.name}: {line}", flush=True),
                settings.checkpoints,
                context.model,
                warehouse,
                context.model.load_tokenizer(),
                context.pool,
                queries,
            )
            np.save(cached, reference)
    return [Row("LESS (Adam) offpolicy along", pool_ids, queries["query_id"].to_list(), reference, "offpolicy")]


# Each gives rows for a task; another method's per-query scores join the table by a function added here.
ROW_SOURCES: list[Callable[[TaskContext], list[Row]]] = [our_rows, reference_rows, less_rows]


def measure_task(name: str, args: argparse.Namespace) -> dict:
    """Fine-tune the task's base model on each half-pool (or read the cache), score, and compute every row's LDS."""
    from drift_assets.core.attribution.trajectory import BASE
    from drift_assets.core.data.fingerprint import model_fingerprint
    from drift_assets.core.data.stored import ConfiguredTables, gradients_along, rows_at
    from drift_assets.core.study.benchmark import MethodScorer, run_fine_tunes
    from drift_assets.core.study.lds import (
        MeasureJob,
        fine_tune_and_measure,
        fine_tune_key,
        half_pools,
        lds,
        measured_sequences,
        query_objectives,
        sequence_logprobs,
    )
    from drift_assets.resources import Warehouse, model_resource
    from drift_assets.settings import load_settings

    suite = Path(args.suite)
    settings_path = suite / name / "settings.yaml"
    if not settings_path.exists():
        raise SystemExit(
            f"{settings_path} does not exist: run python -m benchmarks.suite --tasks {name} --materialize-only first"
        )
    started = time.perf_counter()
    settings = load_settings(settings_path)
    warehouse = Warehouse.from_settings(settings)
    model = model_resource(settings)
    pool = warehouse.scan("training_pool").collect().sort("example_id")
    scorer = MethodScorer(list(gradients_along(ConfiguredTables.configured_by(settings, warehouse))))
    base = scorer.checkpoints[0]
    tokenizer = model.load_tokenizer()
    sequences = measured_sequences(
        tokenizer,
        rows_at(warehouse, "rollouts", BASE),
        warehouse.scan("validation_queries").collect().sort("query_id"),
        # Measured at the answer whatever span the target covers (projection.validation_span): a target
        # over the whole completion is screened by how well it predicts what retraining does to the answers.
        settings.grading.answer_marker,
    )
    scoring = settings.influence.scoring()
    objectives = query_objectives(base.validation_gradients, base.grades, scoring.weighting, scoring.unsolved)
    fingerprint, measured_fingerprint = model_fingerprint(model.path), sequences.fingerprint()
    cache = suite / "lds" / "cache" / name
    cache.mkdir(parents=True, exist_ok=True)
    context = TaskContext(name, settings, pool, scorer, sequences, objectives, model, args, cache, fingerprint)
    context.seconds["load"] = time.perf_counter() - started

    subsets = half_pools(pool["example_id"].to_list(), args.subsets, seed=args.draw_seed)
    messages = dict(zip(pool["example_id"], pool["messages"]))
    options = settings.benchmark.sft.options(args.sft_seed)
    keys = [fine_tune_key(name, subset, options, fingerprint, measured_fingerprint) for subset in subsets]
    todo = [
        MeasureJob(key, [messages[i] for i in subset], model.path, model.dtype, model.resolved_device, options, sequences)
        for key, subset in zip(keys, subsets)
        if not (cache / f"{key}.json").exists()
    ]
    print(f"{name}: {len(subsets)} half-pools of {len(subsets[0])}, {len(todo)} to fine-tune ({len(subsets) - len(todo)} cached)")
    fine_tune_seconds = []
    with timed(context, "fine-tunes"):
        for done, (job, result) in enumerate(run_fine_tunes(todo, fine_tune_and_measure, args.workers), 1):
            (cache / f"{job.key}.json").write_text(json.dumps(asdict(result)))
            fine_tune_seconds.append(result.seconds)
            if done % 8 == 0 or done == len(todo):
                print(f"  {name}: {done}/{len(todo)} fine-tunes", flush=True)
    logprobs = [json.loads((cache / f"{key}.json").read_text())["logprobs"] for key in keys]
    measured = {  # J_j over the rollouts; log π(reference_j)
        "onpolicy": (objectives.onpolicy_query_ids, np.array([objectives.onpolicy(one) for one in logprobs])),
        "offpolicy": (objectives.offpolicy_query_ids, np.array([objectives.offpolicy(one) for one in logprobs])),
    }
    with timed(context, "base measurement"):
        at_base = sequence_logprobs(model.load_model(), tokenizer, sequences)
    change = {
        "onpolicy": float(np.mean(measured["onpolicy"][1] - objectives.onpolicy(at_base))),
        "offpolicy": float(np.mean(measured["offpolicy"][1] - objectives.offpolicy(at_base))),
    }

    results = []
    for row in [row for source in ROW_SOURCES for row in source(context)]:
        entry = {"row": row.name, "target": row.target}
        for measurement, (query_ids, values) in measured.items():
            summary, per_query = lds(row.matrix, row.example_ids, row.query_ids, subsets, values, query_ids)
            entry[measurement] = {**asdict(summary), "per_query": per_query}
        results.append(entry)
    context.seconds["total"] = time.perf_counter() - started
    return {
        "task": name,
        "subsets": len(subsets),
        "subset_size": len(subsets[0]),
        "pool": pool.height,
        "onpolicy_queries": len(objectives.onpolicy_query_ids),
        "offpolicy_queries": len(objectives.offpolicy_query_ids),
        "checkpoints": settings.checkpoints,
        "sft": repr(options),
        "mean_change_after_sft": change,
        "fine_tune_seconds_each": float(np.mean(fine_tune_seconds)) if fine_tune_seconds else None,
        "seconds": context.seconds,
        "rows": results,
    }


def cell(entry: dict, most: int) -> str:
    """mean ± s.e.; [n] where the row averages fewer queries than the task's widest row (``most``)."""
    if entry["queries"] == 0:
        return "–"
    error = "" if np.isnan(entry["se"]) else f" ± {entry['se']:.3f}"
    return f"{entry['mean']:+.3f}{error}" + (f" [{entry['queries']}]" if entry["queries"] < most else "")


def report(results: list[dict]) -> str:
    """One table per measurement: rows × tasks, and the mean over the tasks."""
    lines = []
    for measurement, title in (
        ("onpolicy", "LDS against the on-policy objective J_j (the base model's rollouts, configured weighting)"),
        ("offpolicy", "LDS against the reference answer's log-likelihood"),
    ):
        tasks = [result["task"] for result in results]
        widest = [max(result["rows"], key=lambda row: row[measurement]["queries"])[measurement] for result in results]
        counts = ", ".join(
            f"{result['task']} {entry['queries']} queries ({entry['constant']} constant, left out)"
            for result, entry in zip(results, widest)
        )
        lines += [
            f"{title}; Spearman over {results[0]['subsets']} half-pools per query, mean ± s.e. over queries ({counts}; "
            "[n]: a row whose target covers fewer queries, e.g. an on-policy one only those with a correct rollout):",
            "",
            "| row | " + " | ".join(tasks) + " | mean of the tasks |",
            "|---|" + "---|" * (len(tasks) + 1),
        ]
        names = list(dict.fromkeys(row["row"] for result in results for row in result["rows"]))
        for name in names:
            entries = [next((row[measurement] for row in result["rows"] if row["row"] == name), None) for result in results]
            means = [entry["mean"] for entry in entries if entry is not None and entry["queries"] > 0]
            mean = f"{np.mean(means):+.3f}" if len(means) == len(entries) else "–"
            lines.append(
                f"| {name} | "
                + " | ".join("–" if e is None else cell(e, w["queries"]) for e, w in zip(entries, widest))
                + f" | {mean} |"
            )
        lines.append("")
    lines.append(
        "Wall time per stage, s: "
        + "; ".join(
            f"{result['task']}: " + ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in result["seconds"].items())
            for result in results
        )
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(DEVELOPMENT), help="comma-separated task workspaces under data/suite/")
    parser.add_argument("--subsets", type=int, default=32, help="M, the number of random half-pools (≥ 32 for the table)")
    parser.add_argument("--draw-seed", type=int, default=0, help="seed of the half-pools' draw")
    parser.add_argument(
        "--sft-seed", type=int, default=0, help="the SFT seed of every fine-tune (the same for all: only the data differs)"
    )
    parser.add_argument("--workers", type=int, default=2, help="processes for the fine-tunes (one thread each)")
    parser.add_argument(
        "--references",
        default="ekfac,trak,identity",
        help="reference implementations: ekfac, trak, identity (Kronfluence without curvature: exact gradient products), or none",
    )
    parser.add_argument(
        "--ekfac-damping", type=float, default=None, help="Kronfluence's damping (default: its heuristic, 0.1 × mean eigenvalue)"
    )
    parser.add_argument("--trak-proj-dim", type=int, default=1024, help="TRAK's projection dimension")
    parser.add_argument("--suite", default=str(SUITE), help="the directory of the task workspaces (<task>/settings.yaml)")
    parser.add_argument("--output", default=None, help="where the figures go (default: <suite>/lds/results.json)")
    parser.add_argument("--report", metavar="JSON", help="print the table of an earlier run's --output file; run nothing")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())["results"]))
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # TRAK's and Kronfluence's progress bars
    # Kronfluence 1.0.1 builds a (disabled) torch.cuda.amp.GradScaler in every pass, which torch deprecates.
    warnings.filterwarnings("ignore", category=FutureWarning, module="kronfluence")
    from drift_assets.terminal import hide_beta_warnings

    hide_beta_warnings()
    from drift_assets.core.study.lds import training_code

    adapter_source(), training_code()  # the code this run imports, hashed before any result is keyed
    started = time.perf_counter()
    results = [measure_task(name.strip(), args) for name in args.tasks.split(",") if name.strip()]
    args.output = args.output or str(Path(args.suite) / "lds" / "results.json")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(
        json.dumps({"results": results, "seconds": time.perf_counter() - started, "argv": sys.argv[1:]}, indent=1)
    )
    print("\n" + report(results))
    print(f"\nlds: {len(results)} tasks in {(time.perf_counter() - started) / 60:.1f} min; figures in {args.output}")


if __name__ == "__main__":
    main()
