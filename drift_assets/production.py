"""The production profile: a Dagster instance on PostgreSQL, the warehouse on an S3 API, and GPU runs
side by side, one device each.

``deploy/dagster.yaml`` is the instance (storage at ``$DAGSTER_POSTGRES_URL``, queued runs, the
"gpu" pool counted per run). ``python -m drift_assets.production ui`` (``make ui-prod``) serves the
pipeline with it: against the PostgreSQL server and S3 bucket the environment names, or, where it
names none, against a local PostgreSQL server and a local S3 API (moto's) that it starts on
127.0.0.1 and keeps under ``data/prod`` — the same parts the tests start.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml

from drift_assets.settings import DEFAULT_SETTINGS_PATH, REPO_ROOT, Settings, load_settings

INSTANCE_TEMPLATE = REPO_ROOT / "deploy" / "dagster.yaml"
POSTGRES_URL_ENV_VAR = "DAGSTER_POSTGRES_URL"
# The local S3 API's credentials go through the environment, as a real store's must (the settings refuse them).
LOCAL_S3_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "local-s3-key", "AWS_SECRET_ACCESS_KEY": "local-s3-secret"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_instance(home: Path, gpu_slots: int, overrides: dict | None = None) -> Path:
    """``deploy/dagster.yaml`` in ``home``, with the "gpu" pool sized to ``gpu_slots`` runs at a time
    (the device pool's size: each of those runs leases one device)."""
    instance = yaml.safe_load(INSTANCE_TEMPLATE.read_text())
    instance["concurrency"]["pools"]["default_limit"] = gpu_slots
    instance.update(overrides or {})
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    path.write_text(yaml.safe_dump(instance, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------ PostgreSQL


def _postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise FileNotFoundError(f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql; make postgres)")
    return found


def _as_postgres_user(data_dir: Path) -> list[str]:
    """PostgreSQL refuses to run as root: as root, its server runs as the ``postgres`` user."""
    if os.geteuid() != 0:
        return []
    shutil.chown(data_dir, "postgres", "postgres")
    return ["runuser", "-u", "postgres", "--"]


@contextlib.contextmanager
def local_postgres(data_dir: Path, port: int | None = None) -> Iterator[str]:
    """A PostgreSQL server over ``data_dir`` (created on first use) on 127.0.0.1, with a ``dagster``
    database; yields its URL and stops the server on exit. Loopback only, so trust authentication."""
    data_dir.mkdir(parents=True, exist_ok=True)
    owner = _as_postgres_user(data_dir)
    if not (data_dir / "PG_VERSION").exists():
        created = subprocess.run(
            [*owner, _postgres_bin("initdb"), "-D", str(data_dir), "-U", "dagster", "--auth=trust", "-E", "UTF8"],
            capture_output=True,
        )
        if created.returncode != 0:
            shown = f" (as the postgres user, who must be able to enter {data_dir.parent})" if owner else ""
            raise RuntimeError(f"initdb failed for {data_dir}{shown}: {created.stderr.decode().strip()}")
    port = port or free_port()
    pg_ctl = [*owner, _postgres_bin("pg_ctl"), "-D", str(data_dir)]
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {data_dir}"
    started = subprocess.run([*pg_ctl, "-l", str(data_dir / "server.log"), "-o", options, "-w", "start"], capture_output=True)
    if started.returncode != 0:
        log = (data_dir / "server.log").read_text(errors="replace")[-2000:] if (data_dir / "server.log").exists() else ""
        raise RuntimeError(f"PostgreSQL did not start on 127.0.0.1:{port}: {started.stderr.decode()}{log}")
    try:
        import psycopg2

        with contextlib.closing(psycopg2.connect(host="127.0.0.1", port=port, user="dagster", dbname="postgres")) as server:
            server.autocommit = True
            with server.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = 'dagster'")
                if cursor.fetchone() is None:
                    cursor.execute("CREATE DATABASE dagster")
        yield f"postgresql://dagster@127.0.0.1:{port}/dagster"
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True)


# ------------------------------------------------------------------------------------------ S3 API


@contextlib.contextmanager
def local_s3(bucket: str, port: int | None = None, log_path: Path | None = None) -> Iterator[dict]:
    """moto's S3 API on 127.0.0.1 with ``bucket`` created; yields the warehouse's storage options
    for it (no credentials: its own are in this process's environment meanwhile, and so in that of
    the processes it starts). In a process of its own: deltalake holds the GIL while it waits for
    some requests, so a server thread inside a process that writes tables would never answer them."""
    port = port or free_port()
    saved = {name: os.environ.get(name) for name in LOCAL_S3_ENVIRONMENT}
    os.environ.update(LOCAL_S3_ENVIRONMENT)
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"the S3 API on {endpoint} did not start")
        # No allow_unsafe_rename: deltalake commits with S3's conditional writes, which moto honours.
        options = {"region": "us-east-1", "endpoint": endpoint, "allow_http": "true"}
        s3_client(options).create_bucket(Bucket=bucket)
        yield options
    finally:
        server.terminate()
        server.wait(timeout=30)
        if log_path:
            log.close()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def s3_client(options: dict):
    """boto3's client for the store ``options`` name, with the credentials of the environment."""
    import boto3

    return boto3.client("s3", endpoint_url=options["endpoint"], region_name=options["region"])


# ------------------------------------------------------------------------------------------ the profile


def default_device_pool() -> list[str]:
    """Every GPU the machine shows; on a CPU-only machine two CPU workers."""
    import torch

    count = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(count)] if count else ["cpu:0", "cpu:1"]


