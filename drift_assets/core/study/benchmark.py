"""Comparing data-selection methods by what fine-tuning on their selection does to accuracy.

Every method gets the same base model, the same SFT budget (optimizer steps, batch size, learning
rate) and the same seeds; only the data differs. Methods:

- ``full``: the whole pool.
- ``random``: a random subset of the size the DRIFT selection has.
- ``oracle``: a random subset of the examples that are *not* corrupted (where the pool says so, as
  the demo's hidden ``is_corrupted`` does): the accuracy a perfect noise filter reaches.
- ``self_distill``: the pool's prompts answered by the base model itself (greedy), kept where its
  answer grades right against the pool's hidden ``reference_answer``; it trains on the model's own
  answers (a random subset of those, of the selection's size).
- ``loss``: the examples the base model finds likeliest (lowest loss per response token): the
  classic noise filter, which needs no validation data.
- ``grape``: GRAPE-style: of each prompt's responses in the pool the one the base model finds
  likeliest per token, those ranked by that likelihood (``loss`` ranks every row by it and may
  keep several responses to one prompt; ``grape`` keeps one per prompt before any second one).
- ``dynamics``: Data Maps' confidence, the mean over the base model and the warm-up checkpoints of
  each row's probability per response token (:mod:`~drift_assets.core.study.baselines`).
- ``rds``: RDS+, the cosine of position-weighted mean last hidden states to the validation
  queries, the queries taking turns (:mod:`~drift_assets.core.study.baselines`).
- ``bm25``: BM25 of the validation prompts against the pool (:mod:`~drift_assets.core.study.baselines`).
- ``dsir``: DSIR's hashed n-gram importance weights of the pool towards the validation queries'
  text, resampled (:mod:`~drift_assets.core.study.baselines`).
- ``less``: LESS as its authors run it (:mod:`~drift_assets.core.attribution.less`), by score;
  ``less_round_robin``: the same per-query scores, the queries taking turns as DRIFT's do.
- ``offpolicy``: influence against the *reference answers* (classic IF / LESS-style), unit debias,
  along the checkpoints.
- ``influence``: standard influence functions at the base model: the reference answers' target,
  the fisher Hessian, no debiasing, by score.
- ``drift``: the configured on-policy influence settings, and its ablations, each of which changes
  one setting: ``drift_signed`` / ``drift_positive`` (that weighting; ``signed`` contrasts right and
  wrong rollouts), ``drift_reference`` / ``drift_skip`` (``influence.unsolved``), ``drift_nodebias``
  (no debiasing), ``drift_unit`` / ``drift_log_orthogonal`` (that debiasing), ``drift_base`` (the
  base model alone, without the warm-up checkpoints).
- ``drift_or_loss_acc`` (the pipeline's default, ``selection.choose_among: [loss]``): DRIFT's selection
  or the loss filter's at the configured size, by the share of the validation queries their models
  answer (ties: DRIFT's; rows ``drift_or_loss_acc@drift``, ``drift_or_loss_acc@loss``);
  ``drift_loss_or_full``: those two or the whole pool, by that share (ties: in that order).

Selections (except ``full``) have the size the DRIFT selection has. Beside each method's accuracy
the table has the noise AUC of its score, the AUC of its selection order (the rank it takes, which
round-robin and resampling methods do not take by score) and its selection's noisy share, where the
pool says which rows are noise.
"""

from __future__ import annotations

import json
import multiprocessing
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
import polars as pl

from drift_assets.core.attribution.influence import Curvature, fit_curvature
from drift_assets.core.attribution.scores import ScoringSettings, noise_auc, ranked
from drift_assets.core.attribution.selection import best_selection, round_robin_ranks, select
from drift_assets.core.attribution.trajectory import (
    CheckpointGradients,
    ScoredAlong,
    ranked_scores,
    score_along,
)
from drift_assets.core.data.pool import reference_tokens
from drift_assets.core.generation.engines import SamplingSettings
from drift_assets.core.gradients.tables import pool_token_pairs, query_token_pairs
from drift_assets.core.grading.graders import GradingOptions, grade_answer
from drift_assets.core.runtime.cost import CHECKPOINTS_USED, PipelineCost, method_costs
from drift_assets.core.runtime.progress import SizedProgress
from drift_assets.core.study.baselines import (
    best_match,
    bm25_scores,
    cosine_similarity,
    dsir_log_weights,
    gumbel_order,
    likeliest_per_prompt,
    mean_confidence,
    position_weighted_hidden_states,
    words,
)
from drift_assets.core.training.evaluation import FineTuneJob
from drift_assets.core.training.sft import Evaluation

J = TypeVar("J")
R = TypeVar("R")

