"""Device leases between processes: real processes, real flocks."""

import os
import signal
import subprocess
import sys
import time

import pytest

from drift_assets.core.devices import lease_device

HOLDER = """
import os, sys, time
from pathlib import Path
from drift_assets.core.devices import lease_device
lease = lease_device(sys.argv[2].split(","), Path(sys.argv[1]), poll_seconds=0.05, timeout_seconds=float(sys.argv[3]))
print(lease.label, lease.device, os.environ.get("CUDA_VISIBLE_DEVICES", "-"), flush=True)
time.sleep(float(sys.argv[4]))
"""


def holder(lock_dir, pool: str, timeout: float = 30, hold: float = 60, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_dir), pool, str(timeout), str(hold)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def first_line(process: subprocess.Popen) -> list[str]:
    line = process.stdout.readline()
    assert line, process.stderr.read()
    return line.split()


def test_processes_side_by_side_hold_different_devices_and_a_dead_ones_device_comes_free(tmp_path):
    first, second = holder(tmp_path, "cpu:0,cpu:1"), None
    try:
        assert first_line(first)[:2] == ["cpu:0", "cpu"]
        second = holder(tmp_path, "cpu:0,cpu:1")
        assert first_line(second)[0] == "cpu:1"
        waiting = holder(tmp_path, "cpu:0,cpu:1")
        time.sleep(1.0)
        assert waiting.poll() is None  # both devices held: it waits
        first.send_signal(signal.SIGKILL)  # a crashed run's device is released by the kernel
        assert first_line(waiting)[0] == "cpu:0"
        waiting.kill()
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()


def test_a_run_that_finds_no_free_device_in_time_says_which_pool(tmp_path):
    held = lease_device(["cpu:0"], tmp_path)
    try:
        with pytest.raises(TimeoutError, match=r"no device of \['cpu:0'\] came free in 0.2 s"):
            lease_device(["cpu:0"], tmp_path, poll_seconds=0.05, timeout_seconds=0.2)
    finally:
        held.release()
    lease_device(["cpu:0"], tmp_path, timeout_seconds=0).release()  # free again once released


def test_a_cuda_label_becomes_the_only_gpu_the_process_and_its_engine_processes_see(tmp_path):
    # CUDA_VISIBLE_DEVICES is read when CUDA initialises, which a CPU-only machine never does: the
    # mapping itself is what this checks.
    process = holder(tmp_path, "cuda:0,cuda:1", hold=0)
    assert first_line(process) == ["cuda:0", "cuda", "0"]
    process.wait()
    # Within GPUs the machine already narrowed: the second device of 4,6 is 6.
    narrowed = {"CUDA_VISIBLE_DEVICES": "4,6"}
    first, second = holder(tmp_path, "cuda:0,cuda:1", env=narrowed), holder(tmp_path, "cuda:0,cuda:1", env=narrowed)
    try:
        assert sorted([first_line(first), first_line(second)]) == [["cuda:0", "cuda", "4"], ["cuda:1", "cuda", "6"]]
    finally:
        first.kill()
        second.kill()
    with pytest.raises(ValueError, match="distinct labels such as cuda:0"):
        lease_device(["gpu0"], tmp_path)
