"""How the pool's gradient pass and its scoring scale, measured in one run on this machine.

On a demo workspace of its own (the demo's generator and tiny model, ``--n-train`` pool examples,
4 shards, no warm-up), with the Dagster instance on a local PostgreSQL server:

1. **Workers**: the 4 shards of ``training_gradient_projections`` as 4 Dagster runs
   (``dagster asset materialize``, each a process of its own), 1, 2 and 4 at a time; the runs lease
   ``cpu:0..cpu:N-1`` from ``model.device_pool``, which splits the cores between them. Reported:
   the wall time of the whole pass and examples per second.
2. **Pool size**: ``influence_scores`` over 1x, 2x and 4x the pool (its rows and their stored
   gradients repeated under new example ids, in 1x, 2x and 4x as many shards), each in a run of its
   own: the step's time and the process's peak resident memory (VmHWM), and the same less the
   command line's when it loads the pipeline and runs nothing.
3. **Appending 1%**: new examples added to the pool file, then what is stale re-materialized: the
   share of the pool's gradients computed again, and of the gradient pass's time.
4. **S3**: the same graph on an S3 warehouse (moto's server on 127.0.0.1), the 1-worker gradient
   pass and the 1x scoring timed against the local warehouse.

Run from the repository root (one heavy job at a time; a few minutes on 2 cores):

    .venv/bin/python -m benchmarks.scaling
    .venv/bin/python -m benchmarks.scaling --n-train 1200 --workers 1 2   # smaller

This prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml
from deltalake import DeltaTable

REPO = Path(__file__).resolve().parents[1]
# Runs Dagster's command line and writes the process's own peak resident memory (VmHWM) on exit.
# Not getrusage: ru_maxrss survives exec, so a child would report this script's own peak.
PEAK_RECORDING = """
import atexit, runpy, sys
peak_file = sys.argv[1]
def record():
    with open("/proc/self/status") as status:
        peak = next(line for line in status if line.startswith("VmHWM")).split()[1]
    with open(peak_file, "w") as out:
        out.write(peak)
