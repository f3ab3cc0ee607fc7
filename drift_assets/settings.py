"""One settings file for the whole pipeline, validated with pydantic.

The file is YAML (``data/settings.yaml`` by default; ``DRIFT_ASSETS_SETTINGS`` names another).
Relative paths in it are resolved against the directory that holds the file, so a settings file
and its data can move together.

Each stage is given only its part of the settings (:func:`given`), and an asset's
``code_version`` is its implementation version plus a hash of exactly the settings it is given
(:func:`code_version`), so changing ``selection.fraction`` makes ``refined_dataset`` stale and never ``rollouts``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drift_assets.core.attribution.influence import Debias, Hessian
from drift_assets.core.attribution.scores import Ranking, ScoringSettings, Targets, Unsolved
from drift_assets.core.attribution.selection import SelectionChoice, SelectionMethod
from drift_assets.core.data.sequences import LossReduction
from drift_assets.core.gradients.projection import Basis, ProjectionOptions
from drift_assets.core.grading.weighting import Weighting
from drift_assets.core.runtime.devices import check_device_pool
from drift_assets.core.study.benchmark import LESS_METHODS, METHODS
from drift_assets.core.training.adapters import VLLM_LORA_RANKS, LoraOptions
from drift_assets.core.training.sft import Schedule
from drift_assets.tasks import TASKS

_SCORING = ScoringSettings()  # the influence defaults, defined once in the core

SETTINGS_ENV_VAR = "DRIFT_ASSETS_SETTINGS"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SETTINGS_PATH = REPO_ROOT / "data" / "settings.yaml"


class SettingsError(ValueError):
    """A settings file that cannot be used; the message names the file and the key."""


class _Where:
    """Marks a setting that says where inputs live or how the work is laid out, not what is computed:
    Dagster observes the files it points at (a new pool or model makes its readers stale), and devices,
    batches and shards move the work, not its result. A group given whole is not versioned by it; an
    asset's code version hashes it only where the asset is given it by name."""


WHERE = _Where()


class derived(property):  # a decorator, as property is
    """A setting computed from others (``sources``): the settings reference says that changing any of
    them makes stale what is given the derived value."""

    def __init__(self, *sources: str):
        self.sources = sources

    def __call__(self, function) -> derived:
        super().__init__(function)
        return self


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Group):
    path: Annotated[str, WHERE] = Field(
        "demo/model", description="Hugging Face model directory (config.json + weights + tokenizer)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weights' dtype for rollouts, gradients and SFT (16-bit SFT keeps float32 master weights)"
    )
    device: Annotated[str, WHERE] = Field(
        "auto", description="'auto' picks CUDA when present, else CPU; or 'cpu', 'cuda', 'cuda:1'."
    )
    device_pool: Annotated[list[str], WHERE] = Field(
        [],
        description="Devices that runs side by side share, e.g. [cuda:0, cuda:1] (cpu:0, cpu:1 for CPU workers): each run "
        "leases a free one when it first places a model and keeps it to its end, instead of `device`; CPU workers "
        "split the process's threads (OMP_NUM_THREADS, else the cores it may use) between them. Limit the "
        "instance's 'gpu' pool to as many runs.",
    )

    @field_validator("device_pool")
    @classmethod
    def _device_labels(cls, pool: list[str]) -> list[str]:
        return check_device_pool(pool)


class DataSettings(_Group):
    training_pool: Annotated[str, WHERE] = Field(
        "demo/training_pool.jsonl", description="JSONL, Parquet, or a `datasets` dataset saved to disk."
    )
    validation_queries: Annotated[str, WHERE] = Field(
        "demo/validation_queries.jsonl", description="queries with a reference answer (and optionally a grader)"
    )
    test_queries: Annotated[str | None, WHERE] = Field(
        None, description="Held-out queries for evaluation (optional: without them there is no refined_model_evaluation)."
    )
    max_example_tokens: int | None = Field(
        None,
        ge=8,
        description="Examples longer than this (prompt + response) are quarantined; unset: the model's context "
        "(config.json's max_position_embeddings), which it may not exceed.",
    )


def s3_option_names() -> tuple[frozenset[str], frozenset[str]]:
    """The object-store options both of the warehouse's paths understand: dagster-deltalake's
    ``S3Config`` fields (its IO manager writes with them) and ``ClientConfig`` fields (``allow_http``
    for a local S3 API), which deltalake and polars read under the same names."""
    from dagster_deltalake.config import ClientConfig, S3Config

    return frozenset(S3Config.model_fields) - {"provider"}, frozenset(ClientConfig.model_fields)


# deltalake's spellings (AWS_ENDPOINT_URL, …) of S3Config's fields, lower-cased without "aws_".
_AWS_ALIASES = {"endpoint_url": "endpoint", "session_token": "token", "s3_allow_unsafe_rename": "allow_unsafe_rename"}
# The storage options that are credentials, and the environment variable deltalake reads each from.
CREDENTIAL_OPTIONS = {
    "access_key_id": "AWS_ACCESS_KEY_ID",
    "secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "token": "AWS_SESSION_TOKEN",
}


