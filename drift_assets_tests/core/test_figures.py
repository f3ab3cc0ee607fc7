"""The pictures: what they draw, read back from their pixels and compared with the numbers."""

import base64

import numpy as np
import polars as pl

from drift_assets.defs.figures import interval_figure, png_bytes
from drift_assets.defs.metadata import accuracy_picture, score_picture, selection_cutoff
from drift_assets_tests.helpers.figures import chart_problems, markers, rgb

ROWS = [("base", 0.410, 0.362, 0.460), ("full", 0.663, 0.612, 0.711), ("refined", 0.667, 0.616, 0.715)]


def png_of(markdown: str) -> bytes:
    return base64.b64decode(markdown.split("base64,", 1)[1].rstrip(")"))


def test_the_interval_chart_puts_each_marker_and_interval_where_its_numbers_are():
    markdown = accuracy_picture(ROWS).value
    assert markdown.startswith("![test accuracy: base 0.410 [0.362, 0.460]; full 0.663 [0.612, 0.711]; refined 0.667")
    png = png_of(markdown)
    assert chart_problems(png, ROWS) == []
    (base_x, _, _), (full_x, _, _), (refined_x, _, _) = markers(rgb(png))
    assert base_x < full_x < refined_x  # base far to the left, full and refined 0.004 apart


def test_a_chart_whose_markers_do_not_follow_the_numbers_is_caught():
    # All three markers at one place (as the UI drew the old text chart), then two rows swapped.
    collapsed = png_bytes(interval_figure([(label, 0.5, low, high) for label, _, low, high in ROWS]))
    assert any("px from where its value" in problem for problem in chart_problems(collapsed, ROWS))
    swapped = png_bytes(interval_figure([ROWS[1], ROWS[0], ROWS[2]]))
    assert chart_problems(swapped, ROWS)
    assert chart_problems(png_bytes(interval_figure(ROWS[:2])), ROWS) == ["2 markers in the picture, 3 rows in the table"]


def test_the_score_picture_marks_a_cut_off_only_where_the_selection_is_a_score_threshold():
    scores = np.linspace(-1.0, 1.0, 40)
    ranks = np.argsort(np.argsort(-scores)) + 1
    above = pl.DataFrame({"score": scores, "rank": ranks, "is_corrupted": np.arange(40) % 4 == 0, "selected": scores >= 0.0})
    assert selection_cutoff(above) == scores[scores >= 0].min()
    assert "; cut-off 0.02564; the selection stops at rank 20" in score_picture(above).value.split("](")[0]
    # A selection that takes some low scores (as the queries' turns do) is no threshold: the rank it stops at.
    mixed = above.with_columns(selected=pl.Series(np.arange(40) % 2 == 0), rank=pl.Series(np.arange(1, 41)))
    alt = score_picture(mixed.with_columns(selected=pl.col("rank") <= 20)).value.split("](")[0]
    assert selection_cutoff(mixed) is None and "cut-off" not in alt and alt.endswith("the selection stops at rank 20")
    assert rgb(png_of(score_picture(mixed).value)).shape[1] > 500
