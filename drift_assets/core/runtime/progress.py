"""Progress of long work as one log line per update: done/total, rate, and time left."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

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


def _pace(seconds_per_unit: float, unit: str) -> str:
    return f"{1 / seconds_per_unit:.1f} {unit}/s" if seconds_per_unit < 1 else f"{seconds_per_unit:.1f} s per {singular(unit)}"


class BandProgress:
    """Work that stops once a measurement lands in a band (pre-training: calibration accuracy in its
    target band), or at a cap of units (steps).

    The cap is a bound, not an estimate: the work usually stops long before it. So the ETA is the
    time the measurement's recent trend (the least-squares slope of its last ``window`` values)
    needs to reach the band, rounded up to the next measurement; where it does not rise, only the
    cap's bound is told. :meth:`measured` records every measurement and logs at most every
    ``every_s`` seconds, and always once the work stops (in the band, or at the cap).
    """

    def __init__(
        self,
        what: str,
        cap: int,
        band: tuple[float, float],
        log: Callable[[str], None],
        unit: str = "steps",
        measure: str = "calibration accuracy",
        clock: Callable[[], float] = time.perf_counter,
        every_s: float = 0.0,
        window: int = 4,
    ):
        self.what, self.cap, self.band, self.log, self.unit, self.measure = what, cap, band, log, unit, measure
        self.clock, self.every_s, self.window = clock, every_s, window
        self.points: list[tuple[int, float]] = []
        self.started = self._last_line = clock()

    def measured(self, done: int, value: float, note: str = "") -> bool:
        """Record ``value`` measured after ``done`` units; True where it is in the band (the work stops)."""
        self.points.append((done, value))
        low, high = self.band
        inside = low <= value <= high
        now = self.clock()
        if inside or done >= self.cap or now - self._last_line >= self.every_s:
            self._last_line = now
            self.log(self.line(note))
        return inside

    def slope(self) -> float | None:
        """The measurement's change per unit over its last ``window`` values; None with fewer than two."""
        recent = self.points[-self.window :]
        if len(recent) < 2:
            return None
        mean_x = sum(x for x, _ in recent) / len(recent)
        mean_y = sum(y for _, y in recent) / len(recent)
        spread = sum((x - mean_x) ** 2 for x, _ in recent)
        return sum((x - mean_x) * (y - mean_y) for x, y in recent) / spread if spread else None

    def line(self, note: str = "") -> str:
        done, value = self.points[-1]
        low, high = self.band
        elapsed = self.clock() - self.started
        per_unit = elapsed / done if done else 0.0
        band = f"[{low:.2f}, {high:.2f}]"
        cap = f"the {singular(self.unit)} cap"
        pace = f"{_pace(per_unit, self.unit)}, " if per_unit > 0 else ""
        if low <= value <= high:
            head = f"{self.what}: {singular(self.unit)} {done} ({pace}{duration(elapsed)} so far)"
            return f"{head}; {self.measure} {value:.2f} in {band}: calibrated, done" + (f" {note}" if note else "")
        head = f"{self.what}: {singular(self.unit)} {done} of at most {self.cap} ({pace}{duration(elapsed)} so far)"
        at_most = duration((self.cap - done) * per_unit)
        slope = self.slope()
        state = f"{self.measure} {value:.2f}"
        if done >= self.cap:
            tail = f"{state}: stopped at {cap}, outside {band}"
        elif value > high:
            tail = f"{state}, above {band}: stops only if it falls back into the band, at most {at_most} ({cap})"
        elif slope is None:
            tail = f"{state}: stops once it reaches {band}, at most {at_most} ({cap})"
        elif slope <= 0:
            tail = f"{state}, not rising: stops once it reaches {band}, at most {at_most} ({cap})"
        else:
            # Measured every ``cadence`` units: the work can stop only at a measurement.
            cadence = done - self.points[-2][0] if len(self.points) > 1 else 1
            trend = f"{state}, rising {slope * cadence:.3f} per {cadence} {self.unit}"
            needed = math.ceil((low - value) / slope / cadence - 1e-9) * cadence
            if done + needed > self.cap:
                tail = f"{trend}: not within {cap} at this pace, ETA {at_most} ({cap})"
            else:
                eta = duration(needed * per_unit)
                tail = f"{trend}: reaches {band} in about {needed} {self.unit}, ETA ~{eta} (at most {at_most}, at {cap})"
        return f"{head}; {tail}" + (f" {note}" if note else "")


