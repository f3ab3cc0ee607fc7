"""The embedded demo: task files and a tiny base model trained from scratch (no download, CPU).

These assets write the *inputs* the pipeline's observable sources then watch, exactly as a user's
own files would be: the demo exercises the same path as real data.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, asset

from drift_assets.defs.metadata import loss_picture, table_metadata
from drift_assets.defs.placement import GPU_STEP
from drift_assets.settings import DemoSettings, setting, unhashed, versioned
from drift_assets.tasks import base_model_record, saved_base_model
from drift_assets.tasks.demo_outputs import check_model_directory, write_demo_files

DEMO_VERSION = "2"


@dataclass(frozen=True)
class DemoTask:
    demo: DemoSettings = setting("demo")


@dataclass(frozen=True)
class DemoGiven:
    """The demo task (hashed by both assets) and the model's dtype (hashed by the model's); not hashed:
    where the files and the model go (data.*, model.path, resolved; None: not set)."""

    task: DemoTask
    dtype: str = setting("model.dtype")
    inputs: dict[str, str | None] = unhashed("inputs")


def build_demo_assets(given: DemoGiven) -> list:
    demo, model_path = given.task.demo, given.inputs["model.path"]
    files = {split: given.inputs[f"data.{split}"] for split in ("training_pool", "validation_queries", "test_queries")}
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
        **versioned(DEMO_VERSION, given.task),
        kinds={"python", "delta"},
        description=f"Writes the {task.name} task's training pool, validation and test queries (JSONL) from a seed: {task.description}.",
    )
    def demo_task_files(context: AssetExecutionContext) -> pl.DataFrame:
        splits = {
            "training_pool": pool_rows(),
            "validation_queries": task.query_rows(demo.n_validation, demo.seed, "validation"),
        }
        if files["test_queries"]:
            splits["test_queries"] = task.query_rows(demo.n_test, demo.seed, "test")
        check_model_directory(model_path)  # before any write: the model asset comes next
        table = pl.DataFrame(
            write_demo_files({split: (Path(files[split]), rows) for split, rows in splits.items()}, context.log.info)
        )
        pool = pl.DataFrame(splits["training_pool"])
        context.add_output_metadata(
            {
                **table_metadata(table),
                "pool_category_counts": dict(pool["category"].value_counts(sort=True).iter_rows()),
            }
        )
        return table

    @asset(
        group_name="demo",
        **versioned(DEMO_VERSION, given),
        kinds={"pytorch", "delta"},
        **GPU_STEP,
        description="Trains the demo task's tiny Llama from scratch (in the paper's regime, then fine-tunes it on the pool) "
        "and saves it to model.path with save_pretrained.",
    )
    def demo_base_model(context: AssetExecutionContext) -> pl.DataFrame:
        check_model_directory(model_path)  # before minutes of training, not after
        recipe, log = demo.recipe(), context.log
        build = base_model_build_key(recipe)
        summary = saved_base_model(task, demo.base_model_seed, recipe, pool_rows, model_path, build, log.info, log.warning)
        table = pl.DataFrame([base_model_record(model_path, summary)])
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
