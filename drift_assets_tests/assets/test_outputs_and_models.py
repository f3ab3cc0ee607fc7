"""The 2026-12-05 probe's cases on outputs and model files, through the CLI and the assets: an
in-place change inside a large weight file (N20), a settings file given relative to another
directory (N46), an export over the pool (N48), a file where the export folder goes (N30), the demo
beside a user's directories (N49), truncated weights (N9), a chat template that reaches for Python
(N22), multi-turn rows without a template (N21) and a tiny selection (N29)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, instance_for_test

from drift_assets.cli import main
from drift_assets.core.data.fingerprint import HASH_CACHE_ENV_VAR, model_fingerprint
from drift_assets.core.data.sequences import ChatTemplateError
from drift_assets.definitions import build_definitions
from drift_assets.resources import ModelResource, Warehouse
from drift_assets.runner import materialize_assets
from drift_assets.settings import load_settings
from drift_assets_tests.helpers.model_files import tiny_model_dir, write_padded_safetensors

UP_TO_DATE = "materialized nothing (everything was up to date)"


def write_settings(directory: Path, **groups) -> Path:
    """S0 of the probe (its own model, pool and queries, no demo, no warm-up) with ``groups``."""
    raw = {
        "model": {"path": "model"},
        "data": {"training_pool": "pool.jsonl", "validation_queries": "val.jsonl", "test_queries": None},
        "warehouse": {"root": "warehouse"},
        "demo": {"enabled": False},
        "rollout": {"backend": "transformers", "samples_per_query": 4, "max_tokens": 64},
        "warmup": {"steps": [], "checkpoint_dir": "checkpoints"},
        "projection": {"shards": 1},
    }
    for group, values in groups.items():
        raw[group] = {**raw.get(group, {}), **values}
    path = directory / "settings.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def dagster_home(tmp_path, monkeypatch) -> Path:
    """A persistent instance for the CLI's runs (staleness is read from their history), and a hash cache of the test's own."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv(HASH_CACHE_ENV_VAR, str(tmp_path / "hash-cache"))
    return home


def gradient_runs(home: Path) -> list[dict]:
    """rows_reused/rows_computed of every materialization of training_gradient_projections, oldest first."""
    instance = DagsterInstance.from_config(str(home))
    try:
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("training_gradient_projections")), limit=100
        ).records
        return [
            {key: record.asset_materialization.metadata[key].value for key in ("rows_reused", "rows_computed")}
            for record in sorted(records, key=lambda r: r.timestamp)
        ]
    finally:
        instance.dispose()


