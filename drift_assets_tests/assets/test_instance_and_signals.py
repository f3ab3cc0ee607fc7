"""The Dagster instance, the warehouse's lock, credentials and signals, as a user meets them through
the command line and the UI (probe of 2026-12-05: N5–N8, N32–N41, N47).

- One instance keeps one warehouse's history: staleness is read from it, so a run on another
  warehouse is refused instead of being called up to date by the other's materializations.
- The warehouse's lock holds on every launch path: ``drift_assets materialize`` holds it exclusively,
  every run Dagster executes holds it shared.
- Credentials never reach the UI: the settings refuse them, the environment passes them.
- A signal ends a materialization in a short paragraph, and the same command resumes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from dagster import AssetKey, DagsterInstance, instance_for_test

from drift_assets.cli import main
from drift_assets.core.runtime.processes import descendants
from drift_assets.production import free_port
from drift_assets.resources import INSTANCE_KEY, Warehouse, WarehouseBusyError, WarehouseError, WarehouseInstanceError
from drift_assets.settings import REPO_ROOT, load_settings
from drift_assets_tests.conftest import SMALL_DEMO, write_settings

PYTHON = [sys.executable, "-m", "drift_assets", "materialize"]


def home_in(directory: Path) -> Path:
    """A DAGSTER_HOME as the probe's setup makes it (telemetry off)."""
    home = directory / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


def one_error_line(stderr: str) -> str:
    """The command's error: one ``error:`` line and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


# ------------------------------------------------------------------------------ N38, N39: one instance, one warehouse


def test_n38_an_instance_keeps_the_history_of_one_warehouse_and_refuses_another(tmp_path):
    first, second = Warehouse(root=str(tmp_path / "wA")), Warehouse(root=str(tmp_path / "wB"))
    with instance_for_test(temp_dir=str(home_in(tmp_path))) as instance:
        first.claim(instance)
        with pytest.raises(WarehouseInstanceError) as refused:
            second.claim(instance)
        first.claim(instance)  # its own, again
        recorded = json.loads(instance.run_storage.get_cursor_values({INSTANCE_KEY})[INSTANCE_KEY])
    assert str(refused.value) == (
        f"the Dagster instance at {tmp_path / 'home'} keeps the history of the warehouse {tmp_path / 'wA'}, not of "
        f"{tmp_path / 'wB'}: staleness would be read from the other warehouse's materializations. Point DAGSTER_HOME at "
        "a directory of its own for each warehouse"
    )
    assert recorded == {"id": first.identity().id, "root": str(tmp_path / "wA")}
    assert not (tmp_path / "wB").exists()  # refused before anything was written

    # A workspace copied whole (warehouse and instance, as private_materialized is) keeps working;
    # the copy gets an identity of its own, so the two instances never take each other's warehouse.
    shutil.copytree(tmp_path, tmp_path.parent / "copy")
    copy = Warehouse(root=str(tmp_path.parent / "copy" / "wA"))
    with instance_for_test(temp_dir=str(tmp_path.parent / "copy" / "home")) as copied:
        copy.claim(copied)
        with pytest.raises(WarehouseInstanceError, match="keeps the history of the warehouse .*/copy/wA, not of"):
            first.claim(copied)
    assert copy.identity().id != first.identity().id and copy.identity().root == copy.location
    with instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        first.claim(instance)
        with pytest.raises(WarehouseInstanceError):
            copy.claim(instance)
        # A warehouse deleted and created again where the instance's was is the same to it.
        shutil.rmtree(tmp_path / "wA")
        first.claim(instance)
        assert first.identity() is not None


def test_n39_two_warehouses_starting_together_on_a_new_instance_one_is_refused(tmp_path):
    """Two threads, each with its own connection to the instance and its own open lock file, as two
    processes would have: the instance's lock lets one of them in at a time."""
    home, barrier, outcomes = home_in(tmp_path), threading.Barrier(2, timeout=60), []
    DagsterInstance.from_config(str(home)).dispose()  # its storage created once, before both open it

    def claim(root: Path) -> None:
        with DagsterInstance.from_config(str(home)) as instance:
            barrier.wait()
            try:
                Warehouse(root=str(root)).claim(instance)
                outcomes.append("claimed")
            except WarehouseInstanceError:
                outcomes.append("refused")

    claims = [threading.Thread(target=claim, args=(tmp_path / name,)) for name in ("wA", "wB")]
    for thread in claims:
        thread.start()
    for thread in claims:
        thread.join(timeout=120)
    assert sorted(outcomes) == ["claimed", "refused"]


