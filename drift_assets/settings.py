"""One settings file for the whole pipeline, validated with pydantic.

The file is YAML (``data/settings.yaml`` by default; ``DRIFT_ASSETS_SETTINGS`` names another).
Relative paths in it are resolved against the directory that holds the file, so a settings file
and its data can move together.

Every asset's ``code_version`` is its implementation version plus a hash of *only* the settings
groups it reads (``ASSET_SETTINGS``), so changing ``selection.fraction`` makes ``refined_dataset``
stale and never ``rollouts``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SETTINGS_ENV_VAR = "DRIFT_ASSETS_SETTINGS"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SETTINGS_PATH = REPO_ROOT / "data" / "settings.yaml"


class SettingsError(ValueError):
    """A settings file that cannot be used; the message names the file and the key."""


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Group):
    path: str = Field("demo/model", description="Hugging Face model directory (config.json + weights + tokenizer).")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("auto", description="'auto' picks CUDA when present, else CPU; or 'cpu', 'cuda', 'cuda:1'.")


class DataSettings(_Group):
    training_pool: str = Field("demo/training_pool.jsonl", description="JSONL, Parquet, or a `datasets` dataset saved to disk.")
    validation_queries: str = "demo/validation_queries.jsonl"
    test_queries: str | None = Field(None, description="Held-out queries for evaluation (optional: without them there is no refined_model_evaluation).")
    max_example_tokens: int = Field(256, ge=8, description="Examples longer than this (prompt + response) are quarantined.")


class WarehouseSettings(_Group):
    root: str = Field("warehouse", description="Delta warehouse root: a local directory or an s3:// URI.")
    storage_options: dict[str, str] = Field(default_factory=dict, description="Passed to deltalake (e.g. AWS_REGION).")


class DemoSettings(_Group):
    enabled: bool = Field(
        False, description="Add the demo assets that generate the task data and train the tiny model (they write data.* and "
        "model.path, and refuse to overwrite files they did not write themselves).",
    )
    seed: int = 0
    n_train: int = Field(2400, ge=100)
    n_validation: int = Field(48, ge=8)
    n_test: int = Field(300, ge=50)
    corrupted_fraction: float = Field(0.25, ge=0.0, lt=1.0)
    off_task_fraction: float = Field(0.08, ge=0.0, lt=1.0)
    pretrain_examples: int = Field(6000, ge=100, description="Size of the base model's own pre-training corpus.")
    target_accuracy: tuple[float, float] = Field((0.3, 0.7), description="Stop pre-training once greedy accuracy on a calibration set lands here.")
    max_pretrain_steps: int = Field(
        3000, ge=100, description="pre-training stops at the target band or after this many steps (never on a clock: determinism)"
    )

    @model_validator(mode="after")
    def _fractions_leave_room_for_clean_examples(self) -> DemoSettings:
        if self.corrupted_fraction + self.off_task_fraction >= 1.0:
            raise ValueError("corrupted_fraction + off_task_fraction must be < 1")
        return self


class RolloutSettings(_Group):
    backend: Literal["auto", "vllm", "transformers"] = Field("auto", description="'auto' uses vLLM wherever it imports.")
    samples_per_query: int = Field(8, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(64, ge=1)
    stop: list[str] = Field(default_factory=lambda: ["\n"])
    seed: int = 0
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.2, gt=0.0, le=1.0, description="On CPU: share of host memory for vLLM's KV cache.")
    max_model_len: int = Field(256, ge=16)


class GradingSettings(_Group):
    default_grader: str = Field("numeric", description="Grader for queries without a 'grader' field: exact, numeric, math, regex, or module:function.")
    numeric_tolerance: float = Field(1e-6, ge=0.0)
    answer_marker: str = "Answer:"
    regex: str | None = Field(None, description="For the 'regex' grader: a pattern whose first group is the answer.")
    max_empty_or_truncated_fraction: float = Field(0.2, ge=0.0, le=1.0)


    def options(self):
        """The core's :class:`~drift_assets.core.grading.GradingOptions` for these settings."""
        from drift_assets.core.grading import GradingOptions

        return GradingOptions(self.numeric_tolerance, self.answer_marker, self.regex)


