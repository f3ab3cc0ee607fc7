"""The embedded demo: task files and a tiny base model trained from scratch (no download, CPU).

These assets write the *inputs* the pipeline's observable sources then watch, exactly as a user's
own files would be: the demo exercises the same path as real data.
"""

import hashlib
import json
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, asset

from drift_assets.defs.metadata import loss_picture, table_metadata
from drift_assets.defs.placement import GPU_STEP
from drift_assets.settings import Reads, Settings
from drift_assets.tasks import base_model_record, saved_base_model
from drift_assets.tasks.demo_outputs import check_model_directory, write_demo_files

DEMO_VERSION = "2"


def build_demo_assets(settings: Settings) -> list:
    files_reads = Reads(settings, "demo_task_files", "demo")
    model_reads = Reads(settings, "demo_base_model", "demo", "model.dtype")
    demo = files_reads.demo
    task = demo.spec()

    def pool_rows() -> list[dict]:
        return task.training_pool_rows(demo.pool_size(), demo.noise(), demo.seed)

    def base_model_build_key(recipe) -> str:
        """What the base model is a function of: the task, its tokenizer's template, seed, recipe, and
        (when it is fine-tuned on it) the pool."""
        pool = {"n": demo.pool_size(), "noise": demo.noise(), "seed": demo.seed} if recipe.continued_sft_steps else None
        parts = {
            "version": DEMO_VERSION,
            "task": task.name,
            "chat_template": task.chat_template,
            "seed": demo.base_model_seed,
            "recipe": repr(recipe),
            "pool": pool,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    @asset(
        group_name="demo",
        code_version=files_reads.code_version(DEMO_VERSION),
        metadata=files_reads.metadata(),
        kinds={"python", "delta"},
        description=f"Writes the {task.name} task's training pool, validation and test queries (JSONL) from a seed: {task.description}.",
    )
    def demo_task_files(context: AssetExecutionContext) -> pl.DataFrame:
        splits = {
            "training_pool": (files_reads.data.training_pool, pool_rows()),
            "validation_queries": (
                files_reads.data.validation_queries,
                task.query_rows(demo.n_validation, demo.seed, "validation"),
            ),
        }
        if files_reads.data.test_queries:
            splits["test_queries"] = (files_reads.data.test_queries, task.query_rows(demo.n_test, demo.seed, "test"))
        files = {split: (Path(files_reads.resolve(relative_path)), rows) for split, (relative_path, rows) in splits.items()}
        check_model_directory(files_reads.model_path)  # before any write: the model asset comes next
        table = pl.DataFrame(write_demo_files(files, context.log.info))
        pool = pl.DataFrame(splits["training_pool"][1])
        context.add_output_metadata(
            {
                **table_metadata(table),
                "pool_category_counts": {k: int(v) for k, v in zip(*pool["category"].value_counts(sort=True).to_dict().values())},
            }
        )
        return table

    @asset(
        group_name="demo",
        code_version=model_reads.code_version(DEMO_VERSION),
        metadata=model_reads.metadata(),
        kinds={"pytorch", "delta"},
        **GPU_STEP,
        description="Trains the demo task's tiny Llama from scratch (in the paper's regime, then fine-tunes it on the pool) "
        "and saves it to model.path with save_pretrained.",
    )
    def demo_base_model(context: AssetExecutionContext) -> pl.DataFrame:
        check_model_directory(model_reads.model_path)  # before minutes of training, not after
        recipe, log = demo.recipe(), context.log
        build = base_model_build_key(recipe)
        path = model_reads.model_path
        summary = saved_base_model(task, demo.base_model_seed, recipe, pool_rows, path, build, log.info, log.warning)
        table = pl.DataFrame([base_model_record(path, summary)])
        context.add_output_metadata(
            {
                **table_metadata(table),
                "calibration_accuracy": summary["calibration_accuracy"],
                "accuracy_curve": summary["accuracy_curve"],
                "wall_seconds": round(summary["wall_seconds"], 1),
                # Models built before the curves were kept have none.
                "training_curves": loss_picture(summary.get("curves", {})),
            }
        )
        return table

    return [demo_task_files, demo_base_model]
