"""What every embedded task is: a problem generator, a grader, noise of its own kinds, a tiny model.

A task draws problems from its own space, split by a hash of the problem into validation (and
calibration), test and training problems, so that test accuracy measures what transfers to
problems the pool never shows. From the training problems it writes a pre-training corpus (all
correct) and an SFT pool that mixes correct rows with noise, each row flagged with its
``category``, a hidden ``is_corrupted`` and the row's hidden ``reference_answer`` (what the grader
compares with; null for an off-task row), which only evaluation reads and no export carries:

- ``corrupted``: a near miss, the right format with a wrong answer a careless annotator would write;
- ``off_task``: a row about something else;
- ``format``: the right answer in a format the task's grader does not accept.

Every generator draws from its own seeded stream, so asking for more test queries never changes
the pool.
"""

from __future__ import annotations

import itertools
import random
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import cache

from drift_assets.core.grading.graders import GradingOptions
from drift_assets.tasks.demo_task import SPLIT_BOUNDS, split_of_key
from drift_assets.tasks.tiny_model import ChatTemplate, TinyLlamaShape

NOISE_KINDS = ("corrupted", "off_task", "format")


@dataclass(frozen=True)
class PretrainRecipe:
    """How the task's base model is trained from scratch (and, for ``continued_sft_steps``, then
    fine-tuned on its own pool, as the paper's already-SFT-trained models are)."""

    examples: int = 6000
    target_accuracy: tuple[float, float] = (0.3, 0.7)
    max_steps: int = 3000
    learning_rate: float = 2e-3
    shape: TinyLlamaShape = field(default_factory=TinyLlamaShape)
    continued_sft_steps: int = 0
    continued_sft_learning_rate: float = 1e-3

    def with_width(self, width: int) -> PretrainRecipe:
        """This recipe at hidden size ``width`` (``demo.hidden_size``): heads of 64, an MLP three times as wide."""
        return replace(self, shape=replace(self.shape, hidden_size=width, num_heads=width // 64, intermediate_size=3 * width))


def worked_task_recipe(max_positions: int, max_steps: int = 3000) -> PretrainRecipe:
    """The pre-training of the tasks whose responses may show their working: 6,000 examples, the band
    (0.3, 0.6), ``max_positions`` positions."""
    return PretrainRecipe(
        examples=6000, target_accuracy=(0.3, 0.6), max_steps=max_steps, shape=TinyLlamaShape(max_positions=max_positions)
    )


def string_task_recipe(narrow: bool = False) -> PretrainRecipe:
    """The string tasks' pre-training (runs, interleave, unique, position, rotate, reverse, remove,
    swap): 6,000 examples, the band (0.3, 0.6), at most 6,000 steps, 96 positions and an MLP of 192
    where the other tasks' is 384; ``narrow``: 64 wide with one head of 64 (vLLM's CPU attention needs
    heads of 64). Both keep the pins under the pins test's limit in all."""
    shape = TinyLlamaShape(intermediate_size=192, max_positions=96)
    if narrow:
        shape = TinyLlamaShape(hidden_size=64, num_heads=1, intermediate_size=192, max_positions=96)
    return PretrainRecipe(examples=6000, target_accuracy=(0.3, 0.6), max_steps=6000, shape=shape)


# Draws for one new distinct pool row before the task's space counts as used up.
MAX_DRAWS = 10_000


@dataclass(frozen=True)
class TaskDefaults:
    """The demo settings a task uses unless the settings file gives others."""

    n_train: int = 2400
    noise: dict[str, float] = field(default_factory=lambda: {"corrupted": 0.25, "off_task": 0.08})
    selection_fraction: float = 0.5
    # benchmark.sft for the task: the method benchmark's fine-tunes (batch 16), short enough for 2 cores
    sft: dict = field(default_factory=lambda: {"steps": 300})


# The demo settings of the tasks with a 2,000-row pool (the string tasks, binary, brackets, roman; count,
# digits, shift, choice and sort with noise of their own): a fifth of it near misses, half of it
# selected, 150 SFT steps.
SMALL_POOL_DEFAULTS = TaskDefaults(
    n_train=2000, noise={"corrupted": 0.2, "format": 0.06, "off_task": 0.08}, selection_fraction=0.5, sft={"steps": 150}
)


class Task(ABC):
    """One embedded task. Subclasses define the problem space and the text of every row kind."""

    name: str
    description: str
    grader: str = "exact"  # the grader every query of the task names
    answer_marker: str = ""  # what precedes the final answer ("" = the responses have none)
    chat_template: ChatTemplate = "none"  # how the task's tokenizer renders prompts (tasks.tiny_model)
    held_out: bool = False  # kept out of every choice of default; reported on its own
    recipe: PretrainRecipe = PretrainRecipe()
    defaults: TaskDefaults = TaskDefaults()
    # Which half of half_worked's draw shows the working: the one below 0.5, or (brackets, choice,
    # count, digits, roman, shift) the one from 0.5 up; the same share either way, but each task's
    # pools and pinned model were drawn with its own.
    working_below_half: bool = True

    # -- the problem space ----------------------------------------------------------------------
    @abstractmethod
    def draw_any(self, rng: random.Random) -> Hashable:
        """A problem from the whole space (any split)."""

    def problem_key(self, problem: Hashable) -> str:
        """The text the split hash is taken of: the task's name and the problem."""
        return f"{self.name}:{problem}"

    @abstractmethod
    def prompt(self, problem: Hashable) -> str:
        """The user's message."""

    @abstractmethod
    def reference(self, problem: Hashable) -> str:
        """The answer the grader compares with."""

    @abstractmethod
    def correct_response(self, problem: Hashable, rng: random.Random) -> str:
        """A correct response, in one of the task's styles."""

    def reference_response(self, problem: Hashable) -> str:
        """The worked reference of a query: the off-policy (LESS-style) target; the reference after
        the answer marker, where the task has one."""
        reference = self.reference(problem)
        return f"{self.answer_marker} {reference}" if self.answer_marker else reference

    def every_problem(self) -> Iterable[Hashable] | None:
        """The task's whole problem space, where it is small enough to walk (None: it is not)."""
        return None

    def problems_in(self, split: str) -> int | None:
        """How many distinct problems ``split`` holds, counted once over :meth:`every_problem` (None:
        the task does not list its space)."""
        return None if self.every_problem() is None else _split_sizes(self)[split]

    def half_worked(self, steps: Iterable[object], answer: object, rng: random.Random) -> str:
        """``<answer_marker> <answer>``, half the time after its working: the ``steps`` space-separated
        and a full stop (one draw of ``rng`` either way)."""
        if (rng.random() < 0.5) == self.working_below_half:
            return f"{' '.join(map(str, steps))}. {self.answer_marker} {answer}"
        return f"{self.answer_marker} {answer}"

    # -- noise ---------------------------------------------------------------------------------
    def corrupted_response(self, problem: Hashable, rng: random.Random) -> str:
        raise NotImplementedError(f"the {self.name} task has no near-miss noise")

    def format_response(self, problem: Hashable, rng: random.Random) -> str:
        raise NotImplementedError(f"the {self.name} task has no format noise")

    def off_task_row(self, rng: random.Random) -> tuple[str, str]:
        raise NotImplementedError(f"the {self.name} task has no off-task noise")

    def noise_problem(self, kind: str, rng: random.Random) -> Hashable:
        """The training problem a noisy row of ``kind`` is about: the first drawn that
        :meth:`shows_noise` accepts."""
        while True:
            problem = self.draw(rng)
            if self.shows_noise(kind, problem):
                return problem

    def shows_noise(self, kind: str, problem: Hashable) -> bool:
        """Whether a row of ``kind`` about ``problem`` is noise: every problem, unless on some the noisy
        response would be right (a near miss) or look like a correct one (a format row)."""
        return True

    def noise_kinds(self) -> tuple[str, ...]:
        """The kinds of noise this task can write (those whose hook it defines)."""
        hooks = {"corrupted": "corrupted_response", "off_task": "off_task_row", "format": "format_response"}
        return tuple(kind for kind, hook in hooks.items() if getattr(type(self), hook) is not getattr(Task, hook))

    # -- derived -----------------------------------------------------------------------------------
    def grading_options(self) -> GradingOptions:
        return GradingOptions(answer_marker=self.answer_marker)

    def split_of(self, problem: Hashable) -> str:
        """ "train", "test" or "validation" (which calibration shares), fixed by the problem's hash."""
        return split_of_key(self.problem_key(problem))

    def draw(self, rng: random.Random, split: str = "train") -> Hashable:
        """A problem of ``split`` (rejection sampling over the whole space)."""
        if split not in SPLIT_BOUNDS:
            raise ValueError(f"unknown demo split {split!r} (known: {sorted(SPLIT_BOUNDS)})")
        target = "validation" if split == "calibration" else split
        while True:
            problem = self.draw_any(rng)
            if self.split_of(problem) == target:
                return problem

    def pretraining_problem(self, rng: random.Random) -> Hashable:
        """A problem for the base model's pre-training corpus: a training problem, unless the task
        keeps part of its space (a skill the base model lacks) out of pre-training."""
        return self.draw(rng)

    def pretraining_corpus(self, n_examples: int, seed: int) -> list[tuple[str, str]]:
        """Correct (prompt, response) pairs for training the base model."""
        rng = random.Random(f"pretrain-{seed}")
        corpus = []
        for _ in range(n_examples):
            problem = self.pretraining_problem(rng)
            corpus.append((self.prompt(problem), self.correct_response(problem, rng)))
        return corpus

    def training_pool_rows(self, n_examples: int, noise: dict[str, float], seed: int) -> list[dict]:
        """SFT pool rows: ``prompt``, ``response``, ``category``, ``is_corrupted`` (true for every kind of
        noise) and ``reference_answer`` (the problem's reference answer; None for an off-task row)."""
        unknown = set(noise) - set(NOISE_KINDS)
        if unknown:
            raise ValueError(f"unknown noise kinds {sorted(unknown)} (known: {NOISE_KINDS})")
        rng = random.Random(f"pool-{seed}")
        categories: list[str] = []
        for kind in NOISE_KINDS:  # a fixed order, so the same shares give the same pool
            categories += [kind] * round(n_examples * noise.get(kind, 0.0))
        categories += ["correct"] * (n_examples - len(categories))
        rng.shuffle(categories)
        rows, seen = [], set()
        for category in categories:
            for _ in range(MAX_DRAWS):  # distinct examples: exact duplicates would only be quarantined downstream
                reference = None
                if category == "off_task":
                    prompt, response = self.off_task_row(rng)
                else:
                    problem = self.draw(rng) if category == "correct" else self.noise_problem(category, rng)
                    prompt, reference = self.prompt(problem), self.reference(problem)
                    response = {
                        "correct": self.correct_response,
                        "corrupted": self.corrupted_response,
                        "format": self.format_response,
                    }[category](problem, rng)
                if (prompt, response) not in seen:
                    break
            else:
                raise ValueError(
                    f"the {self.name} task ran out of distinct {category} rows after {len(rows)} of {n_examples}: "
                    "lower demo.n_train or that kind of noise's share"
                )
            seen.add((prompt, response))
            rows.append(
                {
                    "prompt": prompt,
                    "response": response,
                    "category": category,
                    "is_corrupted": category != "correct",
                    "reference_answer": reference,
                }
            )
        return rows

    def query_rows(self, n_queries: int, seed: int, split: str) -> list[dict]:
        """Distinct queries: ``query_id``, ``prompt``, ``reference``, ``reference_response``, ``grader``."""
        available = self.problems_in("validation" if split == "calibration" else split)
        if available is not None and n_queries > available:
            raise ValueError(
                f"the {self.name} task's {split} split has {available} distinct problems; cannot draw {n_queries} queries"
            )
        rng = random.Random(f"{split}-{seed}")
        seen: set = set()
        rows = []
        while len(rows) < n_queries:
            problem = self.draw(rng, split)
            if problem in seen:
                continue
            seen.add(problem)
            rows.append(
                {
                    "query_id": f"{split}-{len(rows):04d}",
                    "prompt": self.prompt(problem),
                    "reference": self.reference(problem),
                    "reference_response": self.reference_response(problem),
                    "grader": self.grader,
                }
            )
        return rows


class WrongRuleTask(Task):
    """A task whose near misses follow one consistent wrong rule (the harmful kind of noise), shown with
    the same kind of working as its right answers: :meth:`working` gives both, the reference is the
    right working's answer, and half of either kind of response shows its steps (:meth:`Task.half_worked`)."""

    @abstractmethod
    def working(self, problem: Hashable, wrong: bool) -> tuple[Iterable[object], object]:
        """The steps of the working and the answer they end in, by the task's rule or (``wrong``) by the
        near misses' wrong one."""

    def reference(self, problem: Hashable) -> str:
        return str(self.working(problem, wrong=False)[1])

    def correct_response(self, problem: Hashable, rng: random.Random) -> str:
        return self.half_worked(*self.working(problem, wrong=False), rng)

    def corrupted_response(self, problem: Hashable, rng: random.Random) -> str:
        return self.half_worked(*self.working(problem, wrong=True), rng)


class LetterStringTask(Task):
    """A task about a string of ``alphabet``'s letters, as long as one of ``lengths`` (each length as
    likely), its letters all different (``distinct``) or each drawn on its own. A problem is the string,
    or the string and what the prompt adds to it (a letter, a number of places); the split is taken of
    the string alone, so that a validation or test string is never seen in training. The format noise:
    the right answer's letters with ``format_separator`` between them."""

    alphabet: str
    lengths: tuple[int, ...]
    distinct: bool = True
    format_separator: str

    def draw_string(self, rng: random.Random) -> str:
        length = rng.choice(self.lengths)
        if self.distinct:
            return "".join(rng.sample(self.alphabet, length))
        return "".join(rng.choice(self.alphabet) for _ in range(length))

    def every_string(self) -> Iterator[str]:
        """Every string :meth:`draw_string` may give, the shorter first."""
        for length in self.lengths:
            if self.distinct:
                yield from map("".join, itertools.permutations(self.alphabet, length))
            else:
                yield from map("".join, itertools.product(self.alphabet, repeat=length))

    def draw_any(self, rng: random.Random) -> Hashable:
        return self.draw_string(rng)

    def every_problem(self) -> Iterable[Hashable]:
        return self.every_string()

    def string_of(self, problem: Hashable) -> str:
        """The string ``problem`` is about: the problem itself, or the first of its parts."""
        return problem if isinstance(problem, str) else problem[0]

    def problem_key(self, problem: Hashable) -> str:
        return super().problem_key(self.string_of(problem))

    def format_response(self, problem: Hashable, rng: random.Random) -> str:
        return f"{self.answer_marker} {self.format_separator.join(self.reference(problem))}"

    def off_task_row(self, rng: random.Random) -> tuple[str, str]:
        # About a training string: the pool never shows a validation or test string.
        return self.question_about(self.string_of(self.draw(rng)))

    def question_about(self, text: str) -> tuple[str, str]:
        """The off-task noise: another question about ``text`` and its correct answer (prompt, response)."""
        raise NotImplementedError(f"the {self.name} task asks nothing else about a string")


class NumeralTask(Task):
    """A task that writes a number from 1 to ``largest`` (each as likely) in another notation, its
    reference; the off-task noise asks the way back, the value of a training number's numeral, so
    that the pool never shows a test numeral."""

    largest: int

    def draw_any(self, rng: random.Random) -> int:
        return rng.randint(1, self.largest)

    def every_problem(self) -> range:
        return range(1, self.largest + 1)

    def off_task_row(self, rng: random.Random) -> tuple[str, str]:
        number = self.draw(rng)
        return f"Value of {self.reference(number)}\n", f"Value: {number}"


@cache
def _split_sizes(task: Task) -> dict[str, int]:
    """How many of the task's problems fall in each split (its space walked once per process)."""
    sizes = {"validation": 0, "test": 0, "train": 0}
    for problem in task.every_problem():
        sizes[split_of_key(task.problem_key(problem))] += 1
    return sizes
