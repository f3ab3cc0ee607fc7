"""Projection fidelity: how well projected influence scores rank like exact-gradient scores.

On the materialized demo (run ``make demo`` first) it scores a sample of the training pool against
the real on-policy target g = Σ w_jk g_jk, built by the pipeline's own code from the ``rollouts``
and ``grades`` tables (``influence.weighting``, the reference answers of unsolved queries as
``influence.unsolved`` says, the span ``projection.validation_span`` says), twice:

- exact: ``ProjectionOptions(rank=None)``, the full gradient of every targeted layer (≈426k numbers
  per example on the demo model);
- projected: each basis (``pca`` fitted on the validation references as the pipeline does, and
  ``random``) at each rank;

and prints Spearman(projected, exact) for the raw score gᵀh and for the unit-debiased score
gᵀh/‖h‖ (the default), plus the noise ROC-AUC of each (higher score = keep).

Run from the repository root:

    .venv/bin/python -m benchmarks.projection_fidelity                # 800 examples, ranks 8,16,32
    .venv/bin/python -m benchmarks.projection_fidelity --examples 2400

This prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.demo_warehouse import demo_warehouse
from drift_assets.core.attribution.scores import target_gradient
from drift_assets.core.data.stored import rows_at
from drift_assets.core.gradients.projection import LinearGradientProjector, ProjectionOptions, project_in_batches
from drift_assets.core.gradients.tables import pool_token_pairs, reference_basis, validation_gradient_frame
from drift_assets.core.study.stats import roc_auc, spearman
from drift_assets.settings import validation_answer_marker


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--examples", type=int, default=800, help="pool examples scored (a seeded sample)")
    parser.add_argument("--ranks", default="8,16,32")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    args.ranks = [int(r) for r in args.ranks.split(",")]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    settings, warehouse = demo_warehouse(("training_pool", "rollouts", "grades", "validation_queries"))

    def read(name: str) -> pl.DataFrame:
        return warehouse.scan(name).collect()

    pool = read("training_pool")
    pool = pool.sample(min(args.examples, pool.height), seed=0)
    # The base model's rollouts and grades (the tables hold every checkpoint's).
    grades, rollouts, queries = rows_at(warehouse, "grades"), rows_at(warehouse, "rollouts"), read("validation_queries")
    influence = settings.influence

    model = AutoModelForCausalLM.from_pretrained(settings.model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
    pool_pairs = pool_token_pairs(tokenizer, pool["messages"].to_list())
    marker = validation_answer_marker(settings)
    keep = ~pool["is_corrupted"].to_numpy().astype(bool) if "is_corrupted" in pool.columns else None

    def scores(projector: LinearGradientProjector) -> tuple[np.ndarray, np.ndarray, int]:
        """Raw and unit-debiased scores of the sample, and how many rollouts and references the target weighs."""
        train = project_in_batches(projector, tokenizer, *pool_pairs, args.batch_size).gradients.double()
        validation = validation_gradient_frame(
            projector, tokenizer, rollouts, queries, args.batch_size, "fidelity", answer_marker=marker
        )
        target = target_gradient(validation, grades, "onpolicy", influence.weighting, influence.unsolved)
        raw = (train @ torch.from_numpy(target.vector)).numpy()
        return raw, raw / train.norm(dim=1).clamp(min=1e-30).numpy(), target.n_targets

    def auc(values: np.ndarray) -> str:
        return f"{roc_auc(values, keep):.3f}" if keep is not None else "n/a"

    started = time.perf_counter()
    exact = LinearGradientProjector(model, ProjectionOptions(rank=None))
    exact_raw, exact_unit, n_targets = scores(exact)
    print(
        f"{pool.height} pool examples, {n_targets} weighted rollouts and references ({influence.weighting} weights, unsolved: "
        f"{influence.unsolved}, {settings.projection.validation_span} span); exact k = {exact.dimension:,} "
        f"({time.perf_counter() - started:.0f} s), noise AUC raw {auc(exact_raw)}, unit {auc(exact_unit)}"
    )
    print(f"{'basis':>7} {'rank':>5} {'k':>7} {'spearman raw':>13} {'spearman unit':>14} {'AUC unit':>9}")
    for rank in args.ranks:
        for basis_name in ("pca", "random"):
            options = ProjectionOptions(rank=rank, basis=basis_name)
            basis = reference_basis(model, options, tokenizer, queries, args.batch_size)
            raw, unit, _ = scores(LinearGradientProjector(model, options, basis))
            print(
                f"{basis_name:>7} {rank:>5} {len(basis.matrices) * rank * rank:>7} {spearman(raw, exact_raw):>13.3f} "
                f"{spearman(unit, exact_unit):>14.3f} {auc(unit):>9}",
                flush=True,
            )


if __name__ == "__main__":
    main()
