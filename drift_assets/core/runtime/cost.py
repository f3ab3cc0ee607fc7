"""What a run costs, in passes of the model over tokens, set against one fine-tune on the full pool.

A forward pass of an N-parameter model over one token costs about 2N FLOPs and its backward pass
about 4N (the 6N of a training step). Costs here are counted in *token passes*: a forward pass over
one token is 1, a backward pass 2, so a training step over a token is 3 and stages of different
kinds add up. Generation is a forward pass per prompt token (once per query: the samples of a
query share its prefill, as vLLM's prefix caching and transformers' batched ``generate`` both
reuse it for the continuation) and per generated token. The reference is one SFT run on the whole
pool with the recipe the pipeline evaluates with (``benchmark.sft``): its optimizer steps times its
batch size times the pool's mean example length, forward and backward.

The tokens counted are the sequences' own, padding left out. A gradient pass over frozen weights
(the projected per-example gradients, the PCA fit) computes activation gradients only, so its
backward pass costs less than a training step's: counting it as a full one gives an upper bound.

Scoring (matrix products over projected gradients) and grading cost no pass of the model: their
wall seconds are reported, not token passes.

Each asset that passes the model over tokens records its :class:`StageCost` in its metadata
(:meth:`StageCost.metadata`); :func:`pipeline_cost` adds up what the latest materializations
recorded, by stage, for the summary, the refined dataset and the method benchmark.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

FORWARD, BACKWARD = 1, 2  # token passes of a forward and of a backward pass over one token

# The stages of the split, in pipeline order, and the assets that record each.
ROLLOUTS, WARMUP, GRADIENTS, SCORING, EVALUATION = "rollouts", "warm-up", "gradients", "scoring", "evaluation"
CHOICE = "choice"  # the fine-tunes that choose among selections (selection.choose_among)
STAGE_OF_ASSET = {
    "rollouts": ROLLOUTS,
    "warmup_checkpoints": WARMUP,
    "projection_basis": GRADIENTS,
    "validation_gradients": GRADIENTS,
    "training_gradient_projections": GRADIENTS,
    "influence_scores": SCORING,
    "refined_dataset": CHOICE,
    "refined_model_evaluation": EVALUATION,
}
# What DRIFT's scores need (the method benchmark's influence methods); the refinement adds the choice.
PIPELINE_STAGES = (ROLLOUTS, WARMUP, GRADIENTS, SCORING)


@dataclass(frozen=True)
class StageCost:
    """One stage's passes over tokens: ``forward_tokens`` tokens went through a forward pass, of which
    ``backward_tokens`` also through a backward pass (at ``checkpoint``, where it has one)."""

    stage: str
    forward_tokens: int
    backward_tokens: int = 0
    wall_seconds: float | None = None
    checkpoint: str | None = None

    @property
    def token_passes(self) -> int:
        return FORWARD * self.forward_tokens + BACKWARD * self.backward_tokens

    def ratio(self, reference: StageCost) -> float | None:
        """Token passes per token pass of ``reference`` (None where it has none)."""
        return self.token_passes / reference.token_passes if reference.token_passes else None

    def metadata(self, reference: StageCost | None = None, whole: StageCost | None = None) -> dict[str, float | int]:
        """What an asset's metadata shows of it (with the ratio to ``reference`` where given). ``whole``:
        what the table would have cost from scratch, where this materialization reused stored rows."""
        figures: dict[str, float | int] = {
            "cost_forward_tokens": self.forward_tokens,
            "cost_backward_tokens": self.backward_tokens,
            "cost_token_passes": self.token_passes,
        }
        if whole is not None:
            figures |= {"cost_whole_forward_tokens": whole.forward_tokens, "cost_whole_backward_tokens": whole.backward_tokens}
        if reference is not None and reference.token_passes:
            figures["cost_vs_full_sft"] = round(self.token_passes / reference.token_passes, 4)
        if self.wall_seconds is not None:
            figures["cost_wall_seconds"] = round(self.wall_seconds, 2)
        return figures

    @classmethod
    def from_metadata(
        cls, stage: str, figures: Mapping[str, object], checkpoint: str | None = None, whole: bool = False
    ) -> StageCost | None:
        """The cost :meth:`metadata` recorded (None where ``figures`` holds none: a materialization
        written before costs were recorded); ``whole``: what the table costs from scratch, where the
        materialization reused stored rows (a method's cost is that of computing what it reads)."""
        if "cost_forward_tokens" not in figures:
            return None
        if whole and "cost_whole_forward_tokens" not in figures and int(figures.get("rows_reused") or 0) > 0:
            return None  # it reused stored rows before what they cost from scratch was recorded
        prefix = "cost_whole_" if whole and "cost_whole_forward_tokens" in figures else "cost_"
        seconds = figures.get("cost_wall_seconds")
        return cls(
            stage,
            int(figures[f"{prefix}forward_tokens"]),
            int(figures.get(f"{prefix}backward_tokens") or 0),
            None if seconds is None else float(seconds),
            checkpoint,
        )


def training_cost(
    stage: str, example_tokens: Sequence[int], steps: int, batch_size: int, wall_seconds: float | None = None
) -> StageCost:
    """``steps`` optimizer steps of ``batch_size`` examples drawn from ``example_tokens`` (prompt +
    response tokens each): the expected tokens are steps × batch × the mean length."""
    if not example_tokens:
        return StageCost(stage, 0, 0, wall_seconds)
    per_batch = min(batch_size, len(example_tokens)) * sum(example_tokens) / len(example_tokens)
    tokens = round(steps * per_batch)
    return StageCost(stage, tokens, tokens, wall_seconds)


def trained_cost(stage: str, tokens: int, wall_seconds: float | None = None, checkpoint: str | None = None) -> StageCost:
    """A fine-tune that trained on ``tokens`` tokens (counted batch by batch), forward and backward."""
    return StageCost(stage, int(tokens), int(tokens), wall_seconds, checkpoint)


def gradient_pass_cost(
    stage: str, sequence_tokens: Iterable[int], wall_seconds: float | None = None, checkpoint: str | None = None
) -> StageCost:
    """A forward and backward pass over each sequence once (per-example gradients, a PCA fit)."""
    tokens = int(sum(sequence_tokens))
    return StageCost(stage, tokens, tokens, wall_seconds, checkpoint)


def generation_cost(
    stage: str,
    prompt_tokens: Iterable[int],
    generated_tokens: Iterable[int],
    wall_seconds: float | None = None,
    checkpoint: str | None = None,
) -> StageCost:
    """Prefill of each prompt once and a forward step per generated token."""
    return StageCost(stage, int(sum(prompt_tokens)) + int(sum(generated_tokens)), 0, wall_seconds, checkpoint)


def total(stages: Iterable[StageCost], stage: str = "total", checkpoint: str | None = None) -> StageCost:
    """The stages' tokens and seconds added up (seconds None where none of them has any)."""
    stages = list(stages)
    seconds = [cost.wall_seconds for cost in stages if cost.wall_seconds is not None]
    return StageCost(
        stage,
        sum(cost.forward_tokens for cost in stages),
        sum(cost.backward_tokens for cost in stages),
        sum(seconds) if seconds else None,
        checkpoint,
    )


@dataclass(frozen=True)
class Recorded:
    """What the latest materialization of one partition of a costed asset recorded: the asset, the
    partition (None: unpartitioned) and its checkpoint, the run, and the metadata's figures (empty
    where the partition was never materialized)."""

    asset: str
    partition: str | None
    checkpoint: str | None
    run_id: str | None
    figures: Mapping[str, object]


@dataclass(frozen=True)
class PipelineCost:
    """The latest recorded cost of every stage, against one full-pool SFT run (``reference``).

    ``parts`` are the stages of the refinement at each checkpoint (rollouts and gradients per
    checkpoint, the warm-up, the scoring), ``evaluation`` the check apart (None without one),
    ``missing`` the assets or partitions that recorded no cost (written before costs were);
    ``unknown`` the (stage, checkpoint) of parts whose cost from scratch is not known (a
    materialization that reused stored rows before that cost was recorded)."""

    parts: tuple[StageCost, ...]
    reference: StageCost
    evaluation: StageCost | None = None
    missing: tuple[str, ...] = field(default_factory=tuple)
    unknown: tuple[tuple[str, str | None], ...] = field(default_factory=tuple)

    @property
    def total(self) -> StageCost:
        """The refinement's cost: every stage but the evaluation."""
        return total(self.parts, "pipeline")

    def stage(self, name: str, checkpoints: Iterable[str] | None = None) -> StageCost:
        """One stage summed (over ``checkpoints`` only, where given)."""
        wanted = None if checkpoints is None else set(checkpoints)
        return total((part for part in self.parts if part.stage == name and (wanted is None or part.checkpoint in wanted)), name)

    def known(self, name: str, checkpoints: Iterable[str] | None = None) -> bool:
        """Whether every part of one stage (at ``checkpoints`` only, where given) has a known cost."""
        wanted = None if checkpoints is None else set(checkpoints)
        return not any(stage == name and (wanted is None or checkpoint in wanted) for stage, checkpoint in self.unknown)

    def checkpoints(self) -> list[str]:
        """The checkpoints scored at (with rollouts or gradients of their own), in the order recorded."""
        return list(dict.fromkeys(part.checkpoint for part in self.parts if part.stage in (ROLLOUTS, GRADIENTS)))

    def by_stage(self) -> list[StageCost]:
        """The split the summary shows: rollouts, the warm-up, the gradients at each checkpoint, scoring
        (and the choice among selections, where one was made)."""
        split = [self.stage(ROLLOUTS), self.stage(WARMUP)]
        split += [
            total((p for p in self.parts if p.stage == GRADIENTS and p.checkpoint == c), GRADIENTS, c) for c in self.checkpoints()
        ]
        return [*split, self.stage(SCORING), *([self.stage(CHOICE)] if any(p.stage == CHOICE for p in self.parts) else [])]

    def with_part(self, part: StageCost) -> PipelineCost:
        """This cost with one more stage's (a step's own, before its materialization records it)."""
        return replace(self, parts=(*self.parts, part))

    def ratio(self) -> float | None:
        return self.total.ratio(self.reference)

    def lines(self) -> list[str]:
        """Two lines: the total against one full-pool SFT run (the evaluation apart), then the split."""
        whole, ratio = self.total, self.ratio()
        head = f"{whole.token_passes:,} token passes, " + (
            f"{ratio:.2f}× one full-pool SFT run ({self.reference.token_passes:,})"
            if ratio is not None
            else "no full-pool SFT run to compare"
        )
        head += f", {whole.wall_seconds or 0:.0f} s"
        if self.evaluation is not None:
            evaluation = self.evaluation.ratio(self.reference)
            head += (
                "; the evaluation apart: "
                + (f"{evaluation:.2f}×, " if evaluation is not None else "")
                + (f"{self.evaluation.wall_seconds or 0:.0f} s")
            )
        if self.missing:
            head += f" (no cost recorded by {', '.join(self.missing[:3])}{', …' if len(self.missing) > 3 else ''})"
        return [head, " | ".join(self._describe(part) for part in self.by_stage())]

    def _describe(self, part: StageCost) -> str:
        name = part.stage if part.checkpoint is None else f"{part.stage} at {checkpoint_label(part.checkpoint)}"
        ratio = part.ratio(self.reference)
        figure = f" {ratio:.2f}×" if part.token_passes and ratio is not None else ""
        return f"{name}{figure} {part.wall_seconds or 0:.0f} s"

    def rows(self) -> list[dict[str, object]]:
        """One row per stage of the split, then the pipeline's total and the evaluation apart."""
        shown = [*self.by_stage(), self.total, *([self.evaluation] if self.evaluation is not None else [])]
        return [
            {
                "stage": part.stage if part.checkpoint is None else f"{part.stage} at {checkpoint_label(part.checkpoint)}",
                "forward_tokens": part.forward_tokens,
                "backward_tokens": part.backward_tokens,
                "token_passes": part.token_passes,
                "vs_full_sft": None if part.ratio(self.reference) is None else round(part.ratio(self.reference), 4),
                "wall_seconds": None if part.wall_seconds is None else round(part.wall_seconds, 1),
            }
            for part in shown
        ]

    def markdown(self) -> str:
        lines = [
            "| stage | forward tokens | backward tokens | token passes | × full-pool SFT | wall s |",
            "|---|---|---|---|---|---|",
        ]
        for row in self.rows():
            ratio = "–" if row["vs_full_sft"] is None else f"{row['vs_full_sft']:.2f}"
            seconds = "–" if row["wall_seconds"] is None else f"{row['wall_seconds']:.0f}"
            lines.append(
                f"| {row['stage']} | {row['forward_tokens']:,} | {row['backward_tokens']:,} | {row['token_passes']:,} | "
                f"{ratio} | {seconds} |"
            )
        return "\n".join(lines)


def checkpoint_label(checkpoint: str) -> str:
    """``000050`` → ``50 steps``; a given checkpoint's key (warmup.checkpoints) as it is."""
    return f"{int(checkpoint)} steps" if checkpoint.isdigit() else checkpoint


def pipeline_cost(recorded: Iterable[Recorded], reference: StageCost, whole: bool = False) -> PipelineCost:
    """The pipeline's cost from the latest materialization of each configured partition (``whole``:
    each table's cost from scratch, where a materialization reused stored rows).

    A run that materialized several partitions at once (the warm-up run saves every checkpoint in
    one) recorded its cost on each of them: it counts once. A partition whose record holds no cost
    (never materialized, or written before costs were recorded) is listed as missing.
    """
    seen: set[tuple[str, str | None]] = set()
    parts, evaluations, missing, unknown = [], [], [], []
    for record in recorded:
        stage = STAGE_OF_ASSET.get(record.asset)
        if stage is None:
            raise ValueError(f"{record.asset} records no cost (costed assets: {', '.join(STAGE_OF_ASSET)})")
        cost = StageCost.from_metadata(stage, record.figures, record.checkpoint, whole)
        if cost is None:
            missing.append(record.asset if record.partition is None else f"{record.asset}[{record.partition}]")
            if StageCost.from_metadata(stage, record.figures, record.checkpoint) is not None:
                unknown.append((stage, record.checkpoint))  # a cost of this run, none from scratch
            continue
        if record.run_id is not None and (record.asset, record.run_id) in seen:
            continue
        seen.add((record.asset, record.run_id))
        (evaluations if stage == EVALUATION else parts).append(cost)
    evaluation = total(evaluations, EVALUATION) if evaluations else None
    return PipelineCost(tuple(parts), reference, evaluation, tuple(missing), tuple(dict.fromkeys(unknown)))


# What each method of the method benchmark needs beyond the pool, as a function of the pipeline's
# recorded cost: the influence methods score from the pipeline's own gradients.
ZERO_COST_METHODS = frozenset({"full", "random", "oracle", "bm25", "dsir"})  # no pass of the model
# The benchmark's methods that score at some of the checkpoints only (indices into the base model and
# the warm-up's checkpoints, in order): what each checkpoint adds to the selection, against its cost.
CHECKPOINTS_USED = {
    "drift_base": (0,),
    "influence": (0,),
    "drift_last": (0, -1),
}


def method_cost(
    method: str, pipeline: PipelineCost, pool_tokens: int, validation_tokens: int, base_checkpoint: str = "base"
) -> StageCost | None:
    """The compute a data-selection method needs to choose its examples (None: not known here).

    ``pool_tokens``: the pool's sequence tokens (prompt + response); ``validation_tokens``: the
    validation queries' (prompt + reference response). DRIFT and its ablations need the pipeline:
    rollouts, the warm-up and the gradients at every checkpoint (``drift_base`` at the base
    checkpoint alone, without the warm-up; ``drift_last`` the warm-up and the rollouts and
    gradients at its checkpoints); ``offpolicy``, ``less`` and ``less_round_robin``
    (influence on the reference answers) the same without rollouts, and ``dynamics`` too (it reads
    the losses the gradient pass stores; a forward pass at each checkpoint would do); ``influence``
    the gradients at the base checkpoint; ``loss`` and ``grape`` one forward pass over the pool,
    ``self_distill`` about as much (greedy answers to the pool's prompts); ``rds`` one over the pool
    and the validation queries; ``full``, ``random``, ``oracle``, ``bm25`` and ``dsir`` none.
    A method added to the benchmark is added here too (a test keeps the two lists equal).
    """
    if method in ZERO_COST_METHODS:
        return StageCost(method, 0)
    if method in ("loss", "grape", "self_distill"):
        return StageCost(method, pool_tokens)
    if method == "rds":
        return StageCost(method, pool_tokens + validation_tokens)
    if method in ("offpolicy", "less", "less_round_robin", "dynamics"):
        return _stages(pipeline, method, [(WARMUP, None), (GRADIENTS, None)])
    if method == "influence":
        return _stages(pipeline, method, [(GRADIENTS, [base_checkpoint])])
    if method in CHECKPOINTS_USED:
        scored = sorted(pipeline.checkpoints(), key=lambda name: (name != base_checkpoint, name))  # steps zero-padded
        used = {scored[index % len(scored)] for index in CHECKPOINTS_USED[method]} if scored else {base_checkpoint}
        warmup = [(WARMUP, None)] if used - {base_checkpoint} else []  # the base model alone needs no run
        return _stages(pipeline, method, [*warmup, (ROLLOUTS, used), (GRADIENTS, used)])
    if method == "drift" or method.startswith("drift_"):
        return _stages(pipeline, method, [(stage, None) for stage in PIPELINE_STAGES])
    return None


def _stages(pipeline: PipelineCost, method: str, needs: list[tuple[str, Iterable[str] | None]]) -> StageCost | None:
    """The stages a method needs (each at some checkpoints, or all), summed; None where one's cost is not known."""
    if not all(pipeline.known(stage, checkpoints) for stage, checkpoints in needs):
        return None
    return total([pipeline.stage(stage, checkpoints) for stage, checkpoints in needs], method)


def method_costs(
    methods: Iterable[str], pipeline: PipelineCost, pool_tokens: int, validation_tokens: int, base_checkpoint: str = "base"
) -> dict[str, float | None]:
    """Each method's :func:`method_cost` as a multiple of one full-pool SFT run (None: not known)."""
    costs = {}
    for method in methods:
        cost = method_cost(method, pipeline, pool_tokens, validation_tokens, base_checkpoint)
        ratio = None if cost is None else cost.ratio(pipeline.reference)
        costs[method] = None if ratio is None else round(ratio, 4)
    return costs


# The roofline: what a device could do at best. Dense bfloat16 tensor-core peaks (no sparsity) from
# the vendors' data sheets, by the name torch reports; the first pattern found in the name wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bGH200\b", 989.0),
    (r"\bH200 NVL\b", 835.0),
    (r"\bH200\b", 989.0),
    (r"\bH100 PCIe\b", 756.0),
    (r"\bH100 NVL\b", 835.0),
    (r"\bH100\b", 989.0),  # SXM (HBM3)
    (r"\bB200\b", 2250.0),
    (r"\bA100\b", 312.0),
    (r"\bL40S\b", 362.0),
    (r"\bL40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
)
EXAMPLE_TOKENS = 512  # the field's unit: examples of 512 tokens


def peak_bf16_flops(device_name: str) -> float | None:
    """The device's dense bfloat16 peak in FLOP/s from :data:`PEAK_BF16_TFLOPS` (None: not listed)."""
    return next((tflops * 1e12 for pattern, tflops in PEAK_BF16_TFLOPS if re.search(pattern, device_name)), None)


def examples_per_hour(tokens_per_second: float, example_tokens: int = EXAMPLE_TOKENS) -> float:
    """Examples of ``example_tokens`` tokens per device-hour at ``tokens_per_second``."""
    return tokens_per_second * 3600.0 / example_tokens


def bound_share(tokens_per_second: float, n_parameters: int, peak_flops: float) -> float:
    """The share of the device's 6N bound (6N FLOPs per token, a training step's) that the rate reaches."""
    return tokens_per_second * 6.0 * n_parameters / peak_flops


def scaled_to(rate: float, n_measured: int, n_target: float = 7e9) -> float:
    """A throughput measured at ``n_measured`` parameters projected to ``n_target`` by parameter count
    (the FLOPs per token grow as N; the share of the bound stays the same)."""
    return rate * n_measured / n_target
