"""Settings for one's own data and model never let the demo write over them."""

import json

import pytest
import yaml
from dagster import AssetKey, instance_for_test

from drift_assets.core.data.fingerprint import content_hash, model_fingerprint
from drift_assets.definitions import build_definitions
from drift_assets.runner import materialize_assets
from drift_assets.settings import load_settings
from drift_assets.tasks.demo_outputs import DemoOverwriteError
from drift_assets.tasks.tiny_model import build_char_tokenizer, build_tiny_llama, save_model


@pytest.fixture
def own_files(tmp_path):
    """A user's pool, validation queries and model directory, as the README's own-model section sets them up."""
    (tmp_path / "pool.jsonl").write_text(json.dumps({"prompt": "What is 1 + 1?\n", "response": "Answer: 2"}) + "\n")
    (tmp_path / "val.jsonl").write_text(json.dumps({"prompt": "What is 2 + 2?\n", "reference": "4"}) + "\n")
    tokenizer = build_char_tokenizer()
    save_model(build_tiny_llama(tokenizer, seed=7), tokenizer, tmp_path / "my_model")
    return tmp_path


def own_settings(directory, **groups):
    raw = {"model": {"path": "my_model"}, "data": {"training_pool": "pool.jsonl", "validation_queries": "val.jsonl"}, **groups}
    path = directory / "settings.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_settings(path)


def snapshot(directory) -> dict[str, str]:
    return {
        "pool": content_hash(directory / "pool.jsonl"),
        "val": content_hash(directory / "val.jsonl"),
        "model": model_fingerprint(directory / "my_model"),
    }


def test_settings_without_a_demo_group_have_no_demo_assets(own_files):
    settings = own_settings(own_files)
    assert settings.demo.enabled is False and settings.data.test_queries is None
    keys = {key.to_user_string() for key in build_definitions(settings).resolve_all_asset_keys()}
    assert not keys & {"demo_task_files", "demo_base_model"}
    assert "refined_model_evaluation" not in keys  # no test queries given: no evaluation


@pytest.mark.parametrize("asset", ["demo_task_files", "demo_base_model"])
def test_the_demo_enabled_over_a_users_files_refuses_and_changes_nothing(own_files, asset):
    before = snapshot(own_files)
    settings = own_settings(own_files, demo={"enabled": True})
    with instance_for_test() as instance, pytest.raises(Exception) as raised:
        materialize_assets(build_definitions(settings), instance, [AssetKey(asset)])
    error = raised.value if isinstance(raised.value, DemoOverwriteError) else raised.value.__cause__
    assert isinstance(error, DemoOverwriteError)
    assert "my_model is a directory with files that the demo did not write" in str(error)
    assert snapshot(own_files) == before
    # Besides them only the run's warehouse, which it held (its lock and identity, as `drift_assets
    # materialize` holds it before anything runs), without a table written.
    assert sorted(p.name for p in own_files.iterdir()) == ["my_model", "pool.jsonl", "settings.yaml", "val.jsonl", "warehouse"]
    assert sorted(p.name for p in (own_files / "warehouse" / "drift").iterdir()) == ["warehouse_identity"]


def test_the_demo_model_is_kept_for_the_same_recipe_and_retrained_for_another(demo_dir, tmp_path):
    import shutil

    from drift_assets_tests.conftest import settings_in

    shutil.copytree(demo_dir / "demo", tmp_path / "demo")
    model = tmp_path / "demo" / "model"
    before = model_fingerprint(model)

    def run(settings):
        with instance_for_test() as instance:
            materialize_assets(build_definitions(settings), instance, [AssetKey("demo_base_model")])
            run_id = instance.get_latest_materialization_event(AssetKey("demo_base_model")).run_id
            return [event.user_message for event in instance.all_logs(run_id)]

    messages = run(settings_in(tmp_path))
    assert any("not retraining it" in message for message in messages)
    assert model_fingerprint(model) == before
    messages = run(settings_in(tmp_path, demo={"max_pretrain_steps": 100}))
    assert not any("not retraining it" in message for message in messages)
    # Its last measurement, at the step cap (or in the band), is told whatever the interval between lines.
    assert any(message.startswith("pre-training: step 100 ") for message in messages)
    assert model_fingerprint(model) != before
