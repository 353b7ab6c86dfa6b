"""The one analysis pipeline: slide -> detections -> centre-contour crops -> classes -> counts.

:func:`iter_analysis` is a generator of :class:`~napari_bm_cells.detect.Progress` events;
napari's ``thread_worker`` drives it in the GUI (closing the generator cancels the run)
and :func:`analyze` loops over it headless. Memory stays bounded: detection reads tiles
lazily, crops are cut block by block from the level-0 image, and only the cell table
(and, optionally, the mask labels as a sparse chunked array) grows with the slide.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

import numpy as np
import pandas as pd

from .areas import AreaMap, score_areas
from . import runtime
from .cells_table import prob_column
from .colour import FIT_CELLS, SlideColour
from .count import blast_atypical_scores, differential
from .crop import CONTOUR_PX, centre_contour, level0_diameters, resize_square, square_crop, square_origin
from .detect import Detections, Progress, Stage, iter_detect, iter_detect_regions
from .scale import detection_scale
from .errors import Cancelled, InputError
from .io import Slide, open_slide
from .taxonomy import UNCLASSIFIED
from .options import AnalysisOptions  # noqa: F401 -- part of the pipeline's API
from .tile_cache import TileCache, TiledWindow



@dataclass
class AnalysisResult:
    """Output of one analysis: ``cells`` (one row per cell) and ``summary``."""

    cells: pd.DataFrame
    summary: dict
    labels: object = None  # (H, W) uint32 zarr array of cell masks, when requested
    slide: Slide | None = None
    timings: dict = field(default_factory=dict)
    areas: AreaMap | None = None  # the counting-area map
    outlines: dict = field(default_factory=dict)  # cell_id -> (N, 2) level-0 x, y outline (with masks)
    label_levels: list = field(default_factory=list)  # [(factor, array)]: coarser mask levels


def parse_level(level, slide: Slide, detector, cell_px=None, region=None) -> float:
    """Turn the ``level`` option into a detection downsample factor."""
    return resolve_level(level, slide, detector, cell_px, region)[0]


def resolve_level(level, slide: Slide, detector, cell_px=None, region=None) -> tuple[float, dict]:
    """The detection downsample for the ``level`` option and how it was chosen."""
    if level in (None, "auto"):
        return detection_scale(detector, slide, cell_px, region)
    d = _explicit_level(level, slide)
    return d, {"source": "level", "downsample": d}


def _explicit_level(level, slide: Slide) -> float:
    if isinstance(level, str) and level.lower().endswith("x"):
        return float(level[:-1])
    if isinstance(level, int) or (isinstance(level, str) and level.isdigit()):
        i = int(level)
        if not 0 <= i < len(slide.levels):
            raise InputError(f"{slide.name}: has {len(slide.levels)} pyramid level(s); "
                             f"--level {i} does not exist (use 0..{len(slide.levels) - 1}, "
                             "a downsample such as 2x, or auto)")
        return float(slide.downsamples[i])
    try:
        return float(level)
    except (TypeError, ValueError):
        raise InputError(f"--level {level!r}: use auto, a pyramid level (0, 1, ...) or a "
                         "downsample such as 2x") from None


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


def _blocks(dets: Detections, shape, block: int):
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


#: cells in the first classifier batch: the model starts after a few crops, not a full batch
FIRST_BATCH = 4


def _ahead(gen, depth: int = 2):
    """Iterate ``gen`` in a background thread, up to ``depth`` items ahead.

    Closing this generator (a cancelled run) stops the thread after the item it is on;
    an exception in ``gen`` is raised here.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def run():
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((end, None))
        except BaseException as exc:  # noqa: BLE001 -- handed to the consumer
            q.put((end, exc))

    th = threading.Thread(target=run, name="bm-cells-crops", daemon=True)
    th.start()
    try:
        while True:
            item, exc = q.get()
            if item is end:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while th.is_alive():  # unblock a put() and let the thread finish its item
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(0.05)


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
    block by block through a :class:`TileCache`. With ``labels`` (see :func:`new_labels`)
    each cell's mask is painted there too, a block at a time, and its outline goes into
    ``outlines`` (cell id -> (N, 2) level-0 x, y). Cell ``i`` of ``dets`` is cell
    ``offset + i`` of the run (id ``offset + i + 1``). Other arguments as :func:`cell_crops`.
    """
    tiles = tiles or TileCache.of(slide)
    for group in _blocks(dets, slide.shape, block):
        img, origin = read_cells_window(slide, dets, group, side, tiles)
        block_labels = np.zeros(img.shape[:2], np.uint32) if labels is not None else None
        for i in group:
            crop, centre, mask = crop_cell(img, origin, dets.boxes[i], side, out_size, fov_px,
                                           slide.shape[:2])
            if block_labels is not None:
                cid = offset + int(i) + 1
                painted = _paint_mask(block_labels, origin, cid, mask, dets.boxes[i], side)
                if outlines is not None and painted is not None:
                    outlines[cid] = mask_outline(*_clip_to(painted, slide.shape))
            yield _Cell(offset + i, crop, centre)
        if block_labels is not None:
            _write_labels(labels, block_labels, *origin, levels=levels)


def _clip_to(painted, shape):
    """A painted mask and its level-0 corner, cut to the slide (windows are padded)."""
    m, y0, x0 = painted
    ty, tx = max(0, -y0), max(0, -x0)
    m = m[ty:max(ty, shape[0] - y0), tx:max(tx, shape[1] - x0)]
    return m, y0 + ty, x0 + tx


def mask_outline(mask: np.ndarray, y0: float, x0: float) -> np.ndarray | None:
    """The outline of the largest blob of a boolean mask whose top-left pixel is level-0
    (``y0``, ``x0``), as an (N, 2) array of level-0 x, y (pixel edges, simplified to
    within half a pixel); None for an empty mask."""
    from skimage.measure import approximate_polygon, find_contours

    if not mask.any():
        return None
    rings = find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    ring = max(rings, key=len)
    ring = approximate_polygon(ring, tolerance=0.5)
    return np.column_stack([ring[:, 1] - 0.5 + x0, ring[:, 0] - 0.5 + y0])


def read_cell_crops(slide: Slide, dets: Detections, idx, side: float, out_size: int, fov_px: float):
    """Read the window around cells ``idx`` and cut their crops as :func:`iter_analysis` does
    (returns what :func:`cell_crops` returns)."""
    idx = np.atleast_1d(np.asarray(idx))
    img, origin = read_cells_window(slide, dets, idx, side)
    return cell_crops(img, origin, dets, idx, side, out_size, fov_px, slide.shape[:2])


def resize_nearest(mask: np.ndarray, n: int) -> np.ndarray:
    """A square mask resized to ``n`` × ``n`` by nearest pixel centre: scikit-image's
    ``resize(..., order=0)`` pixel for pixel, without its float copy and SciPy call
    (3x faster; OpenCV's nearest modes round differently)."""
    src = np.minimum(((np.arange(n) + 0.5) * (mask.shape[0] / n)).astype(int), mask.shape[0] - 1)
    return mask[np.ix_(src, src)]


def _paint_mask(labels_block: np.ndarray, block_origin, cell_id: int, mask_info, box, side):
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


def iter_analysis(source, detector=None, classifier=None, options: AnalysisOptions | None = None,
                  device: str = "auto", should_stop: Callable[[], bool] | None = None
                  ) -> Iterator[Progress]:
    """Analyse one slide, yielding progress; the last event (stage ``"done"``) carries the
    :class:`AnalysisResult`.

    Parameters
    ----------
    source : path, array or Slide
    detector : detector, path or "contour", optional
        A loaded detector (reused across slides) or what :func:`load_detector` takes.
    classifier : Classifier or path, optional
    options : AnalysisOptions
    should_stop : callable, optional
        Polled between batches; when it returns True, :class:`Cancelled` is raised.

    Yields
    ------
    Progress
        ``detect`` (tiles done), ``classify`` (cells done; ``payload`` is the new rows
        as a DataFrame so a viewer can show cells as they come), then ``done``.
    """
    opts = (options or AnalysisOptions()).check()
    t_start = time.perf_counter()
    timings = {}
    slide = source if isinstance(source, Slide) else open_slide(source)
    t = time.perf_counter()
    det, cls = runtime.models(detector, classifier, device)
    timings["load_models_s"] = time.perf_counter() - t
    min_conf = opts.min_confidence if opts.min_confidence is not None else cls.meta.min_confidence
    exclude = tuple(sorted(set(opts.exclude) | {UNCLASSIFIED}))  # UNK cells wait for review

    def check():
        if should_stop is not None and should_stop():
            raise Cancelled("analysis cancelled")

    # 1. scale and counting-area map: one region per detection tile
    t = time.perf_counter()
    down, scale_info = resolve_level(opts.level, slide, det, opts.cell_px, opts.region)
    timings["scale_s"] = time.perf_counter() - t
    t = time.perf_counter()
    cell0 = opts.cell_px or scale_info.get("probe_cell_px") or down * float(getattr(det, "input_cell_px", 100.0))
    stride = (opts.tile_size - opts.overlap) * down
    areas = score_areas(slide, opts.region, region_px=stride, cell_px=cell0)
    timings["areas_s"] = time.perf_counter() - t
    selective = bool(opts.target) or opts.min_area_score > 0
    visit = areas.ranked(opts.min_area_score) if selective else None

    # 2. detection and classification, one pass over the whole region, or region by
    # region best-first (each region detected in its tile with the overlap around it,
    # keeping the cells centred in the region)
    side = None
    colour = SlideColour(opts.colour, cls.meta, slide, opts.region)
    labels = new_labels(slide.shape) if opts.masks else None
    levels = new_label_levels(slide.shape) if opts.masks else []
    outlines: dict = {} if opts.masks else None
    tiles = TileCache.of(slide)
    all_boxes, all_scores, all_probs, all_centres = [], [], [], []
    n_dup, n_done, counted, visited = 0, 0, 0, []
    timings["detect_s"] = timings["classify_s"] = 0.0
    def detections():
        """Detections to classify, and detection events: the whole region in one pass,
        or region by region best first, released in chunks of at least a batch (or of
        the cells still missing to the target) so classifier batches stay full."""
        nonlocal n_dup
        t = time.perf_counter()
        if visit is None:
            dets = yield from iter_detect(slide, det, tile=opts.tile_size, overlap=opts.overlap,
                                          downsample=down, region=opts.region, batch=opts.det_batch)
            n_dup = dets.duplicates_removed
            timings["detect_s"] += time.perf_counter() - t
            yield dets
            return
        pending, cell_px = [], None
        regions = [areas.region(*ij) for ij in visit]
        for k, d in iter_detect_regions(slide, det, regions, opts.tile_size, down, opts.det_batch):
            cell_px = cell_px or d.cell_px
            visited.append(visit[k])
            pending.append(d)
            yield Progress(Stage.DETECT, k + 1, len(visit))
            need = min(opts.batch_size, opts.target - counted) if opts.target else opts.batch_size
            if sum(len(x) for x in pending) >= need or k + 1 == len(visit):
                timings["detect_s"] += time.perf_counter() - t
                yield Detections(np.concatenate([x.boxes for x in pending]).reshape(-1, 4),
                                 np.concatenate([x.scores for x in pending]), cell_px)
                pending = []
                t = time.perf_counter()

    for dets in detections():
        if isinstance(dets, Progress):
            yield dets
            check()
            continue
        t = time.perf_counter()
        if side is None and len(dets):
            side, scale_by = crop_scale(cls.meta, slide, dets, opts)
        n = len(dets)
        probs = np.zeros((n, len(cls.classes)), np.float32)
        centres = np.zeros((n, 2), np.float64)
        if visit is None:
            yield Progress(Stage.CLASSIFY, 0, n)
        in_pass = 0
        for batch, x in (_ahead(_batches(slide, dets, side, cls, opts, colour, labels, n_done, outlines, tiles, levels),
                                depth=2) if n else ()):
            idx = np.array([c.index for c in batch]) - n_done
            probs[idx] = cls.forward(x)
            centres[idx] = [c.centre for c in batch]
            rows = _rows(dets, idx, centres, probs, cls.classes, min_conf, n_done)
            counted += int((~rows["label"].isin(exclude)).sum())
            in_pass += len(idx)
            yield Progress(Stage.CLASSIFY, in_pass if visit is None else counted,
                           n if visit is None else (opts.target or counted), payload=rows)
            check()
        timings["classify_s"] += time.perf_counter() - t
        all_boxes.append(dets.boxes)
        all_scores.append(dets.scores)
        all_probs.append(probs)
        all_centres.append(centres)
        n_done += n
        if opts.target and counted >= opts.target:
            break

    if side is None:
        side, scale_by = crop_scale(cls.meta, slide, Detections.empty(), opts)
    nc = len(cls.classes)
    dets = Detections(np.concatenate([np.zeros((0, 4))] + all_boxes).astype(np.float32),
                      np.concatenate([np.zeros(0)] + all_scores).astype(np.float32))
    probs = np.concatenate([np.zeros((0, nc), np.float32)] + all_probs)
    centres = np.concatenate([np.zeros((0, 2))] + all_centres)
    cells = _rows(dets, np.arange(len(dets)), centres, probs, cls.classes, min_conf)
    cells.insert(cells.columns.get_loc("p_atypical") + 1, "area_score",
                 areas.score_at(cells["x"].to_numpy(), cells["y"].to_numpy()).astype(np.float32))
    # with a review threshold the differential always has an UNK row (0 when none)
    summary = differential(cells["label"], list(cls.classes) + ([UNCLASSIFIED] if min_conf else []), exclude=exclude,
                           p_blast=cells["p_blast"].to_numpy(), p_atypical=cells["p_atypical"].to_numpy())
    timings["total_s"] = time.perf_counter() - t_start
    analysed = areas.area_fraction(visited) if visit is not None else 1.0
    summary.update({
        "input": str(slide.path) if slide.path else slide.name,
        "analysed_at": _now(),
        "image_shape": list(slide.shape),
        "mpp": slide.mpp,
        "region": list(opts.region) if opts.region else None,
        "min_confidence": min_conf,
        "n_unclassified": int((cells["label"] == UNCLASSIFIED).sum()),
        "target": None if not opts.target else {
            "n": opts.target, "met": summary["n_counted"] >= opts.target, "counted": summary["n_counted"],
            "fraction_analysed": round(analysed, 4), "regions_visited": len(visited),
            "regions_eligible": len(visit)},
        "areas": {**areas.summary(), "min_score": opts.min_area_score,
                  "fraction_analysed": round(analysed, 4),
                  "regions_visited": len(visited) if visit is not None else int(areas.scores.size)},
        "detector": {"name": det.name, "weights": str(det.weights) if det.weights else None,
                     "sha256": _sha(det.weights), "downsample": down, "scale": scale_info,
                     "tile_size": opts.tile_size, "overlap": opts.overlap,
                     "border_duplicates_removed": n_dup},
        "classifier": {"arch": cls.meta.arch, "weights": str(cls.path), "sha256": cls.sha,
                       "classes": cls.classes, "crop_px_level0": side, "crop_scale": scale_by,
                       "input_size": cls.input_size, "device": cls.device,
                       "colour": colour.info()},
        "options": options_dict(opts),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    })
    yield Progress(Stage.DONE, len(dets), len(dets),
                   AnalysisResult(cells, summary, labels, slide, timings, areas, outlines or {}, levels))


def _batches(slide, dets, side, cls, opts, colour, labels, offset, outlines, tiles, levels=()):
    """Classifier input batches of a set of detections: full batches across blocks (one
    input shape, so the model's kernels stay warm), the first small so it starts early.
    The run's first :data:`~napari_bm_cells.colour.FIT_CELLS` crops fit the slide's
    colour adaptation (``colour``) before any is classified."""
    it = cut_cells(slide, dets, side, cls.input_size, cls.meta.crop_size_px, opts.block, labels,
                   offset, outlines, tiles, levels)
    if colour.needs_fit:
        first = list(itertools.islice(it, FIT_CELLS))
        if first:
            colour.fit(np.stack([c.crop for c in first]))
        it = itertools.chain(first, it)
    size = min(FIRST_BATCH, opts.batch_size)
    while batch := list(itertools.islice(it, size)):
        yield batch, cls.prepare(colour(np.stack([c.crop for c in batch])))
        size = opts.batch_size


def options_dict(opts: AnalysisOptions) -> dict:
    """The options of a run as summary.json records them."""
    from dataclasses import asdict

    d = asdict(opts)
    d["exclude"] = list(opts.exclude)
    d["region"] = list(opts.region) if opts.region else None
    return d


def _now() -> str:
    from datetime import datetime, timezone
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _sha(path):
    from .checkpoint import file_sha256
    return file_sha256(path) if path else None


def _write_labels(labels, block: np.ndarray, y0: int, x0: int, levels=()):
    """Merge a block of painted masks into the label array (existing cells win), one
    storage chunk at a time and only chunks with cells: re-encoding a whole block of
    mostly empty chunks cost more than cutting its crops. ``levels`` (see
    :func:`new_label_levels`) get every ``factor``-th pixel of it."""
    for f, arr in levels:
        H0, W0 = labels.shape
        i0, j0 = -(-max(y0, 0) // f), -(-max(x0, 0) // f)
        i1, j1 = -(-min(y0 + block.shape[0], H0) // f), -(-min(x0 + block.shape[1], W0) // f)
        if i1 > i0 and j1 > j0:
            _write_labels(arr, block[i0 * f - y0:(i1 - 1) * f - y0 + 1:f, j0 * f - x0:(j1 - 1) * f - x0 + 1:f], i0, j0)
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


def _rows(dets: Detections, idx, centres, probs, classes, min_confidence: float | None = None,
          offset: int = 0) -> pd.DataFrame:
    """Cell-table rows of detections ``idx`` (cell ids ``offset + idx + 1``): the top class
    is ``model_label``; ``label`` is it too, or ``UNK`` below ``min_confidence``."""
    idx = np.asarray(idx, int)
    p = probs[idx]
    pb, pa = blast_atypical_scores(p, classes)
    b = dets.boxes[idx]
    model = np.asarray(classes, object)[p.argmax(1)] if len(p) else np.array([], object)
    conf = p.max(1) if len(p) else np.array([], np.float32)
    label = np.where(conf < min_confidence, UNCLASSIFIED, model).astype(object) if min_confidence else model
    return pd.DataFrame({  # one dict: inserting the class columns one by one is 3x slower
        "cell_id": offset + idx + 1,
        "x": centres[idx, 1], "y": centres[idx, 0],
        "bbox_x0": b[:, 0], "bbox_y0": b[:, 1], "bbox_x1": b[:, 2], "bbox_y1": b[:, 3],
        "det_score": dets.scores[idx],
        "label": label, "model_label": model, "confidence": conf,
        "p_blast": pb, "p_atypical": pa,
        **{prob_column(c): p[:, k] for k, c in enumerate(classes)},
    })


def analyze(source, detector=None, classifier=None, options: AnalysisOptions | None = None,
            device: str = "auto", progress: bool | Callable[[Progress], None] = False,
            **kwargs) -> AnalysisResult:
    """Analyse one image or slide headless.

    Parameters
    ----------
    source : path, array or Slide
    detector : path, "contour" or a loaded detector, optional (default: shipped YOLO)
    classifier : path or Classifier, optional (default: shipped checkpoint)
    options : AnalysisOptions, optional
        Or pass its fields as keyword arguments (``tile_size=512``, ...).
    progress : bool or callable
        True shows a progress bar on stderr; a callable receives each event.

    Returns
    -------
    AnalysisResult
        ``.cells`` (pandas DataFrame, one row per cell) and ``.summary`` (dict).
    """
    if options is None:
        options = AnalysisOptions(**kwargs)
    elif kwargs:
        raise TypeError("pass either options or keyword options, not both")
    bar = None
    result = None
    try:
        for ev in iter_analysis(source, detector, classifier, options, device=device):
            if ev.stage == Stage.DONE:
                result = ev.payload
            elif progress is True:
                from tqdm import tqdm
                if bar is None or bar.desc != ev.stage.value:
                    if bar is not None:
                        bar.close()
                    bar = tqdm(total=ev.total, desc=ev.stage.value, unit="tile" if ev.stage == Stage.DETECT else "cell",
                               leave=False)
                bar.n = ev.done
                bar.refresh()
            elif callable(progress):
                progress(ev)
    finally:
        if bar is not None:
            bar.close()
    return result