def test_n20_n46_an_in_place_change_inside_a_large_weight_file_recomputes_what_uses_the_model(
    workspace, tmp_path, dagster_home, capsys, monkeypatch
):
    """N20: the model's weights in one safetensors file over 512 MiB, between unused zero tensors at
    both ends (sparse: nothing of them is written); an MLP weight changed in place, the file's size
    and header kept. N46: the settings given relative to another working directory."""
    from safetensors.torch import load_file

    project = tmp_path / "project"
    model = project / "model"
    shutil.copytree(workspace / "demo" / "model", model)
    tensors = load_file(model / "model.safetensors")
    ranges = write_padded_safetensors(model / "model.safetensors", tensors, pad_bytes=280 * 2**20)
    assert (model / "model.safetensors").stat().st_size > 512 * 2**20
    for name, rows in (("training_pool.jsonl", 60), ("validation_queries.jsonl", 8)):
        lines = (workspace / "demo" / name).read_text().splitlines(keepends=True)[:rows]
        (project / ("pool.jsonl" if name.startswith("training") else "val.jsonl")).write_text("".join(lines))
    settings_path = write_settings(project, projection={"shards": 1, "basis": "random"}, selection={"fraction": 0.02})
    settings = load_settings(settings_path)
    warehouse = Warehouse.from_settings(settings)

    assert main(["materialize", "--settings", str(settings_path)]) == 0
    first = warehouse.scan("training_gradient_projections").collect().sort("example_id")
    assert first.height == 60 and set(first["model_fingerprint"]) == {model_fingerprint(model)}
    assert "selects only 2 of the pool's 60 examples" in capsys.readouterr().err  # N29's warning

    # N46: from /, the same settings named by a path relative to it: nothing to do.
    monkeypatch.chdir("/")
    monkeypatch.setenv("DRIFT_ASSETS_SETTINGS", str(settings_path.relative_to("/")))
    assert main(["materialize"]) == 0
    assert UP_TO_DATE in capsys.readouterr().out

    # N20: an MLP weight changed in place: same size, same header, same first and last 280 MiB.
    start, end = ranges["model.layers.0.mlp.down_proj.weight"]
    size = (model / "model.safetensors").stat().st_size
    with (model / "model.safetensors").open("r+b") as handle:
        handle.seek(start)
        weights = np.frombuffer(handle.read(end - start), dtype=np.float32)
        handle.seek(start)
        handle.write((weights + np.random.default_rng(0).normal(0, 0.01, weights.shape).astype(np.float32)).tobytes())
    assert (model / "model.safetensors").stat().st_size == size
    assert main(["materialize"]) == 0
    out = capsys.readouterr().out
    assert UP_TO_DATE not in out
    second = warehouse.scan("training_gradient_projections").collect().sort("example_id")
    assert set(second["model_fingerprint"]) == {model_fingerprint(model)} != set(first["model_fingerprint"])
    # Every gradient computed again with the new weights (no row of the old ones reused).
    assert gradient_runs(dagster_home)[-1] == {"rows_reused": 0, "rows_computed": 60}
    assert second["example_id"].to_list() == first["example_id"].to_list()
    assert all(not np.allclose(a, b) for a, b in zip(first["grad"].to_list(), second["grad"].to_list(), strict=True))
    for name in ("rollouts", "validation_gradients", "influence_scores"):
        table = warehouse.scan(name).collect()
        if "model_fingerprint" in table.columns:
            assert set(table["model_fingerprint"]) == {model_fingerprint(model)}, name

    # --all with the random basis (whose fingerprint does not depend on the model): every row is
    # computed again, none reused, since the weights changed once more.
    with (model / "model.safetensors").open("r+b") as handle:
        handle.seek(start)
        handle.write(np.zeros(4, dtype=np.float32).tobytes())
    assert main(["materialize", "--all"]) == 0
    assert gradient_runs(dagster_home)[-1] == {"rows_reused": 0, "rows_computed": 60}
    third = warehouse.scan("training_gradient_projections").collect()
    assert set(third["model_fingerprint"]) == {model_fingerprint(model)} != set(second["model_fingerprint"])


