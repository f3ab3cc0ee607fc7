"""Noise breakdown: which corrupted demo examples the DRIFT score finds, and which it prefers.

The method benchmark reports one noise ROC-AUC per method. This script splits it by the kind of
noise, on the materialized demo (run ``make demo`` first):

1. the base model's own errors on its validation rollouts, as offsets answer − reference;
2. the noise AUC (higher score = keep; clean against the rows of one kind) of the configured DRIFT
   score, the raw score gᵀh, and the likelihood filters −loss, −loss/token and −‖ĥ‖: for every
   corrupted example, and for off-task examples and for corrupted examples by offset (±1, ±10) apart;
   and of the unit score against two parts of the target: the direction the validation queries'
   contrasts share, and the rest;
3. where ``warmup.steps`` is set: the DRIFT score at the base model alone and at each warm-up
   checkpoint (each checkpoint's partitions of the gradient tables), beside their average, ``influence_scores``;
4. two targets about answers alone, at every checkpoint and averaged: correct against incorrect
   rollouts of one query in the same response style (on-policy: sampled answers that differ in
   nothing else), and each incorrect rollout against itself with its answer edited to the
   reference's (the same phrasing; off-policy where the model did not sample that answer), with
   the mean gradient norm of each kind of rollout. Then the noise AUC within each demo response
   style (clean against corrupted rows written the same way), which separates a score's preference
   for a style from what it finds about the answers, and each style's share of each top half;
5. what each selection (the configured DRIFT selection in ``influence_scores``' rank order, the
   top ``selection.fraction`` by each other score, and the benchmark's random and oracle subsets
   of that size) holds: clean share, distinct prompts, mean response tokens, noise of each kind;
6. with ``--sft``: the base model, and each selection fine-tuned with the benchmark's SFT settings
   (``--sft-seeds``, default 0), answering the test queries greedily: accuracy, and the wrong
   answers by offset, too high and too low.

    .venv/bin/python -m benchmarks.noise_breakdown
    .venv/bin/python -m benchmarks.noise_breakdown --sft --sft-seeds 0,1,2

Offsets and styles are parsed from the demo's "What is a ± b?" prompts and its three response
styles; on other pools only parts 1 (where answers are numeric) and the per-category columns
apply. This prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable

import numpy as np
import polars as pl

from benchmarks.demo_warehouse import demo_warehouse, evaluated_after_sft
from drift_assets.core.attribution.influence import PoolScores, fit_curvature, score_pool
from drift_assets.core.attribution.scores import scores_frame, weighted_rollouts
from drift_assets.core.attribution.trajectory import CheckpointGradients, combine_checkpoints, score_checkpoint
from drift_assets.core.data.stored import ConfiguredTables, gradients_along, rows_at
from drift_assets.core.gradients.projection import LinearGradientProjector, project_in_batches
from drift_assets.core.gradients.tables import query_token_pairs, reference_basis, vectors
from drift_assets.core.grading.graders import extract_number
from drift_assets.core.study.benchmark import selected_ids
from drift_assets.core.study.stats import roc_auc
from drift_assets.resources import ModelResource, Warehouse, model_resource
from drift_assets.settings import Settings, validation_answer_marker

PROBLEM = re.compile(r"What is (\d+) ([+-]) (\d+)\?")
OFFSETS = (-10, -1, 1, 10)
STYLES = ("answer only", "equation", "worded")  # demo_task.format_response's styles 0, 1, 2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sft", action="store_true", help="fine-tune on each selection and break down its test errors")
    parser.add_argument("--sft-seeds", default="0", help="comma list of SFT seeds for --sft (answers pooled over them)")
    args = parser.parse_args(argv)
    args.sft_seeds = [int(seed) for seed in args.sft_seeds.split(",") if seed]
    return args


def answer_offset(prompt: str, response: str, marker: str) -> int | None:
    """response's final number − the correct answer, for the demo's arithmetic prompts."""
    problem, number = PROBLEM.search(prompt), extract_number(response, marker)
    if problem is None or number is None:
        return None
    left, operator, right = int(problem[1]), problem[2], int(problem[3])
    return round(float(number)) - (left + right if operator == "+" else left - right)


class NoiseKinds:
    """Masks of clean rows and of each kind of noisy row in the pool."""

    def __init__(self, pool: pl.DataFrame, marker: str):
        self.clean = ~pool["is_corrupted"].to_numpy().astype(bool)
        category = pool["category"].to_numpy() if "category" in pool.columns else np.where(self.clean, "correct", "corrupted")
        offsets = np.array(
            [
                answer_offset(p, r, marker) if c == "corrupted" else None
                for p, r, c in zip(pool["prompt"], pool["response"], category)
            ],
            dtype=object,
        )
        self.kinds = {"all noise": ~self.clean, "off_task": category == "off_task", "corrupted": category == "corrupted"}
        self.kinds |= {f"offset {offset:+d}": offsets == offset for offset in OFFSETS}

    def header(self) -> str:
        return f"{'score':>22} " + " ".join(f"{name:>10}" for name in self.kinds)

    def row(self, name: str, scores: np.ndarray) -> str:
        cells = []
        for mask in self.kinds.values():
            if not mask.any():
                cells.append(f"{'–':>10}")
                continue
            keep = self.clean | mask
            cells.append(f"{roc_auc(scores[keep], self.clean[keep]):>10.3f}")
        return f"{name:>22} " + " ".join(cells)

    def counts(self) -> str:
        return f"{'rows':>22} " + " ".join(f"{int(mask.sum()):>10}" for mask in self.kinds.values())


def rollout_offsets(grades: pl.DataFrame, queries: pl.DataFrame) -> Counter:
    """answer − reference over the incorrect rollouts whose answer and reference are numbers."""
    wrong = grades.filter(~pl.col("correct")).join(queries.select("query_id", "reference"), on="query_id")
    offsets: Counter = Counter()
    for answer, reference in wrong.select("extracted_answer", "reference").iter_rows():
        try:
            offsets[round(float(answer) - float(reference))] += 1
        except (TypeError, ValueError):
            offsets["no number"] += 1
    return offsets


def split_target(validation_gradients: pl.DataFrame, grades: pl.DataFrame, weighting: str) -> dict[str, np.ndarray]:
    """The on-policy target g split into the direction the queries share and the rest.

    Each query contributes c_q = Σ_k w_qk ĝ_qk, its rollouts under the configured ``weighting``
    (signed: correct minus incorrect ones; positive: the correct ones alone); the shared direction
    b is the mean of the unit c_q, what every query asks of the model alike (with signed weights,
    e.g. which way it errs everywhere). g − (gᵀb)b is what is specific to each query.
    """
    # Rollouts only: a query no rollout solves has no contrast of the model's own to share.
    rollouts, _, _ = weighted_rollouts(validation_gradients, grades, weighting, unsolved="skip")
    weighted = vectors(rollouts).astype(np.float64) * rollouts["weight"].to_numpy()[:, None]
    queries = rollouts["query_id"].to_numpy()
    contrasts = np.stack([weighted[queries == query].sum(axis=0) for query in np.unique(queries)])
    shared = (contrasts / np.linalg.norm(contrasts, axis=1, keepdims=True)).mean(axis=0)
    shared /= np.linalg.norm(shared)
    target = contrasts.sum(axis=0)
    return {"g: shared direction": shared, "g: shared removed": target - (target @ shared) * shared}


def main(argv=None) -> None:
    args = parse_args(argv)
    needed = ("training_pool", "grades", "validation_queries", "influence_scores", "training_gradient_projections")
    settings, warehouse = demo_warehouse(needed)
    tables = ConfiguredTables.configured_by(settings, warehouse)
    # The base model's rows of the tables partitioned by checkpoint (of the configured shards).
    read = {
        name: warehouse.scan(name).collect()
        if name in ("training_pool", "validation_queries", "influence_scores")
        else rows_at(tables, name)
        for name in needed
    }
    pool = read["training_pool"].sort("example_id")
    if "is_corrupted" not in pool.columns:
        raise SystemExit("the training pool has no is_corrupted column: the breakdown needs the demo's ground truth")
    marker = settings.grading.answer_marker
    kinds = NoiseKinds(pool, marker)

    offsets = rollout_offsets(read["grades"], read["validation_queries"])
    print(
        f"base model's incorrect validation rollouts ({sum(offsets.values())}), by answer − reference: "
        + ", ".join(
            f"{offset:+}: {count}" if isinstance(offset, int) else f"{offset}: {count}"
            for offset, count in offsets.most_common(8)
        )
    )

    scored = pool.select("example_id").join(read["influence_scores"], on="example_id", how="left")
    losses = pool.select("example_id").join(
        read["training_gradient_projections"].select("example_id", "loss", "n_tokens"), on="example_id", how="left"
    )
    loss = losses["loss"].to_numpy()
    checkpoints = [c.loaded() for c in gradients_along(tables)]
    along = {}
    for checkpoint in checkpoints if settings.warmup_steps else []:
        along[f"drift at {checkpoint.checkpoint}"] = in_pool_order(
            score_checkpoint(checkpoint, settings.influence.scoring()), pool
        )
    own = settings.influence.scoring()
    print(
        f"configured: weighting {own.weighting}, unsolved {own.unsolved}, ranking {own.ranking}, "
        f"likelihood_blend {own.likelihood_blend:g}, likelihood_guard {own.likelihood_guard:g}, noise_gate {own.noise_gate}"
    )
    configured = "drift (configured)"
    # The configured selection takes the pipeline's own order (the queries taking turns and the base
    # model's likelihood blended in, as configured), not the top by score.
    order = {configured: np.argsort(scored["rank"].to_numpy(), kind="stable")}
    scores = {
        configured: scored["score"].to_numpy(),
        **along,
        "raw gᵀh": scored["score_raw"].to_numpy(),
        "−loss": -loss,
        "−loss/token": -loss / np.maximum(losses["n_tokens"].to_numpy(), 1),
        "−‖ĥ‖": -scored["grad_norm"].to_numpy(),
    }
    print("\nnoise ROC-AUC (clean rows against the rows of each kind; 0.5 = blind, below 0.5 = prefers that noise)\n")
    print(kinds.header())
    print(kinds.counts())
    for name, values in scores.items():
        print(kinds.row(name, values))
    gradients = pool.select("example_id").join(read["training_gradient_projections"], on="example_id", how="left")
    training = vectors(gradients).astype(np.float64)
    for name, target in split_target(
        rows_at(tables, "validation_gradients"), read["grades"], settings.influence.weighting
    ).items():
        print(kinds.row(name, training @ target / np.maximum(np.linalg.norm(training, axis=1), 1e-12)))

    print(
        "\ncontrasts of answers alone: correct and incorrect rollouts in the same response style, and incorrect rollouts"
        " against themselves with the answer edited\n"
    )
    answer_only = answer_contrast_scores(settings, warehouse, checkpoints, pool, kinds)
    for name, values in answer_only.items():
        print(kinds.row(name, values))
    styles = response_styles(pool["response"], marker)
    if (styles != "").any():
        print(
            "\nnoise AUC within each response style (clean against corrupted rows written the same way) and the style's share"
            " of each score's top half\n"
        )
        print(
            f"{'score':>22} "
            + " ".join(f"{style:>12}" for style in STYLES)
            + "   "
            + " ".join(f"{'top ' + style:>16}" for style in STYLES)
        )
        print(
            f"{'(pool)':>22} {'':>12} {'':>12} {'':>12}   " + " ".join(f"{(styles == style).mean():>16.3f}" for style in STYLES)
        )
        for name, values in {**scores, **answer_only}.items():
            print(within_style_row(name, values, styles, kinds, order.get(name)))

    tokenizer = model_resource(settings).load_tokenizer()

    size = round(pool.height * settings.selection.fraction)
    selections = {
        name: pool["example_id"].gather(order.get(name, np.argsort(-values, kind="stable"))[:size]).to_list()
        for name, values in scores.items()
        if name != "raw gᵀh" and name not in along
    }
    for method in ("random", "oracle"):
        selections[method] = selected_ids(method, 0, pool, None, size, "top_fraction", settings.selection.fraction, None)
    print(
        f"\nwhat each selection of {size} holds ({configured} in its rank order, the others top by score;"
        " random and oracle as the benchmark draws them, seed 0)\n"
    )
    print(f"{'selection':>22} {'clean':>6} {'prompts':>8} {'resp tok':>8} " + " ".join(f"{name:>10}" for name in kinds.kinds))
    for name, ids in selections.items():
        chosen = pool["example_id"].is_in(ids).to_numpy()
        picked = pool.filter(chosen)
        print(
            f"{name:>22} {kinds.clean[chosen].mean():>6.3f} {picked['prompt'].n_unique():>8} {picked['n_response_tokens'].mean():>8.1f} "
            + " ".join(f"{mask[chosen].mean():>10.3f}" for mask in kinds.kinds.values())
        )

    if args.sft:
        print(
            f"\neach selection fine-tuned (seeds {args.sft_seeds}), greedy on the test queries: accuracy, and the answers by offset\n"
        )
        test_queries = warehouse.scan("test_queries").collect().to_dicts()
        for name, ids in {"base (no SFT)": [], "full": pool["example_id"].to_list(), **selections}.items():
            messages = pool.filter(pl.col("example_id").is_in(ids))["messages"].to_list()
            print(f"{name:>22} {test_offsets(settings, tokenizer, messages, test_queries, args.sft_seeds)}", flush=True)


def response_styles(responses: Iterable[str], marker: str) -> np.ndarray:
    """Each response's demo style (one of STYLES; "" for others, such as the off-task chores)."""
    return np.array(
        [
            STYLES[0]
            if response.startswith(marker)
            else STYLES[2]
            if response.startswith("We compute")
            else STYLES[1]
            if marker in response
            else ""
            for response in responses
        ]
    )


