"""Reading a rendered interval chart back: where its markers and its intervals' ends stand, in pixels,
and whether they stand where the numbers put them. Used on the PNG the pipeline writes (fast tests)
and on the screenshot of the picture as the browser shows it (the UI test)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from drift_assets.defs.figures import INTERVAL_COLOR, MARKER_COLOR


def rgb(png: bytes) -> np.ndarray:
    """(height, width, 3) floats in [0, 1] of a PNG image."""
    import matplotlib.image

    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    return image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)


def _mask(image: np.ndarray, colour: str, tolerance: float = 0.12) -> np.ndarray:
    target = np.array([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return np.abs(image - target).max(axis=2) <= tolerance


def markers(image: np.ndarray, min_pixels: int = 12) -> list[tuple[float, float, float]]:
    """(x, y, height) of the marker-coloured blobs (centre and height in pixels), top to bottom."""
    from scipy import ndimage

    labels, count = ndimage.label(_mask(image, MARKER_COLOR))
    blobs = [np.argwhere(labels == i) for i in range(1, count + 1)]
    found = [(float(b[:, 1].mean()), float(b[:, 0].mean()), float(np.ptp(b[:, 0]) + 1)) for b in blobs if len(b) >= min_pixels]
    return sorted(found, key=lambda c: c[1])


def interval_ends(image: np.ndarray, y: float, marker_height: float) -> tuple[float, float] | None:
    """The centres of an interval's two caps, read on a row half a marker above the marker's centre:
    past the interval's line (thinner than the marker), within its caps (taller)."""
    row = _mask(image, INTERVAL_COLOR)[max(0, round(y - marker_height / 2))]
    columns = np.flatnonzero(row)
    if not columns.size:
        return None
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
    return float(runs[0].mean()), float(runs[-1].mean())


def chart_problems(png: bytes, rows: Sequence[tuple[str, float, float, float]], tolerance_px: float = 3.0) -> list[str]:
    """What is wrong with a rendered chart of ``rows`` (label, value, low, high), top to bottom: a marker
    missing, or markers and interval ends off the one linear axis that the values put them on. An
    empty list: the picture shows the numbers."""
    image = rgb(png)
    found = markers(image)
    if len(found) != len(rows):
        return [f"{len(found)} markers in the picture, {len(rows)} rows in the table"]
    ends = [interval_ends(image, y, height) for _, y, height in found]
    if any(end is None for end in ends):
        return ["a marker without its interval"]
    values = np.array([v for _, v, _, _ in rows] + [low for *_, low, _ in rows] + [high for *_, high in rows])
    pixels = np.array([x for x, _, _ in found] + [e[0] for e in ends] + [e[1] for e in ends], dtype=float)
    if np.ptp(values) == 0:
        spread = float(np.ptp(pixels))
        return [] if spread <= tolerance_px else [f"equal values drawn {spread:.0f} px apart"]
    slope, offset = np.polyfit(values, pixels, 1)
    residual = np.abs(slope * values + offset - pixels)
    problems = []
    if slope <= 0:
        problems.append(f"x falls as the value rises (slope {slope:.1f} px per unit)")
    if residual.max() > tolerance_px:
        worst = int(residual.argmax())
        problems.append(f"a mark {residual[worst]:.1f} px from where its value {values[worst]:.3f} puts it on the axis")
    return problems
