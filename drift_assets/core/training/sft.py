"""Supervised fine-tuning on a selection, and evaluating the result on held-out queries.

The loop is deliberately plain torch: response-only loss (prompt and padding masked, the same
encoding as the gradients), AdamW with the learning rate decayed linearly to 0 (transformers'
Trainer default; a constant rate leaves the model wherever the last noisy steps put it, which
spreads one method's accuracy widely across seeds), a fixed number of optimizer steps whatever
the selection's size, so that methods compared with it differ only in their data. A seed fixes the example order
and the result, whatever order the examples come in (a table read back in another row order
trains the same model). Batches are common random numbers: which batch of an epoch an example
joins depends only on the seed, the epoch and the example itself (:func:`batch_plan`), so two
selections that share rows train those rows in the same batches, and the comparison of two
selections is not drowned by two unrelated batch orders. It runs on whatever device the model is on.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from drift_assets.core.data.sequences import accumulated_training_step, collate_pairs
from drift_assets.core.generation.engines import SamplingSettings, check_prompt_lengths
from drift_assets.core.gradients.memory import ModelShape, training_plan
from drift_assets.core.gradients.projection import available_memory
from drift_assets.core.gradients.tables import pool_token_pairs, query_token_pairs
from drift_assets.core.grading.graders import GradingOptions, grade_answer
from drift_assets.core.runtime.progress import PROGRESS_EVERY_S, Progress
from drift_assets.core.study.stats import wilson_interval

Schedule = Literal["linear", "constant"]
logger = logging.getLogger(__name__)


# torch's CPU kernels split their sums by thread, so a fine-tune's result depends on the thread count:
# every fine-tune on the CPU runs with this many, whatever the machine's cores (the figures of the
# suite and the demo then do not depend on where they ran). Parallelism comes from processes
# (``run_fine_tunes``' workers) instead.
FINE_TUNE_CPU_THREADS = 1


@contextmanager
def fixed_cpu_threads(device: str, threads: int = FINE_TUNE_CPU_THREADS) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for work on the CPU (restored after)."""
    if not device.startswith("cpu"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class SftOptions:
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    schedule: Schedule = "linear"
    seed: int = 0
    epochs: float | None = None  # passes over the examples instead of ``steps``
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (memory for time)
    group_by_length: bool = False  # batches of similar lengths (less padding), as transformers' Trainer offers

    def __post_init__(self):
        if self.schedule not in ("linear", "constant"):
            raise ValueError(f"benchmark.sft.schedule must be 'linear' or 'constant' (got {self.schedule!r})")

    def steps_for(self, n_examples: int) -> int:
        """The optimizer steps on ``n_examples``: ``steps``, or ``epochs`` passes at ``batch_size``."""
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * n_examples / self.batch_size))


def fine_tune(
    model,
    tokenizer,
    messages_json: Sequence[str],
    options: SftOptions = SftOptions(),
    log: Callable[[str], None] = logger.info,
    after_step: Callable[[int, float, SftStep], None] | None = None,
) -> SftRun:
    """Fine-tune ``model`` in place on chat-message examples; returns every step's loss. On the CPU
    it runs with :data:`FINE_TUNE_CPU_THREADS` threads (the result does not depend on the machine).

    ``after_step(step, loss, state)`` runs after every optimizer step, with ``model`` holding that
    step's weights and ``state`` the optimizer's (the warm-up saves checkpoints there).

    A bfloat16 or float16 model trains float32 master weights (under bfloat16 autocast where the
    model is bfloat16) that are written back in its own dtype: an optimizer step applied to 16-bit
    weights rounds away every update smaller than their resolution, which at the learning rates
    used for real models is most of them. Only parameters that require gradients train: a model
    with a LoRA adapter (:func:`~drift_assets.core.training.adapters.add_adapter`) trains the adapter, whose
    weights PEFT keeps in float32 already, so no copy of the frozen weights is made.
    """
    if not messages_json:
        raise ValueError("cannot fine-tune on an empty selection")
    with fixed_cpu_threads(str(next(model.parameters()).device)):
        return _fine_tune(model, tokenizer, messages_json, options, log, after_step)


