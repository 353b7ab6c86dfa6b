"""The scale to detect at, found from the slide itself when its pixel size is unknown.

A white cell spans about 40 px in one lab's camera fields and 300 px in another's
scans. When neither the file nor the user (``--cell-size``) says how large cells are,
:func:`probe_cell_px` runs the detector on the slide at a ladder of downsamples, one
octave apart, keeps the rung where it finds the most white cells (sum of confidences per
level-0 area, each box weighted by how close its size is to the size the network was
trained on, so an upsampled red cell does not pass for a white one) and reads the white-cell size off the boxes found there. Detection then
runs where cells reach the network at the size it was trained on.
"""
from __future__ import annotations

import math

import numpy as np

#: level-0 white-cell box sides tried by the probe (px), one octave apart; with the
#: detector's 0.3-1.7x scale augmentation every size from ~35 to ~1000 px lands within
#: reach of one rung. None finer: upsampled over 2x, red cells, platelets and nucleus
#: lobes pass for white cells
LADDER = (80.0, 160.0, 320.0, 640.0)

#: a probe window per rung: at most this many detection-level pixels on a side
PROBE_SIDE = 640

#: probe windows per rung on a region larger than one window
PROBE_WINDOWS = 4

#: images up to this size are single camera fields when nothing else tells the scale
FIELD_MAX_SIDE = 1024

#: spread (natural log) of the box sizes a rung counts fully: sizes an octave from the
#: trained size count a seventh as much
SIZE_SIGMA = 0.35

#: the darkest pixels of the slide taken for nuclei, and the fraction of a white cell's
#: box they cover at least
DARK_QUANTILE = 0.03
MIN_NUCLEAR = 0.01

#: snap to a pyramid level whose downsample is within this factor of the wanted one
SNAP = 1.3


def _dark_mask(slide, region) -> tuple[np.ndarray, float]:
    """The darkest 3% of a thumbnail of ``region`` (white-cell nuclei, stained darker than
    anything else on a smear) and the thumbnail's downsample."""
    ry0, rx0, ry1, rx1 = region
    td = max(1.0, max(ry1 - ry0, rx1 - rx0) / 1024)
    grey = slide.read_region(ry0, rx0, ry1, rx1, downsample=td).astype(np.float32).mean(-1)
    return grey <= np.quantile(grey, DARK_QUANTILE), td


def _windows(region, dark, td: float, side0: float, n: int) -> list[tuple[int, int, int, int]]:
    """Up to ``n`` level-0 windows of side ``side0`` inside ``region``, centred where the
    most nuclear pixels are; a region that fits in about one window is one window."""
    from scipy import ndimage

    ry0, rx0, ry1, rx1 = region
    if ry1 - ry0 <= side0 * 1.5 and rx1 - rx0 <= side0 * 1.5:
        return [tuple(region)]
    k = max(1, int(round(side0 / td)))
    density = ndimage.uniform_filter(dark.astype(np.float32), size=k, mode="constant")
    out = []
    for _ in range(n):
        cy, cx = np.unravel_index(int(np.argmax(density)), density.shape)
        if density[cy, cx] <= 0:
            break
        density[max(0, cy - k):cy + k + 1, max(0, cx - k):cx + k + 1] = 0  # next one elsewhere
        y0 = int(min(max(ry0, ry0 + cy * td - side0 / 2), max(ry0, ry1 - side0)))
        x0 = int(min(max(rx0, rx0 + cx * td - side0 / 2), max(rx0, rx1 - side0)))
        out.append((y0, x0, int(min(ry1, y0 + side0)), int(min(rx1, x0 + side0))))
    return out or [tuple(region)]