# ------------------------------------------------------------------------------ N5–N8: the command line's first checks


def test_n5_n7_a_settings_path_that_is_a_directory_or_not_utf8_is_one_error_line(tmp_path, capsys):
    assert main(["materialize", "--settings", str(tmp_path)]) == 2
    assert (
        one_error_line(capsys.readouterr().err)
        == f"error: {tmp_path}: is a directory, not a settings file (name the YAML file itself)"
    )
    latin = tmp_path / "settings.yaml"
    latin.write_bytes("# caf\xe9\n".encode("latin-1"))
    assert main(["materialize", "--settings", str(latin)]) == 2
    assert "not UTF-8 text: byte 0xe9 at position 5 (line 1)" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("home", "message"),
    [
        ("{tmp}/nowhere", "DAGSTER_HOME={tmp}/nowhere does not exist or is not a directory: create it, or unset"),
        ("tmp/relative/home", "DAGSTER_HOME=tmp/relative/home is a relative path: set it to the absolute path of a directory"),
    ],
)
def test_n8_a_dagster_home_that_is_missing_or_relative_is_one_line_naming_it(tmp_path, capsys, monkeypatch, home, message):
    settings = write_settings(tmp_path, {"warehouse": {"root": "wh"}})
    monkeypatch.setenv("DAGSTER_HOME", home.format(tmp=tmp_path))
    assert main(["materialize", "--settings", str(settings)]) == 2
    assert one_error_line(capsys.readouterr().err).startswith(f"error: {message.format(tmp=tmp_path)}")
    assert not (tmp_path / "wh").exists()


def test_n6_an_empty_settings_file_takes_the_defaults_and_names_the_first_missing_path(tmp_path, capsys, monkeypatch):
    (tmp_path / "settings.yaml").write_bytes(b"")
    monkeypatch.setenv("DAGSTER_HOME", str(home_in(tmp_path)))
    assert main(["materialize", "--settings", str(tmp_path / "settings.yaml")]) == 1
    error = capsys.readouterr().err
    assert f"  FileNotFoundError: model.path: {tmp_path / 'demo' / 'model'} does not exist" in error.splitlines()
    assert "Traceback" not in error


# ------------------------------------------------------------------------------ N40, N41: what the UI serves


def _address(hexadecimal: str) -> str:
    """/proc/net/tcp's ``0100007F:1F90`` as ``127.0.0.1`` (IPv6: four little-endian words)."""
    host = bytes.fromhex(hexadecimal.split(":")[0])
    if len(host) == 4:
        return socket.inet_ntop(socket.AF_INET, host[::-1])
    return socket.inet_ntop(socket.AF_INET6, b"".join(host[i : i + 4][::-1] for i in range(0, 16, 4)))


