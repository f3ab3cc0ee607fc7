"""Settings: loading a YAML file, error messages and path resolution (code versions: assets/test_graph.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from drift_assets.settings import SETTINGS_ENV_VAR, SettingsError, load_settings

GOOD_SETTINGS = {
    "model": {"path": "models/tiny", "dtype": "bfloat16"},
    "data": {"training_pool": "pool.jsonl", "validation_queries": "val.jsonl", "max_example_tokens": 128},
    "warehouse": {"root": "wh"},
    "rollout": {"samples_per_query": 4, "temperature": 0.7, "stop": ["\n", "###"]},
    "influence": {"weighting": "advantage", "hessian": "identity", "debias": "residual"},
    "selection": {"method": "top_k", "k": 17},
}


def write_settings(directory: Path, content: dict | str, name: str = "settings.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def test_good_file_loads_with_values_and_defaults(tmp_path):
    path = write_settings(tmp_path, GOOD_SETTINGS)
    settings = load_settings(path)
    assert settings.model.dtype == "bfloat16"
    assert settings.data.max_example_tokens == 128
    assert settings.rollout.samples_per_query == 4
    assert settings.rollout.temperature == pytest.approx(0.7)
    assert settings.rollout.stop == ["\n", "###"]
    assert settings.influence.weighting == "advantage"
    assert settings.influence.hessian == "identity"
    assert settings.influence.debias == "residual"
    assert settings.selection.method == "top_k" and settings.selection.k == 17
    # Keys the file leaves out keep their documented defaults.
    assert settings.rollout.top_p == 1.0
    assert settings.influence.damping == pytest.approx(0.1)
    assert settings.projection.rank == 16 and settings.projection.basis == "pca"
    assert settings.selection.fraction == 0.5


def test_empty_file_gives_all_defaults(tmp_path):
    settings = load_settings(write_settings(tmp_path, ""))
    assert (settings.influence.weighting, settings.influence.unsolved) == ("positive", "skip")
    assert settings.selection.method == "top_fraction"
    assert settings.data.test_queries is None and settings.data.max_example_tokens is None
    assert settings.base_dir == str(tmp_path.resolve())


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ({"rollout": {"sampels_per_query": 3}}, "rollout.sampels_per_query"),
        ({"influence": {"hessian": "fisher", "dampening": 0.2}}, "influence.dampening"),
        ({"rollouts": {"samples_per_query": 3}}, "rollouts"),
    ],
)
def test_unknown_key_names_the_key_and_the_file(tmp_path, content, key):
    path = write_settings(tmp_path, content)
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert f"unknown key '{key}'" in message
    assert str(path) in message


def test_base_dir_in_the_file_is_refused(tmp_path):
    path = write_settings(tmp_path, {"base_dir": "/elsewhere"})
    with pytest.raises(SettingsError, match="base_dir") as caught:
        load_settings(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("content", "key", "shown_value"),
    [
        ({"rollout": {"samples_per_query": "many"}}, "rollout.samples_per_query", "'many'"),
        ({"rollout": {"samples_per_query": 0}}, "rollout.samples_per_query", "0"),
        ({"influence": {"hessian": "kfac-please"}}, "influence.hessian", "'kfac-please'"),
        ({"selection": {"fraction": 1.5}}, "selection.fraction", "1.5"),
        ({"data": {"max_example_tokens": [1, 2]}}, "data.max_example_tokens", "[1, 2]"),
        ({"warmup": {"lora": {"rank": 0}}}, "warmup.lora.rank", "0"),
        ({"warmup": {"lora": {"rank": 1024}}}, "warmup.lora.rank", "1024"),
    ],
)
def test_wrong_type_or_value_names_the_key_and_the_file(tmp_path, content, key, shown_value):
    path = write_settings(tmp_path, content)
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"{key}:" in message
    assert f"(got {shown_value})" in message


def test_top_level_not_a_mapping_and_invalid_yaml_are_refused(tmp_path):
    listed = write_settings(tmp_path, "- a\n- b\n", name="list.yaml")
    with pytest.raises(SettingsError, match="mapping") as caught:
        load_settings(listed)
    assert str(listed) in str(caught.value)
    broken = write_settings(tmp_path, "model: {path: [unclosed\n", name="broken.yaml")
    with pytest.raises(SettingsError, match="not valid YAML") as caught:
        load_settings(broken)
    assert str(broken) in str(caught.value)


def test_missing_file_names_the_path_and_the_environment_variable(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SettingsError) as caught:
        load_settings(missing)
    assert str(missing) in str(caught.value)
    assert SETTINGS_ENV_VAR in str(caught.value)


def test_top_k_without_k_fails(tmp_path):
    path = write_settings(tmp_path, {"selection": {"method": "top_k"}})
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert "selection.k" in str(caught.value)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(("among", "says"), [(["loss", "loss"], "names a selection twice"), (["random"], "choose_among")])
def test_choose_among_names_each_known_selection_once(tmp_path, among, says):
    path = write_settings(tmp_path, {"selection": {"choose_among": among}})
    with pytest.raises(SettingsError, match=says) as caught:
        load_settings(path)
    assert str(path) in str(caught.value)


def test_demo_fractions_must_leave_clean_examples(tmp_path):
    path = write_settings(tmp_path, {"demo": {"corrupted_fraction": 0.6, "off_task_fraction": 0.4}})
    with pytest.raises(
        SettingsError, match=r"demo: the noise shares \{'corrupted': 0\.6, 'off_task': 0\.4\} must add up to less than 1"
    ):
        load_settings(path)


def test_environment_variable_selects_another_file(tmp_path, monkeypatch):
    path = write_settings(tmp_path / "other", {"rollout": {"samples_per_query": 3}, "selection": {"fraction": 0.25}})
    monkeypatch.setenv(SETTINGS_ENV_VAR, str(path))
    settings = load_settings()
    assert settings.rollout.samples_per_query == 3
    assert settings.selection.fraction == 0.25
    assert settings.base_dir == str(path.parent.resolve())
    # An explicit path still wins over the environment variable.
    explicit = write_settings(tmp_path / "explicit", {"rollout": {"samples_per_query": 5}})
    assert load_settings(explicit).rollout.samples_per_query == 5


def test_environment_variable_pointing_nowhere_fails_naming_it(tmp_path, monkeypatch):
    missing = tmp_path / "missing.yaml"
    monkeypatch.setenv(SETTINGS_ENV_VAR, str(missing))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(missing) in str(caught.value)


def test_relative_paths_resolve_against_the_file_directory_not_cwd(tmp_path, monkeypatch):
    config_dir = tmp_path / "project" / "conf"
    path = write_settings(config_dir, {"model": {"path": "models/tiny"}, "warehouse": {"root": "wh"}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # A relative settings path, read from another working directory.
    settings = load_settings(Path("..") / "project" / "conf" / "settings.yaml")
    expected_dir = config_dir.resolve()
    assert Path(settings.model_path) == expected_dir / "models" / "tiny"
    assert Path(settings.warehouse_root) == expected_dir / "wh"
    assert Path(settings.resolve(settings.data.training_pool)) == expected_dir / "demo" / "training_pool.jsonl"
    assert settings.resolve("s3://bucket/prefix") == "s3://bucket/prefix"
    absolute = str(tmp_path / "abs" / "pool.jsonl")
    assert settings.resolve(absolute) == absolute
    assert path.exists()


def test_with_overrides_validates(tmp_path):
    settings = load_settings(write_settings(tmp_path, {}))
    with pytest.raises(ValueError):
        settings.with_overrides(selection={"method": "top_k"})


def test_a_group_gives_the_cores_options_by_name_and_holds_every_option(tmp_path):
    import dataclasses

    from drift_assets.core.gradients.projection import ProjectionOptions
    from drift_assets.core.grading.graders import GradingOptions
    from drift_assets.core.training.adapters import LoraOptions
    from drift_assets.core.training.sft import SftOptions
    from drift_assets.settings import GradingSettings, LoraSettings, ProjectionSettings, SftSettings

    settings = SftSettings(steps=7, batch_size=3, learning_rate=0.5, weight_decay=0.1, schedule="constant", epochs=2.0)
    options = settings.options(seed=11)
    assert (options.steps, options.batch_size, options.learning_rate, options.weight_decay) == (7, 3, 0.5, 0.1)
    assert (options.schedule, options.epochs, options.seed) == ("constant", 2.0, 11)
    lora = LoraSettings(rank=4, alpha=2.0, dropout=0.25, target_modules="x")
    assert lora.options().__dict__ == {"rank": 4, "alpha": 2.0, "dropout": 0.25, "target_modules": "x"}
    # Every option of the core's comes from its settings group (or, SftOptions' seed, from the call):
    # a new core option is a setting, not a default that silently stands in for one.
    for group, options_class, at_call in (
        (SftSettings, SftOptions, {"seed"}),
        (LoraSettings, LoraOptions, set()),
        (GradingSettings, GradingOptions, set()),
        (ProjectionSettings, ProjectionOptions, set()),
    ):
        names = {field.name for field in dataclasses.fields(options_class)}
        assert names - at_call <= set(group.model_fields), (options_class.__name__, names - set(group.model_fields))
    assert GradingSettings(numeric_tolerance=0.5).options().numeric_tolerance == 0.5
    assert ProjectionSettings(rank=3, gradient_checkpointing=True).options().rank == 3