class ProjectionSettings(_Group):
    target_modules: str = Field(
        r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$",
        description="Regex over module names: which nn.Linear layers contribute gradients.",
    )
    rank: int = Field(16, ge=1, description="Per-layer projection rank r: each layer contributes r*r dimensions.")
    basis: Literal["pca", "random"] = Field(
        "pca", description="pca: top-r eigenvectors of each layer's input/output-gradient covariance on the validation "
        "references (LoGra); random: Gaussian from (seed, layer name), independent of any data.",
    )
    seed: int = 0
    batch_size: int = Field(32, ge=1)
    loss_reduction: Literal["sum", "mean"] = Field("sum", description="sum: log-prob of the whole response; mean: per token.")
    validation_span: Literal["answer", "completion"] = Field(
        "answer", description="which tokens of each rollout and reference the validation gradient is the log-prob of: "
        "answer = from the token that holds the last grading.answer_marker on (the part the grader reads; the tokens "
        "before it are context), "
        "completion = all of it. Training gradients always cover the whole response.",
    )
    shards: int = Field(4, ge=1, lt=100, description="Static shards of training_gradient_projections (Dagster partitions).")

    def answer_marker(self, grading: GradingSettings) -> str | None:
        """The marker the validation gradients split at, or None for whole completions."""
        return grading.answer_marker if self.validation_span == "answer" else None


class InfluenceSettings(_Group):
    targets: Literal["onpolicy", "offpolicy"] = "onpolicy"
    weighting: Literal["signed", "advantage", "positive"] = "signed"
    hessian: Literal["identity", "fisher"] = "identity"
    damping: float = Field(0.1, ge=0.0, description="Fisher damping as a multiple of its mean eigenvalue.")
    debias: Literal["none", "unit", "self_influence", "residual", "log_orthogonal"] = Field(
        "unit", description="against gradient norm: none; unit (÷‖ĥ‖); self_influence (÷√ĥᵀH⁻¹ĥ); residual (of the score on "
        "log‖ĥ‖); log_orthogonal (log|score| orthogonalized against log‖ĥ‖ with strength debias_strength)",
    )
    debias_strength: float = Field(1.0, ge=0.0, description="β of log_orthogonal: 0 = no debiasing, 1 = fully orthogonal.")
    unsolved: Literal["reference", "skip"] = Field(
        "reference", description="queries no rollout solves: contrast their reference answer (as the correct rollout) "
        "with the wrong rollouts, or skip them",
    )

    def scoring(self):
        """The core's :class:`~drift_assets.core.attribution.ScoringSettings` for these settings."""
        from drift_assets.core.attribution import ScoringSettings

        return ScoringSettings(self.targets, self.weighting, self.hessian, self.damping, self.debias, self.unsolved, self.debias_strength)


class WarmupSettings(_Group):
    """A warm-up SFT run on the whole pool whose checkpoints DRIFT also scores at (LESS-style).

    First-order influence at one checkpoint measures the push against the model's *current*
    errors: on the demo the base model answers too low, so DRIFT prefers examples whose answers
    are too high. Re-scoring with fresh on-policy rollouts at checkpoints of a warm-up run, while
    the model's own errors change, and averaging the standardized scores, removes much of that.
    """

    steps: list[int] = Field(
        default_factory=list,
        description="Warm-up steps at which to re-score besides the base model, e.g. [50, 150, 300]; empty = base model only.",
    )
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(1e-3, gt=0.0, description="constant: the checkpoints sample the run, not its end")
    seed: int = 0
    checkpoint_dir: str = Field("checkpoints", description="A local directory for the checkpoints' model directories.")

    @field_validator("steps")
    @classmethod
    def _increasing_positive_steps(cls, steps: list[int]) -> list[int]:
        if any(step < 1 for step in steps) or steps != sorted(set(steps)):
            raise ValueError(f"must be positive and strictly increasing (got {steps})")
        if len(steps) >= 100:
            raise ValueError("at most 99 checkpoints (one Dagster partition each)")
        return steps

    def options(self):
        """The :class:`~drift_assets.core.sft.SftOptions` of the warm-up run (up to its last checkpoint)."""
        from drift_assets.core.sft import SftOptions

        return SftOptions(max(self.steps, default=1), self.batch_size, self.learning_rate, 0.0, "constant", self.seed)


class SelectionSettings(_Group):
    method: Literal["top_fraction", "top_k", "positive"] = "top_fraction"
    fraction: float = Field(0.5, gt=0.0, le=1.0)
    k: int | None = Field(None, ge=1)
    export_dir: str = Field("exports", description="Where the selection is exported as chat-messages JSONL and Parquet.")

    @model_validator(mode="after")
    def _top_k_needs_k(self) -> SelectionSettings:
        if self.method == "top_k" and self.k is None:
            raise ValueError("selection.k is required when selection.method is top_k")
        return self


