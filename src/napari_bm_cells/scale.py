"""The scale to detect at, found from the slide itself when its pixel size is unknown.

A white cell spans about 40 px in one lab's camera fields and 300 px in another's
scans. When neither the file nor the user (``--cell-size``) says how large cells are,
:func:`probe_cell_px` runs the detector on the slide at a ladder of downsamples, one
octave apart, keeps the rung where it finds the most white cells (sum of confidences per
level-0 area, each box weighted by how close its size is to the size the network was
trained on and by whether it holds a nucleus, so an upsampled red cell does not pass for
a white one) and reads the white-cell size off the boxes found there. With a detector
that also boxes red cells (the shipped one), :func:`probe_red_cell_px` does the same
with red cells first: they are about the same size in every smear and a field holds
dozens, where it may hold a single white cell of any type, so they give the scale on
fields where white cells cannot. Detection then runs where cells reach the network at
the size it was trained on.
"""
from __future__ import annotations

import math

import numpy as np

#: level-0 white-cell box sides tried by the probe (px), one octave apart; with the
#: detector's 0.3-1.7x scale augmentation every size from ~40 to ~1000 px lands within
#: reach of one rung (the finest is read at :data:`MIN_DOWNSAMPLE`)
LADDER = (80.0, 160.0, 320.0, 640.0)

#: a probe window per rung: at most this many detection-level pixels on a side
PROBE_SIDE = 640

#: probe windows per rung on a region larger than one window
PROBE_WINDOWS = 4

#: level-0 pixels read per rung at most (4 windows at a 160 px rung)
PROBE_BUDGET = 4 * (PROBE_SIDE * 160 / 124) ** 2

#: images up to this size are single camera fields when nothing else tells the scale
FIELD_MAX_SIDE = 1024

#: box sizes at the network's input, over its trained median, that count fully (TXL-PBC's
#: fields put white cells at 0.6-1.7x the median), and the fall-off outside (log size):
#: a box 1.5x beyond the range counts a quarter
TRAINED_RANGE = (0.6, 1.7)
SIZE_SIGMA = 0.25

#: the fraction of a white cell's box that nuclear pixels cover at least (a red cell
#: touching a platelet: a few %)
MIN_NUCLEAR = 0.1

#: how much better the probe's scale must score than a prior scale to replace it
PRIOR_MARGIN = 2.0

#: re-measurements at the estimated scale (stops early once two agree within 10%)
REFINE_STEPS = 2

#: the finest detection scale: upsampled over 2x, platelets pass for lymphocytes
MIN_DOWNSAMPLE = 0.5

#: level-0 red-cell box sides tried by the red-cell probe (px), one octave apart
RED_LADDER = (40.0, 80.0, 160.0, 320.0)

#: red cells the red-cell probe must find (a marrow particle or a thick area may have
#: few); with fewer, the white cells set the scale
MIN_RED_CELLS = 12

#: snap to a pyramid level whose downsample is within this factor of the wanted one
SNAP = 1.3


def _dark_mask(slide, region) -> tuple[np.ndarray, float, np.ndarray]:
    """Nuclear pixels of a thumbnail of ``region`` (the darkest of three classes of the red
    channel by multi-Otsu: glass, red cells and cytoplasm, nuclei; nuclear stains absorb
    red light, eosin does not), the thumbnail's downsample and its imaged pixels. A black
    surround outside the imaged area (:func:`~napari_bm_cells.colour.surround`) is
    neither counted nor allowed to set the thresholds, where it would pass for the
    darkest class."""
    from skimage.filters import threshold_multiotsu

    from .colour import surround
    from .io import read_thumbnail

    thumb, td = read_thumbnail(slide, region)
    red = thumb[..., 0].astype(np.float32)
    imaged = ~surround(thumb)
    if not imaged.any():
        return np.zeros(red.shape, bool), td, imaged
    try:
        t = threshold_multiotsu(red[imaged], classes=3)[0]
    except ValueError:  # a flat image: no classes to tell apart
        return np.zeros(red.shape, bool), td, imaged
    return (red <= t) & imaged, td, imaged


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


def _box_fraction(boxes: np.ndarray, region, mask: np.ndarray, td: float) -> np.ndarray:
    """Fraction of each level-0 box's (x0, y0, x1, y1) pixels in a thumbnail mask of
    ``region`` (the nuclear or the imaged pixels of :func:`_dark_mask`)."""
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape
    b = (boxes - np.array([region[1], region[0], region[1], region[0]])) / td
    x0, x1 = np.clip(np.floor(b[:, 0]), 0, w).astype(int), np.clip(np.ceil(b[:, 2]), 0, w).astype(int)
    y0, y1 = np.clip(np.floor(b[:, 1]), 0, h).astype(int), np.clip(np.ceil(b[:, 3]), 0, h).astype(int)
    s = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return s / np.maximum((y1 - y0) * (x1 - x0), 1)