def _fine_tune(model, tokenizer, messages_json, options, log, after_step) -> SftRun:
    options = replace(options, steps=options.steps_for(len(messages_json)), epochs=None)
    torch.manual_seed(options.seed)
    prompts, responses = pool_token_pairs(tokenizer, list(messages_json))
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    lengths = [len(prompt) + len(response) for prompt, response in zip(prompts, responses)]
    longest = max(lengths)
    shape = ModelShape.of(model)
    plan = training_plan(shape, min(options.batch_size, len(prompts)), longest, checkpointing=options.gradient_checkpointing)
    log(plan.describe())
    plan.check(
        available_memory(device),
        str(device),
        "Lower the SFT batch size (benchmark.sft.batch_size, warmup.batch_size), train a LoRA adapter in the warm-up "
        "(warmup.lora), or cap data.max_example_tokens.",
    )
    trained = copy.deepcopy(model).float() if shape.master_weights else model
    autocast_dtype = torch.bfloat16 if dtype == torch.bfloat16 else None

    def write_back() -> None:
        if trained is not model:
            with torch.no_grad():
                for weights, master in zip(model.parameters(), trained.parameters(), strict=True):
                    weights.copy_(master)

    trainable = [weights for weights in trained.parameters() if weights.requires_grad]
    trainable_names = [name for name, weights in trained.named_parameters() if weights.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=options.weight_decay)
    decay = (lambda step: 1.0 - step / options.steps) if options.schedule == "linear" else (lambda step: 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    trained.train()
    if options.gradient_checkpointing:
        # Non-reentrant: gradients reach a LoRA adapter behind frozen layers without input grads.
        trained.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    losses: list[float] = []
    tokens = 0  # the sequences' own tokens trained on (padding left out): what core.runtime.cost counts
    progress = Progress("sft", options.steps, log, "steps", every_s=PROGRESS_EVERY_S)
    plan = batch_plan(messages_json, options.batch_size, options.seed, lengths if options.group_by_length else None)
    for step, chosen in zip(range(1, options.steps + 1), plan):
        # A batch larger than batch_size is one optimizer step over micro-batches of at most that size.
        micro = [chosen[start : start + options.batch_size] for start in range(0, len(chosen), options.batch_size)]
        batches = [
            collate_pairs(tokenizer, [prompts[i] for i in part], [responses[i] for i in part]).to(device) for part in micro
        ]
        loss = accumulated_training_step(trained, optimizer, batches, autocast_dtype)
        tokens += sum(lengths[i] for i in chosen)
        scheduler.step()
        losses.append(loss)
        progress.update(step, options.steps, f"loss {loss:.4f}")
        if after_step is not None:
            write_back()
            after_step(step, loss, SftStep(options.learning_rate * decay(step - 1), optimizer, trainable_names))
    write_back()
    if options.gradient_checkpointing:
        trained.gradient_checkpointing_disable()
    model.eval()
    return SftRun(losses, tokens)


def example_key(seed: int, epoch: int, example: str) -> float:
    """A uniform draw in [0, 1) that depends only on the seed, the epoch and the example's content."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{example}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def batch_plan(examples: Sequence[str], batch_size: int, seed: int, lengths: Sequence[int] | None = None) -> Iterator[list[int]]:
    """The batches of a fine-tune, epoch after epoch, as indices into ``examples`` (endless).

    Each epoch has B = ⌈n / batch_size⌉ batches; example i joins batch ⌊B·u_i⌋ with u_i =
    :func:`example_key` (seed, epoch, example), and the batches come in order (empty ones skipped).
    So which batch an example trains in depends on nothing but itself, the seed and B: two
    selections of the same size (or whose B is the same) that share rows train those rows in the
    same batches and the same steps, differing only where their rows differ (common random numbers
    for comparing selections). Batch sizes vary around ``batch_size`` (binomially).

    ``lengths`` (group by length): instead, each run of 50 batches of the epoch's keyed order is
    sorted by length and cut into batches of exactly ``batch_size`` (less padding; no common batches).
    """
    n = len(examples)
    batches_per_epoch = max(1, math.ceil(n / batch_size))
    epoch = 0
    while True:
        keys = [example_key(seed, epoch, example) for example in examples]
        if lengths is not None:
            order = length_grouped(sorted(range(n), key=lambda i: (keys[i], examples[i])), lengths, batch_size)
            yield from (order[start : start + batch_size] for start in range(0, n, batch_size))
        else:
            buckets: list[list[int]] = [[] for _ in range(batches_per_epoch)]
            for index in sorted(range(n), key=lambda i: (keys[i], examples[i])):
                buckets[int(keys[index] * batches_per_epoch)].append(index)
            yield from (bucket for bucket in buckets if bucket)
        epoch += 1


def length_grouped(permutation: list[int], lengths: Sequence[int], batch_size: int) -> list[int]:
    """``permutation`` with each run of 50 batches sorted by length, so that the batches taken from
    it in turn hold examples of similar length (transformers' ``group_by_length``): less padding,
    while which examples come early stays random."""
    size = 50 * batch_size
    grouped: list[int] = []
    for start in range(0, len(permutation), size):
        grouped += sorted(permutation[start : start + size], key=lambda index: lengths[index])
    return grouped


@dataclass(frozen=True)
class SftStep:
    """The optimizer after one step: the rate that step took, and AdamW's moments on demand."""

    learning_rate: float
    optimizer: torch.optim.Optimizer
    names: list[str]  # the trainable parameters' names, in the optimizer's order

    def adam_moments(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """name -> (exp_avg, exp_avg_sq), float32 copies on the CPU: AdamW's first and second moments."""
        weights = [w for group in self.optimizer.param_groups for w in group["params"]]
        moments = {}
        for name, parameter in zip(self.names, weights, strict=True):
            state = self.optimizer.state[parameter]
            moments[name] = tuple(state[key].detach().float().cpu().clone() for key in ("exp_avg", "exp_avg_sq"))
        return moments


@dataclass(frozen=True)
class SftRun:
    losses: list[float]  # one per optimizer step
    tokens: int = 0  # prompt + response tokens of every example of every step


@dataclass
class Evaluation:
    correct: int
    total: int
    answers: list[str] = field(default_factory=list)  # the greedy completions, in query order
    train_losses: list[float] = field(default_factory=list)  # the fine-tune's, where the model was fine-tuned
    train_tokens: int = 0  # the fine-tune's tokens (SftRun.tokens)
    prompt_tokens: int = 0  # the test queries' prompts, each once
    generated_tokens: int = 0
    # The same model's greedy accuracy on the validation queries, where the job asked for it.
    validation: Evaluation | None = None

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total)


def evaluate(
    engine, tokenizer, queries: Sequence[dict], max_tokens: int, options: GradingOptions = GradingOptions()
) -> Evaluation:
    """Greedy accuracy on ``queries`` (prompt, reference, grader) through a rollout engine."""
    prompt_ids, _ = query_token_pairs(tokenizer, [q["prompt"] for q in queries], ["" for _ in queries])
    check_prompt_lengths(engine, prompt_ids, [q.get("query_id", f"query {i}") for i, q in enumerate(queries)], "test queries")
    report = engine.generate(prompt_ids, SamplingSettings(n=1, temperature=0.0, max_tokens=max_tokens))
    answers = [group[0].text for group in report.completions]
    correct = sum(
        grade_answer(answer, query["reference"], query["grader"], options).correct for query, answer in zip(queries, answers)
    )
    return Evaluation(
        correct, len(queries), answers, prompt_tokens=report.prompt_tokens, generated_tokens=report.generated_tokens
    )
