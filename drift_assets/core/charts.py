"""Small charts drawn in text, for Markdown that the Dagster UI shows inline.

Dagster 1.13 renders a Markdown metadata value in place on an asset's page only while it is under
1,000 characters (``MarkdownMetadataEntry``); a longer one, such as an embedded PNG, sits behind a
"[Show Markdown]" button. These charts are block characters in code spans, sized to stay under
that limit, so that the picture is what a user sees first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

INLINE_LIMIT = 1000  # characters: the UI's threshold for showing Markdown in place
_EIGHTHS = " ▏▎▍▌▋▊▉█"
_LEVELS = "▁▂▃▄▅▆▇█"


def bar(fraction: float, width: int) -> str:
    """A horizontal bar of ``fraction`` (0..1) of ``width`` characters, in eighths of a character."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def sparkline(values: Sequence[float], width: int = 32) -> str:
    """``values`` averaged into at most ``width`` buckets, each drawn as one of eight levels."""
    points = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if points.size == 0:
        return ""
    buckets = [chunk.mean() for chunk in np.array_split(points, min(width, points.size))]
    low, high = min(buckets), max(buckets)
    span = high - low or 1.0
    return "".join(_LEVELS[round((value - low) / span * (len(_LEVELS) - 1))] for value in buckets)


def curves_markdown(curves: Mapping[str, Sequence[float]], what: str = "loss", width: int = 32) -> str:
    """One row per curve: its first and last value and a sparkline (left = first step)."""
    lines = [f"| run | steps | first {what} | last {what} | curve |", "|---|---|---|---|---|"]
    for name, values in curves.items():
        if len(values):
            lines.append(f"| {name} | {len(values)} | {values[0]:.3f} | {values[-1]:.3f} | `{sparkline(values, width)}` |")
    return "\n".join(lines)


def intervals_markdown(rows: Sequence[tuple[str, float, float, float]], width: int = 30, unit: str = "accuracy") -> str:
    """Each (label, value, low, high) as a point with its interval on one shared axis."""
    lows, highs = [r[2] for r in rows], [r[3] for r in rows]
    left, right = min(lows), max(highs)
    pad = 0.05 * (right - left or 1.0)
    left, right = left - pad, right + pad

    def column(x: float) -> int:
        return min(width - 1, max(0, round((x - left) / (right - left) * (width - 1))))

    lines = [f"| | {unit} | `{left:.2f}{' ' * (width - 8)}{right:.2f}` |", "|---|---|---|"]
    for label, value, low, high in rows:
        cells = [" "] * width
        a, b = column(low), column(high)
        for i in range(a, b + 1):
            cells[i] = "─"
        cells[a], cells[b] = "├", "┤"
        cells[column(value)] = "●"
        lines.append(f"| {label} | {value:.3f} [{low:.3f}, {high:.3f}] | `{''.join(cells)}` |")
    return "\n".join(lines)


def split_histogram_markdown(
    scores: np.ndarray,
    groups: Mapping[str, np.ndarray],
    cutoff: float | None = None,
    bins: int = 10,
    width: int = 12,
) -> str:
    """Counts of ``scores`` per bin (highest first), one bar column per group (boolean masks), the
    bin that holds ``cutoff`` marked: rows above it are kept."""
    scores = np.asarray(scores, dtype=float)
    finite = np.isfinite(scores)
    if not finite.any():
        return "no finite scores"
    while True:
        edges = np.histogram_bin_edges(scores[finite], bins)
        counts = {name: np.histogram(scores[finite & mask], edges)[0] for name, mask in groups.items()}
        peak = max(int(c.max()) for c in counts.values()) or 1
        cut_bin = None if cutoff is None else int(np.clip(np.searchsorted(edges, cutoff, side="right") - 1, 0, bins - 1))
        lines = ["| score ≥ | " + " | ".join(groups) + " | |", "|---|" + "---|" * (len(groups) + 1)]
        for b in reversed(range(bins)):
            cells = [f"`{bar(c[b] / peak, width):<{width}}` {c[b]}" for c in counts.values()]
            mark = "◀ cut-off" if b == cut_bin else ""
            lines.append(f"| {edges[b]:.3g} | " + " | ".join(cells) + f" | {mark} |")
        text = "\n".join(lines)
        if len(text) < INLINE_LIMIT or bins <= 4:
            return text
        bins -= 2
