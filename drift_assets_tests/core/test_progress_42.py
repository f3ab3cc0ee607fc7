"""Progress lines whose ETA follows the work's real shape (issue 42), on a fake clock: pre-training
stops when calibration accuracy reaches its band, not at the step cap; fine-tunes of unequal size
are timed per step; a pass in shards prints one line for the whole pass after each shard."""

import pytest

from drift_assets.core.runtime.progress import BandProgress, PassProgress, SizedProgress


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def pretraining(clock: Clock, lines: list, every_s: float = 0.0) -> BandProgress:
    return BandProgress("pre-training", 3000, (0.30, 0.50), lines.append, unit="steps", clock=clock, every_s=every_s)


def test_the_pretraining_eta_follows_calibration_accuracy_toward_its_band_not_the_step_cap():
    """1 s per step, accuracy rising 0.05 per 100 steps: from 0.20 at step 400 the band's lower edge
    (0.30) is 200 steps away, 3m20s; the step cap, 2,600 steps away, bounds it (43m20s)."""
    clock, lines = Clock(), []
    progress = pretraining(clock, lines)
    for step, accuracy in ((100, 0.05), (200, 0.10), (300, 0.15), (400, 0.20)):
        clock.now = 1000.0 + step
        assert not progress.measured(step, accuracy, "loss 1.000")
    assert lines[-1] == (
        "pre-training: step 400 of at most 3000 (1.0 s per step, 6m40s so far); calibration accuracy 0.20, "
        "rising 0.050 per 100 steps: reaches [0.30, 0.50] in about 200 steps, ETA ~3m20s "
        "(at most 43m20s, at the step cap) loss 1.000"
    )
    # What a cap-based ETA would have said: 2,600 steps left at 1 s each.
    assert "ETA 43m20s" not in " ".join(lines)
    # In the band: it stops, and says so.
    clock.now = 1500.0
    assert progress.measured(500, 0.35)
    assert lines[-1] == (
        "pre-training: step 500 (1.0 s per step, 8m20s so far); calibration accuracy 0.35 in [0.30, 0.50]: calibrated, done"
    )


def test_without_a_rising_trend_only_the_cap_bound_is_told():
    clock, lines = Clock(), []
    progress = pretraining(clock, lines)
    clock.now = 1100.0
    progress.measured(100, 0.0)  # one point: no trend yet
    assert lines[-1].endswith("calibration accuracy 0.00: stops once it reaches [0.30, 0.50], at most 48m20s (the step cap)")
    clock.now = 1200.0
    progress.measured(200, 0.0)  # flat
    assert "not rising" in lines[-1] and "ETA" not in lines[-1] and lines[-1].endswith("at most 46m40s (the step cap)")
    # Above the band it stops only if it falls back into it.
    clock.now = 1300.0
    assert not progress.measured(300, 0.70)
    assert "above [0.30, 0.50]: stops only if it falls back into the band, at most 45m00s (the step cap)" in lines[-1]


def test_a_trend_too_slow_for_the_cap_gives_the_cap_as_its_eta():
    clock, lines = Clock(), []
    progress = pretraining(clock, lines)
    for step, accuracy in ((100, 0.00), (200, 0.01), (300, 0.02)):
        clock.now = 1000.0 + step
        progress.measured(step, accuracy)
    # 0.01 per 100 steps: 0.28 more takes 2,800 steps, past the cap's 2,700.
    assert "rising 0.010 per 100 steps: not within the step cap at this pace, ETA 45m00s (the step cap)" in lines[-1]
    # At the cap the work stops outside the band, and says so.
    clock.now = 4000.0
    assert not progress.measured(3000, 0.25)
    assert lines[-1] == (
        "pre-training: step 3000 of at most 3000 (1.0 s per step, 50m00s so far); "
        "calibration accuracy 0.25: stopped at the step cap, outside [0.30, 0.50]"
    )


