"""The metadata the asset pages show, computed from small tables with known answers."""

import numpy as np
import polars as pl

from drift_assets.assets.metadata import selection_distribution


def chart_rows(table: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
    lines = selection_distribution(table).value.splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return header, [line.split(" | ") for line in lines[2:]]


def test_the_selection_chart_marks_a_cut_off_only_where_the_selection_is_a_score_threshold():
    scores = np.linspace(-1.0, 1.0, 40)
    noisy = np.arange(40) % 4 == 0
    above = pl.DataFrame({"score": scores, "is_corrupted": noisy, "selected": scores >= 0.0})
    header, rows = chart_rows(above)
    assert header[:3] == ["score ≥", "clean", "noisy"] and "selected" not in header
    assert sum("cut-off" in row[-1] for row in rows) == 1

    # A selection that takes some low scores (as the queries' turns do) is no threshold: a column
    # counts the selected rows of each bin instead.
    mixed = above.with_columns(selected=pl.Series((np.arange(40) % 2) == 0))
    header, rows = chart_rows(mixed)
    assert header[:4] == ["score ≥", "clean", "noisy", "selected"]
    assert not any("cut-off" in row[-1] for row in rows)
    assert sum(int(row[3].rsplit(" ", 1)[1]) for row in rows) == 20
