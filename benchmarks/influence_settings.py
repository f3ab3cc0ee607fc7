"""Influence settings: which Hessian, debiasing and weighting find the demo's noise, and where that signal lies.

On the materialized demo (run ``make demo`` first), every score is computed the way
``influence_scores`` computes it (the base model and each ``warmup.steps`` checkpoint, each with its
own target and training gradients, standardized and averaged), from the stored gradient tables.
Each configuration changes only the Hessian, debiasing and weighting of the settings' own
``influence`` group; the rest (``unsolved``, ``ranking``, ``likelihood_blend`` and the others) is as
configured, so the default's cell is the pipeline's own scoring:

1. the noise AUC of the score (higher score = keep, clean against corrupted rows; the score before
   any ranking or blend) and the clean share of the selection (the top ``selection.fraction`` in
   the configured order, as ``influence_scores`` ranks the pool) for
   every ``influence.hessian`` (``identity``, and ``fisher`` at each of ``--dampings``) ×
   ``influence.debias`` × ``influence.weighting`` (and the off-policy target); the configured
   setting's cell in bold;
2. where the signal lies: at each checkpoint the eigen-directions of the pool's gradient second
   moment ΦᵀΦ/N (the ``fisher`` Hessian before damping), the share of its trace and of the target
   g's energy in the top m, and the noise AUC of the identity / unit score computed in the top m
   directions alone and in the rest. H⁻¹ shrinks a direction by its eigenvalue, so this shows what
   a Hessian keeps and what it gives weight to; and the ``fisher`` score with the Hessian fitted on
   the clean rows alone, beside the corrupted rows' share of its trace;
3. with ``--sft CONFIG,...``: test accuracy after SFT on each configuration's top fraction, with the
   method benchmark's SFT settings, on ``--seeds`` (default ``benchmark.seeds``).

A configuration is ``HESSIAN[:DAMPING]/DEBIAS/WEIGHTING``, WEIGHTING one of signed, advantage,
positive or ``offpolicy`` (the reference answers):

    .venv/bin/python -m benchmarks.influence_settings
    .venv/bin/python -m benchmarks.influence_settings --sft identity/unit/positive,fisher:0.1/unit/positive --seeds 0,1,2,3,4

This prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import polars as pl

from benchmarks.demo_warehouse import demo_warehouse, evaluated_after_sft, ground_truth_pool
from drift_assets.core.attribution.influence import DEBIAS_METHODS, PoolScores, fit_curvature
from drift_assets.core.attribution.scores import ScoringSettings, noise_auc, scores_frame, target_gradient
from drift_assets.core.attribution.trajectory import CheckpointGradients, combine_checkpoints, score_checkpoint
from drift_assets.core.data.stored import ConfiguredTables, base_losses, gradients_along, losses_along
from drift_assets.core.grading.weighting import WEIGHTING_SCHEMES
from drift_assets.core.study.benchmark import MethodScorer, selected_ids
from drift_assets.resources import Warehouse, model_resource
from drift_assets.settings import Settings

TOP_DIRECTIONS = (16, 64, 256)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dampings", default="0.1,1.0", help="fisher dampings of part 1 (λ = damping × mean eigenvalue)")
    parser.add_argument(
        "--sft",
        default="",
        metavar="CONFIG,...",
        help="part 3: configurations to fine-tune on (HESSIAN[:DAMPING]/DEBIAS/WEIGHTING)",
    )
    parser.add_argument("--seeds", default=None, help="comma list of SFT seeds (default: benchmark.seeds)")
    args = parser.parse_args(argv)
    args.dampings = [float(value) for value in args.dampings.split(",") if value]
    try:
        args.sft = [parse_config(config) for config in args.sft.split(",") if config]
    except ValueError as error:
        parser.error(f"--sft: {error}")
    return args


def parse_config(config: str) -> tuple[str, str, float, str, str]:
    """``HESSIAN[:DAMPING]/DEBIAS/WEIGHTING`` as (config, hessian, damping, debias, weighting)."""
    parts = config.split("/")
    if len(parts) != 3:
        raise ValueError(f"{config!r} is not HESSIAN[:DAMPING]/DEBIAS/WEIGHTING")
    hessian, _, damping = parts[0].partition(":")
    debias_method, weighting = parts[1], parts[2]
    if (
        hessian not in ("identity", "fisher")
        or debias_method not in DEBIAS_METHODS
        or weighting not in (*WEIGHTING_SCHEMES, "offpolicy")
    ):
        raise ValueError(f"{config!r}: unknown hessian, debias or weighting")
    return config, hessian, float(damping or 0.1), debias_method, weighting


def configured(settings: Settings, hessian: str, damping: float, debias_method: str, weighting: str) -> ScoringSettings:
    """The settings' own scoring with this Hessian, debiasing and weighting (``offpolicy``: the
    reference answers as targets); everything else as configured."""
    offpolicy = weighting == "offpolicy"
    return replace(
        settings.influence.scoring(),
        targets="offpolicy" if offpolicy else "onpolicy",
        weighting="signed" if offpolicy else weighting,
        hessian=hessian,
        damping=damping,
        debias=debias_method,
    )


def is_configured(settings: Settings, scoring: ScoringSettings) -> bool:
    """Whether ``scoring`` is the settings' own Hessian, damping (under fisher), debiasing and weighting."""
    own = settings.influence.scoring()
    return (scoring.targets, scoring.weighting, scoring.hessian, scoring.debias) == (
        own.targets,
        own.weighting,
        own.hessian,
        own.debias,
    ) and (scoring.hessian == "identity" or scoring.damping == own.damping)