def test_n48_n30_an_export_that_would_overwrite_an_input_is_refused_before_any_work(tmp_path, dagster_home, capsys):
    """N48: the pool read from the export folder, as re-refining last run's output does; N30: a file
    where the export folder goes. Both are refused when the settings load; nothing is written."""
    (tmp_path / "exports").mkdir()
    pool = tmp_path / "exports" / "refined_dataset.jsonl"
    pool.write_text(
        "".join(json.dumps({"prompt": f"What is {i} + 1?", "response": f"Answer: {i + 1}"}) + "\n" for i in range(120))
    )
    (tmp_path / "val.jsonl").write_text(json.dumps({"prompt": "What is 2 + 2?", "reference": "4"}) + "\n")
    settings = write_settings(tmp_path, data={"training_pool": "exports/refined_dataset.jsonl"})
    before = pool.read_bytes()
    for _ in range(2):  # the nightly run, twice: the pool never shrinks
        assert main(["materialize", "--settings", str(settings)]) == 2
        error = capsys.readouterr().err
        assert error.startswith(
            f"error: {settings}: selection.export_dir: the export would write {pool}, which is data.training_pool ({pool})"
        )
        assert pool.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports", "home", "settings.yaml", "val.jsonl"]
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["refined_dataset.jsonl"]

    # N30: a regular file named like the export folder.
    shutil.move(tmp_path / "exports", tmp_path / "data")
    (tmp_path / "exports").write_text("a file the user keeps\n")
    settings = write_settings(tmp_path, data={"training_pool": "data/refined_dataset.jsonl"})
    assert main(["materialize", "--settings", str(settings)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {settings}: selection.export_dir: {tmp_path / 'exports'} exists and is not a folder")
    assert (tmp_path / "exports").read_text() == "a file the user keeps\n"


def test_n9_truncated_weights_fail_before_any_rollout_naming_model_path_and_the_file(tmp_path, dagster_home, capsys):
    tiny_model_dir(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    (tmp_path / "pool.jsonl").write_text(json.dumps({"prompt": "What is 1 + 1?", "response": "Answer: 2"}) + "\n")
    (tmp_path / "val.jsonl").write_text(json.dumps({"prompt": "What is 2 + 2?", "reference": "4"}) + "\n")
    assert main(["materialize", "--settings", str(write_settings(tmp_path))]) == 1
    error = capsys.readouterr().err
    paragraph = error[error.index("error: the materialization failed.") :].splitlines()
    assert paragraph[1].startswith(f"  ValueError: model.path: {weights} is truncated (")
    assert not (tmp_path / "warehouse" / "drift" / "rollouts").exists()


def test_n22_a_chat_template_reaching_for_python_fails_naming_the_template_file(tmp_path):
    marker = tmp_path / "pwned"
    model = tiny_model_dir(tmp_path / "model", chat_template="plain")
    (model / "chat_template.jinja").write_text(f"{{{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}}}")
    with pytest.raises(ChatTemplateError, match=rf"^{model / 'chat_template.jinja'}: the chat template fails to render"):
        ModelResource(path=str(model)).load_tokenizer()
    assert not marker.exists()


def test_n21_multi_turn_rows_without_a_chat_template_are_kept_with_a_warning(tmp_path):
    model = tiny_model_dir(tmp_path / "model")
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    turns = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 1 + 1?"}]
    rows = [{"messages": [*turns, {"role": "assistant", "content": f"Answer: {i}"}]} for i in range(3)]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "val.jsonl").write_text(json.dumps({"prompt": "What is 2 + 2?", "reference": "4"}) + "\n")
    settings = load_settings(write_settings(tmp_path))
    with instance_for_test() as instance:
        materialize_assets(build_definitions(settings), instance, [AssetKey("training_pool"), AssetKey("training_pool_rejects")])
        run_id = instance.get_latest_materialization_event(AssetKey("training_pool")).run_id
        warnings = [event.user_message for event in instance.all_logs(run_id) if event.level == 30]
    assert Warehouse.from_settings(settings).scan("training_pool").collect().height == 3
    assert [w for w in warnings if "no chat template" in w] == [
        f"{tmp_path / 'pool.jsonl'}: the tokenizer has no chat template: 3 rows with more than one turn before the "
        "response (a system turn, or several user and assistant turns) are rendered as 'role: content' lines, a format "
        "the model may never have seen; save a chat template with the tokenizer (chat_template.jinja) if it was "
        "trained with one"
    ]


def test_n49_the_demo_beside_a_users_directories_deletes_none_of_them(tmp_path):
    models = tmp_path / "models"
    for name in ("current.previous", "current.staging"):
        (models / name).mkdir(parents=True)
        (models / name / "notes.txt").write_text(f"the user's {name}\n")
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "model": {"path": "models/current"},
                "data": {"training_pool": "pool.jsonl", "validation_queries": "val.jsonl", "test_queries": "test.jsonl"},
                "demo": {
                    "enabled": True,
                    "max_pretrain_steps": 100,
                    "n_train": 100,
                    "n_validation": 8,
                    "n_test": 50,
                    "hidden_size": 64,
                },
            }
        )
    )
    with instance_for_test() as instance:
        defs = build_definitions(load_settings(settings))
        materialize_assets(defs, instance, [AssetKey("demo_task_files"), AssetKey("demo_base_model")])
    assert sorted(p.name for p in models.iterdir()) == ["current", "current.previous", "current.staging"]
    for name in ("current.previous", "current.staging"):
        assert (models / name / "notes.txt").read_text() == f"the user's {name}\n"
    assert (models / "current" / ".drift-demo").exists() and (models / "current" / "model.safetensors").exists()
    assert pl.read_ndjson(tmp_path / "pool.jsonl").height == 100
