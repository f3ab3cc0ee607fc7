"""A warm-up run on the pool, saved as a model at each of its checkpoints.

Built unless ``warmup.steps`` is empty. Each step is a partition of ``warmup_checkpoints`` and a
checkpoint of the rollouts → gradients chain beside ``base`` (:mod:`drift_assets.defs.checkpoints`);
``influence_scores`` averages the standardized scores of all of them
(:mod:`drift_assets.core.attribution.trajectory` says why). With ``warmup.checkpoints`` nothing is trained: each
listed model directory is checked and recorded as a partition instead.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from dagster import AssetExecutionContext, BackfillPolicy, asset

from drift_assets.core.attribution.less import OPTIMIZER_STATE_FILE
from drift_assets.core.attribution.trajectory import (
    check_given_checkpoint,
    checkpoint_key,
    warm_up_into,
    warmup_checkpoints_frame,
    warmup_run_directory,
)
from drift_assets.core.runtime.cost import StageCost, trained_cost
from drift_assets.defs.checkpoints import WARMUP, saved_checkpoint, warmup_partitions
from drift_assets.defs.cost import CostPlan, full_sft_reference, stored_reference
from drift_assets.defs.metadata import loss_picture, table_metadata
from drift_assets.defs.placement import GPU_STEP
from drift_assets.resources import ModelResource, Warehouse
from drift_assets.settings import LoraSettings, setting, unhashed, versioned, warmup_options

# 2: a bf16/fp16 model fine-tunes float32 master weights; 3: one partition per checkpoint; 4: LoRA adapters (warmup.lora);
# 5: AdamW's moments beside each checkpoint (warmup.optimizer_state)
WARMUP_VERSION = "5"
GIVEN_VERSION = "1"  # warmup.checkpoints: the listed directories, checked and recorded


@dataclass(frozen=True)
class WarmupRun:
    """The warm-up run as it will be run (hashed)."""

    schedule: dict[str, Any] = setting("warmup_schedule")
    lora: LoraSettings | None = setting("warmup.lora")
    dtype: str = setting("model.dtype")
    saves_optimizer_state: bool = setting("warmup_saves_optimizer_state")


@dataclass(frozen=True)
class ListedCheckpoints:
    """The model directories warmup.checkpoints lists, as written (hashed)."""

    paths: list[str] = setting("warmup.checkpoints")
    dtype: str = setting("model.dtype")


@dataclass(frozen=True)
class WarmupGiven:
    """A warm-up run, or the checkpoints listed in its place (the other None); not hashed: where they are
    (the run's directory, the listed ones resolved), gradient checkpointing (the same run, less memory),
    the checkpoints and the cost plan."""

    run: WarmupRun | None
    listed: ListedCheckpoints | None
    directory: str = unhashed("checkpoint_dir")
    resolved: dict[str, str] = unhashed("given_checkpoints")
    gradient_checkpointing: bool = unhashed("benchmark.sft.gradient_checkpointing")
    checkpoints: list[str] = unhashed("checkpoints")
    cost: CostPlan


def _warmup_asset(given: WarmupGiven, version: str, description: str, **placement):
    """The decorator of ``warmup_checkpoints``, trained or given: one partition per checkpoint, every
    partition a run asks for written by that one run."""
    return asset(
        name=WARMUP,
        group_name="attribution",
        **versioned(version, given.run or given.listed, partition_expr="checkpoint"),
        partitions_def=warmup_partitions(given.checkpoints),
        backfill_policy=BackfillPolicy.single_run(),
        deps=["base_model"],
        kinds={"pytorch", "delta"},
        description=description,
        **placement,
    )


def build_warmup_assets(given: WarmupGiven) -> list:
    if given.run is None:
        return [_given_checkpoints(given)]
    run_given = given.run
    steps_of = {checkpoint_key(step): step for step in run_given.schedule["steps"]}
    options = warmup_options(run_given.schedule, given.gradient_checkpointing)
    lora = run_given.lora.options() if run_given.lora else None
    directory, sft = Path(given.directory), given.cost.sft

    # The run trains once up to the last step asked for and saves every step asked for on the way.
    @_warmup_asset(
        given,
        WARMUP_VERSION,
        "SFT on the whole pool at a constant learning rate (of every weight, or of LoRA adapters), "
        "saved at the warm-up steps as model directories (or adapter directories).",
        **GPU_STEP,
    )
    def warmup_checkpoints(context: AssetExecutionContext, training_pool: pl.DataFrame, model: ModelResource) -> pl.DataFrame:
        started = time.perf_counter()
        keys = sorted(context.partition_keys)
        steps = [steps_of[key] for key in keys]
        tokenizer, network = model.load_tokenizer(), model.load_model()
        base = model.fingerprint()
        run_directory = warmup_run_directory(directory, base, lora is not None)
        messages = training_pool["messages"].to_list()
        losses, run = warm_up_into(
            run_directory, network, tokenizer, messages, options, steps, context.log.info, lora, run_given.saves_optimizer_state
        )
        paths = [run_directory / key for key in keys]
        table = _checkpoints_table(model, keys, paths, base, steps, [losses[step] for step in steps])
        # The run's cost, recorded on each checkpoint it saved (the pipeline's sum counts a run once).
        cost = trained_cost("warm-up", run.tokens, time.perf_counter() - started)
        context.add_output_metadata(
            {
                **table_metadata(table, preview_rows=len(paths)),
                "loss_curve": loss_picture({"warm-up SFT": run.losses}),
                **cost.metadata(full_sft_reference(sft, training_pool)),
            }
        )
        return table

    return [warmup_checkpoints]


def _given_checkpoints(warmup: WarmupGiven):
    """``warmup_checkpoints`` where ``warmup.checkpoints`` lists the directories: each checked (a model
    directory with model.path's tokenizer) and recorded as its partition, nothing trained. It reads
    no pool: the directories are what they are whatever the pool holds now."""
    given, sft = warmup.resolved, warmup.cost.sft

    @_warmup_asset(
        warmup,
        GIVEN_VERSION,
        "The model directories warmup.checkpoints lists (checkpoints of a fine-tune already run), checked "
        "against model.path's tokenizer and recorded: no warm-up run is trained.",
    )
    def warmup_checkpoints(context: AssetExecutionContext, model: ModelResource, warehouse: Warehouse) -> pl.DataFrame:
        started = time.perf_counter()
        # Every entry, not only this run's partitions: a bad one fails before any step at any checkpoint.
        for index, path in enumerate(given.values()):
            check_given_checkpoint(index, path, model.path)
        keys = sorted(context.partition_keys, key=list(given).index)
        context.log.info(
            f"scoring at the {len(given)} checkpoints warmup.checkpoints lists (no warm-up run): "
            + ", ".join(f"{key} = {given[key]}" for key in keys)
        )
        table = _checkpoints_table(model, keys, [given[key] for key in keys], model.fingerprint())
        cost = StageCost("warm-up", 0, 0, time.perf_counter() - started)  # nothing trained
        context.add_output_metadata(
            {
                **table_metadata(table, preview_rows=len(keys)),
                **cost.metadata(stored_reference(sft, warehouse)),
            }
        )
        return table

    return warmup_checkpoints


def _checkpoints_table(
    model: ModelResource,
    keys: list[str],
    paths: list[Path] | list[str],
    base: str,
    steps: list[int] | None = None,
    losses: list[float] | None = None,
) -> pl.DataFrame:
    """The ``warmup_checkpoints`` table of the checkpoints saved (or given) at ``paths``, each a model
    directory or a LoRA adapter on the base ``model`` (fingerprint ``base``); a trained run's (``steps``)
    also records whether AdamW's moments were saved beside each."""
    saved = [saved_checkpoint(model, path) for path in paths]
    adapters, fingerprints = [at_key.adapter is not None for at_key in saved], [at_key.fingerprint() for at_key in saved]
    optimizer_state = [(Path(path) / OPTIMIZER_STATE_FILE).is_file() for path in paths] if steps is not None else None
    return warmup_checkpoints_frame(
        keys, [str(path) for path in paths], adapters, fingerprints, base, steps, losses, optimizer_state
    )
