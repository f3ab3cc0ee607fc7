"""Pinned base models: each embedded task's tiny model, pre-trained once and kept in the package.

Pre-training on the CPU is not bit-identical across CPU types, and its stopping rule (the first
evaluation whose calibration accuracy lands in the band) turns that rounding into another model,
so the suite's figures moved from machine to machine more than the methods differ. The base models
the demo, the tests and the suite start from are therefore built once, stored under ``pinned/``
(weights in float16, a few hundred kB each) with their sha256 and their calibration accuracy in
``pins.json``, and loaded wherever a build asks for the same pre-training: the same task, chat
template, seed, recipe and pre-training corpus (:func:`pretraining_key`). A file whose checksum does
not match is not used (the model is pre-trained instead, with a warning).

    .venv/bin/python -m drift_assets.tasks.pinned             # rebuild every pin (minutes per model)
    .venv/bin/python -m drift_assets.tasks.pinned --only sort  # one
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from drift_assets.tasks import CALIBRATION_QUERIES, TASKS, PretrainRecipe, Task, get_task, pretrained_model, tiny_model

logger = logging.getLogger(__name__)

PINNED_DIR = Path(__file__).resolve().parent / "pinned"
MANIFEST = PINNED_DIR / "pins.json"


@dataclass(frozen=True)
class Pin:
    """One pinned model: a task at a model seed with its recipe (the task's own, or changed)."""

    name: str
    task: str
    seed: int = 0
    target_accuracy: tuple[float, float] | None = None
    hidden_size: int | None = None  # as demo.hidden_size: heads of 64, an MLP three times as wide

    def recipe(self, task: Task) -> PretrainRecipe:
        recipe = task.recipe
        if self.target_accuracy is not None:
            recipe = replace(recipe, target_accuracy=self.target_accuracy)
        if self.hidden_size is not None:
            recipe = recipe.with_width(self.hidden_size)
        return recipe


# Every task's model at seed 0 (the demo's, the suite's), and the tests' narrower demo model
# (drift_assets_tests/conftest.py SMALL_DEMO: a test keeps the two in step).
PINS = (
    *(Pin(name, name) for name in TASKS),
    Pin("arithmetic-tests", "arithmetic", target_accuracy=(0.2, 0.5), hidden_size=64),
)


def pretraining_key(task: Task, seed: int, recipe: PretrainRecipe) -> str:
    """What a pre-trained model is a function of: the task, its tokenizer's template, the seed, the
    pre-training part of the recipe, the corpus and the calibration queries (continued SFT on the
    pool comes after, and is not pinned)."""
    corpus = task.pretraining_corpus(recipe.examples, seed)
    calibration = task.query_rows(CALIBRATION_QUERIES, seed, "calibration")
    parts = {
        "task": task.name,
        "chat_template": task.chat_template,
        "seed": seed,
        "recipe": {key: value for key, value in asdict(recipe).items() if not key.startswith("continued_sft")},
        "corpus": hashlib.sha256(json.dumps(corpus).encode()).hexdigest(),
        "calibration": hashlib.sha256(json.dumps(calibration, sort_keys=True).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest() -> dict[str, dict]:
    return json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}


@dataclass(frozen=True)
class PinnedModel:
    name: str
    path: Path
    record: dict  # the manifest's entry: key, sha256, steps, calibration_correct, …

    @property
    def calibration_accuracy(self) -> float:
        return self.record["calibration_correct"] / self.record["calibration_total"]

    def pretrain_result(self) -> tiny_model.PretrainResult:
        """What pre-training reported when the pin was built (its curves included)."""
        record = self.record
        return tiny_model.PretrainResult(
            steps=record["steps"],
            calibration_accuracy=self.calibration_accuracy,
            accuracy_curve=[tuple(point) for point in record["accuracy_curve"]],
            loss_curve=record["loss_curve"],
            wall_seconds=0.0,
            reached_target=record["reached_target"],
        )

    def load(self, tokenizer, recipe: PretrainRecipe, seed: int):
        """The model in float32 (its weights as pinned, rounded to float16)."""
        from safetensors.torch import load_file

        model = tiny_model.build_tiny_llama(tokenizer, recipe.shape, seed=seed)
        model.load_state_dict({name: tensor.float() for name, tensor in load_file(self.path).items()})
        return model.eval()


def find_pinned(task: Task, seed: int, recipe: PretrainRecipe, log: Callable[[str], None] = logger.warning) -> PinnedModel | None:
    """The pinned model for this pre-training, if one is stored and its checksum matches."""
    key = pretraining_key(task, seed, recipe)
    for name, record in manifest().items():
        if record["key"] != key:
            continue
        path = PINNED_DIR / f"{name}.safetensors"
        if not path.exists() or _sha256(path) != record["sha256"]:
            log(f"the pinned {name} model ({path}) is missing or does not match its sha256 in {MANIFEST}: pre-training instead")
            return None
        return PinnedModel(name, path, record)
    return None


def calibration_correct(model, tokenizer, task: Task, seed: int) -> tuple[int, int]:
    """Greedy answers right of the task's calibration queries, with the fine-tunes' fixed threads."""
    from drift_assets.core.generation.engines import TransformersEngine
    from drift_assets.core.training.sft import evaluate, fixed_cpu_threads

    queries = task.query_rows(CALIBRATION_QUERIES, seed, "calibration")
    with fixed_cpu_threads("cpu"), torch.no_grad():
        result = evaluate(TransformersEngine(model, tokenizer, device="cpu"), tokenizer, queries, 64, task.grading_options())
    return result.correct, result.total


def build_pin(pin: Pin, log: Callable[[str], None] = logger.info) -> dict:
    """Pre-train ``pin``'s model, store it in float16 and return its manifest entry."""
    from safetensors.torch import save_file

    task = get_task(pin.task)
    recipe = pin.recipe(task)
    tokenizer = tiny_model.build_char_tokenizer(chat_template=task.chat_template)
    model, result = pretrained_model(task, pin.seed, recipe, tokenizer, log)
    PINNED_DIR.mkdir(parents=True, exist_ok=True)
    path = PINNED_DIR / f"{pin.name}.safetensors"
    save_file({name: tensor.detach().half().contiguous() for name, tensor in model.state_dict().items()}, path)
    # What is pinned is the float16 model: its calibration accuracy is measured again, as loaded.
    pinned = PinnedModel(pin.name, path, {}).load(tokenizer, recipe, pin.seed)
    correct, total = calibration_correct(pinned, tokenizer, task, pin.seed)
    low, high = recipe.target_accuracy
    return {
        "key": pretraining_key(task, pin.seed, recipe),
        "task": pin.task,
        "seed": pin.seed,
        "recipe": {"target_accuracy": list(recipe.target_accuracy), "hidden_size": recipe.shape.hidden_size},
        "sha256": _sha256(path),
        "steps": result.steps,
        "calibration_correct": correct,
        "calibration_total": total,
        "reached_target": low <= correct / total <= high,
        "accuracy_curve": [list(point) for point in result.accuracy_curve],
        "loss_curve": result.loss_curve,
        "pretrain_seconds": round(result.wall_seconds, 1),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild the pinned base models (pre-training each from scratch).")
    parser.add_argument("--only", help="comma-separated pin names (default: all): " + ", ".join(pin.name for pin in PINS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    wanted = set(args.only.split(",")) if args.only else {pin.name for pin in PINS}
    unknown = wanted - {pin.name for pin in PINS}
    if unknown:
        parser.error(f"--only: unknown pins {sorted(unknown)}")
    entries = manifest()
    for pin in PINS:
        if pin.name in wanted:
            entries[pin.name] = entry = build_pin(pin)
            MANIFEST.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
            print(
                f"{pin.name}: {entry['steps']} steps, calibration {entry['calibration_correct']}/{entry['calibration_total']}"
                f" (float16), sha256 {entry['sha256'][:12]}",
                flush=True,
            )


if __name__ == "__main__":
    main()