class SftSettings(_Group):
    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["linear", "constant"] = Field("linear", description="learning rate: linear decay to 0, or constant.")

    def options(self, seed: int):
        """The core's :class:`~drift_assets.core.sft.SftOptions` for these settings and ``seed``."""
        from drift_assets.core.sft import SftOptions

        return SftOptions(self.steps, self.batch_size, self.learning_rate, self.weight_decay, self.schedule, seed)


class BenchmarkSettings(_Group):
    methods: list[Literal["full", "random", "offpolicy", "drift", "drift_positive", "drift_nodebias", "loss", "oracle"]] = Field(
        default_factory=lambda: ["full", "random", "offpolicy", "drift", "drift_positive", "drift_nodebias", "loss", "oracle"]
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        description="SFT seeds per method. On the demo one method's accuracy spans up to ~7 points across five seeds.",
    )
    sft: SftSettings = Field(default_factory=SftSettings)
    eval_backend: Literal["auto", "vllm", "transformers"] = "transformers"


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

    def resolve(self, path: str) -> str:
        """A path from the settings made absolute (URIs such as s3://… pass through)."""
        if "://" in path or Path(path).is_absolute():
            return path
        return str(Path(self.base_dir) / path)

    @property
    def model_path(self) -> str:
        return self.resolve(self.model.path)

    @property
    def warehouse_root(self) -> str:
        return self.resolve(self.warehouse.root)

    def with_overrides(self, **groups: dict[str, Any]) -> Settings:
        """A copy with some keys of some groups replaced: ``s.with_overrides(selection={"fraction": 0.3})``."""
        data = self.model_dump()
        for group, values in groups.items():
            if isinstance(data.get(group), dict):
                data[group] = {**data[group], **values}
            else:
                data[group] = values
        return Settings.model_validate(data)


def _describe_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        else:
            got = item.get("input")
            got_text = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{source}: {key}: {item['msg']}{got_text}")
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


def load_settings(path: str | Path | None = None) -> Settings:
    """Load and validate the settings file: ``path``, else $DRIFT_ASSETS_SETTINGS, else data/settings.yaml."""
    chosen = Path(path or os.environ.get(SETTINGS_ENV_VAR) or DEFAULT_SETTINGS_PATH)
    if not chosen.exists():
        raise SettingsError(f"{chosen}: settings file not found (set {SETTINGS_ENV_VAR} to use another file)")
    try:
        raw = yaml.safe_load(chosen.read_text())
    except yaml.YAMLError as error:
        raise SettingsError(f"{chosen}: not valid YAML: {error}") from None
    if raw is not None and not isinstance(raw, dict):
        raise SettingsError(f"{chosen}: expected a mapping of settings groups at the top level")
    return parse_settings(raw, str(chosen), chosen.resolve().parent)


# Which settings each asset reads. Only these feed its code_version, so a change elsewhere never
# makes it stale. Keys are "group" or "group.key".
_PROJECTION = ("projection.target_modules", "projection.rank", "projection.basis", "projection.seed", "projection.loss_reduction", "model.dtype")
_VALIDATION = (*_PROJECTION, "projection.validation_span", "grading.answer_marker")
ASSET_SETTINGS: dict[str, tuple[str, ...]] = {
    "demo_task_files": ("demo",),
    "demo_base_model": ("demo", "model.dtype"),
    "training_pool": ("data.max_example_tokens",),
    "validation_queries": ("grading.default_grader",),
    "test_queries": ("grading.default_grader",),
    "rollouts": ("rollout", "model.dtype"),
    "grades": ("grading",),
    "projection_basis": _PROJECTION,
    "validation_gradients": _VALIDATION,
    "training_gradient_projections": (*_PROJECTION, "projection.batch_size", "projection.shards"),
    "warmup_checkpoints": ("warmup", "model.dtype"),
    "checkpoint_gradients": ("rollout", "grading", "projection", "model.dtype"),
    "influence_scores": ("influence", "warmup.steps"),
    "refined_dataset": ("selection.method", "selection.fraction", "selection.k"),
    "refined_dataset_export": ("selection.export_dir",),
    "refined_model_evaluation": ("benchmark.sft", "benchmark.eval_backend", "rollout.max_tokens", "rollout.max_model_len"),
    "method_benchmark": ("benchmark", "influence", "warmup.steps", "selection", "rollout.max_tokens", "rollout.max_model_len"),
}


def _pick(settings: Settings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def settings_hash(settings: Settings, keys: tuple[str, ...]) -> str:
    picked = {key: _pick(settings, key) for key in keys}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:12]


def code_version(asset_name: str, implementation_version: str, settings: Settings) -> str:
    """``<implementation version>-<hash of the settings this asset reads>``."""
    return f"{implementation_version}-{settings_hash(settings, ASSET_SETTINGS[asset_name])}"