def listening_addresses(pids: list[int]) -> set[str]:
    """The addresses the TCP sockets of ``pids`` listen on."""
    inodes = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:  # gone meanwhile
            continue
        inodes |= {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                addresses.add(_address(fields[1]))
    return addresses


SERVED = """
{
  workspaceOrError { ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message causes { message } } } } } }
  repositoriesOrError { ... on RepositoryConnection { nodes {
    name
    allTopLevelResourceDetails { name configuredValues { key value type } nestedResources { name } }
    assetNodes { assetKey { path } description metadataEntries { label __typename
      ... on TextMetadataEntry { text } ... on JsonMetadataEntry { jsonString } ... on MarkdownMetadataEntry { mdStr }
      ... on PathMetadataEntry { path } ... on UrlMetadataEntry { url } } }
  } } }
  runConfigSchemaOrError(selector: {repositoryLocationName: "drift_assets.definitions",
                                    repositoryName: "__repository__", pipelineName: "__ASSET_JOB"}) {
    __typename ... on RunConfigSchema { rootDefaultYaml }
  }
}
"""
SECRETS = {"access_key_id": "AKIAFAKEKEY999", "secret_access_key": "SECRETXYZ123"}


def _post(url: str, query: str) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_n41_n40_the_ui_serves_no_credential_and_listens_on_loopback_only(tmp_path):
    """N41 as the probe ran it: credentials in warehouse.storage_options, the UI's webserver, its GraphQL.
    The file's credentials are refused where the code location loads (naming the variable to set);
    from the environment they reach the store and never the UI. N40: every listener is on 127.0.0.1."""
    options = {"region": "us-east-1", "endpoint": "http://127.0.0.1:9", "allow_http": "true"}
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"warehouse": {"root": "s3://bucket/drift", "storage_options": {**options, **SECRETS}}}))
    port = free_port()
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(home_in(tmp_path)),
        "DRIFT_ASSETS_SETTINGS": str(settings),
        "AWS_ACCESS_KEY_ID": SECRETS["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": SECRETS["secret_access_key"],
    }
    webserver = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("dagster-webserver")),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            "drift_assets.definitions",
        ],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/graphql"

    def served() -> str:
        deadline = time.monotonic() + 120
        while True:
            try:
                answer = _post(url, SERVED)
                [entry] = answer["data"]["workspaceOrError"]["locationEntries"]
                if entry["loadStatus"] == "LOADED":
                    return json.dumps(answer)
            except (OSError, KeyError, ValueError):
                pass
            assert time.monotonic() < deadline and webserver.poll() is None, "the webserver did not serve the location"
            time.sleep(0.5)

    try:
        refused = served()
        assert not [value for value in SECRETS.values() if value in refused], refused
        assert "warehouse.storage_options: 'access_key_id' is a credential" in refused
        assert "set the environment variable AWS_ACCESS_KEY_ID instead" in refused
        assert listening_addresses([webserver.pid, *descendants(webserver.pid)]) == {"127.0.0.1"}

        settings.write_text(yaml.safe_dump({"warehouse": {"root": "s3://bucket/drift", "storage_options": options}}))
        reload = 'mutation { reloadRepositoryLocation(repositoryLocationName: "drift_assets.definitions") { __typename } }'
        assert "errors" not in _post(url, reload)
        answer = served()
        data = json.loads(answer)["data"]
        [repository] = data["repositoriesOrError"]["nodes"]
        resources = {resource["name"]: resource for resource in repository["allTopLevelResourceDetails"]}
        shown = {value["key"]: value["value"] for value in resources["warehouse"]["configuredValues"]}
        assert json.loads(shown["storage_options"]) == options  # the location loaded, with the store's options
        assert data["runConfigSchemaOrError"]["__typename"] == "RunConfigSchema" and repository["assetNodes"]
        assert not [value for value in SECRETS.values() if value in answer], answer
        assert listening_addresses([webserver.pid, *descendants(webserver.pid)]) == {"127.0.0.1"}
    finally:
        os.killpg(webserver.pid, signal.SIGTERM)
        webserver.wait(timeout=30)


# ------------------------------------------------------------------------------ N47: the lock on every launch path


def test_n47_runs_share_the_warehouse_lock_and_exclude_a_materialize(tmp_path):
    warehouse = Warehouse(root=str(tmp_path / "wh"))
    with warehouse.shared_lock(), warehouse.shared_lock():  # runs launched from the UI, side by side
        with pytest.raises(WarehouseBusyError) as busy:
            with warehouse.lock():
                pass
    assert str(busy.value).startswith(
        f"warehouse {warehouse.root} is being materialized by runs Dagster launched (pid {os.getpid()}: "
    )
    with warehouse.lock(), warehouse.shared_lock():  # a materialize executing its own runs
        pass
    # Another process's exclusive lock (an open file of its own, as flock sees it) keeps a run out.
    with open(tmp_path / "wh" / ".materialize.lock", "r+") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.truncate()
        other.write("pid 4242, since 2026-12-05 12:00:00")
        other.flush()
        with pytest.raises(WarehouseBusyError) as busy:
            with warehouse.shared_lock():
                pass
    assert str(busy.value) == (
        f"warehouse {warehouse.root} is being materialized by pid 4242, since 2026-12-05 12:00:00: this run did "
        "nothing; launch it again once that one has finished"
    )