class SizedProgress:
    """Items of unequal size (fine-tunes of different step counts, a model evaluated without one):
    ``what: done/total (pace, ETA, elapsed) note`` after each item.

    Each item's time is modelled as a fixed part per item plus a part per unit of its size, fitted
    over the items done (a least-squares line where their sizes differ; the running mean per unit
    where they all have one size; per item alone where none had a size yet, and then no ETA for
    sized items), so the ETA after a short first item is not off by the ratio of the sizes.
    ``workers``: items run that many at a time; pass each item's own ``seconds`` to :meth:`advance`.
    """

    def __init__(
        self,
        what: str,
        sizes: Sequence[float],
        log: Callable[[str], None],
        unit: str | None = None,
        work: str = "steps",
        clock: Callable[[], float] = time.perf_counter,
        workers: int = 1,
    ):
        if any(size < 0 for size in sizes):
            raise ValueError(f"{what}: an item's size cannot be negative ({list(sizes)})")
        self.what, self.sizes, self.log, self.unit, self.work = what, list(sizes), log, unit or what, work
        self.clock, self.workers = clock, max(1, workers)
        self.seconds: list[float] = []
        self.started = self._last = clock()

    def advance(self, note: str = "", seconds: float | None = None) -> None:
        now = self.clock()
        self.seconds.append(now - self._last if seconds is None else seconds)
        self._last = now
        self.log(self.line(note))

    def fit(self) -> tuple[float, float | None]:
        """(seconds per item, seconds per unit of size, None where no item done had a size)."""
        done = list(zip(self.sizes, self.seconds))
        if not done:
            return 0.0, None
        sizes, times = [s for s, _ in done], [t for _, t in done]
        if len(set(sizes)) >= 2:
            mean_s, mean_t = sum(sizes) / len(sizes), sum(times) / len(times)
            per_unit = sum((s - mean_s) * (t - mean_t) for s, t in done) / sum((s - mean_s) ** 2 for s in sizes)
            per_item = mean_t - per_unit * mean_s
            if per_unit <= 0:  # size does not show in the times
                return mean_t, 0.0
            if per_item >= 0:
                return per_item, per_unit
        if sum(sizes) == 0:
            return sum(times) / len(times), None
        return 0.0, sum(times) / sum(sizes)

    def eta(self) -> float | None:
        per_item, per_unit = self.fit()
        left = self.sizes[len(self.seconds) :]
        if per_unit is None and any(left):
            return None
        return sum(per_item + (per_unit or 0.0) * size for size in left) / self.workers

    def line(self, note: str = "") -> str:
        done, total = len(self.seconds), len(self.sizes)
        elapsed = self.clock() - self.started
        parts = [f"{self.what}: {done}/{total}"]
        if done:
            per_item, per_unit = self.fit()
            item, step = singular(self.unit), singular(self.work)
            if per_unit is None:
                pace = f"{per_item:.1f} s per {item} without {self.work}"
            elif per_item > 0 and per_unit > 0:
                pace = f"{per_unit:.3f} s per {step} + {per_item:.1f} s per {item}"
            elif per_unit > 0:
                pace = f"{per_unit:.3f} s per {step}"
            else:
                pace = f"{per_item:.1f} s per {item}"
            eta = self.eta()
            if done >= total:
                left = "done"
            elif eta is None:
                left = f"ETA once one with {self.work} is done"
            else:
                left = f"ETA {duration(eta)}"
            separator = "; " if eta is None and done < total else ", "
            parts.append(f"({pace}{separator}{left}, {duration(elapsed)} so far)")
        return " ".join(parts) + (f" {note}" if note else "")


class PassProgress:
    """A pass in parts run one after another (the training gradients' shards, a run each): after
    each part, one line for the whole pass, ``what: 2/4 shards, 300 examples (rate, ETA, elapsed)
    shard 001: 40 computed, 110 reused``. The ETA is the mean time per part so far (shards hold
    about equal shares of the pool, by a hash of their ids); a part short enough that its own lines
    stay at debug level still moves this line."""

    def __init__(
        self,
        what: str,
        parts: Sequence[str],
        log: Callable[[str], None],
        part: str = "shard",
        unit: str = "examples",
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.what, self.parts, self.log, self.part, self.unit, self.clock = what, list(parts), log, part, unit, clock
        self.finished: list[str] = []
        self.amount = 0
        self.started = clock()

    def part_done(self, part: str, computed: int, reused: int = 0) -> None:
        if part not in self.parts:
            raise ValueError(f"{self.part} {part} is not one of this pass's ({', '.join(self.parts)})")
        self.finished.append(part)
        self.amount += computed + reused
        done, total = len(self.finished), len(self.parts)
        elapsed = self.clock() - self.started
        head = f"{self.what}: {done}/{total} {self.part}s, {self.amount} {self.unit}"
        if elapsed > 0 and self.amount:
            left = "done" if done >= total else f"ETA {duration((total - done) * elapsed / done)}"
            head += f" ({_pace(elapsed / self.amount, self.unit)}, {left}, {duration(elapsed)} so far)"
        counts = [f"{computed} computed"] * bool(computed) + [f"{reused} reused"] * bool(reused)
        self.log(f"{head} {self.part} {part}: {', '.join(counts) or 'no rows'}")
