"""Projected log-prob gradients at each checkpoint: one row per rollout/reference, and per pool example in shards."""

import functools
import time
from dataclasses import asdict, dataclass

import polars as pl
from dagster import AssetCheckSpec, AssetExecutionContext, DataVersion, Output, asset

from drift_assets.core.gradients.projection import LinearGradientProjector, ProjectionBasis, ProjectionOptions
from drift_assets.core.gradients.tables import (
    gradient_frame,
    pool_token_pairs,
    reference_basis,
    sequence_tokens,
    shard_gradients,
    shard_of,
    validation_token_pairs,
)
from drift_assets.core.runtime.cost import gradient_pass_cost
from drift_assets.core.runtime.progress import PROGRESS_EVERY_S, Progress
from drift_assets.defs.checkpoints import checkpoint_model, checkpoint_partitions, checkpoint_shard_partitions, model_deps
from drift_assets.defs.checks import vectors_result
from drift_assets.defs.cost import CostPlan, full_sft_reference, stored_reference
from drift_assets.defs.metadata import table_metadata
from drift_assets.defs.placement import GPU_STEP
from drift_assets.resources import ModelResource, Warehouse
from drift_assets.settings import setting, setting_keys, span_start, unhashed, versioned

GRADIENTS_VERSION = "3"  # 3: partitioned by checkpoint (the training gradients by checkpoint × shard)
# 3: a rollout is differentiated through the token ids it was sampled as, and an answer span is split
# off the whole sequence's tokens (not encoded apart from the text before it); 4: partitioned by checkpoint.
VALIDATION_GRADIENTS_VERSION = "4"


@dataclass(frozen=True)
class Projection:
    """What the projection is: the basis, and every gradient projected with it, hash these."""

    target_modules: str = setting("projection.target_modules")
    rank: int = setting("projection.rank")
    basis: str = setting("projection.basis")
    seed: int = setting("projection.seed")
    loss_reduction: str = setting("projection.loss_reduction")
    dtype: str = setting("model.dtype")

    def options(self, gradient_checkpointing: bool) -> ProjectionOptions:
        # dtype: the model resource loads with it
        chosen = {name: value for name, value in asdict(self).items() if name != "dtype"}
        return ProjectionOptions(**chosen, gradient_checkpointing=gradient_checkpointing)


PROJECTION_KEYS = setting_keys(Projection)


@dataclass(frozen=True)
class ValidationSpan:
    """Which tokens of each rollout and reference a validation gradient is the log-prob of."""

    validation_span: str = setting("projection.validation_span")
    answer_marker: str = setting("grading.answer_marker")

    @property
    def marker(self) -> str | None:
        """Where validation gradients start: at the answer marker, or None for the whole completion."""
        return span_start(self.validation_span, self.answer_marker)


@dataclass(frozen=True)
class GradientLayout:
    """Sequences per pass and the training gradients' shards: hashed where the training gradients are."""

    batch_size: int = setting("projection.batch_size")
    shards: int = setting("projection.shards")


@dataclass(frozen=True)
class GradientsGiven:
    """The projection and the validation span (hashed where used), the layout of the passes (hashed by
    the training gradients), and, not hashed: gradient checkpointing (the same gradients, less memory),
    the checkpoints and the cost plan."""

    projection: Projection
    span: ValidationSpan
    layout: GradientLayout
    gradient_checkpointing: bool = unhashed("projection.gradient_checkpointing")
    checkpoints: list[str] = unhashed("checkpoints")
    cost: CostPlan


def progress_logger(context: AssetExecutionContext, what: str, unit: str):
    """A ``(done, total)`` callback that logs done/total with the rate and time left at most every
    ``PROGRESS_EVERY_S`` seconds, and when the pass is done (at debug level if it was that short)."""
    return Progress(what, 0, context.log.info, unit=unit, every_s=PROGRESS_EVERY_S, short_log=context.log.debug).update


def build_gradient_assets(given: GradientsGiven) -> list:
    return [_projection_basis_asset(given), _validation_gradients_asset(given), _training_gradients_asset(given)]


