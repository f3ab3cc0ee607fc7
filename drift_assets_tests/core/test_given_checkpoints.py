"""warmup.checkpoints: model directories scored at instead of a warm-up run's, named and checked up front."""

import shutil

import pytest

from drift_assets.core.attribution.trajectory import check_given_checkpoint, given_checkpoint_keys
from drift_assets.settings import SettingsError, parse_settings
from drift_assets.tasks.tiny_model import TinyLlamaShape, build_char_tokenizer, build_tiny_llama, save_model


def test_each_directory_names_its_partition():
    paths = ["/runs/a/checkpoint-500", "runs/b/final model/", "/runs/c/1500", "/d/ünï (2)"]
    assert given_checkpoint_keys(paths) == ["checkpoint-500", "final-model", "checkpoint-1500", "ünï-2"]


@pytest.mark.parametrize(
    "paths, problem",
    [
        (["/a/checkpoint-5", "/b/checkpoint-5"], r"entry 1 \('/b/checkpoint-5'\): its name 'checkpoint-5' is also entry 0's"),
        (["/a/base"], r"entry 0 \('/a/base'\): a directory named 'base' would pass for the base model"),
        (["/"], r"entry 0 \('/'\): its directory name gives no partition key"),
    ],
)
def test_a_name_that_cannot_be_a_partition_fails_when_the_settings_load(tmp_path, paths, problem):
    with pytest.raises(SettingsError, match=rf"settings.yaml: warmup.checkpoints: {problem}"):
        parse_settings({"warmup": {"checkpoints": paths}}, "settings.yaml", tmp_path)


@pytest.mark.parametrize(
    "warmup, problem",
    [
        ({"steps": [10, 20]}, "warmup.checkpoints replaces the warm-up run, and warmup.steps trains one"),
        ({"lora": {"rank": 8}}, "warmup.lora sets how the warm-up run trains, and warmup.checkpoints trains none"),
    ],
)
def test_given_checkpoints_exclude_a_warm_up_run(tmp_path, warmup, problem):
    with pytest.raises(SettingsError, match=f"settings.yaml: warmup: {problem}"):
        parse_settings({"warmup": {"checkpoints": ["runs/checkpoint-5"], **warmup}}, "settings.yaml", tmp_path)


def test_the_checkpoints_replace_the_warm_up_steps_and_resolve_against_the_settings(tmp_path):
    settings = parse_settings({"warmup": {"checkpoints": ["runs/checkpoint-5", "/abs/final"]}}, "settings.yaml", tmp_path)
    assert settings.checkpoints == ["base", "checkpoint-5", "final"]
    assert settings.warmup_steps == []  # nothing is trained
    assert settings.given_checkpoints == {"checkpoint-5": str(tmp_path / "runs/checkpoint-5"), "final": "/abs/final"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base model directory and checkpoints of it: one with its tokenizer, one with another
    vocabulary and template, one with another template only."""
    root = tmp_path_factory.mktemp("given")
    shape = TinyLlamaShape(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=64)
    for name, template in (("base", "none"), ("same", "none"), ("roles", "roles"), ("plain", "plain")):
        tokenizer = build_char_tokenizer(template)
        save_model(build_tiny_llama(tokenizer, shape, seed=len(name)), tokenizer, root / name)
    return root


def test_a_checkpoint_with_the_base_models_tokenizer_passes(models):
    check_given_checkpoint(0, models / "same", models / "base")


@pytest.mark.parametrize(
    "name, problem",
    [
        ("roles", "its vocabulary and chat template differ"),
        ("plain", "its chat template differ"),
    ],
)
def test_a_checkpoint_with_another_tokenizer_is_named(models, name, problem):
    with pytest.raises(
        ValueError, match=rf"warmup.checkpoints\[2\] \({models / name}\): its tokenizer is not model.path's.*{problem}"
    ):
        check_given_checkpoint(2, models / name, models / "base")


def test_what_is_not_a_model_directory_is_named(models, tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"warmup.checkpoints\[0\] \({tmp_path / 'gone'}\): not found"):
        check_given_checkpoint(0, tmp_path / "gone", models / "base")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"warmup.checkpoints\[1\] .*: has no config.json"):
        check_given_checkpoint(1, empty, models / "base")
    weightless = tmp_path / "weightless"
    shutil.copytree(models / "same", weightless)
    for weights in weightless.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"warmup.checkpoints\[1\] .*: has no weights"):
        check_given_checkpoint(1, weightless, models / "base")
    untokenized = tmp_path / "untokenized"
    shutil.copytree(models / "same", untokenized)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (untokenized / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"warmup.checkpoints\[3\] .*: its tokenizer does not load.*tokenizer.save_pretrained"):
        check_given_checkpoint(3, untokenized, models / "base")
