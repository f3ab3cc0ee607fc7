"""What a run costs, in passes of the model over tokens, set against one fine-tune on the full pool.

A forward pass of an N-parameter model over one token costs about 2N FLOPs and its backward pass
about 4N (the 6N of a training step). Costs here are counted in *token passes*: a forward pass over
one token is 1, a backward pass 2, so a training step over a token is 3 and stages of different
kinds add up. Generation is a forward pass per prompt token (once per query: the samples of a
query share its prefill, as vLLM's prefix caching and transformers' batched ``generate`` both
reuse it for the continuation) and per generated token. The reference is one SFT run on the whole
pool with the recipe the pipeline evaluates with (``benchmark.sft``): its optimizer steps times its
batch size times the pool's mean example length, forward and backward.

Scoring (matrix products over projected gradients) and grading cost no pass of the model: their
wall seconds are reported, not token passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

FORWARD, BACKWARD = 1, 2  # token passes of a forward and of a backward pass over one token


@dataclass(frozen=True)
class StageCost:
    """One stage's passes over tokens: ``forward_tokens`` tokens went through a forward pass, of which
    ``backward_tokens`` also through a backward pass."""

    stage: str
    forward_tokens: int
    backward_tokens: int = 0
    wall_seconds: float | None = None

    @property
    def token_passes(self) -> int:
        return FORWARD * self.forward_tokens + BACKWARD * self.backward_tokens

    def flops(self, n_parameters: int) -> float:
        """2N FLOPs per token pass."""
        return 2.0 * n_parameters * self.token_passes

    def metadata(self, reference: StageCost | None = None) -> dict[str, float | int]:
        """What an asset's metadata shows of it (with the ratio to ``reference`` where given)."""
        figures: dict[str, float | int] = {
            "cost_forward_tokens": self.forward_tokens,
            "cost_backward_tokens": self.backward_tokens,
            "cost_token_passes": self.token_passes,
        }
        if reference is not None and reference.token_passes:
            figures["cost_vs_full_sft"] = round(self.token_passes / reference.token_passes, 4)
        return figures


def training_cost(stage: str, example_tokens: Sequence[int], steps: int, batch_size: int, wall_seconds=None) -> StageCost:
    """``steps`` optimizer steps of ``batch_size`` examples drawn from ``example_tokens`` (prompt +
    response tokens each): the expected tokens are steps × batch × the mean length."""
    if not example_tokens:
        return StageCost(stage, 0, 0, wall_seconds)
    per_batch = min(batch_size, len(example_tokens)) * sum(example_tokens) / len(example_tokens)
    tokens = round(steps * per_batch)
    return StageCost(stage, tokens, tokens, wall_seconds)


def gradient_pass_cost(stage: str, sequence_tokens: Iterable[int], wall_seconds=None) -> StageCost:
    """A forward and backward pass over each sequence once (per-example gradients, a PCA fit)."""
    tokens = int(sum(sequence_tokens))
    return StageCost(stage, tokens, tokens, wall_seconds)


def generation_cost(stage: str, prompt_tokens: Iterable[int], generated_tokens: Iterable[int], wall_seconds=None) -> StageCost:
    """Prefill of each prompt once and a forward step per generated token."""
    return StageCost(stage, int(sum(prompt_tokens)) + int(sum(generated_tokens)), 0, wall_seconds)


def total(stages: Iterable[StageCost], stage: str = "total") -> StageCost:
    stages = list(stages)
    seconds = [cost.wall_seconds for cost in stages if cost.wall_seconds is not None]
    return StageCost(
        stage,
        sum(cost.forward_tokens for cost in stages),
        sum(cost.backward_tokens for cost in stages),
        sum(seconds) if seconds else None,
    )


def cost_line(stages: Sequence[StageCost], reference: StageCost) -> str:
    """One line: the total in token passes, its ratio to the reference, and the split by stage."""
    whole = total(stages)
    ratio = whole.token_passes / reference.token_passes if reference.token_passes else float("nan")
    parts = ", ".join(f"{cost.stage} {cost.token_passes / reference.token_passes:.2f}×" for cost in stages if cost.token_passes)
    return f"{whole.token_passes:,} token passes, {ratio:.2f}× one full-pool SFT run ({parts})"