UNSCORED = ("full", "random", "oracle", "self_distill")  # choose without scores
SIMILARITY = ("loss", "rds", "bm25", "dsir", "grape", "dynamics")  # scored without gradients
LESS_METHODS = ("less", "less_round_robin")  # need the warm-up's optimizer state
INFLUENCE_BASELINES = ("offpolicy", "influence")
ABLATIONS = {
    "drift_signed": {"weighting": "signed"},
    "drift_positive": {"weighting": "positive"},
    "drift_reference": {"unsolved": "reference"},
    "drift_skip": {"unsolved": "skip"},
    "drift_nodebias": {"debias": "none"},
    "drift_unit": {"debias": "unit"},
    "drift_log_orthogonal": {"debias": "log_orthogonal"},
    "drift_by_score": {"ranking": "score"},
    "drift_round_robin": {"ranking": "round_robin"},
    "drift_base": {},  # the same settings at the base model alone
    # The scoring the LDS finds most faithful (a candidate for the default, benchmarks/README.md, 2026-12-06).
    "drift_fisher": {"hessian": "fisher", "debias": "none"},
    # The default's settings at the base model and the warm-up's last checkpoint.
    "drift_last": {},
    # The default without its blend with the base model's likelihood order.
    "drift_unblended": {"likelihood_blend": 0.0},
}
# The validated methods: each chooses among these selections by the validation queries' accuracy, as
# selection.choose_among has refined_dataset choose (the first is the pipeline's default): a method's
# order at the configured size, or ("full") the whole pool; ties go to the first. Each is scored, and
# its "full" ordered, as drift.
CHOSEN_AMONG = {
    "drift_or_loss_acc": ("drift", "loss"),
    "drift_loss_or_full": ("drift", "loss", "full"),
}
METHODS = (*UNSCORED, *SIMILARITY, *LESS_METHODS, *INFLUENCE_BASELINES, "drift", *ABLATIONS, *CHOSEN_AMONG)
BASE_ONLY = tuple(method for method, used in CHECKPOINTS_USED.items() if used == (0,))  # scored at the base model alone


def pipeline_default(choose_among: Sequence[str]) -> str:
    """The method whose selection the pipeline's refined dataset is with ``selection.choose_among``:
    ``drift`` where it chooses nothing, else the method that chooses among the same selections by the
    validation queries' accuracy (as refined_dataset does)."""
    if not choose_among:
        return "drift"
    among = ("drift", *choose_among)
    for method, selections in CHOSEN_AMONG.items():
        if selections == among:
            return method
    raise ValueError(f"selection.choose_among {list(choose_among)}: no benchmark method chooses among {list(among)}")


def checkpoints_used(method: str, n_checkpoints: int) -> list[int]:
    """The indices of the checkpoints ``method`` scores at, of ``n_checkpoints`` (the base model first)."""
    if method not in CHECKPOINTS_USED:
        return list(range(n_checkpoints))
    return sorted({index % n_checkpoints for index in CHECKPOINTS_USED[method]})


def scoring_for(method: str, drift: ScoringSettings) -> ScoringSettings | None:
    """The influence settings a method scores with (None: it does not score by influence)."""
    if method not in METHODS:
        raise ValueError(f"benchmark.methods: unknown method {method!r} (known: {', '.join(METHODS)})")
    method = "drift" if method in CHOSEN_AMONG else method  # scored as the selection it chooses from
    if method in UNSCORED or method in SIMILARITY or method in LESS_METHODS:
        return None
    # The influence baselines score the reference answers by score, as their papers do: without the
    # default's blend.
    plain = {"targets": "offpolicy", "ranking": "score", "likelihood_blend": 0.0}
    if method == "offpolicy":
        return replace(drift, **plain, debias="unit")
    if method == "influence":
        return replace(drift, **plain, hessian="fisher", debias="none")
    if method == "drift":
        return drift
    return replace(drift, **ABLATIONS[method])


