"""End to end through Dagster's own UI: a real dagster-webserver and daemon, driven by a real Chromium, on
the production profile: the instance on a real PostgreSQL server, the warehouse on an S3 API (moto's
server), and two devices (``cpu:0``, ``cpu:1``) that the shard runs lease side by side.

Every launch is clicked in the browser: "Observe all" for the sources, then "Materialize all" on the
global asset graph, which opens Dagster's launch dialog because the chain of each checkpoint is
partitioned by it (and the training gradients by shard too): all partitions, "Launch backfill" (the code
location's executor runs each run's steps in one process). The daemon runs the backfill (the unpartitioned
inputs, the base model's chain, one run per shard, then the scores and the refined dataset). When the shard
runs come, another process holds both devices until two of them wait for one: they then run side by side
on a device each, which their logs and materializations show. The test then
reads the backfill, lineage, asset and check pages. GraphQL is
only used to wait and to check the instance's state next to what the pages show.

The workspace keeps the session demo's test queries, so refined_model_evaluation (fine-tunes of the
tiny model) is in the backfill too, and its pictures are read on its page; method_benchmark, an
external asset its own job writes, is in the lineage and stays out of "Materialize all". Screenshots land in artifacts/ui/ (git-ignored). Needs Debian's Chromium (``make browser``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg2
import pytest

from drift_assets.core.gradients.tables import shard_of
from drift_assets.core.runtime.devices import LOCK_DIR_ENV_VAR
from drift_assets.production import POSTGRES_URL_ENV_VAR, free_port, local_postgres, local_s3, write_instance
from drift_assets.resources import Warehouse
from drift_assets.settings import Settings
from drift_assets_tests.conftest import settings_in
from drift_assets_tests.helpers.figures import chart_problems

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
ARTIFACTS = REPO / "artifacts" / "ui"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SOURCES = {"training_pool_source", "validation_queries_source", "test_queries_source", "base_model"}
SHARDS = {"000", "001"}  # one per device: the two shard runs wait for the held pool together
CHECKPOINT_CHAIN = {"rollouts", "grades", "projection_basis", "validation_gradients", "training_gradient_projections"}
BACKFILL_TIMEOUT_S = 420
DEVICES = ["cpu:0", "cpu:1"]  # the device pool the shard runs lease from, two at a time
WAREHOUSE = "s3://drift/warehouse"
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
# dagster-daemon with the backfill daemon's pause between iterations cut from Dagster's fixed 30 s
# (a constant, no instance setting) to 3 s: each step of the backfill (inputs, the checkpoint's chain,
# the shard runs, the scores) otherwise waits up to 30 s for the next iteration while the worker's
# core idles. The daemon's work is unchanged; it only looks more often.
DAEMON_WITH_SHORT_BACKFILL_TICKS = (
    "import sys; import dagster._daemon.controller as controller;"
    " assert hasattr(controller, 'DEFAULT_DAEMON_INTERVAL_SECONDS'), 'Dagster renamed the daemon interval';"
    " controller.DEFAULT_DAEMON_INTERVAL_SECONDS = 3;"
    " from dagster._daemon.cli import main; sys.argv[0] = 'dagster-daemon'; sys.exit(main())"
)
# What `make demo` does first, from Python: one run of the observe_sources job.
OBSERVE_FROM_PYTHON = (
    "from dagster import DagsterInstance; from drift_assets.definitions import defs;"
    " from drift_assets.runner import observe_sources; observe_sources(defs, DagsterInstance.get())"
)
OBSERVE_IN_PROCESS = (
    "from dagster import DagsterInstance; from drift_assets.definitions import defs;"
    " defs.resolve_job_def('observe_sources').execute_in_process(instance=DagsterInstance.get())"
)
# Another process (a job outside Dagster) that holds every device of the pool until its stdin closes.
HOLD_DEVICES = (
    "import sys; from drift_assets.core.runtime.devices import lease_device;"
    " leases = [lease_device(sys.argv[1:], timeout_seconds=120) for _ in sys.argv[1:]];"
    " print('held', flush=True); sys.stdin.read()"
)


# ------------------------------------------------------------------------------------------------ helpers


class Dagster:
    """A webserver and a daemon (runs are queued, backfills are daemon work) over one DAGSTER_HOME."""

    def __init__(self, workspace: Path, settings: Settings, postgres_url: str, devices: int):
        self.workspace, self.settings = workspace, settings
        settings_path = Path(settings.base_dir) / "settings.yaml"  # where write_settings puts it
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home = workspace / "dagster_home"
        # The production instance (deploy/dagster.yaml); declarative automation stays off: only the
        # clicks in the test launch anything.
        write_instance(home, devices, {"auto_materialize": {"enabled": False}})
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            POSTGRES_URL_ENV_VAR: postgres_url,
            "DRIFT_ASSETS_SETTINGS": str(settings_path),
            LOCK_DIR_ENV_VAR: str(workspace / "device_locks"),
            "PYTHONUNBUFFERED": "1",
        }
        self.processes: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, argv: list[str]) -> None:
        log = open(self.workspace / f"{name}.log", "wb")
        # Own session: teardown signals the whole group (code servers and run processes included).
        self.processes[name] = subprocess.Popen(
            argv,
            cwd=self.workspace,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def start(self) -> None:
        target = ["-w", str(REPO / "workspace.yaml")]  # as `make ui` serves it: the location runs from Python name
        self._start("webserver", [str(VENV_BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port), *target])
        self._start("daemon", [str(VENV_BIN / "python"), "-c", DAEMON_WITH_SHORT_BACKFILL_TICKS, "run", *target])
        deadline = time.monotonic() + 120
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"webserver not ready after 120 s:\n{self.log_tail('webserver')}")
            time.sleep(1)
        # The code location loads in the background; a load error fails here, with its message.
        while True:
            entries = self.graphql(
                "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus"
                " locationOrLoadError { __typename ... on PythonError { message } } } } } }"
            )["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [
                    e["locationOrLoadError"] for e in entries if e["locationOrLoadError"]["__typename"] != "RepositoryLocation"
                ]
                assert not errors, errors
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"code location not loaded after 120 s:\n{self.log_tail('webserver')}")
            time.sleep(1)
        # Queued runs and backfills need the daemon's heartbeats.
        while True:
            statuses = self.graphql("{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }")
            healthy = {s["daemonType"] for s in statuses["instance"]["daemonHealth"]["allDaemonStatuses"] if s["healthy"]}
            if {"BACKFILL", "QUEUED_RUN_COORDINATOR"} <= healthy:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"daemon not healthy after 120 s ({healthy}):\n{self.log_tail('daemon')}")
            time.sleep(2)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            try:  # whatever is left of the group (a code server or run that ignored SIGTERM)
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=10)

    def log_tail(self, name: str, lines: int = 60) -> str:
        path = self.workspace / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
        assert not body.get("errors"), body["errors"]
        return body["data"]

    # --- state, read back through GraphQL

    def asset_nodes(self) -> dict[str, dict]:
        data = self.graphql("{ assetNodes { assetKey { path } isObservable isMaterializable isPartitioned } }")
        return {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}

    def run(self, run_id: str) -> dict:
        data = self.graphql(
            "query($id: ID!) { runOrError(runId: $id) { ... on Run { runId status startTime endTime } } }", {"id": run_id}
        )
        return data["runOrError"]

    def runs(self) -> list[dict]:
        data = self.graphql("{ runsOrError { ... on Runs { results { runId pipelineName status tags { key value } } } } }")
        return data["runsOrError"]["results"]

    def latest_observation_run(self, key: str) -> str | None:
        data = self.graphql(
            "query($k: [String!]!) { assetOrError(assetKey: {path: $k}) { ... on Asset {"
            " assetObservations(limit: 1) { runId } } } }",
            {"k": [key]},
        )
        observations = data["assetOrError"].get("assetObservations") or []
        return observations[0]["runId"] if observations else None

    def latest_materialization_run(self, key: str) -> str | None:
        data = self.graphql(
            "query($k: [String!]!) { assetOrError(assetKey: {path: $k}) { ... on Asset {"
            " assetMaterializations(limit: 1) { runId } } } }",
            {"k": [key]},
        )
        materializations = data["assetOrError"].get("assetMaterializations") or []
        return materializations[0]["runId"] if materializations else None

    def materialization_text(self, key: str, label: str) -> dict[str, str]:
        """The text metadata entry ``label`` of each partition's latest materialization of ``key``."""
        data = self.graphql(
            "query($k: [String!]!) { assetOrError(assetKey: {path: $k}) { ... on Asset {"
            " assetMaterializations(limit: 100) { partition metadataEntries { label ... on TextMetadataEntry { text } } } } } }",
            {"k": [key]},
        )
        latest: dict[str, str] = {}
        for event in data["assetOrError"]["assetMaterializations"]:  # newest first
            texts = {entry["label"]: entry.get("text") for entry in event["metadataEntries"]}
            latest.setdefault(event["partition"], texts.get(label))
        return latest

    def messages(self, run_id: str) -> list[tuple[float, str]]:
        """The run's log messages: (seconds since the epoch, text), oldest first."""
        data = self.graphql(
            "query($id: ID!) { logsForRun(runId: $id, limit: 10000) { ... on EventConnection {"
            " events { ... on MessageEvent { message timestamp } } } } }",
            {"id": run_id},
        )
        events = data["logsForRun"]["events"]
        return [(int(e["timestamp"]) / 1000, e["message"]) for e in events if "message" in e]

    def backfill(self, backfill_id: str) -> dict:
        data = self.graphql(
            "query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename"
            " ... on PartitionBackfill { id status isAssetBackfill numPartitions"
            " runs(limit: 50) { runId status tags { key value } assetSelection { path } } } } }",
            {"id": backfill_id},
        )
        return data["partitionBackfillOrError"]

    def checks(self, key: str) -> dict[str, dict]:
        """Each check of ``key``: whether it blocks, and its latest execution's status, success and severity."""
        data = self.graphql(
            "query($k: [String!]!) { assetNodeOrError(assetKey: {path: $k}) { ... on AssetNode {"
            " assetChecksOrError { ... on AssetChecks { checks { name blocking"
            " executionForLatestMaterialization { status evaluation { success severity } } } } } } } }",
            {"k": [key]},
        )
        return {
            c["name"]: {"blocking": c["blocking"], **(c["executionForLatestMaterialization"] or {})}
            for c in data["assetNodeOrError"]["assetChecksOrError"]["checks"]
        }

    def partition_stats(self, key: str) -> dict:
        data = self.graphql(
            "query($k: [String!]!) { assetNodeOrError(assetKey: {path: $k}) { ... on AssetNode {"
            " partitionStats { numMaterialized numPartitions numFailed numMaterializing } } } }",
            {"k": [key]},
        )
        return data["assetNodeOrError"]["partitionStats"]


