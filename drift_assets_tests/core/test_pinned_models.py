"""The pinned base models: every file matches its checksum, loads, and answers its calibration
queries exactly as recorded when it was pinned; the demo, the tests and the suite build them
from the pin instead of pre-training."""

import pytest

from drift_assets.tasks import build_base_model, get_task, tiny_model
from drift_assets.tasks.pinned import MANIFEST, PINNED_DIR, PINS, _sha256, calibration_correct, find_pinned, manifest


def test_every_pin_is_stored_with_its_checksum():
    entries = manifest()
    assert sorted(entries) == sorted(pin.name for pin in PINS), f"{MANIFEST} and PINS disagree: rebuild the pins"
    for name, record in entries.items():
        path = PINNED_DIR / f"{name}.safetensors"
        assert _sha256(path) == record["sha256"], f"{path} does not match its sha256"
    sizes = [(PINNED_DIR / f"{name}.safetensors").stat().st_size for name in entries]
    # Under a MB each, about twelve MB in all: eighteen task pins of under a MB each (runs' and interleave's
    # a narrower MLP, 192 wide, so that they take about 0.6 MB; unique's, position's, rotate's, reverse's,
    # remove's and swap's half as wide again, hidden 64, about 0.24 MB each) and the tests' narrower
    # arithmetic model. The limit rose by swap's 0.24 MB when it was pinned.
    assert max(sizes) < 1e6 and sum(sizes) < 1.205e7


@pytest.mark.parametrize("pin", PINS, ids=lambda pin: pin.name)
def test_each_pinned_model_gets_its_recorded_calibration_accuracy_to_the_digit(pin):
    task = get_task(pin.task)
    recipe = pin.recipe(task)
    found = find_pinned(task, pin.seed, recipe)
    assert found is not None and found.name == pin.name, "the pin's recipe no longer matches its key: rebuild the pin"
    tokenizer = tiny_model.build_char_tokenizer(chat_template=task.chat_template)
    correct, total = calibration_correct(found.load(tokenizer, recipe, pin.seed), tokenizer, task, pin.seed)
    assert (correct, total) == (found.record["calibration_correct"], found.record["calibration_total"])
    low, high = recipe.target_accuracy
    assert found.record["reached_target"] == (low <= correct / total <= high)


def test_a_base_model_with_a_pin_is_loaded_not_pre_trained():
    task = get_task("sort")
    lines = []
    built = build_base_model(task, 0, task.recipe, [], log=lines.append)
    assert any("pinned" in line and "instead of pre-training" in line for line in lines), lines
    assert not any("pre-training" in line and "loss" in line for line in lines)  # no pre-training progress
    assert built.pretraining.steps == manifest()["sort"]["steps"]


def test_another_seed_or_recipe_has_no_pin():
    task = get_task("sort")
    assert find_pinned(task, 1, task.recipe) is None
    from dataclasses import replace

    assert find_pinned(task, 0, replace(task.recipe, learning_rate=1e-3)) is None


def test_a_pin_whose_file_does_not_match_its_checksum_is_not_used(tmp_path, monkeypatch):
    import shutil

    from drift_assets.tasks import pinned

    copy = tmp_path / "pinned"
    shutil.copytree(PINNED_DIR, copy)
    data = bytearray((copy / "sort.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "sort.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(pinned, "PINNED_DIR", copy)
    monkeypatch.setattr(pinned, "MANIFEST", copy / "pins.json")
    warnings = []
    task = get_task("sort")
    assert pinned.find_pinned(task, 0, task.recipe, log=warnings.append) is None
    assert warnings and "does not match its sha256" in warnings[0]


def test_the_tests_small_demo_is_pinned():
    from drift_assets.settings import DemoSettings
    from drift_assets_tests.conftest import SMALL_DEMO

    demo = DemoSettings(**SMALL_DEMO["demo"])
    assert find_pinned(demo.spec(), demo.base_model_seed, demo.recipe()) is not None