def _projection_basis_asset(given: GradientsGiven):
    """The per-checkpoint projection basis (hashed: the projection)."""
    options = given.projection.options(given.gradient_checkpointing)

    @asset(
        group_name="attribution",
        **versioned(GRADIENTS_VERSION, given.projection, partition_expr="checkpoint"),
        partitions_def=checkpoint_partitions(given.checkpoints),
        deps=model_deps(given.checkpoints),
        kinds={"pytorch", "delta"},
        **GPU_STEP,
        description="Per-layer projectors shared by validation and training gradients at each checkpoint "
        "(pca: fitted on the validation references).",
    )
    def projection_basis(
        context: AssetExecutionContext, validation_queries: pl.DataFrame, model: ModelResource, warehouse: Warehouse
    ) -> Output:
        checkpoint = context.partition_key
        started = time.perf_counter()
        at_checkpoint = checkpoint_model(checkpoint, model, warehouse)
        tokenizer, network = at_checkpoint.load_tokenizer(), at_checkpoint.load_model(options.target_modules)
        basis = reference_basis(network, options, tokenizer, validation_queries, given.layout.batch_size, log=context.log.info)
        _require_finite(basis, checkpoint, model.dtype)
        fingerprint = at_checkpoint.fingerprint()
        table = basis.to_frame().select(pl.lit(checkpoint).alias("checkpoint"), pl.all(), model_fingerprint=pl.lit(fingerprint))
        description = f"({options.basis}, rank {options.rank}) over {len(basis.matrices)} layers: {basis.fingerprint()}"
        context.log.debug(f"checkpoint {checkpoint}: projection basis {description}")
        # The PCA fit's passes over the references (none for a random basis).
        cost = gradient_pass_cost("gradients", [basis.fit_tokens], time.perf_counter() - started, checkpoint)
        # The data version is the model and the matrices: refitting to the same matrices for the same
        # model (a random basis, or unchanged references) leaves the gradients downstream fresh.
        return Output(
            table,
            data_version=DataVersion(f"{fingerprint}-{basis.fingerprint()}"),
            metadata={
                **basis.metadata(validation_queries.height, fingerprint),
                **cost.metadata(stored_reference(given.cost.sft, warehouse)),
            },
        )

    return projection_basis


def _validation_gradients_asset(given: GradientsGiven):
    """The rollouts' and references' gradients (hashed: the projection and the validation span)."""
    options = given.projection.options(given.gradient_checkpointing)

    @asset(
        group_name="attribution",
        **versioned(VALIDATION_GRADIENTS_VERSION, given.projection, given.span, partition_expr="checkpoint"),
        partitions_def=checkpoint_partitions(given.checkpoints),
        kinds={"pytorch", "delta"},
        **GPU_STEP,
        check_specs=[
            AssetCheckSpec(
                "validation_gradients_vectors_finite",
                asset="validation_gradients",
                blocking=True,
                description="Every gradient is finite and of the projection's dimension k.",
            )
        ],
        description="Unweighted projected ∇ log π of every rollout (target=rollout) and reference answer "
        "(target=reference) at each checkpoint.",
    )
    def validation_gradients(
        context: AssetExecutionContext,
        rollouts: pl.DataFrame,
        validation_queries: pl.DataFrame,
        projection_basis: pl.DataFrame,
        model: ModelResource,
        warehouse: Warehouse,
    ):
        checkpoint = context.partition_key
        started = time.perf_counter()
        at_checkpoint = checkpoint_model(checkpoint, model, warehouse)
        tokenizer, network = at_checkpoint.load_tokenizer(), at_checkpoint.load_model(options.target_modules)
        fingerprint = at_checkpoint.fingerprint()
        _require_sampled_from(rollouts, fingerprint, checkpoint)
        projector = LinearGradientProjector(network, options, _load_basis(projection_basis, fingerprint, options))
        ids, prompt_ids, response_ids = validation_token_pairs(tokenizer, rollouts, validation_queries, given.span.marker)
        tick = progress_logger(context, f"checkpoint {checkpoint} validation gradients", "sequences")
        table = gradient_frame(
            ids, projector, tokenizer, prompt_ids, response_ids, given.layout.batch_size, fingerprint, tick, context.log.debug
        ).select(pl.lit(checkpoint).alias("checkpoint"), pl.all())
        tokens = sequence_tokens(prompt_ids, response_ids)
        cost = gradient_pass_cost("gradients", [tokens], time.perf_counter() - started, checkpoint)
        preview = table_metadata(table, preview_columns=["rollout_id", "target", "grad_norm", "loss", "n_tokens"])
        shape = {"dimension": projector.dimension, "layers": len(projector.layers)}
        yield Output(table, metadata={**preview, **shape, **cost.metadata(stored_reference(given.cost.sft, warehouse))})
        yield vectors_result("validation_gradients_vectors_finite", table)

    return validation_gradients


