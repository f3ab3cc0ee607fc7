"""Shared fixtures: one small demo workspace per session (the tiny model trains once) and one
warehouse materialized from it (the whole graph runs once), which tests read and never change:
a test that changes it takes a private copy (``private_materialized``).

The demo is the real one (same generator, same model, same training rule) with a smaller pool so
that the suite fits in CI; every asset runs for real on it: vLLM rollouts, Delta tables, Dagster.

Tests that need the demo model (every test using ``demo_dir``, directly or through another fixture)
are marked ``slow``: ``make test-fast`` runs the others.

Under pytest-xdist (``make test`` runs two workers) each worker and the processes it starts (Dagster
runs, vLLM engines) get its share of the CPUs: as many torch threads, and vLLM's threads bound to its
own cores, instead of two workers each spinning a thread on every core. The session fixtures are
built once for all workers (the first to ask builds, the others wait for it).
"""

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _take_this_workers_share_of_the_cpus() -> None:
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count:
        return
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    per_worker = max(1, len(cpus) // int(count))
    first = int(worker.removeprefix("gw")) * per_worker % len(cpus)
    share = cpus[first : first + per_worker]
    # Before torch is imported (here and in every child): its OpenMP pool is sized once, from this.
    os.environ["OMP_NUM_THREADS"] = str(len(share))
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, share))


_take_this_workers_share_of_the_cpus()

import pytest  # noqa: E402
import yaml  # noqa: E402
from dagster import DagsterInstance, instance_for_test  # noqa: E402
from filelock import FileLock  # noqa: E402

from drift_assets.settings import DEFAULT_SETTINGS_PATH, Settings, load_settings  # noqa: E402

SMALL_DEMO = {
    # A narrower model (a third of the demo's cost per step) and a lower accuracy band than the
    # demo's: pre-training stops sooner; the model still gets most validation queries right only
    # sometimes, which is what the tests need of it.
    "demo": {
        "enabled": True,
        "seed": 0,
        "n_train": 600,
        "n_validation": 24,
        "n_test": 120,
        "target_accuracy": [0.2, 0.5],
        "hidden_size": 64,
    },
    "rollout": {"backend": "vllm", "samples_per_query": 6, "max_tokens": 64},
    "projection": {"shards": 3},
    "warmup": {"steps": []},  # the trajectory has its own test; the others score at the base model
    "benchmark": {"methods": ["full", "drift"], "seeds": [0], "sft": {"steps": 60, "batch_size": 16}},
}


def write_settings(directory: Path, overrides: dict, name: str | None = "settings.yaml") -> Path:
    """A settings file in ``directory`` (so relative data paths land there) with ``overrides``;
    ``name`` None: named by its content, so that tests on another worker writing other settings into
    the same shared directory never swap a file under this one. Written whole or not at all."""
    raw = yaml.safe_load(DEFAULT_SETTINGS_PATH.read_text())
    for group, values in overrides.items():
        raw[group] = {**raw.get(group, {}), **values} if isinstance(values, dict) else values
    text = yaml.safe_dump(raw)
    path = directory / (name or f"settings-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml")
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staged.write_text(text)
    staged.replace(path)
    return path


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A directory that ``build`` fills once per test session, shared by every xdist worker: the first
    to ask builds it under a lock, the others wait and then read it. A failed build leaves no marker,
    so the next worker to ask tries again from an empty directory."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        directory = tmp_path_factory.mktemp(name)
        build(directory)
        return directory
    root = tmp_path_factory.getbasetemp().parent  # the session's, above each worker's own
    directory, done = root / name, root / f"{name}.built"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            build(directory)
            done.touch()
    return directory


def _materialize_demo(directory: Path) -> None:
    from dagster import AssetKey

    from drift_assets.definitions import build_definitions
    from drift_assets.runner import materialize_assets

    settings = load_settings(write_settings(directory, SMALL_DEMO))
    with instance_for_test() as instance:
        materialize_assets(build_definitions(settings), instance, [AssetKey("demo_task_files"), AssetKey("demo_base_model")])


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A workspace whose demo inputs and base model are materialized (once per session)."""
    return built_once(tmp_path_factory, "demo", _materialize_demo)


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

    def build(directory: Path) -> None:
        shutil.copytree(demo_dir / "demo", directory / "demo")
        with instance_in(directory) as instance:
            materialize_pipeline(build_definitions(settings_in(directory)), instance, include_demo=False)

    return built_once(tmp_path_factory, "materialized", build)


@pytest.fixture
def private_materialized(materialized, tmp_path) -> Path:
    """A copy of the materialized workspace (files, tables and Dagster instance) that a test may change."""
    copy = tmp_path / "materialized"
    shutil.copytree(materialized, copy)
    return copy


# Seconds each file that needs the demo model took on one of make test's workers (2 cores, 2026-12-07):
# the order only, so a stale figure costs time, never a result.
LONGEST_DEMO_FILES = {
    "assets/test_operations.py": 149,
    "assets/test_instance_and_signals.py": 105,
    "assets/test_partition_changes.py": 94,
    "assets/test_trajectory.py": 78,
    "assets/test_rollouts.py": 46,
    "assets/test_pipeline.py": 38,
    "assets/test_outputs_and_models.py": 37,
    "drift_assets_tests/test_lds_script.py": 26,
    "assets/test_object_storage.py": 21,
    "assets/test_own_model.py": 17,
    "assets/test_run_cost.py": 15,
    "drift_assets_tests/test_ux_42.py": 13,
}


def pytest_collection_modifyitems(items):
    needs_demo = set()
    for item in items:
        if "demo_dir" in item.fixturenames:
            item.add_marker(pytest.mark.slow)
            needs_demo.add(item.path)

    # make test hands whole files to two workers in this order: the browser test first (its worker
    # trains the demo model, then the test runs a backfill through Dagster's daemon), then every file that
    # does not need the demo model (the other worker's work meanwhile), then the rest, longest first
    # so that neither worker is left with a long file at the end while the other idles.
    def order(item) -> tuple[int, int]:
        if item.get_closest_marker("browser"):
            return 0, 0
        if item.path not in needs_demo:
            return 1, 0
        return 2, -LONGEST_DEMO_FILES.get(f"{item.path.parent.name}/{item.path.name}", 0)

    items.sort(key=order)


@pytest.fixture
def workspace(demo_dir, tmp_path) -> Path:
    """A private copy of the demo inputs and model, with an empty warehouse."""
    shutil.copytree(demo_dir / "demo", tmp_path / "demo")
    return tmp_path


def settings_in(directory: Path, **overrides) -> Settings:
    """SMALL_DEMO with ``overrides``, written to ``directory``/settings.yaml and loaded."""
    return load_settings(write_settings(directory, _small_demo(overrides)))


def shared_settings(directory: Path, **overrides) -> Settings:
    """As :func:`settings_in`, for a directory other tests read at the same time (a session
    fixture's): the file is named by its content instead of settings.yaml."""
    return load_settings(write_settings(directory, _small_demo(overrides), name=None))


def _small_demo(overrides: dict) -> dict:
    merged = {group: dict(values) for group, values in SMALL_DEMO.items()}
    for group, values in overrides.items():
        merged[group] = {**merged.get(group, {}), **values}
    return merged


@pytest.fixture
def instance() -> DagsterInstance:
    with instance_for_test() as test_instance:
        yield test_instance
