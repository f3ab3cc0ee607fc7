"""The pictures the asset pages show, drawn with matplotlib (PNG, as the UI renders an image).

- :func:`interval_figure`: each model's test accuracy as a marker on one shared axis, its 95%
  interval as a line with caps;
- :func:`score_figure`: the score distribution of the selected and the unselected rows (split by
  the pool's noise flag where it has one) with the selection's cut-off where the selection is a
  score threshold, and the scores in rank order with the rank boundary the selection stops at;
- :func:`loss_figure`: fine-tunes' loss per step.

Markers and intervals are drawn in colours used by nothing else on the figure, so a reader (the
browser test) can find them in the picture and check that they stand where the numbers put them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

MARKER_COLOR = "#d62728"  # the accuracy markers (nothing else is this red)
INTERVAL_COLOR = "#1f77b4"  # the intervals (nothing else is this blue)
SELECTED_COLOR = "#2ca02c"
UNSELECTED_COLOR = "#7f7f7f"
CUTOFF_COLOR = "#000000"


def pyplot():
    """matplotlib's pyplot on a backend that needs no display (a worker has none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (closed afterwards)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(figure)
    return buffer.getvalue()


def interval_figure(rows: Sequence[tuple[str, float, float, float]], what: str = "test accuracy"):
    """Each (label, value, low, high) on its own line, top to bottom in the order given: the value as a
    marker, [low, high] as a line with caps, on one shared x axis."""
    figure, axes = pyplot().subplots(figsize=(6.4, 0.55 * len(rows) + 1.2))
    positions = np.arange(len(rows))[::-1]  # the first row on top
    for y, (_, value, low, high) in zip(positions, rows, strict=True):
        axes.plot([low, high], [y, y], color=INTERVAL_COLOR, linewidth=2.5, solid_capstyle="butt", zorder=2)
        axes.plot([low, low], [y - 0.18, y + 0.18], color=INTERVAL_COLOR, linewidth=2.5, zorder=2)
        axes.plot([high, high], [y - 0.18, y + 0.18], color=INTERVAL_COLOR, linewidth=2.5, zorder=2)
        axes.plot([value], [y], marker="o", markersize=9, color=MARKER_COLOR, markeredgewidth=0, zorder=3)
    axes.set_yticks(positions, [f"{label}  {value:.3f}" for label, value, _, _ in rows])
    axes.set_ylim(-0.7, len(rows) - 0.3)
    lows, highs = [r[2] for r in rows], [r[3] for r in rows]
    pad = 0.05 * ((max(highs) - min(lows)) or 1.0)
    axes.set_xlim(min(lows) - pad, max(highs) + pad)
    axes.set_xlabel(f"{what} (95% interval)")
    axes.grid(axis="x", color="#dddddd", linewidth=0.8)
    axes.set_axisbelow(True)
    axes.spines[["top", "right"]].set_visible(False)
    return figure


def interval_alt(rows: Sequence[tuple[str, float, float, float]], what: str = "test accuracy") -> str:
    """What :func:`interval_figure` shows, in words (the image's alt text)."""
    return f"{what}: " + "; ".join(f"{label} {value:.3f} [{low:.3f}, {high:.3f}]" for label, value, low, high in rows)


def score_figure(
    scores: np.ndarray,
    selected: np.ndarray,
    ranks: np.ndarray,
    noisy: np.ndarray | None = None,
    cutoff: float | None = None,
):
    """Left: the score histogram of the selected and unselected rows (hatched: the noisy ones, where
    ``noisy`` is known), a line at ``cutoff`` where the selection is every row above a score. Right:
    the scores in rank order, the selected ones coloured, a line at the rank the selection stops at."""
    scores, selected, ranks = np.asarray(scores, float), np.asarray(selected, bool), np.asarray(ranks)
    finite = np.isfinite(scores)
    figure, (histogram, by_rank) = pyplot().subplots(1, 2, figsize=(11, 3.6))
    edges = np.histogram_bin_edges(scores[finite], 30) if finite.any() else np.linspace(0, 1, 31)
    groups = [("selected", selected, SELECTED_COLOR), ("unselected", ~selected, UNSELECTED_COLOR)]
    bottom = np.zeros(len(edges) - 1)
    for name, mask, colour in groups:
        parts = (
            [(mask, "", name)]
            if noisy is None
            else [(mask & ~noisy, "", f"{name}, clean"), (mask & noisy, "///", f"{name}, noisy")]
        )
        for part, hatch, label in parts:
            counts = np.histogram(scores[finite & part], edges)[0]
            histogram.bar(
                edges[:-1], counts, width=np.diff(edges), bottom=bottom, align="edge", color=colour,
                alpha=0.85 if not hatch else 0.45, hatch=hatch, edgecolor="white", linewidth=0.3, label=label,
            )  # fmt: skip
            bottom += counts
    if cutoff is not None:
        histogram.axvline(cutoff, color=CUTOFF_COLOR, linestyle="--", linewidth=1.2, label=f"cut-off {cutoff:.3g}")
    histogram.set_xlabel("score")
    histogram.set_ylabel("examples")
    histogram.legend(fontsize=8, frameon=False)
    order = np.argsort(ranks, kind="stable")
    xs, ys, chosen = ranks[order], scores[order], selected[order]
    by_rank.scatter(xs[~chosen], ys[~chosen], s=6, color=UNSELECTED_COLOR, label="unselected")
    by_rank.scatter(xs[chosen], ys[chosen], s=6, color=SELECTED_COLOR, label="selected")
    if noisy is not None:
        marked = noisy[order]
        by_rank.scatter(xs[marked], ys[marked], s=14, facecolors="none", edgecolors="black", linewidths=0.5, label="noisy")
    if chosen.any() and not chosen.all():
        boundary = float(xs[chosen].max()) + 0.5
        by_rank.axvline(boundary, color=CUTOFF_COLOR, linestyle="--", linewidth=1.2, label=f"rank {int(xs[chosen].max())}")
    by_rank.set_xlabel("rank (the selection takes the first)")
    by_rank.set_ylabel("score")
    by_rank.legend(fontsize=8, frameon=False, markerscale=2)
    for axes in (histogram, by_rank):
        axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    return figure


def loss_figure(curves: Mapping[str, Sequence[float]], what: str = "training loss"):
    """One line per curve: its value at each step."""
    figure, axes = pyplot().subplots(figsize=(6.4, 3.2))
    for name, values in curves.items():
        if len(values):
            axes.plot(np.arange(1, len(values) + 1), values, linewidth=1.2, label=f"{name}: {values[0]:.3f} → {values[-1]:.3f}")
    axes.set_xlabel("step")
    axes.set_ylabel(what)
    axes.legend(fontsize=8, frameon=False)
    axes.spines[["top", "right"]].set_visible(False)
    return figure
