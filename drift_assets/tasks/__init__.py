"""The embedded tasks the demo and the suite benchmark run on, each with its own tiny base model.

``demo.task`` in the settings picks one. :data:`TASKS` lists them; ``held_out`` marks the one
that no default is chosen by.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from drift_assets.core.data.fingerprint import model_fingerprint
from drift_assets.core.training.sft import SftOptions, SftRun, fine_tune
from drift_assets.tasks import tiny_model
from drift_assets.tasks.arithmetic import Arithmetic
from drift_assets.tasks.base import NOISE_KINDS, PretrainRecipe, Task, TaskDefaults
from drift_assets.tasks.binary import Binary
from drift_assets.tasks.brackets import Brackets
from drift_assets.tasks.choice import Choice
from drift_assets.tasks.count import Count
from drift_assets.tasks.demo_outputs import model_stamp, replace_model_directory
from drift_assets.tasks.digits import Digits
from drift_assets.tasks.interleave import Interleave
from drift_assets.tasks.position import Position
from drift_assets.tasks.remove import Remove
from drift_assets.tasks.reverse import Reverse
from drift_assets.tasks.roman import Roman
from drift_assets.tasks.rotate import Rotate
from drift_assets.tasks.runs import Runs
from drift_assets.tasks.shift import Shift
from drift_assets.tasks.sort import Sort
from drift_assets.tasks.spell import Spell
from drift_assets.tasks.swap import Swap
from drift_assets.tasks.unique import Unique

__all__ = ["NOISE_KINDS", "TASKS", "BaseModel", "PretrainRecipe", "Task", "TaskDefaults", "build_base_model", "get_task"]

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Arithmetic(),
        Sort(),
        Spell(),
        Count(),
        Choice(),
        Shift(),
        Digits(),
        Brackets(),
        Roman(),
        Binary(),
        Runs(),
        Interleave(),
        Unique(),
        Position(),
        Rotate(),
        Reverse(),
        Remove(),
        Swap(),
    )
}
CALIBRATION_QUERIES = 64


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"demo.task: unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]


@dataclass
class BaseModel:
    model: object
    tokenizer: object
    pretraining: tiny_model.PretrainResult
    continued_sft: SftRun | None  # the paper regime's SFT on the pool, where the task has one


def pretrained_model(task: Task, seed: int, recipe: PretrainRecipe, tokenizer, log: Callable[[str], None]):
    """(model, :class:`~drift_assets.tasks.tiny_model.PretrainResult`): pre-trained from scratch until
    its calibration accuracy lands in the recipe's band."""
    model = tiny_model.build_tiny_llama(tokenizer, recipe.shape, seed=seed)
    result = tiny_model.pretrain(
        model,
        tokenizer,
        task.pretraining_corpus(recipe.examples, seed),
        task.query_rows(CALIBRATION_QUERIES, seed, "calibration"),
        seed=seed,
        grading=task.grading_options(),
        target_accuracy=recipe.target_accuracy,
        max_steps=recipe.max_steps,
        learning_rate=recipe.learning_rate,
        log=log,
    )
    return model, result


def build_base_model(
    task: Task,
    seed: int,
    recipe: PretrainRecipe,
    pool_rows: list[dict],
    log: Callable[[str], None],
) -> BaseModel:
    """The task's base model: pre-trained from scratch to its calibration band and, in the paper's
    regime (``recipe.continued_sft_steps``), then fine-tuned on the whole pool ``pool_rows``."""
    from drift_assets.tasks.pinned import find_pinned

    tokenizer = tiny_model.build_char_tokenizer(chat_template=task.chat_template)
    pinned = find_pinned(task, seed, recipe, log=log)
    if pinned is not None:
        log(
            f"the {task.name} task's pre-trained model is pinned ({pinned.path.name}, sha256 checked: {pinned.record['steps']} "
            f"steps, calibration accuracy {pinned.calibration_accuracy:.3f}): loading it instead of pre-training"
        )
        model, result = pinned.load(tokenizer, recipe, seed), pinned.pretrain_result()
    else:
        model, result = pretrained_model(task, seed, recipe, tokenizer, log)
    continued = None
    if recipe.continued_sft_steps:
        messages = [
            json.dumps([{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}])
            for row in pool_rows
        ]
        log(f"fine-tuning on the whole pool ({len(messages)} examples, {recipe.continued_sft_steps} steps): the paper's regime")
        continued = fine_tune(
            model,
            tokenizer,
            messages,
            SftOptions(steps=recipe.continued_sft_steps, learning_rate=recipe.continued_sft_learning_rate, seed=seed),
            log=log,
        )
    return BaseModel(model, tokenizer, result, continued)


def saved_base_model(
    task: Task,
    seed: int,
    recipe: PretrainRecipe,
    pool_rows: Callable[[], list[dict]],
    path: str,
    build: str,
    log: Callable[[str], None],
    warn: Callable[[str], None],
) -> dict:
    """The summary of the task's base model in the directory ``path``: the one there where its stamp
    says the same ``build`` (the same recipe on the same inputs trains the same model), else one
    built (:func:`build_base_model`) and saved there in its place, stamped."""
    stamp = model_stamp(path)
    if stamp and stamp.get("build") == build:
        log(f"{path} already holds the {task.name} model this recipe trains; not retraining it")
        return stamp["summary"]
    built = build_base_model(task, seed, recipe, pool_rows(), log=log)
    result = built.pretraining
    if not result.reached_target:
        warn(f"calibration accuracy {result.calibration_accuracy:.2f} is outside demo.target_accuracy {recipe.target_accuracy}")
    summary = {
        "task": task.name,
        "n_parameters": sum(p.numel() for p in built.model.parameters()),
        "pretrain_steps": result.steps,
        "calibration_accuracy": result.calibration_accuracy,
        "continued_sft_steps": recipe.continued_sft_steps,
        "wall_seconds": result.wall_seconds,
        "accuracy_curve": {str(step): accuracy for step, accuracy in result.accuracy_curve},
        "curves": {
            "pre-training": result.loss_curve,
            **({"continued SFT on the pool": built.continued_sft.losses} if built.continued_sft else {}),
        },
    }
    replace_model_directory(
        path,
        lambda directory: tiny_model.save_model(built.model, built.tokenizer, directory),
        {"build": build, "summary": summary},
    )
    return summary


def base_model_record(path: str, summary: dict) -> dict:
    """The ``demo_base_model`` table's row: the model directory, its fingerprint and what
    :func:`saved_base_model` summarized, but the curves (pictures in the metadata, not columns)."""
    kept = {key: value for key, value in summary.items() if key not in ("accuracy_curve", "curves")}
    return {"path": path, "model_fingerprint": model_fingerprint(path), **kept}
