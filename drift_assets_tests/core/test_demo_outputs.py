"""The demo writes its inputs where a user's settings point, so it must never replace a user's files."""

import json

import pytest

from drift_assets.core.data.fingerprint import model_fingerprint
from drift_assets.tasks.demo_outputs import (
    MODEL_STAMP,
    DemoOverwriteError,
    check_model_directory,
    replace_model_directory,
    write_demo_jsonl,
)

ROWS = [{"prompt": "What is 1 + 1?\n", "response": "Answer: 2"}]
OTHER_ROWS = [{"prompt": "What is 2 + 2?\n", "response": "Answer: 4"}]


def test_a_users_file_is_never_replaced(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": "mine", "response": "keep me"}\n')
    with pytest.raises(DemoOverwriteError, match=r"data.training_pool: .*pool.jsonl exists .* demo.enabled: false"):
        write_demo_jsonl(path, ROWS, "data.training_pool")
    assert path.read_text() == '{"prompt": "mine", "response": "keep me"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.jsonl"]


def test_the_demo_rewrites_its_own_file_but_not_one_edited_since(tmp_path):
    path = tmp_path / "pool.jsonl"
    assert write_demo_jsonl(path, ROWS, "data.training_pool")
    assert [json.loads(line) for line in path.read_text().splitlines()] == ROWS
    assert not write_demo_jsonl(path, ROWS, "data.training_pool")  # same content: nothing to do
    assert write_demo_jsonl(path, OTHER_ROWS, "data.training_pool")
    assert [json.loads(line) for line in path.read_text().splitlines()] == OTHER_ROWS
    with path.open("a") as handle:
        handle.write('{"prompt": "added by hand", "response": "x"}\n')
    edited = path.read_text()
    with pytest.raises(DemoOverwriteError):
        write_demo_jsonl(path, ROWS, "data.training_pool")
    assert path.read_text() == edited


def test_a_file_that_already_holds_the_demos_content_is_adopted(tmp_path):
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))  # e.g. written by an older release, unstamped
    assert not write_demo_jsonl(path, ROWS, "data.validation_queries")
    assert write_demo_jsonl(path, OTHER_ROWS, "data.validation_queries")


def _save_config(directory, value):
    (directory / "config.json").write_text(json.dumps({"value": value}))


def test_a_users_model_directory_is_refused_before_training(tmp_path):
    model = tmp_path / "my_model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(DemoOverwriteError, match="model.path: .*my_model is a directory with files"):
        check_model_directory(model)
    with pytest.raises(DemoOverwriteError):
        replace_model_directory(model, lambda directory: _save_config(directory, 1))
    assert sorted(p.name for p in model.iterdir()) == ["model.safetensors"]
    check_model_directory(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    check_model_directory(tmp_path / "empty")


def test_the_demo_model_is_swapped_in_whole_and_its_stamp_leaves_the_fingerprint_alone(tmp_path):
    model = tmp_path / "model"
    replace_model_directory(model, lambda directory: _save_config(directory, 1))
    assert (model / MODEL_STAMP).exists()
    fingerprint = model_fingerprint(model)
    (model / MODEL_STAMP).unlink()
    assert model_fingerprint(model) == fingerprint
    (model / MODEL_STAMP).write_text("demo")

    def fails(directory):
        _save_config(directory, 2)
        raise RuntimeError("killed while saving")

    with pytest.raises(RuntimeError):
        replace_model_directory(model, fails)
    assert json.loads((model / "config.json").read_text()) == {"value": 1}
    replace_model_directory(model, lambda directory: _save_config(directory, 3))
    assert json.loads((model / "config.json").read_text()) == {"value": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or retired copy left behind