class WarehouseSettings(_Group):
    root: Annotated[str, WHERE] = Field("warehouse", description="Delta warehouse root: a local directory or an s3:// URI.")
    storage_options: Annotated[dict[str, str], WHERE] = Field(
        default_factory=dict,
        description="Object storage options for an s3:// root, dagster-deltalake's S3Config and ClientConfig field "
        "names (or their AWS_* spellings): region, endpoint (MinIO, R2, …), allow_http, allow_unsafe_rename, …. "
        "No credentials: the UI would show them; they come from the environment (AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or the machine's role.",
    )

    @field_validator("storage_options")
    @classmethod
    def _known_storage_options(cls, options: dict[str, str]) -> dict[str, str]:
        """The options under their S3Config/ClientConfig names (``AWS_REGION`` → ``region``, as
        deltalake also spells them); an option that is neither is refused, naming it."""
        s3, client = s3_option_names()
        named = {}
        for key, value in options.items():
            name = key.lower().removeprefix("aws_")
            name = _AWS_ALIASES.get(name, name)
            if name not in s3 | client:
                raise ValueError(
                    f"unknown option {key!r}: use dagster-deltalake's S3Config or ClientConfig field names "
                    f"({', '.join(sorted(s3 | client))}) or their AWS_* spellings"
                )
            if name in named:
                raise ValueError(f"{key!r} sets {name!r} a second time")
            # The options are resource config: the UI shows them and every run's record keeps them.
            # A credential is read from the environment instead, where deltalake looks when it is unset.
            if name in CREDENTIAL_OPTIONS:
                raise ValueError(
                    f"{key!r} is a credential, which the UI would show and every run would record: remove it and set "
                    f"the environment variable {CREDENTIAL_OPTIONS[name]} instead (read from there when unset)"
                )
            if re.match(r"^[a-z][a-z0-9+.-]*://[^/@]*:[^/@]*@", str(value), re.IGNORECASE):
                raise ValueError(
                    f"{key!r} holds a password in its URL, which the UI would show: pass the credentials through "
                    "the environment (AWS_* variables) instead"
                )
            named[name] = value
        return named

    @model_validator(mode="after")
    def _options_need_object_storage(self) -> WarehouseSettings:
        if self.storage_options and "://" not in self.root:
            raise ValueError(
                f"storage_options ({', '.join(sorted(self.storage_options))}) are for an object store, and warehouse.root "
                f"{self.root!r} is a local directory: remove them, or set an s3:// root"
            )
        return self


DEMO_TASKS = tuple(TASKS)


class DemoSettings(_Group):
    """The embedded demo: one of the generated tasks and its tiny base model. Unset sizes, noise
    shares and pre-training bounds take the task's own (``drift_assets.tasks``)."""

    enabled: bool = Field(
        False,
        description="Add the demo assets that generate the task data and train the tiny model (they write data.* and "
        "model.path, and refuse to overwrite files they did not write themselves).",
    )
    task: Literal[DEMO_TASKS] = Field("arithmetic", description=f"which generated task: {', '.join(DEMO_TASKS)}")
    seed: int = Field(0, description="generates the task's data (and, unless model_seed is set, its base model)")
    model_seed: int | None = Field(
        None,
        description="initializes the base model and draws its pre-training corpus (default: demo.seed); the suite's "
        "draws vary demo.seed and keep the pinned model of seed 0",
    )
    n_train: int | None = Field(None, ge=100, description="pool size (default: the task's)")
    n_validation: int = Field(48, ge=8, description="validation queries")
    n_test: int = Field(300, ge=50, description="held-out test queries")
    corrupted_fraction: float | None = Field(
        None, ge=0.0, lt=1.0, description="near-miss rows: a wrong answer in the right format"
    )
    off_task_fraction: float | None = Field(None, ge=0.0, lt=1.0, description="rows about something else")
    format_fraction: float | None = Field(None, ge=0.0, lt=1.0, description="the right answer in a format the grader rejects")
    pretrain_examples: int | None = Field(None, ge=100, description="Size of the base model's own pre-training corpus.")
    target_accuracy: tuple[float, float] | None = Field(
        None, description="Stop pre-training once greedy accuracy on a calibration set lands here."
    )
    max_pretrain_steps: int | None = Field(
        None, ge=100, description="pre-training stops at the target band or after this many steps (never on a clock: determinism)"
    )
    hidden_size: int | None = Field(
        None,
        ge=64,
        multiple_of=64,
        description="The base model's width (default: the task's): heads of 64 dimensions, the smallest vLLM's CPU "
        "attention takes, and an MLP three times as wide. A narrower model costs less per pre-training step.",
    )

    def spec(self):
        """The :class:`~drift_assets.tasks.Task` this demo generates."""
        from drift_assets.tasks import get_task

        return get_task(self.task)

    @property
    def base_model_seed(self) -> int:
        return self.seed if self.model_seed is None else self.model_seed

    def pool_size(self) -> int:
        return self.n_train if self.n_train is not None else self.spec().defaults.n_train

    def noise(self) -> dict[str, float]:
        """Share of the pool per kind of noise: the task's, with the shares set here replacing its own."""
        noise = dict(self.spec().defaults.noise)
        for kind, share in (
            ("corrupted", self.corrupted_fraction),
            ("off_task", self.off_task_fraction),
            ("format", self.format_fraction),
        ):
            if share is not None:
                noise[kind] = share
        return {kind: share for kind, share in noise.items() if share > 0}

    def recipe(self):
        """The task's pre-training recipe with the bounds set here."""
        from dataclasses import replace

        recipe = self.spec().recipe
        overrides = {
            "examples": self.pretrain_examples,
            "target_accuracy": self.target_accuracy,
            "max_steps": self.max_pretrain_steps,
        }
        recipe = replace(recipe, **{key: value for key, value in overrides.items() if value is not None})
        return recipe if self.hidden_size is None else recipe.with_width(self.hidden_size)

    @model_validator(mode="after")
    def _noise_the_task_has_and_room_for_clean_examples(self) -> DemoSettings:
        task = self.spec()
        noise = self.noise()
        for kind in set(noise) - set(task.noise_kinds()):
            raise ValueError(f"the {task.name} task has no {kind} noise: set demo.{kind}_fraction to 0")
        if sum(noise.values()) >= 1.0:
            raise ValueError(f"the noise shares {noise} must add up to less than 1")
        return self


