"""The text charts: what they draw is read back from the characters and compared with the data."""

import numpy as np

from drift_assets.core.charts import (
    INLINE_LIMIT,
    bar,
    curves_markdown,
    intervals_markdown,
    sparkline,
    split_histogram_markdown,
)


def bar_length(text: str) -> float:
    """A bar's length in characters, read back from its full and partial blocks."""
    partial = " ▏▎▍▌▋▊▉"
    return sum(1.0 if c == "█" else partial.index(c) / 8 for c in text if c == "█" or c in partial[1:])


def test_a_bar_is_its_fraction_of_the_width_to_an_eighth():
    for fraction in (0.0, 0.01, 0.3, 0.5, 0.77, 1.0):
        assert abs(bar_length(bar(fraction, 12)) - 12 * fraction) <= 1 / 16
    assert bar(2.0, 5) == "█" * 5 and bar(-1.0, 5) == ""


def test_a_sparkline_falls_where_the_values_fall():
    line = sparkline(np.linspace(3.0, 1.0, 64), width=16)
    assert len(line) == 16 and line[0] == "█" and line[-1] == "▁"
    assert list(line) == sorted(line, reverse=True)
    assert sparkline([1.0, 1.0]) == "▁▁" and sparkline([]) == ""


def test_the_histogram_counts_each_group_and_marks_the_cut_off_bin():
    rng = np.random.default_rng(0)
    clean, noisy = rng.normal(1.0, 0.5, 300), rng.normal(-1.0, 0.5, 100)
    scores = np.concatenate([clean, noisy, [np.nan]])
    flags = np.concatenate([np.zeros(300, bool), np.ones(100, bool), [False]])
    cutoff = float(np.quantile(scores[:-1], 0.5))
    text = split_histogram_markdown(scores, {"clean": ~flags, "noisy": flags}, cutoff, bins=10)
    assert len(text) < INLINE_LIMIT
    rows = [line.split(" | ") for line in text.splitlines()[2:]]
    counts = {name: [int(row[i].rsplit(" ", 1)[1]) for row in rows] for i, name in ((1, "clean"), (2, "noisy"))}
    assert sum(counts["clean"]) == 300 and sum(counts["noisy"]) == 100  # the NaN is left out
    lefts = [float(row[0].strip("| ")) for row in rows]
    assert lefts == sorted(lefts, reverse=True)  # highest scores first
    (marked,) = [i for i, row in enumerate(rows) if "cut-off" in row[-1]]
    assert lefts[marked] <= cutoff and (marked == 0 or cutoff < lefts[marked - 1])
    # The noisy rows sit low: the clean column's mass is above the noisy column's.
    assert np.average(lefts, weights=counts["clean"]) > np.average(lefts, weights=counts["noisy"])


def test_many_groups_shrink_the_histogram_to_stay_inline():
    scores = np.arange(1000.0)
    groups = {f"group {i}": scores % 4 == i for i in range(4)}
    assert len(split_histogram_markdown(scores, groups, bins=20)) < INLINE_LIMIT


def test_each_interval_is_drawn_where_its_bounds_and_point_are():
    rows = [("base", 0.40, 0.35, 0.46), ("full", 0.64, 0.58, 0.69), ("refined", 0.61, 0.55, 0.66)]
    text = intervals_markdown(rows, width=30)
    drawn = [line.split("`")[1] for line in text.splitlines()[2:]]
    for line in drawn:
        assert line.index("├") <= line.index("●") <= line.index("┤")
    # Positions follow the values: base's interval ends left of full's point, refined's point is left of full's.
    assert drawn[0].index("┤") < drawn[1].index("●") and drawn[2].index("●") < drawn[1].index("●")
    assert len(text) < INLINE_LIMIT


def test_curves_list_first_and_last_values():
    text = curves_markdown({"SFT on full (2400)": [2.0, 1.5, 0.5], "empty": []})
    (row,) = text.splitlines()[2:]
    assert "| SFT on full (2400) | 3 | 2.000 | 0.500 |" in row
