"""Cutting a slide's detected cells: the crop's side on this slide, each cell's square
re-centred on its centre contour, block by block through the tile cache (and, with a
label array, each cell's mask painted as it is cut).

The crop rule itself (origin, padding past the slide's edge) is :mod:`.crop`'s; the
pipeline, Explain and the training data built from fields all cut cells here.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator, NamedTuple

import numpy as np

from .crop import CONTOUR_PX, centre_contour, level0_diameters, resize_square, square_crop
from .io import Slide
from .masks import clip_to_slide, mask_outline, paint_mask, write_labels
from .tile_cache import TileCache, TiledWindow

if TYPE_CHECKING:
    from .detect import Detections
    from .options import AnalysisOptions


#: median ratio of a cell's contour diameter to its detection box side, for slides
#: where no contour can be measured (BCCD: 130 / 226 px)
BOX_TO_DIAMETER = 0.58


def measure_cell_px(slide: Slide, dets: Detections, n: int = 32, seed: int = 0) -> float | None:
    """Median centre-contour diameter (level-0 px) of up to ``n`` detected cells.

    The same measure as the checkpoint's ``ref_cell_px``, so crops can be scaled to
    the training cells whatever the detector's box style. (The detection stage measures
    it as it goes, in its reader thread; this is for detections from elsewhere.)
    """
    if not len(dets):
        return None
    idx = np.random.default_rng(seed).permutation(len(dets))[:n]
    diam = level0_diameters(slide, dets.boxes[idx])
    return float(np.median(diam)) if diam else None


def crop_side(meta, slide: Slide, dets: Detections, opts: AnalysisOptions) -> float:
    """Level-0 side of the square cut around each cell (see :func:`crop_scale`)."""
    return crop_scale(meta, slide, dets, opts)[0]


def crop_scale(meta, slide: Slide, dets: Detections, opts: AnalysisOptions) -> tuple[float, dict]:
    """Level-0 side of the square cut around each cell, and how it was chosen.

    The checkpoint's field of view (``meta``, a
    :class:`~napari_bm_cells.checkpoint.ClassifierMeta`) scaled to this slide, by the
    first that applies: ``opts.crop_px``; the pixel sizes of slide and checkpoint; the
    user's cell size (``opts.cell_px``); the white cells' measured size (centre-contour
    diameter) against the checkpoint's ``ref_cell_px``; their boxes.

    Returns
    -------
    side : float
    info : dict
        ``by`` (``crop_px``, ``pixel size``, ``cell size``, ``white cells``, ``boxes`` or
        ``default``) and the cell size used (``cell_px``, level-0 px).
    """
    if opts.crop_px:
        return float(opts.crop_px), {"by": "crop_px"}
    if slide.mpp and meta.mpp:
        return meta.crop_size_px * meta.mpp / slide.mpp, {"by": "pixel size"}
    if opts.cell_px:
        cell, by = opts.cell_px, "cell size"
    elif (cell := dets.cell_px or measure_cell_px(slide, dets)) is not None:
        by = "white cells"
    elif len(dets):
        sizes = np.maximum(dets.boxes[:, 2] - dets.boxes[:, 0], dets.boxes[:, 3] - dets.boxes[:, 1])
        cell, by = BOX_TO_DIAMETER * float(np.median(sizes)), "boxes"
    else:
        return float(meta.crop_size_px), {"by": "default"}
    return meta.crop_size_px * cell / meta.ref_cell_px, {"by": by, "cell_px": round(float(cell), 1)}


def cell_blocks(dets: Detections, shape, block: int):
    """Group cell indices by the level-0 block holding their centre (row-major)."""
    cx = (dets.boxes[:, 0] + dets.boxes[:, 2]) / 2
    cy = (dets.boxes[:, 1] + dets.boxes[:, 3]) / 2
    key = (cy // block).astype(int) * (int(shape[1] // block) + 1) + (cx // block).astype(int)
    order = np.argsort(key, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(key[order])) + 1) if len(order) else []
    return groups


#: re-centring on the contour moves a crop by at most this fraction of its side
MAX_SHIFT = 0.25


def cell_crops(img: np.ndarray | TiledWindow, origin, dets: Detections, idx, side: float, out_size: int,
               fov_px: float, slide_shape=None):
    """Centre-contour crops and masks for cells ``idx``.

    Parameters
    ----------
    img : ndarray or TiledWindow
        A level-0 window whose top-left is ``origin`` (y, x), large enough to hold every
        crop (padding handles the slide edge); see :func:`read_cells_window`.
    side : float
        Level-0 side of each crop (see :func:`crop_side`).
    out_size : int
        Side of the returned crops (the model input size).
    fov_px : float
        The checkpoint's field of view (``crop_size_px``): the literature's 100 px
        minimum contour length refers to it.
    slide_shape : (int, int), optional
        Level-0 (height, width) of the slide: crops reaching past its edge are filled
        with the background colour there (default: ``img`` is all slide).

    Returns
    -------
    crops (n, out_size, out_size, 3), centres [(y, x) level 0], masks [(contour, centre) or None]
    """
    cut = [crop_cell(img, origin, dets.boxes[i], side, out_size, fov_px, slide_shape) for i in idx]
    return np.stack([c[0] for c in cut]), [c[1] for c in cut], [c[2] for c in cut]


def crop_cell(img: np.ndarray | TiledWindow, origin, box, side: float, out_size: int, fov_px: float,
              slide_shape=None):
    """One cell of :func:`cell_crops`, detected in level-0 ``box`` (x0, y0, x1, y1):
    its crop, its level-0 centre (y, x) and its mask (contour, centre in ``img``) or None."""
    W = CONTOUR_PX
    scale = side / W  # level-0 pixels per contour-search pixel
    min_length = 100.0 * W / float(fov_px)
    side_i = int(round(side))
    x0, y0, x1, y1 = box
    c = ((y0 + y1) / 2 - origin[0], (x0 + x1) / 2 - origin[1])
    valid = None if slide_shape is None else (-origin[0], -origin[1],
                                              slide_shape[0] - origin[0], slide_shape[1] - origin[1])
    full = square_crop(img, c, side_i, valid)
    c_cut = c  # where the crop the contour was found in is centred
    cc = centre_contour(resize_square(full, W), min_length=min_length, work_size=None)
    if cc is not None and not cc.mask[W // 2, W // 2]:
        cc = None  # the contour is a neighbour: keep the detector's centre and box
    if cc is not None:
        dy, dx = (cc.centroid[0] - (W - 1) / 2) * scale, (cc.centroid[1] - (W - 1) / 2) * scale
        shift = math.hypot(dy, dx)
        if shift > MAX_SHIFT * side:  # clumped cells: move at most a quarter of the crop
            dy, dx = dy * MAX_SHIFT * side / shift, dx * MAX_SHIFT * side / shift
        if shift > 0.03 * side:  # re-centre on the cell, not the box
            c = (c[0] + dy, c[1] + dx)
            full = square_crop(img, c, side_i, valid)
    return resize_square(full, out_size), (c[0] + origin[0], c[1] + origin[1]), \
        ((cc, c_cut) if cc is not None else None)


class _Cell(NamedTuple):
    """One cropped cell on its way from the crop thread to the classifier."""

    index: int  # row in the detections
    crop: np.ndarray  # model input
    centre: tuple[float, float]  # level-0 (y, x) after re-centring


def window_for(dets: Detections, idx, side: float) -> tuple[int, int, int, int]:
    """Level-0 window (y0, x0, y1, x1) holding the crops of cells ``idx``."""
    margin = int(math.ceil(side)) + 2
    b = dets.boxes[idx]
    return (int(b[:, 1].min()) - margin, int(b[:, 0].min()) - margin,
            int(b[:, 3].max()) + margin, int(b[:, 2].max()) + margin)


def read_cells_window(slide: Slide, dets: Detections, idx, side: float,
                      tiles: TileCache | None = None) -> tuple[np.ndarray | TiledWindow, tuple[int, int]]:
    """The level-0 window holding the crops of cells ``idx``, and its origin (y, x).

    With a :class:`~napari_bm_cells.tile_cache.TileCache` the window is a
    :class:`~napari_bm_cells.tile_cache.TiledWindow`: only the storage tiles some crop
    can reach (re-centring included) are decoded, each once across overlapping windows,
    and crops are cut from them directly.
    """
    gy0, gx0, gy1, gx1 = window_for(dets, idx, side)
    if tiles is None:
        return slide.read_region(gy0, gx0, gy1, gx1), (gy0, gx0)
    reach = (0.5 + MAX_SHIFT) * side + 2  # from a detection centre to its crop's far edge
    b = dets.boxes[idx]
    cy, cx = (b[:, 1] + b[:, 3]) / 2, (b[:, 0] + b[:, 2]) / 2
    parts = np.stack([cy - reach, cx - reach, cy + reach, cx + reach], 1)
    return tiles.read_window(gy0, gx0, gy1, gx1, parts), (gy0, gx0)


def cut_cells(slide: Slide, dets: Detections, side: float, out_size: int, fov_px: float,
              block: int, labels=None, offset: int = 0, outlines: dict | None = None,
              tiles: TileCache | None = None, levels=()) -> Iterator[_Cell]:
    """Every cell's crop, one at a time (so a first small batch need not wait for more),
    block by block through a :class:`TileCache`. With ``labels`` (see :func:`~napari_bm_cells.masks.new_labels`)
    each cell's mask is painted there too, a block at a time, and its outline goes into
    ``outlines`` (cell id -> (N, 2) level-0 x, y). Cell ``i`` of ``dets`` is cell
    ``offset + i`` of the run (id ``offset + i + 1``). Other arguments as :func:`cell_crops`.
    """
    tiles = tiles or TileCache.of(slide)
    for group in cell_blocks(dets, slide.shape, block):
        img, origin = read_cells_window(slide, dets, group, side, tiles)
        block_labels = np.zeros(img.shape[:2], np.uint32) if labels is not None else None
        for i in group:
            crop, centre, mask = crop_cell(img, origin, dets.boxes[i], side, out_size, fov_px,
                                           slide.shape[:2])
            if block_labels is not None:
                cid = offset + int(i) + 1
                painted = paint_mask(block_labels, origin, cid, mask, dets.boxes[i], side)
                if outlines is not None and painted is not None:
                    outlines[cid] = mask_outline(*clip_to_slide(painted, slide.shape))
            yield _Cell(offset + i, crop, centre)
        if block_labels is not None:
            write_labels(labels, block_labels, *origin, levels=levels)


def read_cell_crops(slide: Slide, dets: Detections, idx, side: float, out_size: int, fov_px: float):
    """Read the window around cells ``idx`` and cut their crops as :func:`~napari_bm_cells.pipeline.iter_analysis` does
    (returns what :func:`cell_crops` returns)."""
    idx = np.atleast_1d(np.asarray(idx))
    img, origin = read_cells_window(slide, dets, idx, side)
    return cell_crops(img, origin, dets, idx, side, out_size, fov_px, slide.shape[:2])
