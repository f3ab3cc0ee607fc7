"""Metadata every table reports, so the UI answers "what is in it" without a notebook.

dagster-deltalake-polars records neither ``dagster/row_count`` nor ``dagster/column_schema``;
these helpers add them, plus a markdown preview.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
import polars as pl
from dagster import MetadataValue, TableColumn, TableSchema

from drift_assets.core.charts import split_histogram_markdown


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
    schema = TableSchema(columns=[TableColumn(name=name, type=str(dtype)) for name, dtype in frame.schema.items()])
    preview = frame.select(preview_columns) if preview_columns else frame
    return {
        "dagster/row_count": frame.height,
        "dagster/column_schema": schema,
        "preview": MetadataValue.md(markdown_table(preview, preview_rows)),
    }


def finite_or_none(value: float) -> float | None:
    """Dagster metadata rejects NaN; report it as missing instead."""
    return None if value is None or not math.isfinite(value) else float(value)


def score_distribution(table: pl.DataFrame, cutoff: float | None = None, selected: np.ndarray | None = None) -> MetadataValue:
    """The score histogram split by the pool's noise flag where it has one, with the selection's
    cut-off marked, or (a selection that is not a score threshold) a column of the selected rows:
    a chart the UI shows inline."""
    scores = table["score"].to_numpy()
    if "is_corrupted" in table.columns:
        noisy = table["is_corrupted"].fill_null(False).to_numpy().astype(bool)
        groups = {"clean": ~noisy, "noisy": noisy}
    else:
        groups = {"examples": np.ones(table.height, dtype=bool)}
    if selected is not None:
        groups["selected"] = selected
    return MetadataValue.md(split_histogram_markdown(scores, groups, cutoff))


def selection_distribution(table: pl.DataFrame) -> MetadataValue:
    """The score distribution with the cut-off where the selection is every row above a score (ranked
    by score), else with a column of the selected rows (the round-robin ranking picks across it)."""
    chosen = table.filter("selected")
    if not chosen.height:
        return score_distribution(table)
    lowest = chosen["score"].min()
    if ((table["score"] >= lowest) == table["selected"]).all():
        return score_distribution(table, lowest)
    return score_distribution(table, selected=table["selected"].to_numpy())


def rounded(value: float | None, digits: int = 3) -> float | None:
    """A figure rounded to what it means (NaN reported as missing)."""
    value = finite_or_none(value)
    return None if value is None else round(value, digits)


def png_markdown(figure, alt: str) -> MetadataValue:
    """A matplotlib figure as a PNG in markdown metadata: too long to show in place, the UI opens it
    from its "[Show Markdown]" button (the text charts of ``core.charts`` show inline)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")
