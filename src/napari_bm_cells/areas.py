"""Counting areas: a low-resolution map of where a smear is fit for a differential count.

Hematologists count where cells lie in a monolayer and in focus: not on empty or
haemodiluted glass, not in the thick particle centre or clumps where cells overlap,
not where the scan is blurred. :func:`score_areas` divides the analysed region into
square regions (one detection tile each) and scores every region in 0-1 as the product of

* **monolayer**: the fraction of the region covered by cells (not glass, by Otsu's
  threshold on a thumbnail of the whole slide) is full score from
  :data:`MONOLAYER` ``[1]`` to ``[2]``, falling linearly to 0 at ``[0]`` (empty glass)
  and ``[3]`` (cells overlap, no glass between them);
* **focus**: the variance of the Laplacian over the variance of the grey values of a
  patch with cells (cells about :data:`FOCUS_CELL_PX` px across), relative to the
  slide's sharpest regions (the median of the best quarter scores 1). Stains and cameras
  differ too much for an absolute focus threshold; a slide blurred all over ranks its
  regions by the same rule.

The pipeline visits regions best-first to count to a target (``--target``) and can
skip regions below a score (``--min-area-score``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: cell-covered fractions: 0 at or below [0], 1 from [1] to [2], 0 at or above [3]
MONOLAYER = (0.03, 0.2, 0.6, 0.9)

#: white-cell diameter (px) in the focus patches: fine detail of chromatin and granules
FOCUS_CELL_PX = 48.0

#: side of a focus patch in white-cell diameters
FOCUS_PATCH_CELLS = 4.0

#: thumbnail pixels per region side (coverage needs no more)
THUMB_PER_REGION = 32

#: the whole-slide thumbnail's long side at most
MAX_THUMB_SIDE = 4096

#: the share of scored regions whose median focus counts as sharp
SHARP_QUANTILE = 0.75


@dataclass
class AreaMap:
    """Scores of a grid of square level-0 regions.

    Attributes
    ----------
    scores : (rows, cols) float array
        Counting-area score in 0-1 per region.
    focus, coverage : (rows, cols) float arrays
        The relative focus (0-1) and the cell-covered fraction behind each score.
    origin : (y0, x0)
        Level-0 corner of region (0, 0).
    extent : (y1, x1)
        Level-0 far corner of the mapped area (regions are clipped to it).
    region_px : float
        Level-0 side of a region.
    """

    scores: np.ndarray
    focus: np.ndarray
    coverage: np.ndarray
    origin: tuple[int, int]
    extent: tuple[int, int]
    region_px: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.scores.shape

    def region(self, i: int, j: int) -> tuple[int, int, int, int]:
        """Level-0 (y0, x0, y1, x1) of region (i, j)."""
        y0 = self.origin[0] + int(round(i * self.region_px))
        x0 = self.origin[1] + int(round(j * self.region_px))
        y1 = min(self.extent[0], self.origin[0] + int(round((i + 1) * self.region_px)))
        x1 = min(self.extent[1], self.origin[1] + int(round((j + 1) * self.region_px)))
        return y0, x0, y1, x1

    def ranked(self, min_score: float = 0.0) -> list[tuple[int, int]]:
        """Regions with a score of at least ``min_score``, best first (ties row by row)."""
        flat = self.scores.ravel()
        order = np.argsort(-flat, kind="stable")
        keep = order[flat[order] >= min_score]
        return [tuple(int(v) for v in np.unravel_index(k, self.shape)) for k in keep]

    def score_at(self, x, y) -> np.ndarray:
        """The score of the region holding each level-0 point (x, y)."""
        i = np.clip(((np.asarray(y, float) - self.origin[0]) // self.region_px).astype(int), 0, self.shape[0] - 1)
        j = np.clip(((np.asarray(x, float) - self.origin[1]) // self.region_px).astype(int), 0, self.shape[1] - 1)
        return self.scores[i, j]

    def area_fraction(self, regions) -> float:
        """Fraction of the mapped area that ``regions`` [(i, j), ...] cover."""
        total = (self.extent[0] - self.origin[0]) * (self.extent[1] - self.origin[1])
        got = 0
        for i, j in regions:
            y0, x0, y1, x1 = self.region(i, j)
            got += (y1 - y0) * (x1 - x0)
        return got / total if total else 0.0

    def summary(self) -> dict:
        """What summary.json records of the map."""
        s = self.scores
        return {"region_px": round(self.region_px, 1), "grid": list(s.shape), "origin": list(self.origin),
                "mean_score": round(float(s.mean()), 3) if s.size else None,
                "fit_fraction": round(float((s >= 0.5).mean()), 3) if s.size else None}


def monolayer_score(coverage: np.ndarray) -> np.ndarray:
    """The monolayer term of the score for cell-covered fractions (see :data:`MONOLAYER`)."""
    a, b, c, d = MONOLAYER
    cov = np.asarray(coverage, float)
    up = np.clip((cov - a) / (b - a), 0, 1)
    down = np.clip((d - cov) / (d - c), 0, 1)
    return np.minimum(up, down)


def focus_measure(rgb: np.ndarray) -> float:
    """Variance of the Laplacian over the variance of the grey values (0 for a flat patch):
    contrast-free, so a pale and a dark stain of the same sharpness score alike."""
    from scipy import ndimage

    g = np.asarray(rgb, np.float32).mean(-1) / 255.0
    v = float(g.var())
    if v < 1e-6:
        return 0.0
    return float(ndimage.laplace(g).var()) / v


def _read_binned(slide, y0: float, x0: float, side: float, downsample: float) -> np.ndarray:
    """A level-0 square read at about ``downsample`` from the nearest pyramid level and
    binned by pixel means (OpenCV's area resize: anti-aliased, a fraction of the cost of
    :meth:`Slide.read_region`'s Gaussian resize)."""
    ds = float(slide.downsamples[slide.level_for(downsample)])
    k = max(1, int(round(downsample / ds)))
    n = max(1, int(side / (ds * k)))  # output pixels
    from ._opencv import cv2

    a = slide.read_region(y0, x0, y0 + n * k * ds, x0 + n * k * ds, downsample=ds)[:n * k, :n * k]
    return cv2.resize(np.ascontiguousarray(a), (n, n), interpolation=cv2.INTER_AREA) if k > 1 else a


def score_areas(slide, region: tuple[int, int, int, int] | None = None, region_px: float = 1024.0,
                cell_px: float = 100.0) -> AreaMap:
    """Score the regions of ``slide`` for counting.

    Parameters
    ----------
    slide : Slide
    region : (y0, x0, y1, x1), optional
        Level-0 area to map; default the whole slide.
    region_px : float
        Level-0 side of a region (the pipeline uses one detection tile).
    cell_px : float
        Typical white-cell diameter at level 0 (sets the scale of the focus patches).

    Returns
    -------
    AreaMap
    """
    from skimage.filters import threshold_otsu

    from .io import read_thumbnail

    H, W = slide.shape
    y0, x0, y1, x1 = (int(v) for v in (region or (0, 0, H, W)))
    rows, cols = max(1, math.ceil((y1 - y0) / region_px)), max(1, math.ceil((x1 - x0) / region_px))
    side = max(y1 - y0, x1 - x0)
    max_side = int(min(MAX_THUMB_SIDE, max(64, side / region_px * THUMB_PER_REGION)))
    thumb, td = read_thumbnail(slide, (y0, x0, y1, x1), max_side=max_side)
    grey = thumb.astype(np.float32).mean(-1)
    try:
        cells = grey < threshold_otsu(grey)
    except ValueError:  # one grey value: nothing but glass (or nothing but stain)
        cells = np.zeros(grey.shape, bool)
    if grey.max() - grey.min() < 10:  # no contrast at all: an empty or grey image
        cells[:] = False
    coverage = np.zeros((rows, cols))
    focus = np.zeros((rows, cols))
    fd = max(1.0, cell_px / FOCUS_CELL_PX)  # focus patches read at this downsample
    patch = FOCUS_PATCH_CELLS * cell_px  # level-0 side of a focus patch
    amap = AreaMap(np.zeros((rows, cols)), focus, coverage, (y0, x0), (y1, x1), float(region_px))
    for i in range(rows):
        for j in range(cols):
            ry0, rx0, ry1, rx1 = amap.region(i, j)
            ty0, tx0 = int((ry0 - y0) / td), int((rx0 - x0) / td)
            ty1, tx1 = max(ty0 + 1, int(math.ceil((ry1 - y0) / td))), max(tx0 + 1, int(math.ceil((rx1 - x0) / td)))
            sub = cells[ty0:ty1, tx0:tx1]
            coverage[i, j] = float(sub.mean()) if sub.size else 0.0
            if coverage[i, j] <= MONOLAYER[0]:
                continue
            # the patch centred on the region's cells, not on glass
            yy, xx = np.nonzero(sub)
            cy = ry0 + (yy.mean() + 0.5) * td if len(yy) else (ry0 + ry1) / 2
            cx = rx0 + (xx.mean() + 0.5) * td if len(xx) else (rx0 + rx1) / 2
            # a region at the slide's edge may be a sliver: its patch reaches into the
            # neighbours (focus varies slowly), never beyond the mapped area
            p = min(patch, region_px, y1 - y0, x1 - x0)
            py0 = min(max(y0, cy - p / 2), y1 - p)
            px0 = min(max(x0, cx - p / 2), x1 - p)
            focus[i, j] = focus_measure(_read_binned(slide, py0, px0, p, fd))
    scored = focus[coverage > MONOLAYER[0]]
    sharp = float(np.median(np.sort(scored)[int(len(scored) * SHARP_QUANTILE):])) if len(scored) else 0.0
    rel = np.clip(focus / sharp, 0, 1) if sharp > 0 else np.zeros_like(focus)
    amap.focus = rel
    amap.scores = rel * monolayer_score(coverage)
    return amap