class RolloutSettings(_Group):
    backend: Literal["auto", "vllm", "transformers"] = Field("auto", description="'auto' uses vLLM wherever it imports.")
    samples_per_query: int = Field(8, ge=1, description="rollouts per validation query")
    temperature: float = Field(1.0, ge=0.0, description="sampling temperature (1 = the model's own distribution)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling")
    max_tokens: int = Field(64, ge=1, description="longest completion, in tokens (rollouts and evaluation)")
    stop: list[str] = Field(default_factory=list, description="strings that end a completion early")
    seed: int = Field(0, description="each query samples with its own seed derived from this one")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM's tensor parallelism (GPUs per engine)")
    gpu_memory_utilization: float = Field(
        0.2,
        gt=0.0,
        le=1.0,
        description="GPU memory share vLLM may use. On CPU: the most host memory its KV cache may take (sized from the model for 256 full-length sequences).",
    )
    max_model_len: int | None = Field(
        None,
        ge=16,
        description="vLLM's context length; unset: the model's own (config.json's max_position_embeddings)",
    )
    engine_process: Annotated[Literal["auto", "separate", "same"], WHERE] = Field(
        "auto",
        description="Where vLLM's engine runs: 'separate' processes (vLLM's default; on a GPU its memory comes back "
        "whole when they exit), 'same' (the run's own process: no second start of Python and vLLM, so it starts "
        "much sooner), 'auto': separate on a GPU, same on the CPU. The completions are the same either way.",
    )