def _nuclear_fraction(boxes: np.ndarray, region, dark: np.ndarray, td: float) -> np.ndarray:
    """Fraction of each level-0 box's pixels in the dark (nuclear) mask."""
    integral = np.pad(dark.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = dark.shape
    b = (boxes - np.array([region[1], region[0], region[1], region[0]])) / td
    x0 = np.clip(np.floor(b[:, 0]), 0, w).astype(int); x1 = np.clip(np.ceil(b[:, 2]), 0, w).astype(int)
    y0 = np.clip(np.floor(b[:, 1]), 0, h).astype(int); y1 = np.clip(np.ceil(b[:, 3]), 0, h).astype(int)
    s = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return s / np.maximum((y1 - y0) * (x1 - x0), 1)


def probe_cell_px(detector, slide, region: tuple[int, int, int, int] | None = None,
                  ladder=LADDER, windows: int = PROBE_WINDOWS) -> dict | None:
    """White-cell box side at level 0 (px), found by running the detector at several scales.

    Parameters
    ----------
    detector
        A detector with ``input_cell_px`` (median box side it was trained on, at its
        input) and ``operating_conf``.
    slide : Slide
    region : (y0, x0, y1, x1), optional
        Level-0 part of the slide to look at (default: all of it).

    Returns
    -------
    dict or None
        ``cell_px`` (median level-0 box side of the cells found at the best rung),
        ``rung`` (that rung's cell size), ``scores`` (per rung) and ``n_cells``; None when
        no rung finds a cell.
    """
    from .detect import iter_detect

    H, W = slide.shape
    region = region or (0, 0, H, W)
    conf = float(getattr(detector, "operating_conf", getattr(detector, "conf", 0.0)))
    dark, td = _dark_mask(slide, region)
    best, scores = None, {}
    for cell in ladder:
        d = cell / detector.input_cell_px
        if d * 16 > max(region[2] - region[0], region[3] - region[1]):
            break  # the region would be under 16 px at this rung
        found, area = [], 0.0
        for win in _windows(region, dark, td, PROBE_SIDE * d, windows):
            dets = None
            for ev in iter_detect(slide, detector, tile=PROBE_SIDE, overlap=PROBE_SIDE // 4,
                                  downsample=d, region=win):
                if ev.stage == "detect-done":
                    dets = ev.payload
            area += (win[2] - win[0]) * (win[3] - win[1])
            keep = dets.scores >= conf
            found.append((dets.boxes[keep], dets.scores[keep]))
        boxes = np.concatenate([b for b, _ in found])
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        # a box far from the size the network was trained on is out of its range here
        # (an upsampled red cell, a nucleus lobe), so it counts for little, and so does
        # one without a nucleus (a red cell at the size of a white one)
        weight = np.concatenate([s for _, s in found]) * np.exp(
            -np.log(sides / d / detector.input_cell_px) ** 2 / (2 * SIZE_SIGMA ** 2)) * np.clip(
            _nuclear_fraction(boxes, region, dark, td) / MIN_NUCLEAR, 0, 1)
        scores[cell] = float(weight.sum() / area * 1e6)  # per megapixel of level 0
        if weight.sum() > 0 and (best is None or scores[cell] > scores[best[0]]):
            best = (cell, sides, weight)
    if best is None:
        return None
    cell, sides, weight = best
    order = np.argsort(sides)  # weighted median of the box sides
    mid = order[np.searchsorted(np.cumsum(weight[order]), weight.sum() / 2)]
    return {"cell_px": float(sides[mid]), "rung": cell, "scores": scores, "n_cells": int((weight > 0.05).sum())}


def snap_to_level(slide, downsample: float, factor: float = SNAP) -> float:
    """The nearest pyramid level's downsample when within ``factor`` of ``downsample``
    (reading a stored level is much faster than resampling a finer one), else
    ``downsample`` itself."""
    if downsample <= 1:  # nothing to gain: level 0 is read as it is, or upsampled
        return downsample
    levels = [float(v) for v in getattr(slide, "downsamples", [1.0]) if v > 1]
    if not levels:
        return downsample
    near = min(levels, key=lambda v: abs(math.log(v / downsample)))
    return near if abs(math.log(near / downsample)) <= math.log(factor) else downsample


def detection_scale(detector, slide, cell_px: float | None = None,
                    region: tuple[int, int, int, int] | None = None) -> tuple[float, dict]:
    """Downsample at which cells reach the detector at the size it was trained on, and how
    it was found (``{"source": ...}``, recorded in summary.json).

    The white-cell size at level 0 comes from ``cell_px`` when given, else from the
    slide's pixel size (a white cell spans about 12 um), else from :func:`probe_cell_px`;
    a detector without ``operating_conf`` (the contour detector) or a probe that finds
    no cell falls back to the old rules: a small image (a camera field, up to
    :data:`FIELD_MAX_SIDE`) scaled like the detector's training fields, else
    ``DEFAULT_CELL_PX``. The result snaps to a pyramid level
    within :data:`SNAP` of it.
    """
    from .detect import DEFAULT_CELL_PX

    info: dict = {}
    if cell_px is not None:
        info["source"] = "cell_size"
    elif slide.mpp:
        cell_px, info["source"] = 12.0 / slide.mpp, "pixel_size"
    elif hasattr(detector, "operating_conf"):
        probe = probe_cell_px(detector, slide, region)
        if probe is not None:
            cell_px = probe["cell_px"]
            info.update(source="probe", probe_cell_px=round(cell_px, 1), probe_cells=probe["n_cells"],
                        probe_scores={str(int(k)): round(v, 2) for k, v in probe["scores"].items()})
    if cell_px is None and max(slide.shape) <= FIELD_MAX_SIDE:
        # a camera field: scaled like the detector's training fields (long side to its input size)
        d, info["source"] = max(slide.shape) / float(getattr(detector, "imgsz", max(slide.shape))), "field"
    else:
        if cell_px is None:
            cell_px, info["source"] = DEFAULT_CELL_PX, "default"
        d = max(0.25, float(cell_px) / detector.input_cell_px)
    snapped = snap_to_level(slide, d)
    info.update(wanted_downsample=round(d, 3), downsample=snapped)
    return snapped, info