def _training_gradients_asset(given: GradientsGiven):
    """The pool's gradients by checkpoint × shard (hashed: the projection and the passes' layout)."""
    options = given.projection.options(given.gradient_checkpointing)

    @asset(
        group_name="attribution",
        **versioned(
            GRADIENTS_VERSION, given.projection, given.layout, partition_expr={"checkpoint": "checkpoint", "shard": "shard"}
        ),
        partitions_def=checkpoint_shard_partitions(given.checkpoints, given.layout.shards),
        kinds={"pytorch", "delta"},
        **GPU_STEP,
        check_specs=[
            AssetCheckSpec(
                "vectors_finite",
                asset="training_gradient_projections",
                blocking=True,
                description="Every gradient in the shard is finite and of dimension k.",
            )
        ],
        description="Projected ∇ log π of every pool example at each checkpoint, sharded by a hash of example_id; "
        "unchanged rows are reused.",
    )
    def training_gradient_projections(
        context: AssetExecutionContext,
        training_pool: pl.DataFrame,
        projection_basis: pl.DataFrame,
        model: ModelResource,
        warehouse: Warehouse,
    ):
        keys = context.partition_key.keys_by_dimension
        checkpoint, shard = keys["checkpoint"], keys["shard"]
        where, started = f"checkpoint {checkpoint}, shard {shard}", time.perf_counter()
        examples = _shard_rows(training_pool, shard, given.layout.shards)
        at_checkpoint = checkpoint_model(checkpoint, model, warehouse)
        fingerprint = at_checkpoint.fingerprint()
        basis = _load_basis(projection_basis, fingerprint, options)
        reused = _reusable_rows(warehouse, checkpoint, shard, fingerprint, basis.fingerprint(), examples["example_id"])
        log_reuse(context.log, where, examples.height, reused.height)
        label = f"{where} gradients" + (f" ({reused.height} reused)" if reused.height else "")
        tick = functools.partial(progress_logger, context, label, "examples")  # started once the model is loaded
        compute = functools.partial(
            _pool_gradients, at_checkpoint, options, basis, given.layout.batch_size, fingerprint, tick, context.log.debug
        )
        table, todo = shard_gradients(checkpoint, shard, examples, reused, compute)
        seconds, reference = time.perf_counter() - started, full_sft_reference(given.cost.sft, training_pool)
        yield Output(table, metadata=_shard_metadata(table, checkpoint, examples, todo, reused, seconds, reference, model))
        yield vectors_result("vectors_finite", table)

    return training_gradient_projections


def _shard_rows(training_pool: pl.DataFrame, shard: str, n_shards: int) -> pl.DataFrame:
    return training_pool.filter(
        pl.col("example_id").map_elements(lambda i: shard_of(i, n_shards), return_dtype=pl.String) == shard
    )


def log_reuse(log, where: str, examples: int, reused: int) -> None:
    log.debug(f"{where}: {examples} examples, reusing {reused}, computing {examples - reused}")
    if reused == examples:
        log.info(f"{where}: all {examples} examples' gradients reused from the stored table")


