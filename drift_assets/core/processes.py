"""Processes a step starts must not outlive it.

vLLM runs its engine in child processes. When the process that owns them is killed (``kill -9``,
an out-of-memory kill, a cluster pre-emption), they are re-parented to init and keep running,
holding their memory (on a GPU, their share of it) and ignoring SIGTERM. A small watchdog process,
started beside them, kills them as soon as their owner is gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Runs in its own interpreter: polls the owner, then SIGKILLs each process it was given, unless its
# pid now belongs to another process (its start time differs).
_WATCHDOG = """
import os, signal, sys, time
owner, targets = int(sys.argv[1]), [arg.split(":") for arg in sys.argv[2:]]
while os.getppid() == owner:
    time.sleep(0.5)
for pid, started in targets:
    try:
        if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19] == started:
            os.kill(int(pid), signal.SIGKILL)
    except (OSError, IndexError):
        pass
"""


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (whose parentheses may hold spaces)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> dict[int, str]:
    """Every living descendant of ``pid``, with its start time (clock ticks since boot); {} off Linux."""
    parents = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            parents[int(entry.name)] = (int(fields[1]), fields[19])
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, started) in parents.items():
            if ppid == parent and child not in found:
                found[child] = started
                frontier.append(child)
    return found


def guard_children(started_before: set[int]) -> subprocess.Popen | None:
    """Start a watchdog that kills this process's descendants not in ``started_before`` once this
    process is gone. Stop it (``.kill()``) after shutting them down normally."""
    targets = {pid: started for pid, started in descendants(os.getpid()).items() if pid not in started_before}
    if not targets:
        return None
    return subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), *(f"{pid}:{started}" for pid, started in targets.items())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