class MethodScorer:
    """Scores the pool for several methods from in-memory gradients, fitting each Hessian once per checkpoint.

    With several checkpoints (the base model and a warm-up run's), a method's score is their
    combination (:func:`~drift_assets.core.attribution.trajectory.combine_checkpoints`), as ``influence_scores`` has it.
    """

    def __init__(
        self,
        checkpoints: list[CheckpointGradients],
        loss_per_token: pl.DataFrame | None = None,
        losses_along: pl.DataFrame | None = None,
    ):
        """``loss_per_token`` (example_id, loss_per_token at the base model) ranks for the likelihood
        blend and the loss filter; ``losses_along`` (example_id, checkpoint, loss_per_token) for ``dynamics``."""
        if not checkpoints:
            raise ValueError("nothing to score: no checkpoint gradients")
        self.checkpoints = [checkpoint.loaded() for checkpoint in checkpoints]
        self.loss_per_token = loss_per_token
        self.losses_along = losses_along
        self._curvatures: dict[tuple[int, str, float], Curvature] = {}

    def _curvature(self, index: int, hessian: str, damping: float) -> Curvature:
        key = (index, hessian, damping)
        if key not in self._curvatures:
            training = self.checkpoints[index].training
            self._curvatures[key] = fit_curvature(hessian, [training], training.shape[1], damping)
        return self._curvatures[key]

    def along(self, scoring: ScoringSettings, at: Sequence[int] | None = None) -> ScoredAlong:
        """The pool scored along every checkpoint (``at``: at those checkpoints' indices)."""
        used = list(range(len(self.checkpoints))) if at is None else list(at)
        return score_along(
            [self.checkpoints[index] for index in used],
            scoring,
            lambda position, _: self._curvature(used[position], scoring.hessian, scoring.damping),
        )

    def scores(self, scoring: ScoringSettings, training_pool: pl.DataFrame, at: Sequence[int] | None = None) -> pl.DataFrame:
        """The pool's scores table along every checkpoint (see :meth:`along`)."""
        return ranked_scores(self.along(scoring, at), training_pool, self.loss_per_token, scoring.likelihood_blend)

    def method_scores(self, method: str, drift: ScoringSettings, training_pool: pl.DataFrame) -> pl.DataFrame:
        """An influence method's scores (see :func:`scoring_for`)."""
        return self.scores(scoring_for(method, drift), training_pool, at=checkpoints_used(method, len(self.checkpoints)))


def selected_ids(
    method: str,
    seed: int,
    training_pool: pl.DataFrame,
    scores: pl.DataFrame | None,
    selection_size: int,
    selection_method: str,
    fraction: float,
    k: int | None,
    distilled: pl.DataFrame | None = None,
) -> list[str]:
    """The example ids ``method`` selects on ``seed`` (``distilled``: :func:`self_distilled`'s table, for ``self_distill``)."""
    if method == "full":
        return training_pool["example_id"].to_list()
    if method == "random":
        ids = sorted(training_pool["example_id"].to_list())
        return random.Random(f"random-selection-{seed}").sample(ids, selection_size)
    if method == "oracle":
        if "is_corrupted" not in training_pool.columns:
            raise ValueError("benchmark method 'oracle' needs an is_corrupted column in the training pool (the demo's has one)")
        clean = sorted(training_pool.filter(~pl.col("is_corrupted"))["example_id"].to_list())
        return random.Random(f"oracle-selection-{seed}").sample(clean, min(selection_size, len(clean)))
    if method == "self_distill":
        if distilled is None:
            raise ValueError("benchmark method 'self_distill' needs the base model's answers to the pool's prompts")
        right = sorted(distilled.filter(pl.col("correct"))["example_id"].to_list())
        return random.Random(f"self-distill-selection-{seed}").sample(right, min(selection_size, len(right)))
    chosen = select(scores, selection_method, fraction, k)
    return scores.filter(chosen)["example_id"].to_list()


def loss_scores(losses: pl.DataFrame) -> pl.DataFrame:
    """example_id, score = −loss_per_token under the base model, rank (1 = likeliest)."""
    return ranked(losses.select("example_id", score=-pl.col("loss_per_token")))


def with_ranks(example_ids: Sequence[str], score: np.ndarray, ranks: np.ndarray) -> pl.DataFrame:
    """example_id, score, rank (the order the selection takes, not necessarily the score's), sorted by rank."""
    frame = pl.DataFrame({"example_id": list(example_ids), "score": np.asarray(score, dtype=np.float64)})
    return frame.with_columns(rank=pl.Series(np.asarray(ranks, dtype=np.int64))).sort("rank")


def reference_pairs(tokenizer, validation_queries: pl.DataFrame) -> tuple[list[list[int]], list[list[int]]]:
    """The validation queries' (prompt, reference answer) token pairs: what RDS+ and LESS compare the pool with."""
    return query_token_pairs(
        tokenizer, validation_queries["prompt"].to_list(), validation_queries["reference_response"].to_list()
    )


def similarity_scores(
    method: str, training_pool: pl.DataFrame, validation_queries: pl.DataFrame, model=None, tokenizer=None
) -> pl.DataFrame:
    """The ``rds``, ``bm25`` or ``dsir`` scores of the pool against the validation queries (example_id, score, rank)."""
    ids = training_pool["example_id"]
    texts = [f"{prompt} {response}" for prompt, response in zip(training_pool["prompt"], training_pool["response"], strict=True)]
    if method == "bm25":
        similarity = bm25_scores([words(text) for text in texts], [words(prompt) for prompt in validation_queries["prompt"]])
    elif method == "rds":
        pool = position_weighted_hidden_states(model, tokenizer, *pool_token_pairs(tokenizer, training_pool["messages"]))
        queries = position_weighted_hidden_states(model, tokenizer, *reference_pairs(tokenizer, validation_queries))
        similarity = cosine_similarity(queries, pool)
        # RDS+'s selection: the queries take turns, each taking its most similar example not yet taken.
        return with_ranks(ids, best_match(similarity), round_robin_ranks(similarity.T))
    elif method == "dsir":
        queries = zip(validation_queries["prompt"], validation_queries["reference_response"], strict=True)
        log_weights = dsir_log_weights(texts, [f"{prompt} {response}" for prompt, response in queries])
        return with_ranks(ids, log_weights, gumbel_order(log_weights, DSIR_SEED))
    else:
        raise ValueError(f"{method!r} is not a similarity method (rds, bm25, dsir)")
    return ranked(pl.DataFrame({"example_id": ids, "score": best_match(similarity)}))


