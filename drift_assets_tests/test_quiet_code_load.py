"""What dg, the webserver and the daemon print when they load the code location: nothing of Dagster's
beta notices (the observable sources, the automation sensor's options) under Python's default warning
filters."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_loading_the_code_location_prints_no_beta_warnings_or_debug_lines(tmp_path):
    # Python's default warning filters, as dg's code server runs with.
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import drift_assets.definitions as d; print(len(d.defs.resolve_asset_graph().get_all_asset_keys()))",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) > 10  # the graph was built (where the beta notices are raised)
    assert "Warning" not in done.stderr and "DEBUG" not in done.stderr, done.stderr


def test_materialize_says_what_it_loads_first_within_ten_seconds(tmp_path):
    import signal
    import time

    from drift_assets_tests.conftest import write_settings

    settings = write_settings(tmp_path, {"demo": {"enabled": True}})
    env = {**os.environ, "PYTHONPATH": str(REPO), "DAGSTER_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "drift_assets", "materialize", "--settings", str(settings)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        first = process.stdout.readline()
        seconds = time.monotonic() - started
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert "materialize: loading the pipeline, the Dagster instance and the warehouse" in first, first
    assert seconds < 10, seconds
