"""The embedded demo: task files and a tiny base model trained from scratch (no download, CPU).

These assets write the *inputs* the pipeline's observable sources then watch, exactly as a user's
own files would be: the demo exercises the same path as real data.
"""

from pathlib import Path

import polars as pl
from dagster import AssetExecutionContext, asset

from drift_assets.assets.metadata import table_metadata
from drift_assets.core import demo_task, tiny_model
from drift_assets.core.demo_outputs import check_model_directory, replace_model_directory, write_demo_jsonl
from drift_assets.core.fingerprint import content_hash, model_fingerprint
from drift_assets.settings import Settings, code_version

DEMO_VERSION = "2"


def build_demo_assets(settings: Settings) -> list:
    demo = settings.demo

    @asset(
        group_name="demo",
        code_version=code_version("demo_task_files", DEMO_VERSION, settings),
        kinds={"python", "delta"},
        description="Writes the demo's training pool, validation and test queries (JSONL) from a seed.",
    )
    def demo_task_files(context: AssetExecutionContext) -> pl.DataFrame:
        splits = {
            "training_pool": (settings.data.training_pool, demo_task.training_pool_rows(demo.n_train, demo.corrupted_fraction, demo.off_task_fraction, demo.seed)),
            "validation_queries": (settings.data.validation_queries, demo_task.query_rows(demo.n_validation, demo.seed, "validation")),
        }
        if settings.data.test_queries:
            splits["test_queries"] = (settings.data.test_queries, demo_task.query_rows(demo.n_test, demo.seed, "test"))
        paths = {split: Path(settings.resolve(relative_path)) for split, (relative_path, _) in splits.items()}
        check_model_directory(settings.model_path)  # before any write: the model asset comes next
        records = []
        for split, (_, rows) in splits.items():
            changed = write_demo_jsonl(paths[split], rows, f"data.{split}")
            records.append({"split": split, "path": str(paths[split]), "rows": len(rows), "sha256": content_hash(paths[split])})
            context.log.info(f"{'wrote' if changed else 'unchanged:'} {len(rows)} rows {'to' if changed else 'in'} {paths[split]}")
        table = pl.DataFrame(records)
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
        code_version=code_version("demo_base_model", DEMO_VERSION, settings),
        kinds={"pytorch", "delta"},
        pool="gpu",
        description="Trains the demo's tiny Llama from scratch and saves it to model.path with save_pretrained.",
    )
    def demo_base_model(context: AssetExecutionContext) -> pl.DataFrame:
        check_model_directory(settings.model_path)  # before minutes of training, not after
        tokenizer = tiny_model.build_char_tokenizer()
        model = tiny_model.build_tiny_llama(tokenizer, seed=demo.seed)
        corpus = demo_task.pretraining_corpus(demo.pretrain_examples, demo.seed)
        result = tiny_model.pretrain(
            model, tokenizer, corpus, seed=demo.seed, target_accuracy=demo.target_accuracy,
            max_steps=demo.max_pretrain_steps, log=context.log.info,
        )
        if not result.reached_target:
            context.log.warning(
                f"calibration accuracy {result.calibration_accuracy:.2f} is outside demo.target_accuracy {demo.target_accuracy}"
            )
        replace_model_directory(settings.model_path, lambda directory: tiny_model.save_model(model, tokenizer, directory))
        table = pl.DataFrame(
            [{
                "path": settings.model_path,
                "model_fingerprint": model_fingerprint(settings.model_path),
                "n_parameters": sum(p.numel() for p in model.parameters()),
                "pretrain_steps": result.steps,
                "calibration_accuracy": result.calibration_accuracy,
                "wall_seconds": result.wall_seconds,
            }]
        )
        context.add_output_metadata(
            {
                **table_metadata(table),
                "calibration_accuracy": result.calibration_accuracy,
                "accuracy_curve": {str(step): accuracy for step, accuracy in result.accuracy_curve},
                "wall_seconds": result.wall_seconds,
            }
        )
        return table

    return [demo_task_files, demo_base_model]