DSIR_SEED = 0  # one resampling draw, the same for every SFT seed


def grape_scores(training_pool: pl.DataFrame, losses: pl.DataFrame) -> pl.DataFrame:
    """The ``grape`` selection: score = −loss per response token at the base model; rank = each
    prompt's likeliest response first, in that order, then the rest (:func:`~drift_assets.core.study.baselines.likeliest_per_prompt`)."""
    joined = training_pool.select("example_id", "prompt").join(losses, on="example_id", how="left")
    if joined["loss_per_token"].null_count():
        raise ValueError("benchmark method 'grape': some pool examples have no base-model loss: materialize every shard")
    score = -joined["loss_per_token"].to_numpy()
    return with_ranks(joined["example_id"], score, likeliest_per_prompt(joined["prompt"].to_list(), score))


def dynamics_scores(losses: pl.DataFrame, checkpoints: Sequence[str]) -> pl.DataFrame:
    """The ``dynamics`` selection from (example_id, checkpoint, loss_per_token) at the base model and
    every warm-up checkpoint: Data Maps' mean confidence, highest first."""
    if len(checkpoints) < 2:
        raise ValueError(
            "benchmark method 'dynamics' reads each row's loss along the warm-up run, and warmup.steps is empty: set it"
        )
    table = losses.filter(pl.col("checkpoint").is_in(list(checkpoints))).pivot(
        "checkpoint", index="example_id", values="loss_per_token"
    )
    missing = [checkpoint for checkpoint in checkpoints if checkpoint not in table.columns]
    if missing or table.select(pl.any_horizontal(pl.col(list(checkpoints)).is_null()).any()).item():
        raise ValueError(
            f"benchmark method 'dynamics': pool examples lack a loss at checkpoint(s) {missing or 'some'}: "
            "materialize training_gradient_projections at every checkpoint"
        )
    return ranked(table.select("example_id", score=pl.Series(mean_confidence(table.select(list(checkpoints)).to_numpy()))))


def less_scores(method: str, example_ids: Sequence[str], matrix: np.ndarray) -> pl.DataFrame:
    """``less`` (the mean over the queries, by score) or ``less_round_robin`` (the same score; the
    queries take turns) from LESS's (examples × queries) matrix (:func:`~drift_assets.core.attribution.less.less_along`)."""
    score = matrix.mean(axis=1)
    if method == "less":
        return ranked(pl.DataFrame({"example_id": list(example_ids), "score": score}))
    if method == "less_round_robin":
        return with_ranks(example_ids, score, round_robin_ranks(matrix))
    raise ValueError(f"{method!r} is not a LESS method {LESS_METHODS}")


REFERENCE_COLUMN = "reference_answer"  # a pool's hidden answer, for grading; never exported (publish.EVALUATION_ONLY_COLUMNS)


def self_distilled(
    engine,
    tokenizer,
    training_pool: pl.DataFrame,
    grader: str,
    max_tokens: int,
    options: GradingOptions = GradingOptions(),
) -> pl.DataFrame:
    """example_id, messages (the prompt with the base model's greedy answer), answer, correct (it
    grades right against the pool's ``reference_answer``; a row without one is not)."""
    if REFERENCE_COLUMN not in training_pool.columns:
        raise ValueError(
            f"benchmark method 'self_distill' grades the model's answers to the pool's prompts against a "
            f"'{REFERENCE_COLUMN}' column, and the training pool has none (the embedded tasks' pools carry it)"
        )
    prompts, _ = pool_token_pairs(tokenizer, training_pool["messages"])
    report = engine.generate(prompts, SamplingSettings(n=1, temperature=0.0, max_tokens=max_tokens))
    answers = [group[0].text for group in report.completions]
    rows = []
    for example_id, text, reference, answer in zip(
        training_pool["example_id"], training_pool["messages"], training_pool[REFERENCE_COLUMN], answers, strict=True
    ):
        messages = json.loads(text)[:-1] + [{"role": "assistant", "content": answer}]
        correct = reference is not None and grade_answer(answer, str(reference), grader, options).correct
        rows.append(
            {"example_id": example_id, "messages": json.dumps(messages, ensure_ascii=False), "answer": answer, "correct": correct}
        )
    return pl.DataFrame(rows, schema={"example_id": pl.String, "messages": pl.String, "answer": pl.String, "correct": pl.Boolean})


