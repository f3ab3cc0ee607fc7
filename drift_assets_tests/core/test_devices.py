"""Device leases between processes: real processes, real flocks."""

import os
import signal
import subprocess
import sys
import time

import pytest

from drift_assets.core.runtime.devices import lease_device

HOLDER = """
import os, sys, time
from pathlib import Path
from drift_assets.core.runtime.devices import lease_device
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


THREADS_AFTER_LEASE = """
import os, sys
from pathlib import Path
if sys.argv[2] == "affinity":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # as taskset or a container's cpuset would
import torch
torch.set_num_threads(8)
from drift_assets.core.runtime.devices import lease_device
lease_device(["cpu:0"], Path(sys.argv[1]))
print(torch.get_num_threads())
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
@pytest.mark.parametrize("budget", ["affinity", "OMP_NUM_THREADS"])
def test_a_cpu_lease_sizes_torchs_threads_to_the_process_budget(tmp_path, budget):
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    if budget == "OMP_NUM_THREADS":
        env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", THREADS_AFTER_LEASE, str(tmp_path), budget], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) == 1


def test_a_test_worker_and_the_processes_it_starts_keep_to_its_share_of_the_cores():
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip("only under make test's workers (pytest-xdist)")
    import torch

    share = os.environ["VLLM_CPU_OMP_THREADS_BIND"].split(",")
    # Fails when something imports torch before the conftest sets the share.
    assert torch.get_num_threads() == len(share)
    child = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True, text=True, timeout=120
    )
    assert int(child.stdout) == len(share), child.stderr