def shard_runs_of(runs: list[dict]) -> dict[str, str]:
    """The training-gradient shard runs among ``runs``: partition ("checkpoint|shard") → run id."""
    return {t["value"]: r["runId"] for r in runs for t in r["tags"] if t["key"] == "dagster/partition" and "|" in t["value"]}


def _wait(what: str, predicate, timeout: float, interval: float = 3.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def postgres_url():
    # The server runs as the postgres user, who cannot enter pytest's private temporary directories.
    directory = Path(tempfile.mkdtemp(prefix="drift-postgres-"))
    directory.chmod(0o755)
    try:
        with local_postgres(directory / "data") as url:
            yield url
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def s3_options(tmp_path):
    with local_s3("drift", log_path=tmp_path / "s3.log") as options:
        yield options


@pytest.fixture
def dagster_ui(demo_dir, tmp_path, request, postgres_url, s3_options):
    """A workspace over a copy of the session's demo inputs and model, served by Dagster."""
    shutil.copytree(demo_dir / "demo", tmp_path / "demo")
    # transformers rollouts keep it fast; no demo assets (the inputs exist).
    settings = settings_in(
        tmp_path,
        rollout={"backend": "transformers"},
        demo={"enabled": False},
        model={"device_pool": DEVICES},
        projection={"shards": len(SHARDS)},
        warehouse={"root": WAREHOUSE, "storage_options": s3_options},
    )
    assert settings.data.test_queries and settings.benchmark.sft.steps <= 100  # SMALL_DEMO's short fine-tunes
    dagster = Dagster(tmp_path, settings, postgres_url, len(DEVICES))
    failures, started = request.session.testsfailed, False
    try:
        dagster.start()
        # The instance remembers that the "Join the Dagster community" dialog was seen (it only shows on
        # 127.0.0.1/localhost); the page's locator handler still skips it should it come anyway.
        dagster.graphql("mutation { setNuxSeen }")
        started = True
        yield dagster
    finally:
        dagster.stop()
        if not started or request.session.testsfailed > failures:
            for name in dagster.processes:
                print(f"\n----- {name} log ({tmp_path / name}.log), tail -----\n{dagster.log_tail(name)}")


@pytest.fixture
def page(request):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (make browser)")
    from playwright.sync_api import expect, sync_playwright

    # Assertions wait as long as actions: a page rendering beside the rest of the suite (make test
    # runs it on one of two workers) can take longer than Playwright's 5 s default.
    expect.set_options(timeout=30_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            # Tall enough for the whole graph, top to bottom, at the zoom that shows each asset's status.
            context = browser.new_context(viewport={"width": 1600, "height": 1300})
            context.set_default_timeout(30_000)
            page = context.new_page()
            # Dagster's "Join the Dagster community" dialog, should it pop up before a click.
            page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
            failures = request.session.testsfailed
            yield page
            if request.session.testsfailed > failures:
                _shot(page, "zz-failure")
        finally:
            browser.close()


def _visible_text(page, text: str):
    """The first visible element with exactly ``text`` (graph nodes keep hidden copies to measure labels)."""
    return page.get_by_text(text, exact=True).filter(visible=True).first


def _visible_node(page, key: str):
    """A lineage graph's node for ``key``: its label whole, or cut in the middle as Dagster draws it
    where the graph is zoomed out to fit the page (``validation…_source``)."""
    label = re.compile(rf"^{re.escape(key)}$|^{re.escape(key[:5])}\S*…\S*{re.escape(key[-7:])}$")
    return page.get_by_text(label).filter(visible=True).first


def _metadata_picture(page, label: str):
    """The image of the PNG metadata entry ``label`` on an asset's page, opened from its "[Show Markdown]"
    button, once the browser has decoded it (a picture that does not render fails here)."""
    from playwright.sync_api import expect

    row = page.locator("tr").filter(has=page.get_by_text(label, exact=True)).first
    expect(row).to_be_visible()
    row.get_by_text("[Show Markdown]").click()
    image = page.get_by_role("dialog").locator("img").first
    expect(image).to_be_visible()
    _wait(f"{label}'s picture to render", lambda: image.evaluate("e => e.complete && e.naturalWidth > 0") or None, 30, 0.5)
    return image


def _shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


# ------------------------------------------------------------------------------------------------ the test


def test_observe_and_materialize_the_pipeline_from_the_ui(dagster_ui, page):
    from playwright.sync_api import expect

    dagster = dagster_ui
    nodes = dagster.asset_nodes()
    observable = {k for k, n in nodes.items() if n["isObservable"]}
    materializable = {k for k, n in nodes.items() if n["isMaterializable"]}
    assert observable == SOURCES
    assert {"rollouts", "refined_dataset", "training_gradient_projections"} <= materializable
    # The benchmark is shown (an external asset) but is not among what "Materialize all" launches.
    assert "method_benchmark" in nodes and "method_benchmark" not in materializable
    # The chain of each checkpoint (only the base model here) is partitioned by it; the training gradients
    # also by shard.
    assert {k for k, n in nodes.items() if n["isPartitioned"]} == CHECKPOINT_CHAIN

    # --- the global asset graph: top to bottom, every group expanded (both kept in the browser's storage;
    # the graph fits itself to the page when it loads)
    page.goto(f"{dagster.url}/asset-groups")
    materialize_all = page.get_by_role("button", name=f"Materialize all ({len(materializable)})…")
    expect(materialize_all).to_be_visible()
    page.get_by_role("img", name="settings").last.click()  # the graph's settings, bottom right
    page.get_by_role("menuitem", name="Change graph to vertical orientation").click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.keyboard.press("Escape")
    page.reload()
    expect(materialize_all).to_be_visible()
    for key in ("refined_dataset", "influence_scores", "base_model"):
        expect(_visible_text(page, key)).to_be_visible()
    page.wait_for_timeout(1500)  # the graph's layout animation
    _shot(page, "01-asset-graph-before")

    # --- observe the sources: the dropdown next to "Materialize all" offers "Observe all (3)"
    dropdown = (
        page.locator("button:right-of(:text('Materialize all'))")
        .filter(has=page.get_by_role("img", name="arrow_drop_down"))
        .first
    )
    dropdown.click()
    observe = page.get_by_role("menuitem", name=f"Observe all ({len(observable)})")
    expect(observe).to_be_visible()
    _shot(page, "02-observe-menu")
    observe.click()
    expect(page.get_by_text(re.compile(r"Launched run \w+"))).to_be_visible()
    runs = _wait(
        "the observation run to finish", lambda: [r for r in dagster.runs() if r["status"] in TERMINAL] or None, timeout=120
    )
    assert [r["status"] for r in runs] == ["SUCCESS"], runs
    assert {dagster.latest_observation_run(k) for k in SOURCES} == {runs[0]["runId"]}

    # --- "Materialize all": the launch dialog for a backfill over every shard
    page.keyboard.press("Escape")
    materialize_all.click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    expect(dialog).to_contain_text(f"Launch runs to materialize {len(materializable)} assets")
    # The chain is partitioned by checkpoint (and shard), the pool is not: the dialog backfills every
    # partition of every asset.
    expect(dialog).to_contain_text("All partitions")
    expect(dialog).to_contain_text("different partition definitions")
    _shot(page, "03-launch-backfill-dialog")
    dialog.get_by_role("button", name="Launch backfill").click()
    toast = page.get_by_text(re.compile(r"Created backfill \w+"))
    expect(toast).to_be_visible()
    backfill_id = re.search(r"Created backfill (\w+)", toast.inner_text()).group(1)

    # --- the backfill's page while it runs, then wait for the daemon to finish it
    page.goto(f"{dagster.url}/runs/b/{backfill_id}")
    expect(page.get_by_text("training_gradient_projections").first).to_be_visible()
    page.wait_for_timeout(1000)
    _shot(page, "04-backfill-in-progress")

    # --- when the shard runs come, another process holds both devices: two of them (the pool's limit)
    # wait for a device together, then each takes one when it frees them.
    def shard_runs_of_backfill() -> dict[str, str]:
        return shard_runs_of(dagster.backfill(backfill_id)["runs"])

    _wait("the backfill's first shard run", shard_runs_of_backfill, timeout=BACKFILL_TIMEOUT_S, interval=1)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_DEVICES, *DEVICES], env=dagster.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held", "the holder could not lease the pool"

        def waiting_for_a_device() -> list[str]:
            waiting = [
                partition
                for partition, run_id in shard_runs_of_backfill().items()
                if any("held by other runs; waiting" in text for _, text in dagster.messages(run_id))
            ]
            return sorted(waiting) if len(waiting) >= len(DEVICES) else []

        waited = _wait("two shard runs waiting for a device", waiting_for_a_device, timeout=180, interval=2)
    finally:
        holder.stdin.close()  # the holder exits; the kernel drops its locks
        holder.wait(timeout=30)

    def finished():
        backfill = dagster.backfill(backfill_id)
        failed = [r for r in backfill["runs"] if r["status"] in ("FAILURE", "CANCELED")]
        if failed or backfill["status"] in ("FAILED", "CANCELED", "COMPLETED_FAILED"):
            raise AssertionError(f"backfill {backfill_id} failed: {backfill['status']}, failed runs {failed}")
        return backfill if backfill["status"] == "COMPLETED_SUCCESS" else None

    started = time.monotonic()
    backfill = _wait(f"backfill {backfill_id}", finished, timeout=BACKFILL_TIMEOUT_S, interval=5)
    print(f"\nbackfill {backfill_id} finished in {time.monotonic() - started:.0f} s")

    # --- the instance's state: every run succeeded, every shard and the refined dataset materialized
    assert backfill["isAssetBackfill"]
    runs = backfill["runs"]
    assert runs and all(r["status"] == "SUCCESS" for r in runs), runs
    partitions = [t["value"] for r in runs for t in r["tags"] if t["key"] == "dagster/partition"]
    # The base model's chain in runs of its own; then one run per shard of its training gradients.
    assert set(partitions) == {"base"} | {f"base|{shard}" for shard in SHARDS}, partitions
    assert sorted(p for p in partitions if "|" in p) == sorted(f"base|{shard}" for shard in SHARDS)
    assert all(r["status"] == "SUCCESS" for r in dagster.runs())

    # --- the shard runs: side by side under the "gpu" pool, each on a device of its own
    shard_runs = shard_runs_of(runs)
    devices = dagster.materialization_text("training_gradient_projections", "device")
    assert set(devices) == set(shard_runs) and set(devices.values()) <= set(DEVICES), devices
    # Each run's lease, from its log: when it took its device and when it gave it back.
    leases = {}
    for partition, run_id in shard_runs.items():
        messages = dagster.messages(run_id)
        leased = [t for t, text in messages if text.startswith(f"device {devices[partition]} leased from the pool")]
        released = [t for t, text in messages if text == f"device {devices[partition]} released"]
        assert len(leased) == len(released) == 1, (partition, [text for _, text in messages if "device" in text])
        leases[partition] = (leased[0], released[0])
    side_by_side = [
        (a, b)
        for a, b in itertools.combinations(sorted(leases), 2)
        if leases[a][0] < leases[b][1] and leases[b][0] < leases[a][1]
    ]
    assert tuple(waited) in side_by_side, (waited, leases)  # the two that waited held their devices together
    assert all(devices[a] != devices[b] for a, b in side_by_side), (side_by_side, devices)
    # ... and the tables they wrote to the S3 warehouse whole: every pool example once, in its shard.
    warehouse = Warehouse.from_settings(dagster.settings)
    pool = warehouse.scan("training_pool").select("example_id").collect()["example_id"]
    gradients = warehouse.scan("training_gradient_projections").select("example_id", "shard").collect()
    assert sorted(gradients["example_id"]) == sorted(pool)
    assert all(shard_of(i, len(SHARDS)) == shard for i, shard in gradients.iter_rows())
    assert sorted(warehouse.scan("influence_scores").collect()["example_id"]) == sorted(pool)
    # The runs are in PostgreSQL (the instance's run storage), the tables in the bucket, none on disk.
    with contextlib.closing(psycopg2.connect(dagster.env[POSTGRES_URL_ENV_VAR])) as database, database.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs")
        assert cursor.fetchone()[0] == len(dagster.runs())
    assert not (dagster.workspace / "warehouse").exists()
    backfill_runs = {r["runId"] for r in runs}
    for key in materializable:
        assert dagster.latest_materialization_run(key) in backfill_runs, key
    assert dagster.latest_materialization_run("method_benchmark") is None  # dozens of fine-tunes not started
    for key in CHECKPOINT_CHAIN:
        stats = dagster.partition_stats(key)
        expected = len(SHARDS) if key == "training_gradient_projections" else 1
        assert (stats["numMaterialized"], stats["numPartitions"], stats["numFailed"]) == (expected, expected, 0), (key, stats)
    rollout_checks = dagster.checks("rollouts")
    assert rollout_checks["rollouts_complete"] == {
        "blocking": True,
        "status": "SUCCEEDED",
        "evaluation": {"success": True, "severity": "ERROR"},
    }
    # Every check ran; the blocking ones passed. A guard is a warning whose verdict depends on the
    # model this CPU trained (the pipeline tests check it against the figures the asset recorded).
    for key in ("rollouts", "grades", "influence_scores", "refined_dataset"):
        for name, execution in dagster.checks(key).items():
            assert execution.get("status") in ("SUCCEEDED", "FAILED"), (key, name, execution)
            if execution["blocking"]:
                assert execution["status"] == "SUCCEEDED", (key, name, execution)
            elif execution["status"] == "FAILED":
                assert execution["evaluation"]["severity"] == "WARN", (key, name, execution)
    influence_checks_pass = all(e["status"] == "SUCCEEDED" for e in dagster.checks("influence_scores").values())

    # --- what the UI shows afterwards
    page.reload()
    expect(page.get_by_text("Succeeded").first).to_be_visible()
    expect(page.get_by_text("100% completed").first).to_be_visible()
    _shot(page, "05-backfill-succeeded")

    # Everything upstream of refined_dataset. Opened by its address: a lineage graph fits itself to the page
    # only on the browser's first lineage page (later ones reuse the zoom kept in localStorage). On a page
    # this size the whole graph fits at a zoom where Dagster draws each node's status, not only its name.
    page.set_viewport_size({"width": 2200, "height": 1700})
    page.goto(f"{dagster.url}/assets/refined_dataset?view=lineage&lineageScope=upstream&lineageDepth=4")
    expect(page.get_by_role("button", name="Upstream")).to_be_visible()
    expect(page.get_by_role("button", name="All", exact=True)).to_be_disabled()  # depth 4 is the whole graph
    for key in ("validation_queries_source", "training_gradient_projections", "refined_dataset"):
        expect(_visible_node(page, key)).to_be_visible()
    expect(page.get_by_text(re.compile("Loading"))).to_have_count(0, timeout=60_000)  # each node's status
    # training_pool, validation_queries, influence_scores and refined_dataset say "Materialized"; the base
    # model's chain says "1 partition" (the sharded table "3 partitions"), each "100% filled".
    expect(page.get_by_text("Materialized", exact=True)).to_have_count(4)
    expect(page.get_by_text("1 partition", exact=True)).to_have_count(len(CHECKPOINT_CHAIN) - 1)
    expect(page.get_by_text(f"{len(SHARDS)} partitions", exact=True)).to_be_visible()
    expect(page.get_by_text("100% filled", exact=True)).to_have_count(len(CHECKPOINT_CHAIN))
    expect(page.get_by_text("Observed", exact=True)).to_have_count(len(SOURCES - {"test_queries_source"}))  # not upstream
    # rollouts' checks; influence_scores' (its completeness and its two guards) where both guards passed
    expect(page.get_by_text("3 / 3 Passed", exact=True)).to_have_count(2 if influence_checks_pass else 1)
    page.wait_for_timeout(1000)
    _shot(page, "06-refined-dataset-upstream-lineage")
    page.set_viewport_size({"width": 1600, "height": 1300})

    page.goto(f"{dagster.url}/assets/refined_dataset")
    expect(page.get_by_text("Row count")).to_be_visible()
    expect(page.get_by_text("selected_share").first).to_be_visible()
    # The score distribution is a picture (a PNG behind "[Show Markdown]") that renders, and says what it
    # draws: the cut-off (ranked by score) or the rank the selection stops at (the queries taking turns).
    picture = _metadata_picture(page, "score_distribution")
    alt = picture.get_attribute("alt")
    assert alt.startswith("score distribution of") and "selected" in alt, alt
    if dagster.settings.influence.ranking == "score":
        assert "cut-off" in alt, alt
    else:
        assert "the selection stops at rank" in alt, alt
    page.keyboard.press("Escape")
    _shot(page, "07-refined-dataset-overview")

    # One asset launched from its page: the time from the click to the run's success.
    runs_before = {r["runId"] for r in dagster.runs()}
    clicked = time.time()
    page.get_by_role("button", name="Materialize").first.click()  # the page's own, top right
    expect(page.get_by_text(re.compile(r"Launched run \w+"))).to_be_visible()
    (launched,) = _wait("the launched run", lambda: [r for r in dagster.runs() if r["runId"] not in runs_before] or None, 30, 0.5)

    def finished_run():
        run = dagster.run(launched["runId"])  # one query per poll: the status and times come from the same answer
        return run if run["status"] in TERMINAL else None

    run = _wait("it to finish", finished_run, 120, 0.5)
    assert run["status"] == "SUCCESS", run
    seconds = run["endTime"] - clicked
    (ARTIFACTS / "ui-launched-run.txt").write_text(
        f"refined_dataset launched from its page: {seconds:.1f} s from click to success\n"
    )
    print(f"\nrefined_dataset launched from the UI: {seconds:.1f} s from click to success")

    # The evaluation's pictures: each model's accuracy as a marker with its interval on one axis, read
    # back from the picture as the browser shows it, where the table's numbers put them (the text chart
    # this replaced drew base and full/refined at one place once the UI collapsed its spaces).
    page.goto(f"{dagster.url}/assets/refined_model_evaluation")
    evaluation = Warehouse.from_settings(dagster.settings).scan("refined_model_evaluation").collect()
    rows = list(evaluation.select("model", "accuracy", "accuracy_low", "accuracy_high").iter_rows())
    picture = _metadata_picture(page, "accuracy_chart")
    png = picture.screenshot()
    (ARTIFACTS / "08-evaluation-accuracy-chart.png").write_bytes(png)
    assert chart_problems(png, rows) == [], rows
    page.keyboard.press("Escape")
    expect(_metadata_picture(page, "sft_loss_curves")).to_have_attribute("alt", re.compile(r"^training loss: SFT on full"))
    _shot(page, "08-evaluation-overview")

    page.goto(f"{dagster.url}/assets/rollouts?view=checks")
    page.get_by_text("rollouts_complete", exact=True).first.click()
    expect(page.get_by_text("Every query has exactly rollout.samples_per_query rollouts.")).to_be_visible()
    expect(page.get_by_text("Passed", exact=True)).to_be_visible()
    expect(page.get_by_text("Succeeded")).to_have_count(3)  # the three checks of rollouts, in the side list
    _shot(page, "09-rollouts-checks")

    page.goto(f"{dagster.url}/asset-groups")
    expect(materialize_all).to_be_visible()
    expect(_visible_text(page, "refined_dataset")).to_be_visible()
    page.wait_for_timeout(1500)
    _shot(page, "10-asset-graph-after")

    # A run started from Python (as `make demo` starts them) is an ordinary run of the code location:
    # on the Overview timeline, and re-executed without the UI's version warning, unlike a run of
    # Dagster's execute_in_process (what runs from Python were before).
    assert not [r for r in dagster.runs() if r["pipelineName"] == "observe_sources"]  # the UI observed through its asset job
    for script in (OBSERVE_IN_PROCESS, OBSERVE_FROM_PYTHON):
        subprocess.run([str(VENV_BIN / "python"), "-c", script], cwd=dagster.workspace, env=dagster.env, check=True, timeout=300)
    in_process, observed = sorted(
        (r for r in dagster.runs() if r["pipelineName"] == "observe_sources"), key=lambda r: dagster.run(r["runId"])["startTime"]
    )
    for run, icon in ((in_process, 1), (observed, 0)):
        page.goto(f"{dagster.url}/runs/{run['runId']}")
        reexecute = page.get_by_role("button", name=re.compile("Re-execute all")).first
        expect(reexecute).to_be_visible()
        # The version warning is an icon on the button (an exact match has none).
        expect(reexecute.get_by_role("img", name="warning")).to_have_count(icon)
    _shot(page, "11-run-started-from-python")
    page.goto(f"{dagster.url}/overview/activity/timeline")
    expect(page.get_by_text("observe_sources", exact=True).first).to_be_visible()
    _shot(page, "12-overview-timeline")