def production_settings(base: Path, loaded: Settings, directory: Path, warehouse: dict, device_pool: list[str]) -> Path:
    """The settings file ``base`` (``loaded``: as validated) with the warehouse and device pool of the
    profile, written in ``directory`` with its relative paths made absolute (they resolve where it lies)."""
    raw = yaml.safe_load(base.read_text()) or {}
    raw.setdefault("model", {}).update(path=str(loaded.model_path), device_pool=device_pool)
    paths = {
        "data": {key: getattr(loaded.data, key) for key in ("training_pool", "validation_queries", "test_queries")},
        "warmup": {"checkpoint_dir": loaded.warmup.checkpoint_dir},
        "selection": {"export_dir": loaded.selection.export_dir},
    }
    for group, values in paths.items():
        raw.setdefault(group, {}).update({key: loaded.resolve(value) if value else None for key, value in values.items()})
    raw["warehouse"] = warehouse
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "settings.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drift_assets.production", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["ui"], help="serve the pipeline (webserver and daemon) on the production profile")
    parser.add_argument("--settings", default=os.environ.get("DRIFT_ASSETS_SETTINGS") or str(DEFAULT_SETTINGS_PATH))
    parser.add_argument("--state", default=str(REPO_ROOT / "data" / "prod"), help="where local servers keep their data")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args(argv)
    state = Path(args.state).resolve()
    settings = load_settings(args.settings)  # fails here, naming the file, before any server starts
    pool = settings.model.device_pool or default_device_pool()
    with contextlib.ExitStack() as stack:
        url = os.environ.get(POSTGRES_URL_ENV_VAR)
        if not url:
            url = stack.enter_context(local_postgres(state / "postgres"))
            print(f"PostgreSQL (local, {state / 'postgres'}): {url}", flush=True)
        warehouse = {"root": settings.warehouse.root, "storage_options": settings.warehouse.storage_options}
        if not settings.warehouse.root.startswith(("s3://", "gs://", "az://", "abfss://")):
            options = stack.enter_context(local_s3("drift", log_path=state / "s3.log"))
            warehouse = {"root": "s3://drift/warehouse", "storage_options": options}
            print(f"S3 API (local, in memory): {options['endpoint']}, warehouse s3://drift/warehouse", flush=True)
        settings_path = production_settings(Path(args.settings), settings, state, warehouse, pool)
        home = state / "dagster_home"
        write_instance(home, len(pool))
        print(f"instance {home / 'dagster.yaml'}; settings {settings_path}; devices {pool}", flush=True)
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            POSTGRES_URL_ENV_VAR: url,
            "DRIFT_ASSETS_SETTINGS": str(settings_path),
            "VIRTUAL_ENV": os.environ.get("VIRTUAL_ENV", sys.prefix),  # the environment dg dev runs the code in
        }
        dg = Path(sys.executable).with_name("dg")
        server = subprocess.Popen([str(dg), "dev", "-h", "127.0.0.1", "-p", str(args.port)], cwd=REPO_ROOT, env=env)
        # SIGTERM stops dg dev as Ctrl-C does (its webserver and daemon with it), and then the local
        # servers this started, on the way out of the ExitStack.
        signal.signal(signal.SIGTERM, lambda *_: server.send_signal(signal.SIGINT))
        try:
            return server.wait()
        except KeyboardInterrupt:  # Ctrl-C reached dg dev too: wait for it to stop
            return server.wait()


if __name__ == "__main__":
    sys.exit(main())