def selection_figures(frame: pl.DataFrame, pool: pl.DataFrame, settings: Settings) -> tuple[float, float, list[str]]:
    """Noise AUC of the score, the clean share of the selection (by ``rank``), and the selected ids, of a scores frame."""
    size = round(pool.height * settings.selection.fraction)
    chosen = selected_ids(
        "drift", 0, pool, frame, size, settings.selection.method, settings.selection.fraction, settings.selection.k
    )
    corrupted = set(pool.filter(pl.col("is_corrupted"))["example_id"])
    return noise_auc(frame, pool), 1 - sum(i in corrupted for i in chosen) / len(chosen), chosen


def settings_grid(scorer: MethodScorer, pool: pl.DataFrame, settings: Settings, dampings: list[float]) -> None:
    print("| hessian | weighting | " + " | ".join(f"{method}: AUC / clean" for method in DEBIAS_METHODS) + " |")
    print("|---|---|" + "---|" * len(DEBIAS_METHODS))
    for hessian, damping in [("identity", 0.0)] + [("fisher", damping) for damping in dampings]:
        for weighting in (*WEIGHTING_SCHEMES, "offpolicy"):
            cells = []
            for debias_method in DEBIAS_METHODS:
                scoring = configured(settings, hessian, damping, debias_method, weighting)
                auc, clean, _ = selection_figures(scorer.scores(scoring, pool), pool, settings)
                cell = f"{auc:.3f} / {clean:.3f}"
                cells.append(f"**{cell}**" if is_configured(settings, scoring) else cell)
            name = hessian if hessian == "identity" else f"fisher, damping {damping:g}"
            print(f"| {name} | {weighting} | " + " | ".join(cells) + " |", flush=True)


def signal_directions(checkpoints: list[CheckpointGradients], pool: pl.DataFrame, settings: Settings) -> None:
    """Part 2: the identity / unit score split along the eigen-directions of ΦᵀΦ/N."""
    scoring = replace(settings.influence.scoring(), hessian="identity", debias="unit")
    rotated = []
    print("| checkpoint | " + " | ".join(f"top {m}: trace / g energy" for m in TOP_DIRECTIONS) + " |")
    print("|---|" + "---|" * len(TOP_DIRECTIONS))
    for checkpoint in checkpoints:
        training = checkpoint.training.astype(np.float64)
        eigenvalues, eigenvectors = np.linalg.eigh(training.T @ training / len(training))
        eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]  # largest first
        target = target_gradient(
            checkpoint.validation_gradients, checkpoint.grades, scoring.targets, scoring.weighting, scoring.unsolved
        )
        target_rotated = eigenvectors.T @ target.vector
        trace_share = np.cumsum(eigenvalues) / eigenvalues.sum()
        energy_share = np.cumsum(target_rotated**2) / (target_rotated**2).sum()
        shares = [f"{trace_share[m - 1]:.3f} / {energy_share[m - 1]:.3f}" for m in TOP_DIRECTIONS]
        print(f"| {checkpoint.checkpoint} | " + " | ".join(shares) + " |")
        rotated.append((checkpoint.example_ids, training @ eigenvectors, target_rotated, np.linalg.norm(training, axis=1)))

    def auc_in(directions: slice) -> float:
        along = []
        for example_ids, training_rotated, target_rotated, norms in rotated:
            raw = training_rotated[:, directions] @ target_rotated[directions]
            along.append(PoolScores(example_ids, raw, raw / np.maximum(norms, 1e-12), norms, norms**2))
        return noise_auc(scores_frame(combine_checkpoints(along), pool), pool)

    dimension = rotated[0][2].shape[0]
    print("\nnoise AUC of the identity / unit score (÷ the whole ‖ĥ‖) computed in some of the directions\n")
    print(
        "| directions | "
        + " | ".join(f"top {m}" for m in TOP_DIRECTIONS)
        + f" | all {dimension} | "
        + " | ".join(f"all but the top {m}" for m in TOP_DIRECTIONS)
        + " |"
    )
    print("|---|" + "---|" * (2 * len(TOP_DIRECTIONS) + 1))
    cells = (
        [auc_in(slice(0, m)) for m in TOP_DIRECTIONS]
        + [auc_in(slice(0, dimension))]
        + [auc_in(slice(m, dimension)) for m in TOP_DIRECTIONS]
    )
    print("| noise AUC | " + " | ".join(f"{auc:.3f}" for auc in cells) + " |")