Selection = frozenset[tuple[str, str]]  # (example_id, the messages trained on)


def selection_of(ids: Iterable[str], messages: dict[str, str]) -> Selection:
    """What a fine-tune trains on: each selected example with its messages (the pool's, or the model's own)."""
    return frozenset((example_id, messages[example_id]) for example_id in ids)


def noisy_share(selection: Selection | None, training_pool: pl.DataFrame) -> float | None:
    """The share of the selection the pool marks ``is_corrupted`` (None: no such column, or an empty selection)."""
    if not selection or "is_corrupted" not in training_pool.columns:
        return None
    noisy = dict(zip(training_pool["example_id"], training_pool["is_corrupted"], strict=True))
    return sum(bool(noisy[example_id]) for example_id, _ in selection) / len(selection)


def order_auc(scores: pl.DataFrame | None, training_pool: pl.DataFrame) -> float | None:
    """ROC-AUC of the selection order (−rank) for clean against corrupted rows, where the pool has ``is_corrupted``."""
    return (
        None if scores is None else noise_auc(scores.select("example_id", score=-pl.col("rank").cast(pl.Float64)), training_pool)
    )


@dataclass
class MethodBenchmark:
    """The method benchmark over a pool: each method's scores (:meth:`score`), the fine-tunes their
    selections need (:meth:`plan`), and their evaluation (:meth:`run`). ``scorer``: the pool's
    stored gradients and losses; ``drift``: the configured influence settings."""

    methods: Sequence[str]
    seeds: Sequence[int]
    training_pool: pl.DataFrame
    validation_queries: pl.DataFrame
    scorer: MethodScorer
    drift: ScoringSettings
    scores: dict[str, pl.DataFrame] = field(default_factory=dict)
    selections: dict[tuple[str, int], Selection] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # each validated method's variants' sizes (validated_variants)

    def score(self, model, tokenizer, checkpoints: Sequence[str], less_matrix: Callable[[], np.ndarray]) -> None:
        """Each scored method's scores of the pool (example_id, score, rank); the unscored methods
        (:data:`UNSCORED`) have none. ``model``: the base model (``rds``); ``checkpoints``: the
        warm-up's (``dynamics``); ``less_matrix()``: LESS's (pool × queries) scores along the warm-up
        (the LESS methods)."""
        methods, pool, losses = self.methods, self.training_pool, self.scorer.loss_per_token
        for method in methods:
            if scoring_for(method, self.drift) is not None:
                self.scores[method] = self.scorer.method_scores(method, self.drift, pool)
            elif method == "loss":
                self.scores[method] = loss_scores(losses)
            elif method in ("rds", "bm25", "dsir"):
                self.scores[method] = similarity_scores(method, pool, self.validation_queries, model, tokenizer)
            elif method == "grape":
                self.scores[method] = grape_scores(pool, losses)
            elif method == "dynamics":
                self.scores[method] = dynamics_scores(self.scorer.losses_along, checkpoints)
        if any(method in LESS_METHODS for method in methods):
            matrix = less_matrix()
            for method in LESS_METHODS:
                if method in methods:
                    self.scores[method] = less_scores(method, pool["example_id"].to_list(), matrix)

    def plan(
        self, selection: tuple[str, float, int | None], distilled: pl.DataFrame | None = None
    ) -> list[tuple[int, Selection, list[str]]]:
        """The distinct fine-tunes (:func:`shared_fine_tunes`), each method's selection on each seed
        kept in ``selections``. ``selection``: (selection.method, selection.fraction, selection.k);
        random and the others select as many examples as DRIFT does, so that they differ only in
        which ones; ``distilled``: :func:`self_distilled`'s table, for ``self_distill``."""
        selection_method, fraction, k = selection
        pool = self.training_pool
        drift_scores = self.scores["drift"] if "drift" in self.scores else self.scorer.scores(self.drift, pool)
        drift_size = int(select(drift_scores, selection_method, fraction, k).sum())
        pool_messages = dict(zip(pool["example_id"], pool["messages"], strict=True))
        own_answers = dict(zip(distilled["example_id"], distilled["messages"], strict=True)) if distilled is not None else {}
        variants = {
            label: variant
            for method in self.methods
            if method in CHOSEN_AMONG
            for label, variant in validated_variants(method, drift_size, pool.height).items()
        }
        self.sizes = {label: size for label, (_, size) in variants.items()}
        for label, (order, _) in variants.items():  # a variant takes its order's scores
            validated = label.split("@")[0]
            self.scores[label] = loss_scores(self.scorer.loss_per_token) if order == "loss" else self.scores[validated]

        def choose(method: str, seed: int) -> Selection:
            if method in self.sizes:  # one variant of a validated method
                size = self.sizes[method]
                chosen = selected_ids(method, seed, pool, self.scores[method], size, "top_k", fraction, size)
            else:
                chosen = selected_ids(
                    method, seed, pool, self.scores.get(method), drift_size, selection_method, fraction, k, distilled
                )
            self.selections[method, seed] = selection_of(chosen, own_answers if method == "self_distill" else pool_messages)
            return self.selections[method, seed]

        return shared_fine_tunes(self.fine_tuned(), self.seeds, choose)

    def fine_tuned(self) -> list[str]:
        """What is fine-tuned, in table order: each method, a validated one as each of its variants."""
        validated = {method: size_labels(method, self.sizes) for method in self.methods if method in CHOSEN_AMONG}
        return [label for method in self.methods for label in validated.get(method, [method])]

    def run(
        self,
        plan: Sequence[tuple[int, Selection, list[str]]],
        job_for: Callable[[str, list[str], int], FineTuneJob],
        run_one: Callable[[FineTuneJob], tuple[Evaluation, float]],
        workers: int,
        log: Callable[[str], None],
    ) -> pl.DataFrame:
        """Each planned fine-tune (``job_for(method, messages, seed)``, run by ``run_one`` in
        ``workers`` processes, :func:`run_fine_tunes`) evaluated, logging progress: :func:`benchmark_table`."""
        jobs = [job_for(sharers[0], [messages for _, messages in sorted(chosen)], seed) for seed, chosen, sharers in plan]
        fine_tuned = self.fine_tuned()
        if self.sizes:  # a validated method's variants: their models decode the validation queries too
            columns = ("query_id", "prompt", "reference", "grader")
            validation = self.validation_queries.select(columns).to_dicts()
            jobs = [
                replace(job, validation_queries=validation) if self.sizes.keys() & set(sharers) else job
                for job, (_, _, sharers) in zip(jobs, plan, strict=True)
            ]
        shared = len(fine_tuned) * len(self.seeds) - len(jobs)
        log(
            f"{len(jobs)} fine-tunes ({len(fine_tuned)} methods and sizes x {len(self.seeds)} seeds"
            + (f", {shared} sharing another method's selection" if shared else "")
            + f") in {workers} process(es)"
        )
        # Timed per SFT step (with sft.epochs, full-pool SFT takes many times a selection's steps);
        # in parallel processes each fine-tune's own seconds, the rest shared among the workers.
        steps = [job.options.steps_for(len(job.messages)) if job.messages else 0 for job in jobs]
        progress = SizedProgress("fine-tunes", steps, log, work="steps", workers=workers)

        def finished():
            for (_, _, sharers), (job, (result, seconds)) in zip(plan, run_fine_tunes(jobs, run_one, workers), strict=True):
                note = f"{' = '.join(sharers)} seed {job.seed}: accuracy {result.accuracy:.3f}"
                if result.validation is not None:
                    note += f" (validation {result.validation.accuracy:.3f})"
                progress.advance(note, seconds if workers > 1 else None)
                yield sharers, job, result, seconds

        table = benchmark_table(finished(), fine_tuned, self.scores, self.training_pool, self.selections)
        return with_validated_choices(table, self.methods)


