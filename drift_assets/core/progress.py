"""Progress of long work as one log line per update: done/total, rate, and time left."""

from __future__ import annotations

import time
from collections.abc import Callable

# How often long work logs a line: often enough to see it move, rarely enough to read the terminal.
PROGRESS_EVERY_S = 10.0


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def singular(unit: str) -> str:
    """``queries`` → ``query``, ``examples`` → ``example``."""
    if unit.endswith("ies"):
        return unit[:-3] + "y"
    return unit.removesuffix("s")


class Progress:
    """Counts units of work and logs ``what: done/total (rate, ETA) note`` at each :meth:`advance`,
    or at most every ``every_s`` seconds (and once done) through :meth:`update`.

    ``short_log``, where given, takes the one line of work done within ``every_s`` (the demo's many
    one-second passes: the UI's debug level, not the terminal); long work always logs to ``log``.
    """

    def __init__(
        self,
        what: str,
        total: int,
        log: Callable[[str], None],
        unit: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
        every_s: float = 0.0,
        short_log: Callable[[str], None] | None = None,
    ):
        self.what, self.total, self.log, self.unit, self.clock, self.every_s = what, total, log, unit or what, clock, every_s
        self.short_log = short_log or log
        self.done = 0
        self.started = self._last_line = clock()

    def line(self, note: str = "") -> str:
        elapsed = self.clock() - self.started
        parts = [f"{self.what}: {self.done}/{self.total}"]
        if self.done and elapsed > 0:
            rate = self.done / elapsed
            pace = f"{rate:.1f} {self.unit}/s" if rate >= 1 else f"{elapsed / self.done:.1f} s per {singular(self.unit)}"
            left = "done" if self.done >= self.total else f"ETA {duration((self.total - self.done) / rate)}"
            parts.append(f"({pace}, {left}, {duration(elapsed)} so far)")
        return " ".join(parts) + (f" {note}" if note else "")

    def advance(self, note: str = "", by: int = 1) -> None:
        self.done += by
        self.log(self.line(note))

    def update(self, done: int, total: int, note: str = "") -> None:
        """A ``(done, total)`` progress callback: logs once done, and otherwise when ``every_s``
        seconds have passed since the last line."""
        self.done, self.total = done, total
        now = self.clock()
        if done >= total and self._last_line == self.started and now - self.started < self.every_s:
            self.short_log(self.line(note))
        elif done >= total or now - self._last_line >= self.every_s:
            self._last_line = now
            self.log(self.line(note))

    def rate(self, amount: float) -> float:
        """``amount`` per second of the time elapsed so far (tokens/s beside the unit's rate)."""
        elapsed = self.clock() - self.started
        return amount / elapsed if elapsed > 0 else 0.0
