"""A warm-up run on the pool, saved as a model at each of its checkpoints.

Built unless ``warmup.steps`` is empty. Each step is a partition of ``warmup_checkpoints`` and a
checkpoint of the rollouts → gradients chain beside ``base`` (:mod:`drift_assets.assets.checkpoints`);
``influence_scores`` averages the standardized scores of all of them
(:mod:`drift_assets.core.trajectory` says why).
"""

from dataclasses import replace
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, BackfillPolicy, asset

from drift_assets.assets.checkpoints import WARMUP, saved_checkpoint, warmup_partitions
from drift_assets.assets.metadata import loss_picture, table_metadata
from drift_assets.assets.placement import GPU_STEP
from drift_assets.core.adapters import add_adapter
from drift_assets.core.trajectory import checkpoint_key, warm_up
from drift_assets.resources import ModelResource
from drift_assets.settings import Reads, Settings

# 2: a bf16/fp16 model fine-tunes float32 master weights; 3: one partition per checkpoint; 4: LoRA adapters (warmup.lora)
WARMUP_VERSION = "4"


def build_warmup_assets(settings: Settings) -> list:
    reads = Reads(settings, WARMUP, "warmup_schedule", "warmup.lora", "model.dtype")
    steps_of = {checkpoint_key(step): step for step in reads.warmup_steps}
    warmup_options = reads.warmup_options()
    lora = reads.warmup.lora.options() if reads.warmup.lora else None
    directory = Path(reads.resolve(reads.warmup.checkpoint_dir))

    @asset(
        name=WARMUP,
        group_name="attribution",
        code_version=reads.code_version(WARMUP_VERSION),
        metadata={"partition_expr": "checkpoint", **reads.metadata()},
        partitions_def=warmup_partitions(settings),
        # The run trains once up to the last step asked for and saves every step asked for on the way.
        backfill_policy=BackfillPolicy.single_run(),
        deps=["base_model"],
        kinds={"pytorch", "delta"},
        **GPU_STEP,
        description="SFT on the whole pool at a constant learning rate (of every weight, or of LoRA adapters), "
        "saved at the warm-up steps as model directories (or adapter directories).",
    )
    def warmup_checkpoints(context: AssetExecutionContext, training_pool: pl.DataFrame, model: ModelResource) -> pl.DataFrame:
        keys = sorted(context.partition_keys)
        steps = [steps_of[key] for key in keys]
        tokenizer, network = model.load_tokenizer(), model.load_model()
        base = model.fingerprint()
        # Another base model or another kind of run never overwrites these checkpoints.
        run_directory = directory / (f"{base}-lora" if lora else base)
        if lora:
            network = add_adapter(network, lora, warmup_options.seed)
        trains = f"LoRA adapters (rank {lora.rank})" if lora else "every weight"
        context.log.info(
            f"warm-up: {max(steps)} steps on {training_pool.height} examples, training {trains}; "
            f"checkpoints at {steps} in {run_directory}"
        )

        def save(step: int) -> None:
            path = run_directory / checkpoint_key(step)
            network.save_pretrained(path)
            tokenizer.save_pretrained(path)

        # A constant learning rate: the first n steps of a longer run are the run of n steps.
        options = replace(warmup_options, steps=max(steps))
        losses, run = warm_up(network, tokenizer, training_pool["messages"].to_list(), options, steps, save, context.log.info)
        paths = [run_directory / key for key in keys]
        saved = [saved_checkpoint(model, path) for path in paths]
        table = pl.DataFrame(
            {
                "checkpoint": keys,
                "step": steps,
                "path": [str(path) for path in paths],
                "adapter": [at_step.adapter is not None for at_step in saved],
                "model_fingerprint": [at_step.fingerprint() for at_step in saved],
                "base_model_fingerprint": [base] * len(paths),
                "loss": [losses[step] for step in steps],
            }
        )
        context.add_output_metadata(
            {
                **table_metadata(table, preview_rows=len(paths)),
                "loss_curve": loss_picture({"warm-up SFT": run.losses}),
            }
        )
        return table

    return [warmup_checkpoints]