def validated_variants(method: str, configured: int, pool_size: int) -> dict[str, tuple[str, int]]:
    """A validated method's variants, label -> (the method whose order it takes, its size): one per
    selection of :data:`CHOSEN_AMONG`, ``<method>@<order>``: that order at the ``configured`` size, or
    ``<method>@full``: DRIFT's order over the whole pool."""
    return {
        f"{method}@{order}": ("drift", pool_size) if order == "full" else (order, configured) for order in CHOSEN_AMONG[method]
    }


def size_labels(method: str, labels: Iterable[str]) -> list[str]:
    """The labels of a validated method's variants among ``labels`` (``<method>@<order>``)."""
    return [label for label in labels if label.startswith(f"{method}@")]


def with_validated_choices(table: pl.DataFrame, methods: Sequence[str]) -> pl.DataFrame:
    """``table`` with a row per seed for each validated method in ``methods``: of its selections
    (:data:`CHOSEN_AMONG`), the one whose model answered the validation queries best (ties: the first
    named). Its wall time is all its selections'."""
    chosen = []
    for method in methods:
        if method not in CHOSEN_AMONG:
            continue
        tried = table.filter(pl.col("method").str.starts_with(f"{method}@"))
        if tried["validation_accuracy"].null_count():
            raise ValueError(f"benchmark method {method!r} chooses by validation accuracy, and a fine-tune has none")
        named = [f"{method}@{order}" for order in CHOSEN_AMONG[method]]
        for seed in tried["seed"].unique(maintain_order=True):
            rows = {row["method"]: row for row in tried.filter(pl.col("seed") == seed).to_dicts()}
            rows = {label: rows[label] for label in named if label in rows}  # ties: the first named, as the pipeline
            best = rows[best_selection({label: row["validation_accuracy"] for label, row in rows.items()})]
            chosen.append({**best, "method": method, "wall_seconds": sum(row["wall_seconds"] for row in rows.values())})
    if not chosen:
        return table
    order = {label: index for index, label in enumerate(_table_order(methods, table))}
    kept = pl.DataFrame(chosen, schema=table.schema)
    return pl.concat([table, kept]).sort(pl.col("method").replace_strict(order), "seed", maintain_order=True)


