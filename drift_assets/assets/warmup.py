"""A warm-up run on the pool, saved as a model at each of its checkpoints.

Built unless ``warmup.steps`` is empty. Each step is a partition of ``warmup_checkpoints`` and a
checkpoint of the rollouts → gradients chain beside ``base`` (:mod:`drift_assets.assets.checkpoints`);
``influence_scores`` averages the standardized scores of all of them
(:mod:`drift_assets.core.trajectory` says why).
"""

from dataclasses import replace
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, BackfillPolicy, MetadataValue, asset

from drift_assets.assets.checkpoints import WARMUP, warmup_partitions
from drift_assets.assets.metadata import table_metadata
from drift_assets.core.charts import curves_markdown
from drift_assets.core.fingerprint import model_fingerprint
from drift_assets.core.trajectory import checkpoint_key, warm_up
from drift_assets.resources import ModelResource
from drift_assets.settings import Reads, Settings

WARMUP_VERSION = "3"  # 2: a bf16/fp16 model fine-tunes float32 master weights; 3: one partition per checkpoint


def build_warmup_assets(settings: Settings) -> list:
    reads = Reads(settings, WARMUP, "warmup_schedule", "model.dtype")
    steps_of = {checkpoint_key(step): step for step in reads.warmup_steps}
    warmup_options = reads.warmup_options()
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
        pool="gpu",
        description="SFT on the whole pool at a constant learning rate, saved as model directories at the warm-up steps.",
    )
    def warmup_checkpoints(context: AssetExecutionContext, training_pool: pl.DataFrame, model: ModelResource) -> pl.DataFrame:
        keys = sorted(context.partition_keys)
        steps = [steps_of[key] for key in keys]
        tokenizer, network = model.load_tokenizer(), model.load_model()
        base = model.fingerprint()
        run_directory = directory / base  # another base model never overwrites these checkpoints
        context.log.info(
            f"warm-up: {max(steps)} steps on {training_pool.height} examples; checkpoints at {steps} in {run_directory}"
        )

        def save(step: int) -> None:
            path = run_directory / checkpoint_key(step)
            network.save_pretrained(path)
            tokenizer.save_pretrained(path)

        # A constant learning rate: the first n steps of a longer run are the run of n steps.
        options = replace(warmup_options, steps=max(steps))
        losses, run = warm_up(network, tokenizer, training_pool["messages"].to_list(), options, steps, save, context.log.info)
        paths = [run_directory / key for key in keys]
        table = pl.DataFrame(
            {
                "checkpoint": keys,
                "step": steps,
                "path": [str(path) for path in paths],
                "model_fingerprint": [model_fingerprint(path) for path in paths],
                "base_model_fingerprint": [base] * len(paths),
                "loss": [losses[step] for step in steps],
            }
        )
        context.add_output_metadata(
            {
                **table_metadata(table, preview_rows=len(paths)),
                "loss_curve": MetadataValue.md(curves_markdown({"warm-up SFT": run.losses})),
            }
        )
        return table

    return [warmup_checkpoints]