def fisher_on_clean_rows(
    checkpoints: list[CheckpointGradients], pool: pl.DataFrame, settings: Settings, dampings: list[float]
) -> None:
    """The unit score (the configured weighting) with the fisher Hessian fitted on every row, and on the clean rows alone.

    Corrupted rows have large gradients, so they could dominate ΦᵀΦ/N; a Fisher fitted without them
    (a diagnostic: it needs the ground truth) tells whether that is why the Hessian hurts.
    """
    corrupted = set(pool.filter(pl.col("is_corrupted"))["example_id"])
    scoring = replace(settings.influence.scoring(), hessian="fisher", debias="unit")
    print(
        "| fisher damping | corrupted share of trace(ΦᵀΦ) at "
        + ", ".join(c.checkpoint for c in checkpoints)
        + " | noise AUC, fitted on every row | fitted on the clean rows alone |"
    )
    print("|---|---|---|---|")
    shares = []
    for checkpoint in checkpoints:
        squared_norms = (checkpoint.training.astype(np.float64) ** 2).sum(axis=1)
        noisy = np.array([example_id in corrupted for example_id in checkpoint.example_ids])
        shares.append(squared_norms[noisy].sum() / squared_norms.sum())
    for damping in dampings:
        cells = []
        for clean_only in (False, True):
            along = []
            for checkpoint in checkpoints:
                rows = checkpoint.training
                if clean_only:
                    rows = rows[[example_id not in corrupted for example_id in checkpoint.example_ids]]
                curvature = fit_curvature("fisher", [rows], rows.shape[1], damping)
                along.append(score_checkpoint(checkpoint, replace(scoring, damping=damping), curvature))
            cells.append(noise_auc(scores_frame(combine_checkpoints(along), pool), pool))
        print(f"| {damping:g} | {' / '.join(f'{share:.2f}' for share in shares)} | {cells[0]:.3f} | {cells[1]:.3f} |", flush=True)


def sft_accuracy(
    configs, scorer: MethodScorer, pool: pl.DataFrame, settings: Settings, warehouse: Warehouse, seeds: list[int]
) -> None:
    """Part 3: SFT on each configuration's selection, accuracy on the test queries over seeds."""
    queries = warehouse.scan("test_queries").collect().to_dicts()
    messages = dict(zip(pool["example_id"], pool["messages"], strict=True))
    resource = model_resource(settings)
    tokenizer = resource.load_tokenizer()
    print(f"| configuration | noise AUC | clean share | accuracy % (mean ± std over seeds {seeds}) | per seed |")
    print("|---|---|---|---|---|")
    for name, *config in configs:
        auc, clean, chosen = selection_figures(scorer.scores(configured(settings, *config), pool), pool, settings)
        selection = [messages[i] for i in sorted(chosen)]
        accuracies = [
            100 * evaluated_after_sft(settings, resource, tokenizer, selection, queries, seed).accuracy for seed in seeds
        ]
        print(
            f"| {name} | {auc:.3f} | {clean:.3f} | {np.mean(accuracies):.1f} ± {np.std(accuracies):.1f} | "
            f"{', '.join(f'{a:.1f}' for a in accuracies)} |",
            flush=True,
        )


def main(argv=None) -> None:
    args = parse_args(argv)
    settings, warehouse = demo_warehouse(("training_pool", "validation_gradients", "grades", "training_gradient_projections"))
    pool = ground_truth_pool(warehouse)
    started = time.perf_counter()
    tables = ConfiguredTables.configured_by(settings, warehouse)
    checkpoints = [c.loaded() for c in gradients_along(tables)]
    own = settings.influence.scoring()
    print(
        f"scored at {', '.join(c.checkpoint for c in checkpoints)}; k = {checkpoints[0].training.shape[1]}; "
        f"influence.unsolved {own.unsolved}, ranking {own.ranking}, likelihood_blend {own.likelihood_blend:g}, "
        f"likelihood_guard {own.likelihood_guard:g}, noise_gate {own.noise_gate}; "
        f"the top {settings.selection.fraction:g} of {pool.height}\n"
    )
    # The base model's losses and every checkpoint's: what the blend, the guard and the gate rank by.
    scorer = MethodScorer(checkpoints, base_losses(tables, pool), losses_along(tables, pool))
    settings_grid(scorer, pool, settings, args.dampings)
    print()
    signal_directions(checkpoints, pool, settings)
    if args.dampings:
        print()
        fisher_on_clean_rows(checkpoints, pool, settings, args.dampings)
    if args.sft:
        print()
        seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else settings.benchmark.seeds
        sft_accuracy(args.sft, scorer, pool, settings, warehouse, seeds)
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