def within_style_row(name: str, scores: np.ndarray, styles: np.ndarray, kinds: NoiseKinds, order: np.ndarray | None) -> str:
    """The score's noise AUC within each style, and each style's share of its top half (``order``:
    the rows best first, where it is not the score's)."""
    corrupted = kinds.kinds["corrupted"]
    cells = []
    for style in STYLES:
        rows = (styles == style) & (kinds.clean | corrupted)
        cells.append(f"{roc_auc(scores[rows], kinds.clean[rows]):>12.3f}")
    top = (np.argsort(-scores, kind="stable") if order is None else order)[: len(scores) // 2]
    shares = " ".join(f"{(styles[top] == style).mean():>16.3f}" for style in STYLES)
    return f"{name:>22} " + " ".join(cells) + "   " + shares


def corrected_completion(completion: str, answer: str, reference: str) -> str:
    """The completion with every standalone occurrence of its answer replaced by the reference answer.

    "18 - 7 = 12. Answer: 12" becomes "18 - 7 = 11. Answer: 11": the same phrasing, the right answer.
    """
    return re.sub(rf"(?<![\d.]){re.escape(answer)}(?![\d.])", reference, completion)


def answer_contrasts(
    model: ModelResource, settings: Settings, checkpoint: CheckpointGradients, rollouts: pl.DataFrame, queries: pl.DataFrame
) -> tuple[dict[str, np.ndarray], str]:
    """Two targets that contrast answers, not phrasing, at one checkpoint, from its graded rollouts' gradients.

    ``same style``: per query and response style, the mean gradient of the correct rollouts minus
    that of the incorrect ones (only cells with both: sampled answers that differ in nothing else);
    ``edited``: per query, the mean over its incorrect rollouts of ∇log π(the rollout with the
    reference's answer) − ∇log π(the rollout). Edits are off-policy wherever the model did not sample
    the right answer in that phrasing. Returns the targets and the projection fingerprint of the edits.
    """
    tokenizer, network = model.load_tokenizer(), model.load_model()
    options, batch_size, marker = settings.projection.options(), settings.projection.batch_size, settings.grading.answer_marker
    projector = LinearGradientProjector(network, options, reference_basis(network, options, tokenizer, queries, batch_size))
    sampled = rollouts.select("rollout_id", "query_id", "completion", "correct").join(
        checkpoint.validation_gradients.select("rollout_id", "grad"), on="rollout_id", how="left"
    )
    gradients = vectors(sampled).astype(np.float64)
    query_ids, correct = sampled["query_id"].to_numpy(), sampled["correct"].to_numpy().astype(bool)
    styles = response_styles(sampled["completion"], marker)
    same_style = np.zeros(gradients.shape[1])
    for query, style in set(zip(query_ids, styles, strict=True)):
        cell = (query_ids == query) & (styles == style)
        if correct[cell].any() and not correct[cell].all():
            same_style += gradients[cell & correct].mean(axis=0) - gradients[cell & ~correct].mean(axis=0)

    prompts = dict(zip(queries["query_id"], queries["prompt"], strict=True))
    references = dict(
        zip(queries["query_id"], (extract_number(reference, marker) for reference in queries["reference"]), strict=True)
    )
    answers = [extract_number(completion, marker) for completion in sampled["completion"]]
    wrong = [
        row
        for row in range(sampled.height)
        if not correct[row] and answers[row] is not None and references[query_ids[row]] is not None
    ]
    edits = [corrected_completion(sampled["completion"][row], answers[row], references[query_ids[row]]) for row in wrong]
    token_pairs = query_token_pairs(
        tokenizer,
        [prompts[query_ids[row]] for row in wrong],
        edits,
        answer_marker=validation_answer_marker(settings),
    )
    edited = project_in_batches(projector, tokenizer, *token_pairs, batch_size).gradients.numpy().astype(np.float64)
    per_query = Counter(query_ids[wrong])
    weights = np.array([1.0 / per_query[query_ids[row]] for row in wrong])
    edited_target = ((edited - gradients[wrong]) * weights[:, None]).sum(axis=0)

    def mean_norm(matrix: np.ndarray) -> str:
        return f"{np.linalg.norm(matrix, axis=1).mean():.1f}"

    print(
        f"{checkpoint.checkpoint}: mean ‖∇log π‖ of the rollouts: correct {mean_norm(gradients[correct])}, "
        f"incorrect {mean_norm(gradients[~correct])}, incorrect with the answer edited {mean_norm(edited)}; by style: "
        + ", ".join(f"{style} {mean_norm(gradients[styles == style])}" for style in STYLES if (styles == style).any()),
        flush=True,
    )
    if settings.influence.targets == "onpolicy":
        shares = target_shares(checkpoint, settings, dict(zip(sampled["rollout_id"], styles, strict=True)))
        print(
            f"{'':>8}share of the target g along the rollouts of each style (gᵀpart / gᵀg): "
            + ", ".join(f"{name or 'other'} {share:.2f}" for name, share in shares.items()),
            flush=True,
        )
    return {"same style": same_style, "edited": edited_target}, projector.fingerprint


def target_shares(checkpoint: CheckpointGradients, settings: Settings, style_of: dict[str, str]) -> dict[str, float]:
    """How much of the checkpoint's on-policy target g comes from the rollouts of each style (and references).

    g is the sum of the rows the pipeline weighs (:func:`weighted_rollouts`); each group's
    share is gᵀ(its weighted sum)/gᵀg, so the shares add up to 1.
    """
    rows, _, _ = weighted_rollouts(
        checkpoint.validation_gradients, checkpoint.grades, settings.influence.weighting, settings.influence.unsolved
    )
    weighted = vectors(rows).astype(np.float64) * rows["weight"].to_numpy()[:, None]
    target = weighted.sum(axis=0)
    groups = np.array([style_of.get(rollout_id, "references for unsolved queries") for rollout_id in rows["rollout_id"]])
    return {group: float(weighted[groups == group].sum(axis=0) @ target / (target @ target)) for group in sorted(set(groups))}


def answer_contrast_scores(
    settings: Settings, warehouse: Warehouse, checkpoints: list[CheckpointGradients], pool: pl.DataFrame, kinds: NoiseKinds
) -> dict[str, np.ndarray]:
    """The pool scored against :func:`answer_contrasts` at every checkpoint (printed), and each target's mean over checkpoints."""
    queries = warehouse.scan("validation_queries").collect()
    paths = (
        dict(warehouse.scan("warmup_checkpoints").select("checkpoint", "path").collect().iter_rows())
        if len(checkpoints) > 1
        else {}
    )
    scoring = settings.influence.scoring()
    along: dict[str, list[PoolScores]] = {}
    rows = []
    for checkpoint in checkpoints:
        if checkpoint.checkpoint == "base":
            model = model_resource(settings)
        else:
            model = ModelResource(path=paths[checkpoint.checkpoint], dtype=settings.model.dtype, device=settings.model.device)
        rollouts = rows_at(warehouse, "rollouts", checkpoint.checkpoint).join(
            checkpoint.grades.select("rollout_id", "correct"), on="rollout_id"
        )
        targets, projection = answer_contrasts(model, settings, checkpoint, rollouts, queries)
        if {projection} != {fingerprint for _, fingerprint in checkpoint.training_fingerprints}:
            raise SystemExit(f"checkpoint {checkpoint.checkpoint}: the refitted basis differs from the training rows' projection")
        curvature = fit_curvature(scoring.hessian, [checkpoint.training], checkpoint.training.shape[1], scoring.damping)
        for name, target in targets.items():
            scores = score_pool(lambda c=checkpoint: iter([(c.example_ids, c.training)]), target, curvature, scoring.debias)
            along.setdefault(name, []).append(scores)
            rows.append(kinds.row(f"{name} at {checkpoint.checkpoint}", in_pool_order(scores, pool)))
    print("\n" + kinds.header())
    print("\n".join(rows))
    return {f"{name} (mean)": in_pool_order(combine_checkpoints(scores), pool) for name, scores in along.items()}


def in_pool_order(scores: PoolScores, pool: pl.DataFrame) -> np.ndarray:
    """The debiased scores, one per pool row in the pool's order."""
    return pool.select("example_id").join(scores_frame(scores, pool), on="example_id", how="left")["score"].to_numpy()


def answer_differences(answers: list[str], queries: list[dict], marker: str) -> list[float | None]:
    """Each answer's final number − its query's reference (None where the answer has no number)."""
    numbers = [extract_number(answer, marker) for answer in answers]
    return [
        float(number) - float(query["reference"]) if number is not None else None
        for number, query in zip(numbers, queries, strict=True)
    ]


def test_offsets(settings: Settings, tokenizer, messages: list[str], test_queries: list[dict], seeds: list[int]) -> str:
    offsets: Counter = Counter()
    for seed in seeds if messages else seeds[:1]:  # without messages it is the base model, the same for every seed
        answers = evaluated_after_sft(settings, model_resource(settings), tokenizer, messages, test_queries, seed).answers
        for difference in answer_differences(answers, test_queries, settings.grading.answer_marker):
            offsets[round(difference) if difference is not None else None] += 1
    total = sum(offsets.values())
    wrong = [(offset, count) for offset, count in offsets.items() if offset not in (0, None)]
    above = sum(count for offset, count in wrong if offset > 0)
    below = sum(count for offset, count in wrong if offset < 0)
    shares = ", ".join(f"{offset:+d}: {offsets[offset] / total:.3f}" for offset in OFFSETS)
    return (
        f"accuracy {offsets[0] / total:.3f}; {shares}; other {sum(c for o, c in wrong if o not in OFFSETS) / total:.3f}, "
        f"no number {offsets[None] / total:.3f}; too high {above / total:.3f}, too low {below / total:.3f}"
    )


if __name__ == "__main__":
    main()
