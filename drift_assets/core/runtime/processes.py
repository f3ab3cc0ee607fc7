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

# Runs in its own interpreter while its owner lives: every half second it notes the owner's
# descendants (but itself and those given as already there); once the owner is gone it SIGKILLs
# each one noted, unless its pid now belongs to another process (its start time differs). Noting
# them as they appear covers a kill while the engine is still starting.
_WATCHDOG = """
import os, signal, sys, time
owner, me, excluded = int(sys.argv[1]), os.getpid(), {int(pid) for pid in sys.argv[2:]}

def stat(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[19]
    except (OSError, IndexError, ValueError):
        return None

noted = {}
while os.getppid() == owner:
    table = {int(name): stat(name) for name in os.listdir("/proc") if name.isdigit()}
    frontier = [owner]
    while frontier:
        parent = frontier.pop()
        for pid, entry in table.items():
            if entry and entry[0] == parent and pid not in noted and pid != me:
                frontier.append(pid)
                if pid not in excluded:
                    noted[pid] = entry[1]
    time.sleep(0.5)
for pid, started in noted.items():
    entry = stat(pid)
    if entry and entry[1] == started:
        os.kill(pid, signal.SIGKILL)
"""


def is_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one another user owns counts: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def descendants(pid: int) -> dict[int, str]:
    """Every living descendant of ``pid``, with its start time (clock ticks since boot); {} off Linux."""
    parents = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:  # the fields after the command name (whose parentheses may hold spaces)
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(entry.name)] = (int(fields[1]), fields[19])
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, started) in parents.items():
            if ppid == parent and child not in found:
                found[child] = started
                frontier.append(child)
    return found


def guard_new_children() -> subprocess.Popen | None:
    """Start a watchdog that, once this process is gone, kills the descendants it starts from now
    on (none that exist already). Stop it (``.kill()``) after shutting them down normally.
    Linux only (it reads /proc); elsewhere returns None."""
    if not Path("/proc/self/stat").exists():
        return None
    existing = [str(pid) for pid in descendants(os.getpid())]
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), *existing],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