class GradingSettings(_Group):
    default_grader: str = Field(
        "numeric", description="Grader for queries without a 'grader' field: exact, numeric, math, regex, or module:function."
    )
    custom_graders: list[str] = Field(
        default_factory=list,
        description="module:function graders that query files may name in their 'grader' field "
        "(besides the built-ins and default_grader): a query file cannot make the pipeline import anything else.",
    )
    numeric_tolerance: float = Field(1e-6, ge=0.0, description="the numeric grader's absolute and relative tolerance")
    answer_marker: str = Field(
        "Answer:", description="what precedes the final answer: graders read after it, the answer span starts at it"
    )
    regex: str | None = Field(None, description="For the 'regex' grader: a pattern whose first group is the answer.")
    max_empty_or_truncated_fraction: float = Field(0.2, ge=0.0, le=1.0, description="the rollouts check fails above this share")
    timeout_s: Annotated[float, WHERE] = Field(
        60.0,
        gt=0.0,
        description="The longest one call of a custom (module:function) grader may take: grading fails naming the "
        "query and the grader when a call has not returned by then.",
    )

    @field_validator("regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"not a valid regular expression: {error}") from None
        return pattern

    @field_validator("default_grader", "custom_graders")
    @classmethod
    def _grader_names(cls, value: str | list[str]) -> str | list[str]:
        from drift_assets.core.grading.graders import check_grader_name

        for name in [value] if isinstance(value, str) else value:
            check_grader_name(name)
        return value

    @model_validator(mode="after")
    def _regex_grader_has_a_pattern(self) -> GradingSettings:
        if "regex" in (self.default_grader, *self.custom_graders) and self.regex is None:
            raise ValueError("the regex grader needs grading.regex (a pattern whose first group is the answer)")
        return self

    def allowed_graders(self) -> tuple[str, ...]:
        """What a query's 'grader' field may name (:func:`~drift_assets.core.grading.graders.allowed_graders`)."""
        from drift_assets.core.grading.graders import allowed_graders

        return allowed_graders(self.default_grader, self.custom_graders)

    def custom(self) -> list[str]:
        """The module:function graders these settings allow."""
        return [name for name in self.allowed_graders() if ":" in name]

    def options(self):
        """The core's :class:`~drift_assets.core.grading.graders.GradingOptions` for these settings."""
        from drift_assets.core.grading.graders import GradingOptions

        # What the graders do not read (which graders exist, the rollouts check) stays out.
        return GradingOptions(**self.model_dump(exclude={"default_grader", "custom_graders", "max_empty_or_truncated_fraction"}))


class ProjectionSettings(_Group):
    target_modules: str = Field(
        r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$",
        description="Regex over module names: which nn.Linear layers contribute gradients.",
    )
    rank: int = Field(16, ge=1, description="Per-layer projection rank r: each layer contributes r*r dimensions.")
    basis: Basis = Field(
        "pca",
        description="pca: top-r eigenvectors of each layer's input/output-gradient covariance on the validation "
        "references (LoGra); random: Gaussian from (seed, layer name), independent of any data.",
    )
    seed: int = Field(0, description="seed of the random basis")
    batch_size: Annotated[int, WHERE] = Field(32, ge=1, description="sequences per gradient pass")
    loss_reduction: LossReduction = Field("sum", description="sum: log-prob of the whole response; mean: per token.")
    validation_span: Literal["answer", "completion"] = Field(
        "answer",
        description="which tokens of each rollout and reference the validation gradient is the log-prob of: "
        "answer = from the token that holds the last grading.answer_marker on (the part the grader reads; the tokens "
        "before it are context), "
        "completion = all of it. Training gradients always cover the whole response.",
    )
    shards: Annotated[int, WHERE] = Field(
        4, ge=1, lt=100, description="Static shards of training_gradient_projections (Dagster partitions)."
    )
    gradient_checkpointing: Annotated[bool, WHERE] = Field(
        False,
        description="recompute each layer's activations in the backward pass of the gradient passes instead of keeping "
        "them: less memory (each pass logs its plan), more time, the same gradients",
    )

    def options(self) -> ProjectionOptions:
        """The core's :class:`~drift_assets.core.gradients.projection.ProjectionOptions` for these settings."""
        return ProjectionOptions(**self.model_dump(exclude={"batch_size", "validation_span", "shards"}))


class InfluenceSettings(_Group):
    targets: Targets = Field(
        _SCORING.targets,
        description="onpolicy: the graded rollouts (DRIFT); offpolicy: the reference answers (classic influence, LESS)",
    )
    weighting: Weighting = Field(
        _SCORING.weighting,
        description="per rollout: positive (1/n⁺ for a correct one, none for a wrong one), signed (+1/n⁺, −1/n⁻), "
        "advantage (r − mean r)",
    )
    hessian: Hessian = Field(_SCORING.hessian, description="identity, or fisher: the projected empirical Fisher, damped")
    damping: float = Field(_SCORING.damping, ge=0.0, description="Fisher damping as a multiple of its mean eigenvalue.")
    debias: Debias = Field(
        _SCORING.debias,
        description="against gradient norm: none; unit (÷‖ĥ‖); self_influence (÷√ĥᵀH⁻¹ĥ); residual (of the score on "
        "log‖ĥ‖); log_orthogonal (log|score| orthogonalized against log‖ĥ‖ with strength debias_strength)",
    )
    debias_strength: float = Field(
        _SCORING.debias_strength, ge=0.0, description="β of log_orthogonal: 0 = no debiasing, 1 = fully orthogonal."
    )
    unsolved: Unsolved = Field(
        _SCORING.unsolved,
        description="queries no rollout solves: skip them (the target stays on-policy), or let their reference answer "
        "stand in as the correct rollout (off-policy where most queries are unsolved)",
    )
    ranking: Ranking = Field(
        _SCORING.ranking,
        description="how the pool is ordered for the selection: score (the highest scores first), or round_robin (the "
        "validation queries take turns, each taking the example that helps it most among those not yet taken, by its "
        "own part of the target: no few queries' examples fill the selection)",
    )

    likelihood_blend: float = Field(
        _SCORING.likelihood_blend,
        ge=0.0,
        le=1.0,
        description="the weight of the base model's likelihood in the ranking: each row is ranked by (1 − w)·its rank in "
        "DRIFT's order + w·its rank by loss per response token under the base model (likeliest first); 0 = DRIFT's order "
        "alone",
    )

    def scoring(self) -> ScoringSettings:
        """The core's :class:`~drift_assets.core.attribution.scores.ScoringSettings` for these settings."""
        return ScoringSettings(**self.model_dump())


_LORA = LoraOptions()


class LoraSettings(_Group):
    """Train a LoRA adapter in the warm-up run instead of every weight (PEFT)."""

    rank: int = Field(_LORA.rank, ge=1, le=VLLM_LORA_RANKS[-1], description="the adapters' rank r")
    alpha: float = Field(_LORA.alpha, gt=0.0, description="LoRA alpha: the adapter's update is scaled by alpha / rank")
    dropout: float = Field(_LORA.dropout, ge=0.0, lt=1.0, description="dropout on the adapters' input while warming up")
    target_modules: str = Field(
        _LORA.target_modules,
        description="Regex over module names (full match): the linear layers that get an adapter.",
    )

    def options(self) -> LoraOptions:
        return LoraOptions(**self.model_dump())


class WarmupSettings(_Group):
    """A warm-up SFT run on the whole pool whose checkpoints DRIFT also scores at (LESS-style).

    First-order influence at one checkpoint measures the push against the model's *current*
    errors. Re-scoring with fresh on-policy rollouts at checkpoints of a warm-up run, while the
    model's own errors change, and averaging the standardized scores, removes much of that. By
    default the run follows the SFT recipe of ``benchmark.sft`` (the one the refined dataset is
    evaluated with), at its rate and batch size, scored at its end: on the task suite a checkpoint at
    1/2 as well was within the noise of it at one more rollout and gradient pass over the pool.
    """

    steps: list[int] | Literal["auto"] = Field(
        "auto",
        description="Warm-up steps at which to re-score besides the base model, e.g. [150, 300]; 'auto' = the end of "
        "the run (all of benchmark.sft.steps); [] = the base model only.",
    )
    batch_size: int | None = Field(None, ge=1, description="default: benchmark.sft.batch_size")
    learning_rate: float | None = Field(
        None, gt=0.0, description="constant (the checkpoints sample the run, not its end); default: benchmark.sft.learning_rate"
    )
    seed: int = Field(0, description="the warm-up run's example order")
    checkpoint_dir: Annotated[str, WHERE] = Field(
        "checkpoints", description="A local directory for the checkpoints' model directories."
    )
    optimizer_state: Literal["auto"] | bool = Field(
        "auto",
        description="save AdamW's moments beside each checkpoint (twice the trained weights' size: small for LoRA "
        "adapters, large for every weight of a big model), which the benchmark's LESS methods precondition with; "
        "auto = where benchmark.methods names less or less_round_robin",
    )
    lora: LoraSettings | None = Field(
        None,
        description="null: the run fine-tunes every weight and saves whole models; set (e.g. {rank: 16}): it trains "
        "LoRA adapters only and saves them, and vLLM serves them on the base model. Gradients are of the adapters "
        "where projection.target_modules names their modules (…lora_A.default, …lora_B.default).",
    )
    checkpoints: list[str] = Field(
        [],
        description="Model directories the pool is also scored at instead of a warm-up run's checkpoints (none is "
        "trained): checkpoints of a fine-tune you already ran on the pool, each a Hugging Face model directory (or "
        "a LoRA adapter on model.path) with the same tokenizer as model.path; each is one checkpoint partition, "
        "named after its directory (checkpoint-500/ → checkpoint-500). Checked before any step at them runs.",
    )

    @field_validator("checkpoints")
    @classmethod
    def _named_apart(cls, paths: list[str]) -> list[str]:
        from drift_assets.core.attribution.trajectory import given_checkpoint_keys

        given_checkpoint_keys(paths)  # raises naming the entry whose name is unusable or taken
        return paths

    @model_validator(mode="after")
    def _given_or_trained(self) -> WarmupSettings:
        if self.checkpoints and self.steps not in ("auto", []):
            raise ValueError(
                "warmup.checkpoints replaces the warm-up run, and warmup.steps trains one: set one of them "
                "(warmup.steps: auto or [] with warmup.checkpoints)"
            )
        if self.checkpoints and self.lora is not None:
            raise ValueError(
                "warmup.lora sets how the warm-up run trains, and warmup.checkpoints trains none: remove warmup.lora "
                "(a listed LoRA adapter directory is recognized by its adapter_config.json)"
            )
        return self

    @field_validator("steps")
    @classmethod
    def _increasing_positive_steps(cls, steps: list[int] | str) -> list[int] | str:
        if steps == "auto":
            return steps
        if any(step < 1 for step in steps) or steps != sorted(set(steps)):
            raise ValueError(f"must be positive and strictly increasing (got {steps})")
        if len(steps) >= 100:
            raise ValueError("at most 99 checkpoints (one Dagster partition each)")
        return steps


class SelectionSettings(_Group):
    method: SelectionMethod = Field("top_fraction", description="top_fraction, top_k, or positive (score > 0)")
    fraction: float = Field(0.5, gt=0.0, le=1.0, description="share of the pool kept by top_fraction")
    k: int | None = Field(None, ge=1, description="examples kept by top_k")
    # The default since the suite's rule chose it (benchmarks/README.md, 2026-12-07): DRIFT's selection and
    # the loss filter's each lead on some tasks, and the validation queries tell which one a task wants.
    choose_among: list[SelectionChoice] = Field(
        ["loss"],
        description="other selections the refined dataset may be: loss (as many rows, the base model's likeliest) and "
        "full (the whole pool). Each, and DRIFT's, is fine-tuned (benchmark.sft, the first of benchmark.seeds) and "
        "the one whose model answers the most validation queries is kept (ties: DRIFT's, then in this order); [] keeps "
        "DRIFT's without fine-tuning (one SFT run of the selection's size and its decoding cheaper)",
    )
    export_dir: str = Field(
        "exports",
        description="Where the selection is exported: a Hugging Face dataset folder (the selection, the rows left out "
        "with their reason, a README.md dataset card), in TRL's conversational prompt/completion format.",
    )
    evaluation_columns: list[str] = Field(
        ["is_corrupted", "category", "reference_answer"],
        description="Pool columns that only evaluate the selection (a hidden noise label): never exported. The demo's "
        "is_corrupted and category are always left out.",
    )

    @model_validator(mode="after")
    def _top_k_needs_k(self) -> SelectionSettings:
        if self.method == "top_k" and self.k is None:
            raise ValueError("selection.k is required when selection.method is top_k")
        if len(set(self.choose_among)) < len(self.choose_among):
            raise ValueError(f"selection.choose_among names a selection twice: {self.choose_among}")
        return self


class SftSettings(_Group):
    steps: int = Field(300, ge=1, description="optimizer steps, whatever the selection's size (unless epochs is set)")
    epochs: float | None = Field(
        None,
        gt=0.0,
        description="passes over the selection instead of a fixed step count: a 10% selection then gets "
        "a tenth of full-data SFT's steps, as continued SFT on a selected subset is run",
    )
    batch_size: int = Field(16, ge=1, description="examples per optimizer step")
    learning_rate: float = Field(1e-3, gt=0.0, description="AdamW's peak rate (the demo's tiny model; an LLM wants ~1e-5)")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW's weight decay")
    schedule: Schedule = Field("linear", description="learning rate: linear decay to 0, or constant.")
    gradient_checkpointing: Annotated[bool, WHERE] = Field(
        False,
        description="recompute each layer's activations in the backward pass instead of keeping them: less memory "
        "(the plan each fine-tune logs says how much), about a third more time; also for the warm-up run",
    )

    group_by_length: bool = Field(
        False,
        description="batches of examples of similar length (each run of 50 batches sorted by length): less padding, "
        "so faster on pools of mixed lengths; also for the warm-up run",
    )

    def options(self, seed: int):
        """The core's :class:`~drift_assets.core.training.sft.SftOptions` for these settings and ``seed``."""
        from drift_assets.core.training.sft import SftOptions

        return SftOptions(**self.model_dump(), seed=seed)


BENCHMARK_METHODS = METHODS
# Ablations the benchmark runs only when asked: the suite measured them once (benchmarks/README.md).
ABLATIONS_ON_REQUEST = (
    "drift_skip",
    "drift_nodebias",
    "drift_unit",
    "drift_log_orthogonal",
    "drift_by_score",
    "drift_fisher",
    "drift_last",
    "drift_loss_or_full",
)


class BenchmarkSettings(_Group):
    methods: list[Literal[BENCHMARK_METHODS]] = Field(
        default_factory=lambda: [method for method in BENCHMARK_METHODS if method not in ABLATIONS_ON_REQUEST],
        description="the selections compared (drift_*: DRIFT with one setting changed, see drift_assets.core.study.benchmark; "
        "one that restates the configured setting shares drift's fine-tunes)",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        description="SFT seeds per method: one method's accuracy varies across seeds (benchmarks/README.md has the spread).",
    )
    sft: SftSettings = Field(
        default_factory=SftSettings,
        description="the SFT recipe of the evaluation, the benchmark and (by default) the warm-up run",
    )
    eval_backend: Literal["auto", "vllm", "transformers"] = Field(
        "transformers", description="greedy decoding of fine-tuned models for evaluation"
    )
    workers: int = Field(
        1, ge=1, description="the method benchmark's fine-tunes run in this many processes (transformers evaluation)"
    )

    @model_validator(mode="after")
    def _workers_evaluate_with_transformers(self) -> BenchmarkSettings:
        if self.workers > 1 and self.eval_backend != "transformers":
            raise ValueError("benchmark.workers > 1 evaluates with transformers: set benchmark.eval_backend: transformers")
        return self


class Settings(_Group):
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    warehouse: WarehouseSettings = Field(default_factory=WarehouseSettings)
    demo: DemoSettings = Field(default_factory=DemoSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    grading: GradingSettings = Field(default_factory=GradingSettings)
    projection: ProjectionSettings = Field(default_factory=ProjectionSettings)
    influence: InfluenceSettings = Field(default_factory=InfluenceSettings)
    warmup: WarmupSettings = Field(default_factory=WarmupSettings)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    benchmark: BenchmarkSettings = Field(default_factory=BenchmarkSettings)
    base_dir: str = Field(".", description="Directory relative paths resolve against (set from the file's location).")

    @field_validator("base_dir")
    @classmethod
    def _absolute_base(cls, value: str) -> str:
        return str(Path(value).resolve())

    @model_validator(mode="after")
    def _grading_reads_the_demo_tasks_answers(self) -> Settings:
        marker = self.demo.spec().answer_marker
        if self.demo.enabled and marker and self.grading.answer_marker != marker:
            raise ValueError(
                f"grading.answer_marker must be {marker!r} for demo.task {self.demo.task} (got {self.grading.answer_marker!r})"
            )
        return self

    @model_validator(mode="after")
    def _paths_expand(self) -> Settings:
        """A path naming an environment variable that is not set fails here, naming both (expanded,
        it would name another path; unexpanded, a folder called ``$VAR``)."""
        for setting, path in self.paths().items():
            unset = sorted({name for name in _variables_in(path) if name not in os.environ})
            if unset:
                raise ValueError(
                    f"{setting}: {path!r} names the environment variable{'s' if len(unset) > 1 else ''} "
                    f"{', '.join(unset)}, which {'are' if len(unset) > 1 else 'is'} not set (paths expand $VAR, ${{VAR}} and ~)"
                )
        return self

    @model_validator(mode="after")
    def _exports_apart_from_inputs(self) -> Settings:
        from drift_assets.core.data.outputs import check_export_dir, export_conflicts
        from drift_assets.core.data.publish import export_file_names

        export_dir = self.resolve(self.selection.export_dir)
        try:
            check_export_dir(export_dir)
            problems = export_conflicts(export_dir, export_file_names(), self.inputs)
        except (OSError, RuntimeError):  # a folder it may not enter, a symlink loop: the export checks again
            return self
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def paths(self) -> dict[str, str]:
        """Every path setting that is set, as written: key → path."""
        named = {
            "model.path": self.model.path,
            "data.training_pool": self.data.training_pool,
            "data.validation_queries": self.data.validation_queries,
            "data.test_queries": self.data.test_queries,
            "warehouse.root": self.warehouse.root,
            "warmup.checkpoint_dir": self.warmup.checkpoint_dir,
            "selection.export_dir": self.selection.export_dir,
        }
        return {key: path for key, path in named.items() if path}

    def resolve(self, path: str) -> str:
        """A path from the settings made absolute, after expanding environment variables ($VAR,
        ${VAR}) and ~ (URIs such as s3://… pass through, their variables expanded)."""
        path = os.path.expanduser(os.path.expandvars(path))
        if "://" in path or Path(path).is_absolute():
            return path
        return str(Path(self.base_dir) / path)

    @property
    def model_path(self) -> str:
        return self.resolve(self.model.path)

    @property
    def inputs(self) -> dict[str, str | None]:
        """Every input the pipeline reads, setting → resolved path (None: not set): what no export may write over."""
        data = self.data
        return {
            "data.training_pool": self.resolve(data.training_pool),
            "data.validation_queries": self.resolve(data.validation_queries),
            "data.test_queries": self.resolve(data.test_queries) if data.test_queries else None,
            "model.path": self.model_path,
        }

    @property
    def checkpoint_dir(self) -> str:
        return self.resolve(self.warmup.checkpoint_dir)

    @property
    def export_dir(self) -> str:
        return self.resolve(self.selection.export_dir)

    @property
    def warehouse_root(self) -> str:
        return self.resolve(self.warehouse.root)

    @derived(
        *("warmup.steps", "warmup.batch_size", "warmup.learning_rate", "warmup.seed"),
        *("benchmark.sft.steps", "benchmark.sft.batch_size", "benchmark.sft.learning_rate", "benchmark.sft.group_by_length"),
        "warmup.checkpoints",  # given checkpoints: no run
    )
    def warmup_schedule(self) -> dict[str, Any]:
        """The warm-up run as it will be run: ``warmup`` with its defaults taken from ``benchmark.sft``."""
        sft, warmup = self.benchmark.sft, self.warmup
        if warmup.checkpoints:  # scored at the directories given: no warm-up run
            steps = []
        else:
            steps = [sft.steps] if warmup.steps == "auto" else list(warmup.steps)
        return {
            "steps": steps,
            "batch_size": warmup.batch_size or sft.batch_size,
            "learning_rate": warmup.learning_rate or sft.learning_rate,
            "seed": warmup.seed,
            "group_by_length": sft.group_by_length,
        }

    @derived("warmup.optimizer_state", "benchmark.methods")
    def warmup_saves_optimizer_state(self) -> bool:
        """Whether the warm-up saves AdamW's moments at each checkpoint (``warmup.optimizer_state``)."""
        if self.warmup.optimizer_state == "auto":
            return any(method in LESS_METHODS for method in self.benchmark.methods)
        return bool(self.warmup.optimizer_state)

    @property
    def warmup_steps(self) -> list[int]:
        """The warm-up checkpoints' steps ([] = the base model only)."""
        return self.warmup_schedule["steps"]

    @derived("warmup.steps", "benchmark.sft.steps", "warmup.checkpoints")
    def checkpoints(self) -> list[str]:
        """The partition keys of the checkpoints the pool is scored at: ``base``, then the warm-up
        steps, or the directories ``warmup.checkpoints`` gives."""
        from drift_assets.core.attribution.trajectory import BASE, checkpoint_keys

        if self.warmup.checkpoints:
            return [BASE, *self.given_checkpoints]
        return checkpoint_keys(self.warmup_steps)

    @property
    def given_checkpoints(self) -> dict[str, str]:
        """Partition key → model directory (absolute) of each ``warmup.checkpoints`` entry, in order."""
        from drift_assets.core.attribution.trajectory import given_checkpoint_keys

        paths = self.warmup.checkpoints
        return dict(zip(given_checkpoint_keys(paths), (self.resolve(path) for path in paths), strict=True))

    def with_overrides(self, **groups: dict[str, Any]) -> Settings:
        """A copy with some keys of some groups replaced: ``s.with_overrides(selection={"fraction": 0.3})``."""
        data = self.model_dump()
        for group, values in groups.items():
            if isinstance(data.get(group), dict):
                data[group] = {**data[group], **values}
            else:
                data[group] = values
        return Settings.model_validate(data)


def warmup_options(schedule: dict[str, Any], gradient_checkpointing: bool):
    """The :class:`~drift_assets.core.training.sft.SftOptions` of the warm-up run of ``schedule``
    (:attr:`Settings.warmup_schedule`), up to its last checkpoint."""
    from drift_assets.core.training.sft import SftOptions

    return SftOptions(
        steps=max(schedule["steps"], default=1),
        batch_size=schedule["batch_size"],
        learning_rate=schedule["learning_rate"],
        weight_decay=0.0,
        # A constant rate: each checkpoint lies on the same run whatever the last step is.
        schedule="constant",
        seed=schedule["seed"],
        epochs=None,
        gradient_checkpointing=gradient_checkpointing,
        group_by_length=schedule["group_by_length"],
    )


def _variables_in(path: str) -> list[str]:
    """The environment variables ``os.path.expandvars`` would expand in ``path``."""
    return [braced or bare for braced, bare in re.findall(r"\$(?:\{([^}]+)\}|([A-Za-z_][A-Za-z0-9_]*))", path)]


def _describe_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        else:
            got = item.get("input")
            got_text = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{source}: {key + ': ' if key else ''}{message}{got_text}")
    return "\n".join(lines)


def parse_settings(raw: dict[str, Any] | None, source: str, base_dir: str | Path) -> Settings:
    raw = dict(raw or {})
    if "base_dir" in raw:
        raise SettingsError(f"{source}: unknown key 'base_dir' (paths resolve against the file's directory)")
    raw["base_dir"] = str(base_dir)
    try:
        return Settings.model_validate(raw)
    except ValidationError as error:
        raise SettingsError(_describe_errors(error, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (YAML lets the last win)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice in one mapping (the second would silently replace the first)",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """YAML's error on one line, with the line and column it points at (its own message spans
    several lines and names the text as "<unicode string>")."""
    if not isinstance(error, yaml.MarkedYAMLError):
        return " ".join(str(error).split())
    problem = " ".join(filter(None, (error.context, error.problem))) or "unreadable"
    if "python/" in problem:  # !!python/object, !!python/name: the safe loader constructs plain data only
        problem += " (Python tags are not allowed: the file is read with YAML's safe loader)"
    mark = error.problem_mark or error.context_mark
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def load_settings(path: str | Path | None = None) -> Settings:
    """Load and validate the settings file: ``path``, else $DRIFT_ASSETS_SETTINGS, else data/settings.yaml."""
    chosen = Path(path or os.environ.get(SETTINGS_ENV_VAR) or DEFAULT_SETTINGS_PATH)
    if not chosen.exists():
        raise SettingsError(f"{chosen}: settings file not found (set {SETTINGS_ENV_VAR} to use another file)")
    if chosen.is_dir():
        raise SettingsError(f"{chosen}: is a directory, not a settings file (name the YAML file itself)")
    try:
        data = chosen.read_bytes()
    except OSError as error:
        raise SettingsError(f"{chosen}: cannot be read ({error.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise SettingsError(
            f"{chosen}: not UTF-8 text: byte 0x{data[error.start]:02x} at position {error.start} (line {line}); "
            "save the file as UTF-8"
        ) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise SettingsError(f"{chosen}: not valid YAML: {_yaml_problem(error)}") from None
    if raw is not None and not isinstance(raw, dict):
        raise SettingsError(f"{chosen}: expected a mapping of settings groups at the top level")
    return parse_settings(raw, str(chosen), chosen.resolve().parent)


def span_start(validation_span: str, answer_marker: str) -> str | None:
    """Where validation gradients start: at ``answer_marker`` (projection.validation_span: answer), or
    None for the whole completion."""
    return answer_marker if validation_span == "answer" else None


def validation_answer_marker(settings: Settings) -> str | None:
    """:func:`span_start` of these settings."""
    return span_start(settings.projection.validation_span, settings.grading.answer_marker)


SETTINGS_READ_KEY = "settings_read"
# A materialization's record of the settings it was computed with (the definition's settings_read then).
SETTINGS_USED_KEY = "settings"


def settings_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Each setting whose value differs, ``"selection.fraction: 0.5 → 0.3"`` (groups read whole are
    compared field by field; a setting read now and not then is ``(not read) → value``)."""

    def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out = {}
        for key, value in values.items():
            name = f"{prefix}{key}"
            out.update(flat(value, f"{name}.") if isinstance(value, dict) and value else {name: value})
        return out

    old, new = flat(before), flat(now)
    missing = object()

    def shown(value: Any) -> str:
        return "(not read)" if value is missing else json.dumps(value)

    return [
        f"{key}: {shown(old.get(key, missing))} → {shown(new.get(key, missing))}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, missing) != new.get(key, missing)
    ]


_SETTING, _VALUES, _UNHASHED = "drift_assets/setting", "drift_assets/setting_values", "drift_assets/unhashed"


def setting(key: str) -> Any:
    """A field of what a stage is given that holds the setting ``key`` ("group", "group.field", or a
    value derived from others such as "warmup_schedule"): :func:`given` fills it from the settings,
    and the code versions of the assets given it hash it (:func:`code_version`)."""
    return dataclasses.field(metadata={_SETTING: key})


def setting_values(*keys: str) -> Any:
    """A field that holds the settings ``keys`` as values only, key → JSON value: hashed as they are."""
    return dataclasses.field(metadata={_VALUES: keys})


def unhashed(key: str) -> Any:
    """A field filled from the setting ``key`` that no code version hashes: where inputs live and how
    the work is laid out (:data:`WHERE`), or what checks and cost metadata read, which change no table."""
    return dataclasses.field(metadata={_UNHASHED: key})


def _at(settings: Settings, key: str) -> Any:
    value: Any = settings
    for part in key.split("."):
        value = getattr(value, part)
    return value


def setting_keys(cls: type) -> tuple[str, ...]:
    """The settings the :func:`setting` fields of ``cls`` hold, in order."""
    return tuple(field.metadata[_SETTING] for field in dataclasses.fields(cls) if _SETTING in field.metadata)


def given(cls: type, settings: Settings, **rest: Any) -> Any:
    """``cls`` (what a stage is given) filled from ``settings``: its :func:`setting`, :func:`setting_values`
    and :func:`unhashed` fields at their keys, the given objects it holds likewise, and ``rest`` as given."""
    types = get_type_hints(cls)
    filled = {}
    for field in dataclasses.fields(cls):
        if field.name in rest:
            continue
        key = field.metadata.get(_SETTING) or field.metadata.get(_UNHASHED)
        if key:
            filled[field.name] = _at(settings, key)
        elif _VALUES in field.metadata:
            filled[field.name] = {key: _json(_at(settings, key)) for key in field.metadata[_VALUES]}
        elif dataclasses.is_dataclass(types[field.name]):
            filled[field.name] = given(types[field.name], settings)
    return cls(**filled, **rest)


def settings_read(*parts: Any) -> dict[str, Any]:
    """What ``parts`` hold of the settings, key → value as JSON, in order: each part is an object a
    stage is given (its :func:`setting` and :func:`setting_values` fields, and those of the given
    objects it holds; None: not given). A group given whole is hashed without its :data:`WHERE` fields."""
    read: dict[str, Any] = {}
    for part in parts:
        if part is None:
            continue
        for field in dataclasses.fields(part):
            value = getattr(part, field.name)
            if _SETTING in field.metadata:
                read[field.metadata[_SETTING]] = _json(value)
            elif _VALUES in field.metadata:
                read.update(value)
            elif not field.metadata and dataclasses.is_dataclass(value):
                read.update(settings_read(value))
    return read


def _json(value: Any) -> Any:
    return _what(value) if isinstance(value, BaseModel) else value


def _what(group: BaseModel) -> dict[str, Any]:
    """A group's values as JSON, less the fields that say where (:data:`WHERE`)."""
    dumped = group.model_dump(mode="json")
    for name, field in type(group).model_fields.items():
        if WHERE in field.metadata:
            del dumped[name]
        elif isinstance(getattr(group, name), BaseModel):
            dumped[name] = _what(getattr(group, name))
    return dumped


def code_version(implementation_version: str, *parts: Any) -> str:
    """``<implementation version>-<hash of what the asset is given of the settings>`` (:func:`settings_read`);
    an asset given grading whole also hashes the source of the custom graders (their code is the user's,
    versioned by nothing else)."""
    read = settings_read(*parts)
    version = f"{implementation_version}-{hashlib.sha256(json.dumps(read, sort_keys=True).encode()).hexdigest()[:12]}"
    custom = GradingSettings.model_validate(read["grading"]).custom() if "grading" in read else []
    if custom:
        from drift_assets.core.grading.graders import grader_source_hash

        version += f"-{grader_source_hash(custom)}"
    return version


def versioned(implementation_version: str, *parts: Any, **metadata: Any) -> dict[str, Any]:
    """An asset definition's ``code_version`` and ``metadata`` (``metadata`` first, then
    :func:`read_metadata`) from the same ``parts``, so that what the UI says the version hashes is
    what it hashes."""
    return {"code_version": code_version(implementation_version, *parts), "metadata": {**metadata, **read_metadata(*parts)}}


def read_metadata(*parts: Any) -> dict[str, Any]:
    """What the code version hashes, key → value, for the asset's definition (shown in the UI, read
    by the settings reference; each materialization records the values it used as ``settings``,
    so a stale asset names what changed: :func:`settings_changes`)."""
    from dagster import MetadataValue

    return {SETTINGS_READ_KEY: MetadataValue.json(settings_read(*parts))}