atexit.register(record)
sys.argv = ["dagster", *sys.argv[2:]]
runpy.run_module("dagster", run_name="__main__", alter_sys=True)
"""
SHARDS = 4
GRADIENTS = "training_gradient_projections"


def write_settings(directory: Path, name: str, n_train: int, warehouse: dict, device_pool: list[str]) -> Path:
    """A settings file in ``directory``: the demo task with ``n_train`` examples, 4 shards, no warm-up
    and no evaluation; the demo's inputs and model under ``directory/demo``."""
    from drift_assets.settings import DEFAULT_SETTINGS_PATH

    raw = yaml.safe_load(DEFAULT_SETTINGS_PATH.read_text())
    raw["data"] = {**raw["data"], "test_queries": None}
    raw["model"] = {**raw["model"], "device_pool": device_pool}
    raw["warehouse"] = warehouse
    # A lower accuracy band than the demo's stops pre-training early: the figures are of work, not quality.
    raw["demo"] = {**raw["demo"], "n_train": n_train, "n_validation": 24, "target_accuracy": [0.2, 0.5]}
    raw["rollout"] = {**raw["rollout"], "backend": "transformers", "samples_per_query": 6}
    raw["projection"] = {**raw.get("projection", {}), "shards": SHARDS}
    raw["warmup"] = {**raw.get("warmup", {}), "steps": []}
    path = directory / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Workspace:
    """A settings file, its warehouse, and the Dagster instance its runs record in: PostgreSQL where
    ``postgres_url`` is given (``home`` then holds deploy/dagster.yaml), else SQLite under ``home``."""

    def __init__(self, settings_path: Path, home: Path, postgres_url: str | None, locks: Path):
        from drift_assets.production import POSTGRES_URL_ENV_VAR, write_instance
        from drift_assets.resources import Warehouse
        from drift_assets.settings import load_settings

        self.settings_path = settings_path
        self.settings = load_settings(settings_path)
        self.warehouse = Warehouse.from_settings(self.settings)
        self.home = home
        if postgres_url:
            write_instance(home, SHARDS)
        else:
            home.mkdir(parents=True, exist_ok=True)
            (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "DRIFT_ASSETS_SETTINGS": str(settings_path),
            "DRIFT_ASSETS_DEVICE_LOCKS": str(locks),
            **({POSTGRES_URL_ENV_VAR: postgres_url} if postgres_url else {}),
        }
        self.logs = settings_path.parent / "logs"

    @contextlib.contextmanager
    def instance(self):
        from dagster import DagsterInstance

        previous = {key: os.environ.get(key) for key in ("DAGSTER_POSTGRES_URL", "DRIFT_ASSETS_DEVICE_LOCKS")}
        os.environ.update({key: self.env[key] for key in previous if key in self.env})
        try:
            with DagsterInstance.from_config(str(self.home)) as instance:
                yield instance
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def materialize_stale(self, include_demo: bool = True) -> None:
        from drift_assets.definitions import build_definitions
        from drift_assets.runner import materialize_pipeline

        with self.instance() as instance:
            materialize_pipeline(build_definitions(self.settings), instance, include_demo=include_demo, only_stale=True)

    def dagster(self, log_name: str, *arguments: str) -> subprocess.Popen:
        """Dagster's command line with ``arguments`` in a process of its own, logged to ``logs/<log_name>.log``."""
        self.logs.mkdir(exist_ok=True)
        log = self.logs / f"{log_name}.log"
        command = [sys.executable, "-c", PEAK_RECORDING, str(log.with_suffix(".peak")), *arguments]
        with log.open("wb") as out:  # a file, not a pipe: Dagster's log lines would fill a pipe and stall the run
            process = subprocess.Popen(command, env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        process.log = log
        return process

    def run(self, select: str, partition: str | None = None) -> tuple[subprocess.Popen, float]:
        """One Dagster run of ``select`` (and ``partition``) in a process of its own."""
        log_name = f"{self.settings_path.stem}-{select}-{(partition or 'all').replace('|', '-')}"
        arguments = ["asset", "materialize", "-m", "drift_assets.definitions", "--select", select]
        return self.dagster(log_name, *arguments, *(["--partition", partition] if partition else [])), time.perf_counter()

    def metadata(self, asset: str, partition: str | None = None) -> dict:
        from dagster import AssetKey, AssetRecordsFilter

        with self.instance() as instance:
            records = instance.fetch_materializations(
                AssetRecordsFilter(AssetKey(asset), asset_partitions=[partition] if partition else None), limit=1
            ).records
            event = records[0].event_log_entry
            stats = {s.step_key: s for s in instance.get_run_step_stats(event.run_id)}
        step = stats.get(asset)
        return {
            **{key: value.value for key, value in event.asset_materialization.metadata.items()},
            "step_seconds": step.end_time - step.start_time if step and step.end_time else None,
        }

    def clear_gradients(self) -> None:
        """Delete the stored gradients' rows (the table stays), so that the next pass computes them all."""
        DeltaTable(self.warehouse.table_uri(GRADIENTS), storage_options=self.warehouse.storage_options or None).delete()


def wait(process: subprocess.Popen, what: str) -> int:
    """Wait for a run's process; its peak resident memory in KiB."""
    process.wait()
    if process.returncode != 0:
        tail = process.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{what} failed (exit {process.returncode}), log {process.log}:\n{tail}")
    return int(process.log.with_suffix(".peak").read_text())


def gradient_pass(workspace: Workspace, workers: int) -> dict:
    """The 4 shards as 4 runs, ``workers`` at a time; wall time and examples per second."""
    workspace.clear_gradients()
    queue = [f"base|{shard:03d}" for shard in range(SHARDS)]
    running: list[tuple[subprocess.Popen, str]] = []
    started = time.perf_counter()
    while queue or running:
        while queue and len(running) < workers:
            partition = queue.pop(0)
            running.append((workspace.run(GRADIENTS, partition)[0], partition))
        process, partition = running.pop(0)
        wait(process, f"{GRADIENTS}[{partition}]")
    wall = time.perf_counter() - started
    shards = [workspace.metadata(GRADIENTS, f"base|{shard:03d}") for shard in range(SHARDS)]
    rows = sum(s["rows_computed"] for s in shards)
    return {
        "workers": workers,
        "wall_s": wall,
        "examples": rows,
        "examples_per_s": rows / wall,
        "step_s": sum(s["wall_seconds"] for s in shards),
        "devices": sorted({s["device"] for s in shards}),
    }


def import_baseline_rss(workspace: Workspace) -> int:
    """Peak resident memory (KiB) of Dagster's command line that loads the pipeline and runs nothing."""
    return wait(workspace.dagster("imports-only", "asset", "list", "-m", "drift_assets.definitions"), "loading the pipeline")


def scoring_at(workspace: Workspace, factor: int, scratch: Path) -> dict:
    """influence_scores over the pool repeated ``factor`` times, in a warehouse copy of its own."""
    from drift_assets.core.data.stored import ConfiguredTables
    from drift_assets.core.gradients.tables import shard_of

    copy = scratch / f"x{factor}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(workspace.warehouse.root, copy)
    settings = yaml.safe_load(workspace.settings_path.read_text())
    settings["warehouse"] = {"root": str(copy), "storage_options": {}}
    # As many more shards as the pool is larger: the scoring streams the stored gradients one shard
    # at a time, so a shard's size is what its memory follows.
    shards = SHARDS * factor
    settings["projection"]["shards"] = shards
    path = workspace.settings_path.with_name(f"scoring-x{factor}.yaml")
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    scaled = Workspace(path, copy / "dagster_home", None, Path(workspace.env["DRIFT_ASSETS_DEVICE_LOCKS"]))
    configured = ConfiguredTables.configured_by(workspace.settings, workspace.warehouse)
    for table in ("training_pool", GRADIENTS):
        frame = configured.scan(table).collect()
        repeated = pl.concat(
            [
                frame.with_columns((pl.col("example_id") + (f"-{copy_index}" if copy_index else "")).alias("example_id"))
                for copy_index in range(factor)
            ]
        )
        if table == GRADIENTS:
            repeated = repeated.with_columns(
                pl.col("example_id").map_elements(lambda i: shard_of(i, shards), return_dtype=pl.String).alias("shard")
            )
        scaled.warehouse.write(table, repeated)
    process, started = scaled.run("influence_scores")
    peak = wait(process, f"influence_scores at {factor}x")
    wall = time.perf_counter() - started
    metadata = scaled.metadata("influence_scores")
    return {
        "factor": factor,
        "examples": metadata.get("dagster/row_count"),
        "run_s": wall,
        "step_s": metadata["step_seconds"],
        "peak_kib": peak,
    }


def append_one_percent(workspace: Workspace) -> dict:
    """New examples, 1% of the pool, appended to the pool file; then what is stale re-materialized."""
    pool_file = Path(workspace.settings.resolve(workspace.settings.data.training_pool))
    shutil.copy(pool_file, pool_file.with_suffix(".jsonl.original"))  # put back by the next run
    rows = [json.loads(line) for line in pool_file.read_text().splitlines() if line.strip()]
    added = max(1, len(rows) // 100)
    with pool_file.open("a") as out:
        for row in rows[:added]:  # the demo writes prompt + response rows
            out.write(json.dumps({**row, "prompt": row["prompt"] + "(again) "}) + "\n")
    started = time.perf_counter()
    workspace.materialize_stale(include_demo=False)
    wall = time.perf_counter() - started
    shards = [workspace.metadata(GRADIENTS, f"base|{shard:03d}") for shard in range(SHARDS)]
    computed, reused = sum(s["rows_computed"] for s in shards), sum(s["rows_reused"] for s in shards)
    return {
        "added": added,
        "computed": computed,
        "reused": reused,
        "step_s": sum(s["wall_seconds"] for s in shards),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2400, help="pool size of the demo workspace")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--workdir", default=str(REPO / "data" / "scaling"), help="kept between runs: the demo trains once")
    args = parser.parse_args()

    from drift_assets.production import local_postgres, local_s3

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}; workspace {workdir}")
    server_dir = Path(tempfile.mkdtemp(prefix="drift-scaling-postgres-"))
    server_dir.chmod(0o755)  # the server runs as the postgres user
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, server_dir, True)
        postgres = stack.enter_context(local_postgres(server_dir / "data"))
        locks = workdir / "device_locks"
        local_warehouse = {"root": "warehouse", "storage_options": {}}
        for stale in ("warehouse", "scaled", "dagster_home", "dagster_home_s3", "logs"):
            shutil.rmtree(workdir / stale, ignore_errors=True)
        original = workdir / "demo" / "training_pool.jsonl.original"
        if original.exists():  # the pool as the demo wrote it, before the last run appended to it
            original.replace(original.with_suffix(""))
        home = workdir / "dagster_home"
        local = Workspace(write_settings(workdir, "local.yaml", args.n_train, local_warehouse, ["cpu:0"]), home, postgres, locks)
        started = time.perf_counter()
        local.materialize_stale()
        print(f"\nworkspace materialized in {time.perf_counter() - started:.0f} s (demo model, rollouts, 1 worker)")

        print("\n1. the gradient pass over 4 shards, N runs at a time")
        print("| workers | devices | wall s | examples/s | vs 1 worker | step time summed, s |")
        print("|---|---|---|---|---|---|")
        passes = []
        for workers in args.workers:
            pool = [f"cpu:{i}" for i in range(workers)]
            path = write_settings(workdir, f"local-{workers}.yaml", args.n_train, local_warehouse, pool)
            figures = gradient_pass(Workspace(path, home, postgres, locks), workers)
            passes.append(figures)
            print(
                f"| {workers} | {', '.join(figures['devices'])} | {figures['wall_s']:.1f} | {figures['examples_per_s']:.1f} "
                f"| {figures['examples_per_s'] / passes[0]['examples_per_s']:.2f}x | {figures['step_s']:.1f} |"
            )

        print("\n2. influence_scores over a larger pool (rows and stored gradients repeated, shards in proportion)")
        baseline = import_baseline_rss(local)
        print(f"Dagster's command line loading the pipeline and running nothing peaks at {baseline / 1024:.0f} MiB")
        print("| pool | examples | step s | vs 1x | peak MiB | vs 1x | peak less loading, MiB | vs 1x |")
        print("|---|---|---|---|---|---|---|---|")
        scoring = []
        for factor in args.factors:
            figures = scoring_at(local, factor, workdir / "scaled")
            scoring.append(figures)
            first = scoring[0]
            above, above_first = figures["peak_kib"] - baseline, max(1, first["peak_kib"] - baseline)
            print(
                f"| {factor}x | {figures['examples']} | {figures['step_s']:.2f} | {figures['step_s'] / first['step_s']:.2f} "
                f"| {figures['peak_kib'] / 1024:.0f} | {figures['peak_kib'] / first['peak_kib']:.2f} "
                f"| {above / 1024:.0f} | {above / above_first:.2f} |"
            )

        print("\n3. appending 1% to the pool")
        full = passes[0]
        appended = append_one_percent(local)
        print(
            f"{appended['added']} examples added: {appended['computed']} gradients computed, {appended['reused']} reused "
            f"({appended['computed'] / (appended['computed'] + appended['reused']):.1%} of the pool's gradient work); "
            f"gradient steps {appended['step_s']:.1f} s against {full['step_s']:.1f} s for the whole pool "
            f"({appended['step_s'] / full['step_s']:.1%}); the whole refresh {appended['wall_s']:.0f} s"
        )

        print("\n4. the same on an S3 warehouse (moto's server on 127.0.0.1) against local disk")
        options = stack.enter_context(local_s3("drift", log_path=workdir / "s3.log"))
        s3_warehouse = {"root": "s3://drift/warehouse", "storage_options": options}
        s3_settings = write_settings(workdir, "s3.yaml", args.n_train, s3_warehouse, ["cpu:0"])
        s3 = Workspace(s3_settings, workdir / "dagster_home_s3", None, locks)
        s3.materialize_stale(include_demo=False)
        local_pass, s3_pass = gradient_pass(local, 1), gradient_pass(s3, 1)
        scored = {}
        for name, workspace in (("local", local), ("s3", s3)):
            process, started = workspace.run("influence_scores")
            wait(process, f"influence_scores on {name}")
            scored[name] = workspace.metadata("influence_scores")["step_seconds"]
        print("| step | local s | S3 s | S3 / local |")
        print("|---|---|---|---|")
        print(
            f"| gradient pass, 4 runs | {local_pass['wall_s']:.1f} | {s3_pass['wall_s']:.1f} | {s3_pass['wall_s'] / local_pass['wall_s']:.2f} |"
        )
        print(f"| influence_scores step | {scored['local']:.2f} | {scored['s3']:.2f} | {scored['s3'] / scored['local']:.2f} |")


if __name__ == "__main__":
    main()
