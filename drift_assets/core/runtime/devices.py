"""Devices shared by runs that execute side by side on one machine.

Each run (one process) leases one device of a pool for its whole life: an exclusive ``flock`` on a
lock file per device. The kernel drops the lock when the process exits, crashed or not, so a
device is never left claimed by a run that died. ``cuda:i`` is made the only GPU the process sees
(``CUDA_VISIBLE_DEVICES``, which vLLM's engine processes inherit); ``cpu`` labels share the cores
between the pool's workers.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

DEVICE_LABEL = re.compile(r"^(cpu(:\d+)?|cuda:\d+)$")
LOCK_DIR_ENV_VAR = "DRIFT_ASSETS_DEVICE_LOCKS"
logger = logging.getLogger(__name__)


def check_device_pool(pool: Sequence[str]) -> list[str]:
    """``pool`` as a list, or ValueError where a label is not cpu[:i] or cuda:i, or one repeats."""
    bad = [label for label in pool if not DEVICE_LABEL.match(label)]
    if bad or len(set(pool)) != len(pool):
        raise ValueError(f"expected distinct labels such as cuda:0 or cpu:1, got {list(pool)}")
    return list(pool)


def cpu_threads() -> int:
    """The threads this process's CPU work may use: ``OMP_NUM_THREADS`` where set (the budget whoever
    started it gave it), else the CPUs its affinity allows (which taskset or a container narrows)."""
    budget = os.environ.get("OMP_NUM_THREADS", "")
    if budget.isdigit() and int(budget) > 0:
        return int(budget)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass
class DeviceLease:
    """One device of the pool, held by this process until :meth:`release` or exit."""

    label: str  # as the pool names it: what the run's metadata records
    device: str  # what torch is given in this process
    _lock: IO | None = field(default=None, repr=False)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor drops the flock
            self._lock = None


def _try_lock(path: Path) -> IO | None:
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    handle.flush()
    return handle


def _use(label: str, pool_size: int) -> str:
    """Make ``label`` this process's device and return what torch should be given."""
    if label.startswith("cuda:"):
        import torch

        index = int(label.split(":")[1])
        if torch.cuda.is_initialized():
            # Too late to narrow what the process sees; torch still takes the index, vLLM would not.
            logger.warning(f"CUDA was initialised before the device lease: using {label} without CUDA_VISIBLE_DEVICES")
            return label
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [part.strip() for part in visible.split(",")] if visible else [str(i) for i in range(index + 1)]
        if index >= len(ids):
            raise ValueError(f"model.device_pool names {label} but CUDA_VISIBLE_DEVICES={visible} shows {len(ids)} GPUs")
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[index]
        return "cuda"
    import torch

    # The pool's CPU workers share the process's thread budget instead of each starting a thread per core.
    torch.set_num_threads(max(1, cpu_threads() // pool_size))
    return "cpu"


def lease_device(
    pool: Sequence[str],
    lock_dir: Path | None = None,
    poll_seconds: float = 0.1,
    timeout_seconds: float | None = None,
    log: Callable[[str], None] = logger.info,
) -> DeviceLease:
    """Lease the first free device of ``pool``, waiting while every one is held by another run.

    A waiting run tries the locks every ``poll_seconds`` (an attempt costs microseconds): runs that
    wait together start within that of each other once the devices come free."""
    if not pool:
        raise ValueError("model.device_pool is empty: list devices such as cuda:0 or cpu:1")
    try:
        check_device_pool(pool)
    except ValueError as error:
        raise ValueError(f"model.device_pool: {error}") from None
    # One directory of lock files per machine, shared by its runs.
    lock_dir = lock_dir or Path(os.environ.get(LOCK_DIR_ENV_VAR) or Path(tempfile.gettempdir()) / "drift_assets-device-locks")
    lock_dir.mkdir(parents=True, exist_ok=True)
    started, waited = time.monotonic(), False
    while True:
        for label in pool:
            handle = _try_lock(lock_dir / f"{label.replace(':', '-')}.lock")
            if handle is not None:
                lease = DeviceLease(label, _use(label, len(pool)), handle)
                log(f"device {label} leased from the pool {list(pool)} (locks in {lock_dir})")
                return lease
        elapsed = time.monotonic() - started
        if timeout_seconds is not None and elapsed > timeout_seconds:
            raise TimeoutError(f"no device of {list(pool)} came free in {timeout_seconds:g} s (locks in {lock_dir})")
        if not waited:
            log(f"all {len(pool)} devices of {list(pool)} are held by other runs; waiting for one (locks in {lock_dir})")
            waited = True
        time.sleep(poll_seconds)