def probe_cell_px(detector, slide, region: tuple[int, int, int, int] | None = None,
                  ladder=LADDER, windows: int = PROBE_WINDOWS, prior: float | None = None,
                  nuclear: bool = True, nuclei: tuple[np.ndarray, float] | None = None) -> dict | None:
    """White-cell box side at level 0 (px), found by running the detector at several scales.

    Parameters
    ----------
    detector
        A detector with ``input_cell_px`` (median box side it was trained on, at its
        input) and ``operating_conf``.
    slide : Slide
    region : (y0, x0, y1, x1), optional
        Level-0 part of the slide to look at (default: all of it).
    prior : float, optional
        A downsample to keep unless the probe's scale scores :data:`PRIOR_MARGIN` times
        higher (a camera field scaled like the detector's training fields).
    nuclear : bool
        Count a box only when it holds nuclear pixels (white cells); off for red cells.
    nuclei : (mask, downsample, imaged), optional
        :func:`_dark_mask` of ``region`` when the caller has it already (where the
        windows go, and the nuclear test).

    Returns
    -------
    dict or None
        ``cell_px`` (median level-0 box side of the cells found at the best rung, then
        re-measured at the scale it implies), ``rung`` (that rung's cell size),
        ``scores`` (per rung), ``n_cells`` and ``chosen`` (``"probe"`` or ``"prior"``);
        None when no rung finds a cell.
    """
    from .detect import iter_detect, run_to_end

    H, W = slide.shape
    region = region or (0, 0, H, W)
    conf = float(getattr(detector, "operating_conf", getattr(detector, "conf", 0.0)))
    dark, td, imaged = nuclei if nuclei is not None else _dark_mask(slide, region)

    def look(d):
        """Weighted box sides and score (per level-0 megapixel) at downsample ``d``."""
        found, area = [], 0.0
        # coarse rungs read large level-0 windows: keep each rung within a pixel budget
        side0 = min(PROBE_SIDE * d, math.sqrt(PROBE_BUDGET))
        n_win = max(1, min(windows, int(PROBE_BUDGET // side0 ** 2)))
        for win in _windows(region, dark, td, side0, n_win):
            dets = run_to_end(iter_detect(slide, detector, tile=PROBE_SIDE, overlap=PROBE_SIDE // 4,
                                          downsample=d, region=win, measure=False))
            # per area of smear: a black surround around a round field of view is not
            area += (win[2] - win[0]) * (win[3] - win[1]) * _box_fraction(
                np.array([[win[1], win[0], win[3], win[2]]], float), region, imaged, td)[0]
            keep = dets.scores >= conf
            found.append((dets.boxes[keep], dets.scores[keep]))
        boxes = np.concatenate([b for b, _ in found])
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        # a box far from the size the network was trained on is out of its range here
        # (an upsampled red cell, a nucleus lobe), so it counts for little, and so does
        # one without a nucleus (a red cell at the size of a white one)
        weight = np.concatenate([s for _, s in found]) * size_weight(sides / d / detector.input_cell_px)
        if nuclear:
            weight = weight * np.clip(_box_fraction(boxes, region, dark, td) / MIN_NUCLEAR, 0, 1)
        return sides, weight, float(weight.sum() / max(area, 1.0) * 1e6)

    best, scores = None, {}
    for cell in ladder:
        d = max(MIN_DOWNSAMPLE, cell / detector.input_cell_px)
        if d * 16 > max(region[2] - region[0], region[3] - region[1]):
            break  # the region would be under 16 px at this rung
        sides, weight, scores[cell] = look(d)
        if weight.sum() > 0 and (best is None or scores[cell] > scores[best[0]]):
            best = (cell, sides, weight)
    if best is None:
        return None
    cell, sides, weight = best
    est, score = _weighted_median(sides, weight), scores[cell]
    # boxes are most faithful at the trained scale: look again there (a fixed point)
    for _ in range(REFINE_STEPS):
        d = max(MIN_DOWNSAMPLE, est / detector.input_cell_px)
        sides, w2, s2 = look(d)
        if w2.sum() <= 0:
            break
        new, weight, score = _weighted_median(sides, w2), w2, s2
        done = abs(math.log(new / est)) < 0.1
        est = new
        if done:
            break
    out = {"cell_px": est, "rung": cell, "scores": scores, "n_cells": int((weight > 0.05).sum()),
           "chosen": "probe"}
    if prior is not None:
        out["prior_score"] = look(prior)[2]
        out["probe_score"] = score
        if out["prior_score"] * PRIOR_MARGIN >= score:
            out.update(cell_px=prior * detector.input_cell_px, chosen="prior")
    return out


def probe_red_cell_px(detector, slide, region: tuple[int, int, int, int] | None = None,
                      nuclei: tuple[np.ndarray, float] | None = None) -> dict | None:
    """Red-cell box side at level 0 (px), found as :func:`probe_cell_px` finds white cells,
    with a detector that boxes red cells (:meth:`YoloDetector.red_cells`).

    Red cells are about 7.5 um across in every smear and a field holds dozens, so their
    size is a ruler that does not depend on which white cells a field happens to hold.
    None when the detector has no red-cell class or fewer than :data:`MIN_RED_CELLS` are found.
    """
    red = detector.red_cells() if hasattr(detector, "red_cells") else None
    if red is None:
        return None
    probe = probe_cell_px(red, slide, region, ladder=RED_LADDER, nuclear=False, nuclei=nuclei)
    if probe is None or probe["n_cells"] < MIN_RED_CELLS:
        return None
    return {**probe, "white_cell_px": probe["cell_px"] * detector.input_cell_px / red.input_cell_px}


def size_weight(ratio: np.ndarray) -> np.ndarray:
    """How much a box counts, by its size at the network's input over the median size it
    was trained on: fully within :data:`TRAINED_RANGE` (the training fields' cells span
    about that), falling off outside it as a Gaussian in log size."""
    lo, hi = TRAINED_RANGE
    off = np.log(np.clip(ratio, lo, hi) / np.maximum(ratio, 1e-6))
    return np.exp(-off ** 2 / (2 * SIZE_SIGMA ** 2))


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    return float(values[order[np.searchsorted(np.cumsum(weights[order]), weights.sum() / 2)]])


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


def imaged_side(slide) -> float:
    """Long side (level-0 px) of the part of ``slide`` that holds an image: the bounding
    box of its pixels that are not the black surround of a round field of view or an
    unscanned strip (:func:`~napari_bm_cells.colour.surround`); the slide's long side
    when there is none."""
    from .colour import surround
    from .io import read_thumbnail

    thumb, td = read_thumbnail(slide)
    ys, xs = np.nonzero(~surround(thumb))
    if not len(ys):
        return float(max(slide.shape))
    return float(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) * td)


def detection_scale(detector, slide, cell_px: float | None = None,
                    region: tuple[int, int, int, int] | None = None) -> tuple[float, dict]:
    """Downsample at which cells reach the detector at the size it was trained on, and how
    it was found (``{"source": ...}``, recorded in summary.json).

    The white-cell size at level 0 comes from ``cell_px`` when given, else from the
    slide's pixel size (a white cell spans about 12 um), else from the red cells' size
    (:func:`probe_red_cell_px`, with a detector that boxes red cells; recorded as
    ``red_cell_px``), else from :func:`probe_cell_px`.
    A small image (a camera field, up to :data:`FIELD_MAX_SIDE`) is scaled like the
    detector's training fields (long side to its input size) unless the probe finds
    clearly more white cells at another scale (another objective or camera). A detector
    without ``operating_conf`` (the contour detector) or a probe that finds no cell
    leaves fields at that scale and larger images at ``DEFAULT_CELL_PX``. The result
    snaps to a pyramid level within :data:`SNAP` of it.
    """
    from .detect import DEFAULT_CELL_PX

    info: dict = {}
    # a camera field is first taken at the scale of the detector's training fields (long
    # side to its input size): the probe overrides that only when clearly better
    field = max(slide.shape) <= FIELD_MAX_SIDE
    field_d = (imaged_side(slide) if field else max(slide.shape)) / float(getattr(detector, "imgsz", max(slide.shape)))
    if cell_px is not None:
        info["source"] = "cell_size"
    elif slide.mpp:
        cell_px, info["source"] = 12.0 / slide.mpp, "pixel_size"
    elif hasattr(detector, "operating_conf"):
        # one thumbnail's nuclei place the windows of both probes
        nuclei = _dark_mask(slide, region or (0, 0, *slide.shape))
        if (red := probe_red_cell_px(detector, slide, region, nuclei)) is not None:
            cell_px = red["white_cell_px"]
            info.update(source="red cells", red_cell_px=round(red["cell_px"], 1), red_cells=red["n_cells"],
                        probe_cell_px=round(cell_px, 1))
        elif (probe := probe_cell_px(detector, slide, region, prior=field_d if field else None,
                                     nuclei=nuclei)) is not None:
            cell_px = probe["cell_px"]
            info.update(source="probe" if probe["chosen"] == "probe" else "field", probe_cell_px=round(cell_px, 1),
                        probe_cells=probe["n_cells"],
                        probe_scores={str(int(k)): round(v, 2) for k, v in probe["scores"].items()})
    if cell_px is None and field:
        d, info["source"] = field_d, "field"
    else:
        if cell_px is None:
            cell_px, info["source"] = DEFAULT_CELL_PX, "default"
        d = max(MIN_DOWNSAMPLE, float(cell_px) / detector.input_cell_px)
    snapped = snap_to_level(slide, d)
    info.update(wanted_downsample=round(d, 3), downsample=snapped)
    return snapped, info
