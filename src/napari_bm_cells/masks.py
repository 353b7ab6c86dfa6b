"""Cell masks as labels: each cell's centre contour (or its box's inscribed ellipse)
painted into a sparse chunked label array with coarser levels, and its outline as a
polygon (for GeoJSON and napari)."""
from __future__ import annotations

import math

import numpy as np

from .crop import square_origin


def clip_to_slide(painted, shape):
    """A painted mask and its level-0 corner, cut to the slide (windows are padded)."""
    m, y0, x0 = painted
    ty, tx = max(0, -y0), max(0, -x0)
    m = m[ty:max(ty, shape[0] - y0), tx:max(tx, shape[1] - x0)]
    return m, y0 + ty, x0 + tx


def mask_outline(mask: np.ndarray, y0: float, x0: float) -> np.ndarray | None:
    """The outline of the largest blob of a boolean mask whose top-left pixel is level-0
    (``y0``, ``x0``), as an (N, 2) array of level-0 x, y (pixel edges, simplified to
    within half a pixel); None for an empty mask."""
    from ._opencv import cv2
    from skimage.measure import find_contours

    if not mask.any():
        return None
    rings = find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    ring = max(rings, key=len)[:-1]  # closed: the last point repeats the first
    # Douglas-Peucker in OpenCV: scikit-image's approximate_polygon is a Python loop that
    # holds the interpreter per cell (and a viewer's event loop waits meanwhile)
    ring = cv2.approxPolyDP(ring.astype(np.float32).reshape(-1, 1, 2), 0.5, True)[:, 0].astype(float)
    ring = np.vstack([ring, ring[:1]])
    return np.column_stack([ring[:, 1] - 0.5 + x0, ring[:, 0] - 0.5 + y0])


def resize_nearest(mask: np.ndarray, n: int) -> np.ndarray:
    """A square mask resized to ``n`` × ``n`` by nearest pixel centre: scikit-image's
    ``resize(..., order=0)`` pixel for pixel, without its float copy and SciPy call
    (3x faster; OpenCV's nearest modes round differently)."""
    src = np.minimum(((np.arange(n) + 0.5) * (mask.shape[0] / n)).astype(int), mask.shape[0] - 1)
    return mask[np.ix_(src, src)]


def paint_mask(labels_block: np.ndarray, block_origin, cell_id: int, mask_info, box, side):
    """Paint a cell's mask (contour mask, or the box's inscribed ellipse) into a block;
    return the pixels it got (those no earlier cell holds) and their level-0 corner
    (y, x), or None when the mask falls outside the block."""
    by, bx = block_origin
    x0, y0, x1, y1 = box
    if mask_info is not None:
        cc, c = mask_info
        n = int(round(side))
        m = resize_nearest(cc.mask, n)
        oy, ox = square_origin(c, n)
        # keep the mask to the detection box (dilated a little): contours may join neighbours
        pad = 0.1 * max(x1 - x0, y1 - y0)
        yy, xx = np.ogrid[oy:oy + n, ox:ox + n]
        m &= (yy + by >= y0 - pad) & (yy + by < y1 + pad) & (xx + bx >= x0 - pad) & (xx + bx < x1 + pad)
    else:
        oy, ox = int(y0) - by, int(x0) - bx
        h, w = max(1, int(y1 - y0)), max(1, int(x1 - x0))
        yy, xx = np.mgrid[0:h, 0:w]
        m = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 <= 1
    H, W = labels_block.shape
    ry0, rx0 = max(oy, 0), max(ox, 0)
    ry1, rx1 = min(oy + m.shape[0], H), min(ox + m.shape[1], W)
    if ry1 <= ry0 or rx1 <= rx0:
        return None
    sub = m[ry0 - oy:ry1 - oy, rx0 - ox:rx1 - ox]
    tgt = labels_block[ry0:ry1, rx0:rx1]
    tgt[sub & (tgt == 0)] = cell_id
    return tgt == cell_id, by + ry0, bx + rx0


def new_labels(shape):
    """Sparse in-memory (H, W) uint32 label array: only chunks holding cells use memory."""
    import zarr
    return zarr.create_array(store=zarr.storage.MemoryStore(), shape=shape, chunks=(1024, 1024),
                             dtype="uint32", fill_value=0)


#: the masks' coarser levels: every LABEL_STEP-th pixel, down to about LABEL_MIN_SIDE px
LABEL_STEP, LABEL_MIN_SIDE = 4, 512


def new_label_levels(shape) -> list[tuple[int, object]]:
    """Coarser levels of the mask labels, ``[(factor, array), ...]``: painted with the
    masks, so a viewer zoomed out reads a small array instead of the whole slide's."""
    out, f = [], LABEL_STEP
    while max(shape) / f >= LABEL_MIN_SIDE:
        out.append((f, new_labels((math.ceil(shape[0] / f), math.ceil(shape[1] / f)))))
        f *= LABEL_STEP
    return out


def write_labels(labels, block: np.ndarray, y0: int, x0: int, levels=()):
    """Merge a block of painted masks into the label array (existing cells win), one
    storage chunk at a time and only chunks with cells: re-encoding a whole block of
    mostly empty chunks cost more than cutting its crops. ``levels`` (see
    :func:`new_label_levels`) get every ``factor``-th pixel of it."""
    for f, arr in levels:
        H0, W0 = labels.shape
        i0, j0 = -(-max(y0, 0) // f), -(-max(x0, 0) // f)
        i1, j1 = -(-min(y0 + block.shape[0], H0) // f), -(-min(x0 + block.shape[1], W0) // f)
        if i1 > i0 and j1 > j0:
            write_labels(arr, block[i0 * f - y0:(i1 - 1) * f - y0 + 1:f, j0 * f - x0:(j1 - 1) * f - x0 + 1:f], i0, j0)
    H, W = labels.shape
    ch, cw = labels.chunks
    for cy in range(max(y0, 0) // ch * ch, min(y0 + block.shape[0], H), ch):
        for cx in range(max(x0, 0) // cw * cw, min(x0 + block.shape[1], W), cw):
            ry0, rx0 = max(cy, y0, 0), max(cx, x0, 0)
            ry1, rx1 = min(cy + ch, y0 + block.shape[0], H), min(cx + cw, x0 + block.shape[1], W)
            sub = block[ry0 - y0:ry1 - y0, rx0 - x0:rx1 - x0]
            if ry1 > ry0 and rx1 > rx0 and sub.any():
                cur = labels[ry0:ry1, rx0:rx1]
                labels[ry0:ry1, rx0:rx1] = np.where(cur > 0, cur, sub)