def _table_order(methods: Sequence[str], table: pl.DataFrame) -> list[str]:
    """Each method, a validated one followed by its sizes, as they appear in ``table``; then any other
    method the table holds."""
    present = table["method"].unique(maintain_order=True).to_list()
    order = [label for method in methods for label in [method, *(size_labels(method, present) if method in CHOSEN_AMONG else [])]]
    return order + [label for label in present if label not in order]


def with_method_costs(
    table: pl.DataFrame,
    pipeline: PipelineCost,
    pool_tokens: int,
    validation_queries: pl.DataFrame,
    tokenizer,
) -> pl.DataFrame:
    """The benchmark's table with ``cost_vs_full_sft``: what choosing each method's examples cost
    (:func:`~drift_assets.core.runtime.cost.method_costs`; the influence methods: the pipeline's steps as
    recorded, ``pipeline``), against one full-pool SFT run."""
    validation_tokens = sum(
        reference_tokens(tokenizer, prompt, response)
        for prompt, response in zip(validation_queries["prompt"], validation_queries["reference_response"], strict=True)
    )
    labels = table["method"].unique(maintain_order=True).to_list()
    costs = method_costs(labels, pipeline, pool_tokens, validation_tokens)
    for method in CHOSEN_AMONG:
        # Its choice fine-tunes every selection and keeps one: each other one costs about a full-pool
        # SFT run (the same optimizer steps, on a selection's examples).
        if costs.get(method) is not None:
            costs[method] += len(size_labels(method, labels)) - 1
    return table.with_columns(cost_vs_full_sft=pl.col("method").replace_strict(costs, default=None, return_dtype=pl.Float64))


def run_fine_tunes(jobs: Sequence[J], fine_tune_one: Callable[[J], R], workers: int = 1) -> Iterator[tuple[J, R]]:
    """Each job with its result, in job order, as they finish in order.

    With ``workers`` > 1 the jobs run in that many spawned processes (a fine-tune on the CPU uses
    :data:`~drift_assets.core.training.sft.FINE_TUNE_CPU_THREADS` threads wherever it runs: on 2 cores two one-thread processes
    finish the tiny models' jobs sooner than one two-thread process). ``fine_tune_one`` must then be
    a module-level function (it is pickled).
    """
    if workers <= 1:
        for job in jobs:
            yield job, fine_tune_one(job)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from zip(jobs, pool.map(fine_tune_one, jobs))


def shared_fine_tunes(
    methods: Sequence[str], seeds: Sequence[int], choose: Callable[[str, int], frozenset[str]]
) -> list[tuple[int, frozenset[str], list[str]]]:
    """(seed, selection, the methods that chose it) for each distinct selection, in method then seed
    order: a method whose selection equals another's on a seed (an ablation that restates the
    configured setting) shares its fine-tune, since SFT is deterministic and would give the same result."""
    sharers: dict[tuple[int, frozenset[str]], list[str]] = {}
    for method in methods:
        for seed in seeds:
            sharers.setdefault((seed, choose(method, seed)), []).append(method)
    return [(seed, chosen, names) for (seed, chosen), names in sharers.items()]


def benchmark_table(
    finished: Iterable[tuple[list[str], FineTuneJob, Evaluation, float]],
    methods: Sequence[str],
    scores: dict[str, pl.DataFrame],
    training_pool: pl.DataFrame,
    selections: dict[tuple[str, int], Selection] | None = None,
) -> pl.DataFrame:
    """One row per method and seed from each finished fine-tune (sharers, job, evaluation, seconds):
    accuracy with its interval, the noise AUC of the method's scores and of its selection order, the
    noisy share of its selection on that seed (``selections``; none for ``self_distill``, whose rows
    are the model's answers), and the wall time (on the method that ran the fine-tune; 0 on those
    sharing it)."""
    selections = selections or {}
    rows = []
    for sharers, job, result, seconds in finished:
        low, high = result.interval
        for method in sharers:
            rows.append(
                {
                    "method": method,
                    "seed": job.seed,
                    "n_selected": len(job.messages),
                    "accuracy": result.accuracy,
                    "accuracy_low": low,
                    "accuracy_high": high,
                    "noise_auc": noise_auc(scores.get(method), training_pool),
                    "order_auc": order_auc(scores.get(method), training_pool),
                    "noisy_share": None
                    if method == "self_distill"
                    else noisy_share(selections.get((method, job.seed)), training_pool),
                    "validation_accuracy": None if result.validation is None else result.validation.accuracy,
                    "wall_seconds": seconds if method == job.method else 0.0,
                }
            )
    order = {method: index for index, method in enumerate(methods)}
    nullable = {name: pl.Float64 for name in ("noise_auc", "order_auc", "noisy_share", "validation_accuracy")}
    return pl.DataFrame(rows, schema_overrides=nullable).sort(pl.col("method").replace_strict(order), "seed", maintain_order=True)