def test_pretraining_lines_come_at_most_every_interval_but_every_measurement_counts_toward_the_trend():
    clock, lines = Clock(), []
    progress = pretraining(clock, lines, every_s=250.0)
    for step, accuracy in ((100, 0.05), (200, 0.10), (300, 0.15), (400, 0.20)):
        clock.now = 1000.0 + step
        progress.measured(step, accuracy)
    assert len(lines) == 1 and lines[0].startswith("pre-training: step 300 of at most 3000")
    assert "rising 0.050 per 100 steps" in lines[0]
    clock.now = 1500.0
    progress.measured(500, 0.40)  # calibrated: always told
    assert len(lines) == 2 and "calibrated, done" in lines[1]


def test_the_evaluation_eta_is_timed_per_sft_step_not_by_the_first_model():
    """base (no fine-tune) 10 s, full (600 steps) 70 s, refined (60 steps): after base the fine-tunes'
    pace is unknown; after full, 0.1 s per step + 10 s per model gives refined 16 s (a mean per model
    would say 40 s, and after base alone 20 s)."""
    clock, lines = Clock(0.0), []
    progress = SizedProgress("evaluation", [0, 600, 60], lines.append, unit="models", work="steps", clock=clock)
    clock.now = 10.0
    progress.advance("base: accuracy 0.410")
    assert lines[-1] == (
        "evaluation: 1/3 (10.0 s per model without steps; ETA once one with steps is done, 10s so far) base: accuracy 0.410"
    )
    clock.now = 80.0
    progress.advance("full: accuracy 0.663")
    assert lines[-1] == ("evaluation: 2/3 (0.100 s per step + 10.0 s per model, ETA 16s, 1m20s so far) full: accuracy 0.663")
    clock.now = 96.0
    progress.advance("refined")
    assert lines[-1] == "evaluation: 3/3 (0.100 s per step + 10.0 s per model, done, 1m36s so far) refined"


def test_fine_tunes_of_one_size_are_timed_by_their_running_mean_per_step():
    """The benchmark with sft.epochs: full (400 steps) first, then selections of 40: the ETA after
    full is 40/400 of its time per remaining fine-tune, not its whole time."""
    clock, lines = Clock(0.0), []
    progress = SizedProgress("fine-tunes", [400, 40, 40, 40], lines.append, unit="fine-tunes", work="steps", clock=clock)
    clock.now = 100.0
    progress.advance("full seed 0")
    assert lines[-1] == "fine-tunes: 1/4 (0.250 s per step, ETA 30s, 1m40s so far) full seed 0"
    # Parallel workers: each job's own seconds, and the rest shared among the workers.
    parallel = SizedProgress("fine-tunes", [400, 40, 40, 40], lines.append, work="steps", clock=clock, workers=3)
    clock.now = 150.0
    parallel.advance(seconds=100.0)
    assert "ETA 10s" in lines[-1]


def test_sized_progress_takes_sizes_it_can_use():
    with pytest.raises(ValueError, match="negative"):
        SizedProgress("x", [1, -1], print)


def test_a_pass_in_shards_prints_one_line_for_the_whole_pass_after_each_shard():
    """Shards run one after another (a run each); a shard short enough to log only at debug level
    still moves the pass's line, which every shard advances with its examples, the pass's rate and
    its ETA (the mean time per shard so far)."""
    clock, lines = Clock(0.0), []
    gradients = PassProgress("checkpoint base training gradients", ["000", "001", "002", "003"], lines.append, clock=clock)
    clock.now = 8.0
    gradients.part_done("000", computed=150, reused=0)
    clock.now = 12.0
    gradients.part_done("001", computed=40, reused=110)
    assert lines == [
        "checkpoint base training gradients: 1/4 shards, 150 examples (18.8 examples/s, ETA 24s, 8s so far) shard 000: 150 computed",
        "checkpoint base training gradients: 2/4 shards, 300 examples (25.0 examples/s, ETA 12s, 12s so far) "
        "shard 001: 40 computed, 110 reused",
    ]
    clock.now = 20.0
    gradients.part_done("002", computed=150, reused=0)
    gradients.part_done("003", computed=0, reused=150)
    assert lines[-1] == (
        "checkpoint base training gradients: 4/4 shards, 600 examples (30.0 examples/s, done, 20s so far) shard 003: 150 reused"
    )
    with pytest.raises(ValueError, match="shard 009 is not one of this pass's"):
        gradients.part_done("009", computed=1, reused=0)
