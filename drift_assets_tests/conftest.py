"""Shared fixtures: one small demo workspace per session (the tiny model trains once) and one
warehouse materialized from it (the whole graph runs once), which tests read and never change:
a test that changes it takes a private copy (``private_materialized``).

The demo is the real one (same generator, same model, same training rule) with a smaller pool so
that the suite fits in CI; every asset runs for real on it: vLLM rollouts, Delta tables, Dagster.

Tests that need the demo model (every test using ``demo_dir``, directly or through another fixture)
are marked ``slow``: ``make test-fast`` runs the others.
"""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, instance_for_test

from drift_assets.settings import DEFAULT_SETTINGS_PATH, Settings, load_settings

SMALL_DEMO = {
    # A lower accuracy band than the demo's stops pre-training earlier; the model still gets most
    # validation queries right only sometimes, which is what the tests need of it.
    "demo": {"enabled": True, "seed": 0, "n_train": 600, "n_validation": 24, "n_test": 120, "target_accuracy": [0.2, 0.5]},
    "rollout": {"backend": "vllm", "samples_per_query": 6, "max_tokens": 64},
    "projection": {"shards": 3},
    "warmup": {"steps": []},  # the trajectory has its own test; the others score at the base model
    "benchmark": {"methods": ["full", "drift"], "seeds": [0], "sft": {"steps": 60, "batch_size": 16}},
}


def write_settings(directory: Path, overrides: dict) -> Path:
    """A settings file in ``directory`` (so relative data paths land there) with ``overrides``."""
    raw = yaml.safe_load(DEFAULT_SETTINGS_PATH.read_text())
    for group, values in overrides.items():
        raw[group] = {**raw.get(group, {}), **values} if isinstance(values, dict) else values
    path = directory / "settings.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A workspace whose demo inputs and base model are materialized (once per session)."""
    from drift_assets.definitions import build_definitions
    from drift_assets.runner import materialize_assets

    directory = tmp_path_factory.mktemp("demo")
    settings = load_settings(write_settings(directory, SMALL_DEMO))
    with instance_for_test() as instance:
        defs = build_definitions(settings)
        from dagster import AssetKey

        materialize_assets(defs, instance, [AssetKey("demo_task_files"), AssetKey("demo_base_model")])
    return directory


@contextmanager
def instance_in(directory: Path) -> Iterator[DagsterInstance]:
    """The Dagster instance kept in ``directory`` (a copied workspace brings its run history along)."""
    home = directory / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    with instance_for_test(temp_dir=str(home)) as instance:
        yield instance


@pytest.fixture(scope="session")
def materialized(demo_dir, tmp_path_factory) -> Path:
    """A workspace whose whole graph (without the method benchmark) is materialized with vLLM rollouts.
    Read-only: take ``private_materialized`` to change its files, tables or run history."""
    from drift_assets.definitions import build_definitions
    from drift_assets.runner import materialize_pipeline

    directory = tmp_path_factory.mktemp("materialized")
    shutil.copytree(demo_dir / "demo", directory / "demo")
    with instance_in(directory) as instance:
        materialize_pipeline(build_definitions(settings_in(directory)), instance, include_demo=False)
    return directory


@pytest.fixture
def private_materialized(materialized, tmp_path) -> Path:
    """A copy of the materialized workspace (files, tables and Dagster instance) that a test may change."""
    copy = tmp_path / "materialized"
    shutil.copytree(materialized, copy)
    return copy


def pytest_collection_modifyitems(items):
    for item in items:
        if "demo_dir" in item.fixturenames:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def workspace(demo_dir, tmp_path) -> Path:
    """A private copy of the demo inputs and model, with an empty warehouse."""
    shutil.copytree(demo_dir / "demo", tmp_path / "demo")
    return tmp_path


def settings_in(directory: Path, **overrides) -> Settings:
    merged = {group: dict(values) for group, values in SMALL_DEMO.items()}
    for group, values in overrides.items():
        merged[group] = {**merged.get(group, {}), **values}
    return load_settings(write_settings(directory, merged))


@pytest.fixture
def instance() -> DagsterInstance:
    with instance_for_test() as test_instance:
        yield test_instance