def paired_differences(table: pl.DataFrame, baseline: str = "full") -> pl.DataFrame:
    """method, difference_mean, difference_se, pairs: accuracy minus the baseline's on the same seed.

    Every method runs on the same seeds, so the difference is taken seed by seed; the standard error
    is that of the mean of those differences (None with fewer than two pairs). Two selections share
    little through a seed (its shuffle reorders each selection differently), so on the demo this
    is about as wide as the unpaired standard error. Empty where the table has no baseline rows.
    """
    reference = table.filter(pl.col("method") == baseline).select("seed", baseline_accuracy=pl.col("accuracy"))
    schema = {"method": pl.String, "difference_mean": pl.Float64, "difference_se": pl.Float64, "pairs": pl.UInt32}
    if reference.is_empty():
        return pl.DataFrame(schema=schema)
    paired = table.join(reference, on="seed", how="inner").with_columns(
        difference=pl.col("accuracy") - pl.col("baseline_accuracy")
    )
    summary = paired.group_by("method", maintain_order=True).agg(
        difference_mean=pl.col("difference").mean(),
        difference_se=pl.col("difference").std() / pl.len().sqrt(),
        pairs=pl.len(),
    )
    return summary.with_columns(pl.when(pl.col("pairs") >= 2).then(pl.col("difference_se"))).select(
        [pl.col(name).cast(dtype) for name, dtype in schema.items()]
    )


def summary_table(table: pl.DataFrame) -> pl.DataFrame:
    return table.group_by("method", maintain_order=True).agg(
        n_selected=pl.col("n_selected").first(),
        accuracy_mean=pl.col("accuracy").mean(),
        accuracy_std=pl.col("accuracy").std(),
        seeds=pl.len(),
        noise_auc=pl.col("noise_auc").first(),
        order_auc=pl.col("order_auc").first(),
        noisy_share=pl.col("noisy_share").mean(),
        wall_seconds=pl.col("wall_seconds").sum(),
        # What choosing the examples cost, × one full-pool SFT run (core.runtime.cost.method_cost; a table from
        # before it was recorded has none).
        cost_vs_full_sft=pl.col("cost_vs_full_sft").first() if "cost_vs_full_sft" in table.columns else pl.lit(None),
    )


def summary_markdown(table: pl.DataFrame) -> str:
    """One row per method; with ``full`` among them, also each method's paired difference from it (points ± s.e.)."""
    summary = summary_table(table)
    differences = {row["method"]: row for row in paired_differences(table, "full").iter_rows(named=True)}
    compare = bool(differences)
    lines = [
        "| method | n_selected | accuracy (mean ± std over seeds) | seeds | noisy share | noise AUC (score) | "
        "noise AUC (selection order) | wall s | cost × full SFT |" + (" vs full, same seed (mean ± s.e.) |" if compare else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if compare else ""),
    ]
    for row in summary.iter_rows(named=True):
        std = row["accuracy_std"] or 0.0
        cost = "–" if row["cost_vs_full_sft"] is None else f"{row['cost_vs_full_sft']:.2f}"
        line = (
            f"| {row['method']} | {row['n_selected']} | {100 * row['accuracy_mean']:.1f} ± {100 * std:.1f} | "
            f"{row['seeds']} | {figure(row['noisy_share'], '.1%')} | {figure(row['noise_auc'])} | "
            f"{figure(row['order_auc'])} | {row['wall_seconds']:.0f} | {cost} |"
        )
        if compare:
            line += f" {paired_cell(differences.get(row['method']), row['method'] == 'full')} |"
        lines.append(line)
    return "\n".join(lines)


def figure(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None or value != value else format(value, spec)


def paired_cell(difference: dict | None, is_baseline: bool) -> str:
    if is_baseline or difference is None:
        return "–"
    error = "" if difference["difference_se"] is None else f" ± {100 * difference['difference_se']:.1f}"
    return f"{100 * difference['difference_mean']:+.1f}{error}"
