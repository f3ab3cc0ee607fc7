"""Processes as Linux's /proc shows them: whether one still runs, and the vLLM engines under one."""

from pathlib import Path

from drift_assets.core.runtime.processes import descendants


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may wait for a reaper that never comes)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def vllm_engines_under(pid: int) -> list[int]:
    """The vLLM engine processes among ``pid``'s descendants."""

    def name(child: int) -> str:
        try:
            return Path(f"/proc/{child}/comm").read_text()
        except OSError:  # ended meanwhile
            return ""

    return [child for child in descendants(pid) if name(child).startswith("VLLM")]