# ------------------------------------------------------------------------------ through the command line, on the demo

# The tests' demo on its own files (no demo assets, no evaluation), as the session's workspace was
# materialized; PROBE: the probe's base settings (S0) on it, two shards.
OWN_FILES = {**SMALL_DEMO, "demo": {**SMALL_DEMO["demo"], "enabled": False}, "data": {"test_queries": None}}
PROBE = {**OWN_FILES, "rollout": {**SMALL_DEMO["rollout"], "samples_per_query": 4}, "projection": {"shards": 2}}


def settings_file(directory: Path, name: str = "settings.yaml", base: dict = PROBE, **groups) -> Path:
    """``base`` with ``groups`` merged in, written to ``directory``/``name``."""
    merged = {group: {**base.get(group, {}), **groups.get(group, {})} for group in {*base, *groups}}
    return write_settings(directory, merged, name)


def cli_environment(settings: Path, home: Path) -> dict[str, str]:
    return {**os.environ, "DAGSTER_HOME": str(home), "DRIFT_ASSETS_SETTINGS": str(settings)}


def test_n38_n39_two_settings_files_on_one_dagster_home_keep_their_own_staleness(private_materialized):
    """N38 and N39 as the probe ran them: settings files A and B (another warehouse, export folder,
    pool and fraction) on the DAGSTER_HOME of A's warehouse (the session's, copied). B, started beside
    an unchanged A, is refused at once; A recomputes nothing; then a fraction changed in A's file is
    applied (it was not when B's materializations were in A's instance)."""
    directory, home = private_materialized, private_materialized / "dagster_home"
    pool = (directory / "demo" / "training_pool.jsonl").read_text().splitlines(keepends=True)
    (directory / "poolB.jsonl").write_text("".join(pool[:100]))
    a = settings_file(directory, "a.yaml", OWN_FILES)
    b = settings_file(
        directory,
        "b.yaml",
        OWN_FILES,
        data={"training_pool": "poolB.jsonl"},
        warehouse={"root": "wB"},
        selection={"export_dir": "exportsB", "fraction": 0.3},
    )
    first = subprocess.Popen(PYTHON, env=cli_environment(a, home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    second = subprocess.run(PYTHON, env=cli_environment(b, home), capture_output=True, text=True, timeout=600)
    out, err = first.communicate(timeout=600)
    assert second.returncode == 2, second.stderr[-3000:]
    refusal = one_error_line(second.stderr)
    assert refusal.startswith(f"error: the Dagster instance at {home} keeps the history of the warehouse "), refusal
    assert f"not of {os.path.realpath(directory / 'wB')}: staleness would be read from the other warehouse's" in refusal
    assert not (directory / "wB").exists() and not (directory / "exportsB").exists()
    assert first.returncode == 0, err[-3000:]
    assert "materialized nothing (everything was up to date)" in out  # N39: B left nothing in A's instance

    a = settings_file(directory, "a.yaml", OWN_FILES, selection={"fraction": 0.3})
    third = subprocess.run(PYTHON, env=cli_environment(a, home), capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    warehouse = Warehouse.from_settings(load_settings(a))
    examples = warehouse.scan("training_pool").collect().height
    selected = warehouse.scan("refined_dataset").filter(pl.col("selected")).collect().height
    exported = (directory / "exports" / "refined_dataset.jsonl").read_text().splitlines()
    assert len(exported) == selected == -(-3 * examples // 10), third.stdout  # ceil(0.3 × pool)


def test_n47_dagsters_launch_path_does_not_run_beside_a_materialize(workspace):
    """`dagster asset materialize` (how the UI and its daemon launch runs) while `drift_assets materialize`
    holds the warehouse (its lock, held here as it holds it): the run fails at once naming the holder and
    writes nothing; released, the same command materializes."""
    settings = settings_file(workspace)
    warehouse = Warehouse.from_settings(load_settings(settings))
    command = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-m", "drift_assets.definitions"]
    command += ["--select", "training_pool,training_pool_rejects,validation_queries"]
    environment = cli_environment(settings, home_in(workspace))
    with warehouse.lock():
        blocked = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert blocked.returncode != 0
    assert f"warehouse {warehouse.root} is being materialized by pid {os.getpid()}, since " in blocked.stderr + blocked.stdout
    assert not warehouse.exists("training_pool") and not warehouse.exists("validation_queries")
    released = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert released.returncode == 0, released.stderr[-3000:]
    assert warehouse.exists("training_pool") and warehouse.exists("validation_queries")


def _interrupted(command: list[str], environment: dict, when, signum: int) -> tuple[int, str, set[int], set[str]]:
    """Run ``command``, send ``signum`` once ``when(line, pid)`` holds for a line of its output; returns its
    exit status, output, the processes it had then (itself and its descendants) and their listeners."""
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, pids, listeners = [], set(), set()
    for line in process.stdout:
        output.append(line)
        if when(line, process.pid):
            pids = {process.pid, *descendants(process.pid)}
            listeners = listening_addresses(sorted(pids))
            process.send_signal(signum)
            break
    output.append(process.stdout.read())
    process.wait(timeout=300)
    return process.returncode, "".join(output), pids, listeners


def _assert_interrupted_paragraph(output: str, name: str) -> None:
    assert "Traceback" not in output and "Stack Trace" not in output, output
    paragraph = output[output.index("error: the materialization was interrupted") :].splitlines()
    assert paragraph == [
        f"error: the materialization was interrupted ({name}).",
        "  What was committed is kept; run the same command again to resume: what already succeeded is not recomputed.",
    ], output
    assert len(output.splitlines()) < 20, output


@pytest.mark.vllm
def test_n34_n35_n37_n40_a_signal_ends_in_a_short_paragraph_leaves_no_process_and_the_rerun_resumes(workspace):
    from drift_assets_tests.helpers.processes import running, vllm_engines_under

    for name, rows in (("training_pool.jsonl", 120), ("validation_queries.jsonl", 8)):
        path = workspace / "demo" / name
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:rows]))
    home, settings = home_in(workspace), settings_file(workspace)
    environment = cli_environment(settings, home)
    # N37: Ctrl-C (SIGINT) in the checkpoint's run, its first table (projection_basis) committed.
    code, output, _, _ = _interrupted(PYTHON, environment, lambda line, _: "rollouts: checkpoint base:" in line, signal.SIGINT)
    assert code == 128 + signal.SIGINT, output
    _assert_interrupted_paragraph(output, "SIGINT")

    # N34, N35, N40: SIGTERM while vLLM's engine starts in processes of its own (as on a GPU).
    def engine_starting(line: str, pid: int) -> bool:
        if "rollouts: checkpoint base:" in line:
            deadline = time.monotonic() + 120
            while not vllm_engines_under(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            return True
        return False

    separate = settings_file(workspace, "separate.yaml", rollout={"engine_process": "separate"})
    code, output, pids, listeners = _interrupted(PYTHON, cli_environment(separate, home), engine_starting, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, output
    _assert_interrupted_paragraph(output, "SIGTERM")
    assert "left STARTED" not in output  # the interrupted run was marked failed as it ended
    assert len(pids) > 2  # the command, vLLM's engine and its watchdog
    assert listeners <= {"127.0.0.1", "::1"}, listeners  # N40
    deadline = time.monotonic() + 30
    while [pid for pid in pids if running(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if running(pid)], "a process outlived the interrupted command"

    # The rerun resumes: what the interrupted runs committed is not computed again.
    rerun = subprocess.run(PYTHON, env=environment, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    with DagsterInstance.from_config(str(home)) as instance:
        written = {
            name: len(instance.fetch_materializations(AssetKey(name), limit=10).records)
            for name in ("projection_basis", "rollouts")
        }
        runs = [run.status.value for run in instance.get_runs()]
    assert written == {"projection_basis": 1, "rollouts": 1}
    assert runs.count("FAILURE") == 2 and "STARTED" not in runs
    assert Warehouse.from_settings(load_settings(settings)).scan("influence_scores").collect().height == 120


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``directory`` (the probe's disk-full and read-only warehouses)."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def test_n32_a_read_only_warehouse_fails_at_once_naming_its_root_and_keeps_the_exports(private_materialized):
    directory, home = private_materialized, private_materialized / "dagster_home"
    with tmpfs(directory / "mounted", "64m") as mounted:
        shutil.copytree(directory / "warehouse", mounted / "warehouse")
        settings = settings_file(directory, "ro.yaml", OWN_FILES, warehouse={"root": "mounted/warehouse"})
        warehouse = Warehouse.from_settings(load_settings(settings))
        with DagsterInstance.from_config(str(home)) as instance:
            warehouse.claim(instance)  # the good run's instance and warehouse, moved together
        subprocess.run(["mount", "-o", "remount,ro", str(mounted)], check=True)
        exports = {path: path.read_bytes() for path in (directory / "exports").iterdir()}
        settings = settings_file(
            directory, "ro.yaml", OWN_FILES, warehouse={"root": "mounted/warehouse"}, selection={"fraction": 0.3}
        )
        started = time.monotonic()
        result = subprocess.run(PYTHON, env=cli_environment(settings, home), capture_output=True, text=True, timeout=600)
        assert result.returncode == 1, result.stderr[-3000:]
        assert (
            f"  WarehouseError: warehouse.root {warehouse.root} cannot be written (Read-only file system): nothing was changed"
            in result.stderr.splitlines()
        ), result.stderr[-3000:]
        assert "materializing" not in result.stderr + result.stdout and time.monotonic() - started < 120
    assert {path: path.read_bytes() for path in (directory / "exports").iterdir()} == exports


def test_n33_the_terminal_keeps_every_line_but_those_of_a_rust_panic(capfd):
    from drift_assets.terminal import without_rust_panics

    written = [
        b"12:00:00 influence_scores: scoring\n",
        b"thread 'tokio-rt-worker' (14395) panicked at /cargo/object_store-0.13.2/src/buffered.rs:369:41:\n",
        b"Already shut down\n",
        b"stack backtrace:\n",
        b"   0: __rustc::rust_begin_unwind\n",
        b"note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n",
        b"\n",
        b"error: the materialization failed.\n",
        b"thread '<unnamed>' panicked at src/lib.rs:1:1:\n",
        b"12:00:01 a line of ours ends a panic whose note is missing\n",
    ]
    with without_rust_panics():
        for line in written:
            os.write(2, line)
    assert capfd.readouterr().err.splitlines() == [
        "12:00:00 influence_scores: scoring",
        "",
        "error: the materialization failed.",
        "12:00:01 a line of ours ends a panic whose note is missing",
    ]


def test_n33_a_full_disk_fails_naming_the_table_without_a_rust_panic_and_the_rerun_writes_it_whole(tmp_path, capfd):
    """The warehouse's file system fills during a write: the error names the table and ENOSPC, the
    command's terminal shows no panic of deltalake's threads (it does without the filter), and once
    there is space the same write lands whole."""
    from dagster import asset, materialize

    from drift_assets.cli import _root_cause
    from drift_assets.terminal import without_rust_panics

    @asset
    def gradients() -> pl.DataFrame:
        return pl.DataFrame({"value": np.random.default_rng(0).random(200_000)})

    def write(warehouse: Warehouse) -> BaseException | None:
        try:
            materialize([gradients], resources={"io_manager": warehouse.io_manager()})
        except Exception as error:
            time.sleep(1)  # the object store's thread panics after the write has failed
            return _root_cause(error)
        return None

    with tmpfs(tmp_path / "full", "300k") as root:
        warehouse = Warehouse(root=str(root))
        unfiltered = write(warehouse)
        assert "panicked at" in capfd.readouterr().err  # what the terminal showed
        with without_rust_panics():
            error = write(warehouse)
        assert "panicked" not in capfd.readouterr().err
        assert isinstance(error, WarehouseError) and isinstance(unfiltered, WarehouseError)
        assert str(error).startswith(f"{warehouse.table_uri('gradients')}: the table could not be written, and is as it was")
        assert "No space left on device" in str(error) and "ENOSPC: the file system is full" in str(error)
        assert not warehouse.exists("gradients")
        subprocess.run(["mount", "-o", "remount,size=64m", str(root)], check=True)
        assert write(warehouse) is None
        assert warehouse.scan("gradients").collect().height == 200_000
