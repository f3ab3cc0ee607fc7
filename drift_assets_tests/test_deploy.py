"""The deployment files load and mean what they say: deploy/dagster.yaml (the production instance) and
deploy/k8s/ (the cluster's instance and settings), checked with Dagster's and dagster-k8s's own
validation, and the pod a GPU step would get built the way k8s_job_executor builds it (no cluster)."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterRun
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config

from drift_assets.defs.placement import GPU_POOL
from drift_assets.production import POSTGRES_URL_ENV_VAR, free_port, write_instance
from drift_assets.settings import REPO_ROOT, load_settings

K8S = REPO_ROOT / "deploy" / "k8s"
KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
users: [{name: none, user: {token: none}}]
"""


@pytest.fixture
def postgres_env(monkeypatch):
    monkeypatch.setenv(POSTGRES_URL_ENV_VAR, "postgresql://dagster:secret@db.internal:5432/dagster")


def instance_config(home: Path) -> dict:
    config, _ = dagster_instance_config(str(home))  # validates every section's schema
    return config


def test_the_production_instance_is_valid_and_sized_to_the_device_pool(tmp_path, postgres_env):
    write_instance(tmp_path, 4)
    config = instance_config(tmp_path)
    assert config["storage"]["postgres"]["postgres_url"] == {"env": POSTGRES_URL_ENV_VAR}
    assert config["concurrency"]["pools"] == {"granularity": "run", "default_limit": 4}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"


def test_the_cluster_instance_validates_against_dagster_k8s(tmp_path, postgres_env):
    shutil.copy(K8S / "dagster.yaml", tmp_path / "dagster.yaml")
    config = instance_config(tmp_path)
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    checked = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert checked.success, checked.errors
    misspelt = process_config(K8sRunLauncher.config_type(), {**launcher["config"], "job_imag": "x"})
    assert not misspelt.success  # the check can fail
    assert config["concurrency"]["pools"]["granularity"] == "op"  # each step is a pod: count steps


def step_pod(launcher_config: dict, op_tags: dict, kubeconfig: Path):
    """The Kubernetes job k8s_job_executor would create for a step with ``op_tags``, built by
    dagster-k8s from the cluster's launcher settings (its container context and job config)."""
    launcher = K8sRunLauncher(**{**launcher_config, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)})
    run = DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()))
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False)
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(op_tags)))
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(None, launcher),
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-test",
        pod_name="dagster-step-test",
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
    )
    return job.spec.template.spec


def test_a_step_that_runs_the_model_gets_a_gpu_pod_and_the_others_do_not(tmp_path, postgres_env, monkeypatch):
    monkeypatch.setenv("DRIFT_ASSETS_SETTINGS", str(REPO_ROOT / "data" / "settings.yaml"))
    from dagster_k8s import k8s_job_executor

    from drift_assets.cluster import defs

    assert defs.executor is k8s_job_executor
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    launcher_config = yaml.safe_load((K8S / "dagster.yaml").read_text())["run_launcher"]["config"]
    graph = defs.resolve_asset_graph()
    gpu_steps = {key.to_user_string() for key in graph.get_all_asset_keys() if GPU_POOL in (graph.get(key).pools or ())}
    assert {"rollouts", "validation_gradients", "training_gradient_projections", "warmup_checkpoints"} <= gpu_steps
    for key, gpus in [("training_gradient_projections", "1"), ("influence_scores", None)]:
        op_tags = defs.resolve_assets_def(AssetKey(key)).op.tags
        pod = step_pod(launcher_config, op_tags, kubeconfig)
        (container,) = pod.containers
        assert (container.resources.limits or {}).get("nvidia.com/gpu") == gpus, key
        assert container.image == launcher_config["job_image"]
        assert {m.mount_path for m in container.volume_mounts} >= {"/shared", "/etc/drift-assets"}
        assert {source.secret_ref.name for source in container.env_from} == {"drift-assets-postgres", "drift-assets-s3"}
        assert {"name": "DRIFT_ASSETS_SETTINGS", "value": "/etc/drift-assets/settings.yaml"} in [
            {"name": e.name, "value": e.value} for e in container.env
        ]
        assert {v.name for v in pod.volumes} == {"settings", "shared"}


def test_the_cluster_settings_load_with_an_s3_warehouse_and_shared_checkpoints():
    settings = load_settings(K8S / "settings.yaml")
    assert settings.warehouse_root.startswith("s3://") and settings.warehouse.storage_options == {"region": "us-east-1"}
    assert settings.warmup.checkpoint_dir.startswith("/shared/") and settings.model_path.startswith("/shared/")
    assert settings.model.device == "cuda" and not settings.model.device_pool


@pytest.mark.slow
def test_make_ui_prod_serves_the_pipeline_on_postgres_and_an_s3_warehouse_and_stops_its_servers(tmp_path):
    """`make ui-prod`'s command, with no services named: it starts its own PostgreSQL and S3 API."""
    state = Path(tempfile.mkdtemp(prefix="drift-prod-"))
    state.chmod(0o755)  # the PostgreSQL server runs as the postgres user
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in (POSTGRES_URL_ENV_VAR, "DAGSTER_HOME")}
    log = (tmp_path / "ui-prod.log").open("wb")
    command = [sys.executable, "-m", "drift_assets.production", "ui", "--state", str(state), "--port", str(port)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        info = None
        for _ in range(180):
            assert process.poll() is None, (tmp_path / "ui-prod.log").read_text()
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql",
                    data=json.dumps({"query": "{ instance { info } }"}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    info = json.loads(response.read())["data"]["instance"]["info"]
                break
            except OSError:
                time.sleep(1)
        assert info is not None, (tmp_path / "ui-prod.log").read_text()
        # The webserver's own instance: its storages (the run coordinator is the daemon's business).
        assert "run_storage: PostgresRunStorage" in info and "event_log_storage: PostgresEventLogStorage" in info
        settings = load_settings(state / "settings.yaml")
        assert settings.warehouse_root == "s3://drift/warehouse" and settings.model.device_pool == ["cpu:0", "cpu:1"]
        instance = yaml.safe_load((state / "dagster_home" / "dagster.yaml").read_text())
        assert instance["concurrency"]["pools"]["default_limit"] == 2
        endpoint = settings.warehouse.storage_options["endpoint"]
        urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=5)
        postgres_port = int(re.search(r"127\.0\.0\.1:(\d+)/dagster", (tmp_path / "ui-prod.log").read_text()).group(1))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) is not None
        for address in [("127.0.0.1", postgres_port), ("127.0.0.1", int(endpoint.rsplit(":", 1)[1]))]:
            with socket.socket() as probe:
                assert probe.connect_ex(address) != 0, f"{address} still listens after the profile stopped"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(state, ignore_errors=True)
