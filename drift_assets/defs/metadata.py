"""Metadata every table reports, so the UI answers "what is in it" without a notebook.

dagster-deltalake-polars records neither ``dagster/row_count`` nor ``dagster/column_schema`` (it
records a schema without descriptions and its own row count, which ``resources`` leaves out); these
helpers add them, with what each column holds, a markdown preview, and the pictures.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import polars as pl
from dagster import MetadataValue, TableColumn, TableSchema

from drift_assets.defs.columns import describe_column
from drift_assets.defs.figures import interval_alt, interval_figure, loss_figure, png_bytes, score_figure


def _cell(value: Any, width: int = 48) -> str:
    if isinstance(value, list):
        value = f"[{len(value)} values]"
    elif isinstance(value, float):
        value = f"{value:.4g}"  # a preview, not the stored value
    text = str(value).replace("\n", "⏎").replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown_table(frame: pl.DataFrame, rows: int = 5) -> str:
    head = frame.head(rows)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in head.iter_rows()]
    return "\n".join(lines)


def table_metadata(frame: pl.DataFrame, preview_rows: int = 5, preview_columns: list[str] | None = None) -> dict[str, Any]:
    """Row count, the columns with their types and what each holds (:func:`describe_column`), and a
    preview. The IO manager's own row count and schema are left out where it writes the table
    (``resources``), so that each shows once."""
    schema = TableSchema(
        columns=[
            TableColumn(name=name, type=str(dtype), description=describe_column(name)) for name, dtype in frame.schema.items()
        ]
    )
    preview = frame.select(preview_columns) if preview_columns else frame
    return {
        "dagster/row_count": frame.height,
        "dagster/column_schema": schema,
        "preview": MetadataValue.md(markdown_table(preview, preview_rows)),
    }


def score_picture(table: pl.DataFrame) -> MetadataValue:
    """The score distribution (:func:`~drift_assets.defs.figures.score_figure`) of a table with
    ``score`` and ``rank`` (and ``selected``, ``is_corrupted`` where it has them): the selected rows
    against the others, with the cut-off where the selection is every row above a score, and the
    rank the selection stops at."""
    scores = table["score"].to_numpy()
    selected = table["selected"].to_numpy().astype(bool) if "selected" in table.columns else np.ones(table.height, bool)
    noisy = table["is_corrupted"].fill_null(False).to_numpy().astype(bool) if "is_corrupted" in table.columns else None
    cutoff = selection_cutoff(table) if "selected" in table.columns else None
    figure = score_figure(scores, selected, table["rank"].to_numpy(), noisy, cutoff)
    boundary = int(table.filter("selected")["rank"].max()) if "selected" in table.columns and selected.any() else None
    alt = (
        f"score distribution of {int(selected.sum())} selected and {int((~selected).sum())} unselected rows"
        + (f"; cut-off {cutoff:.4g}" if cutoff is not None else "")
        + (f"; the selection stops at rank {boundary}" if boundary is not None and not selected.all() else "")
    )
    return png_markdown(figure, alt)


def selection_cutoff(table: pl.DataFrame) -> float | None:
    """The lowest selected score where the selection is every row at or above it (a threshold), else None."""
    chosen = table.filter("selected")
    if not chosen.height or chosen.height == table.height:
        return None
    lowest = chosen["score"].min()
    return float(lowest) if ((table["score"] >= lowest) == table["selected"]).all() else None


def accuracy_picture(rows: list[tuple[str, float, float, float]]) -> MetadataValue:
    """Each (model, accuracy, low, high) as a marker with its interval (:func:`~drift_assets.defs.figures.interval_figure`)."""
    return png_markdown(interval_figure(rows), interval_alt(rows))


def loss_picture(curves: dict[str, list[float]]) -> MetadataValue:
    """Each fine-tune's loss per step (:func:`~drift_assets.defs.figures.loss_figure`)."""
    alt = "training loss: " + "; ".join(f"{name} {len(v)} steps, {v[0]:.3f} to {v[-1]:.3f}" for name, v in curves.items() if v)
    return png_markdown(loss_figure(curves), alt)


def rounded(value: float | None, digits: int = 3) -> float | None:
    """A figure rounded to what it means (NaN reported as missing: Dagster metadata rejects it)."""
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def png_markdown(figure, alt: str) -> MetadataValue:
    """A matplotlib figure as a PNG in markdown metadata, ``alt`` saying what it shows in words: too
    long to show in place (Dagster shows Markdown of up to 1,000 characters inline), the UI opens it
    from its "[Show Markdown]" button."""
    encoded = base64.b64encode(png_bytes(figure)).decode()
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")