def _pool_gradients(at_checkpoint: ModelResource, options, basis, batch_size, fingerprint, progress, log, todo):
    """The projected gradients of the pool examples ``todo`` under the model at a checkpoint
    (``progress()``: the pass's progress callback, made once the model is loaded)."""
    tokenizer, network = at_checkpoint.load_tokenizer(), at_checkpoint.load_model(options.target_modules)
    projector = LinearGradientProjector(network, options, basis)
    prompt_ids, response_ids = pool_token_pairs(tokenizer, todo["messages"])
    ids = {"example_id": todo["example_id"].to_list()}
    return gradient_frame(ids, projector, tokenizer, prompt_ids, response_ids, batch_size, fingerprint, progress(), log)


def _load_basis(frame: pl.DataFrame, fingerprint: str, options: ProjectionOptions) -> ProjectionBasis:
    fitted_for = set(frame["model_fingerprint"].unique())
    if fitted_for != {fingerprint}:
        raise ValueError(f"projection_basis was fitted on model {sorted(fitted_for)}, not {fingerprint}: re-materialize it")
    return ProjectionBasis.from_frame(frame, options)


def _require_finite(basis: ProjectionBasis, checkpoint: str, dtype: str) -> None:
    """Never commit a basis with NaN or inf: every gradient projected with it would be NaN."""
    non_finite = basis.non_finite_layers()
    if non_finite:
        raise ValueError(
            f"checkpoint {checkpoint}: the projection basis of {len(non_finite)} layers ({', '.join(non_finite[:3])}) "
            f"holds NaN or inf: the references' activations or gradients overflow at model.dtype {dtype} "
            "(float32 is the safe choice)"
        )


def _require_sampled_from(rollouts: pl.DataFrame, fingerprint: str, checkpoint: str) -> None:
    """The rollouts are the model's at this checkpoint: differentiated under another, they are off-policy."""
    stale = set(rollouts["model_fingerprint"].unique()) - {fingerprint}
    if stale:
        raise ValueError(
            f"rollouts[{checkpoint}] were sampled from model {sorted(stale)}, not {fingerprint}: re-materialize them"
        )


def _shard_metadata(table, checkpoint: str, examples, todo, reused, seconds: float, reference, model: ModelResource) -> dict:
    """A shard's preview, the rows reused and computed, and its cost: the examples computed here (reused
    rows cost nothing again), prompt and response; and, where rows were reused, what the whole shard
    costs from scratch."""
    preview = table_metadata(table, preview_columns=["example_id", "grad_norm", "loss", "n_tokens"])
    done = {"rows_reused": reused.height, "rows_computed": todo.height, "wall_seconds": seconds, "device": model.device_label}
    computed = (todo["n_prompt_tokens"] + todo["n_response_tokens"]).to_list() if todo.height else []
    whole = (
        gradient_pass_cost("gradients", (examples["n_prompt_tokens"] + examples["n_response_tokens"]).to_list())
        if reused.height
        else None
    )
    return {**preview, **done, **gradient_pass_cost("gradients", computed, seconds, checkpoint).metadata(reference, whole)}


def _reusable_rows(
    warehouse: Warehouse,
    checkpoint: str,
    shard: str,
    model_fingerprint: str,
    projection_fingerprint: str,
    example_ids: pl.Series,
) -> pl.DataFrame:
    """Rows of the previous version of this partition computed for the same examples, model and
    projection (each example's once: a partition written twice over is repaired by rewriting it)."""
    if not warehouse.exists("training_gradient_projections"):
        return pl.DataFrame()
    previous = warehouse.scan("training_gradient_projections")
    return (
        previous.filter(
            (pl.col("checkpoint") == checkpoint)
            & (pl.col("shard") == shard)
            & (pl.col("model_fingerprint") == model_fingerprint)
            & (pl.col("projection_fingerprint") == projection_fingerprint)
            & pl.col("example_id").is_in(example_ids.implode())
        )
        .unique("example_id", keep="first", maintain_order=True)
        .collect()
    )
