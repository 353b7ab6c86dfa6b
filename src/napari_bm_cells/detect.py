"""White-cell detection: YOLO (ultralytics) or a weight-free contour detector, run tile by
tile over a lazily read slide, with detections merged across tile overlaps.

Merging: a tile *owns* the detections whose centre lies in its core (the tile minus
half the overlap on each inner side), so with an overlap wider than a cell, each cell is
taken from the one tile that holds it whole; a final non-maximum suppression removes the
few pairs that still meet at a core border.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Generator

import numpy as np

from .errors import InputError, first_line

DEFAULT_DETECTOR = Path(__file__).parent / "models" / "cells_yolov8n.pt"
#: white-cell diameter (px) assumed at level 0 when nothing else is known: a 100x oil
#: field as in BCCD / TXL-PBC (median WBC box 141-271 px, 219 px in 640x480 BCCD fields)
DEFAULT_CELL_PX = 200.0
#: NMS IoU of the YOLO detector
DEFAULT_IOU = 0.5


def read_sidecar(weights) -> dict:
    """The JSON sidecar of YOLO weights (``<weights>.json``: classes, input size, cell
    size, operating threshold), or ``{}`` when there is none."""
    f = Path(weights).with_suffix(".json")
    return json.loads(f.read_text()) if f.is_file() else {}


def sidecar_conf(meta: dict) -> float:
    """Operating score threshold of YOLO weights: the one their sidecar JSON records
    (chosen on the validation split at training), else ultralytics' usual 0.25."""
    return float(meta.get("conf", 0.25))


@dataclass
class Detections:
    """Boxes in level-0 pixels: (N, 4) x0, y0, x1, y1 and (N,) scores; ``cell_px`` is
    the median centre-contour diameter of a sample of the cells (level-0 px) when the
    detection stage measured it."""

    boxes: np.ndarray
    scores: np.ndarray
    cell_px: float | None = None
    #: boxes dropped as duplicates of a cell seen in two overlapping tiles
    duplicates_removed: int = 0

    def __len__(self):
        return len(self.scores)

    @classmethod
    def from_table(cls, cells) -> "Detections":
        """The boxes and detection scores of a cell table (``cells.csv``; scores 1 when
        the table has none)."""
        boxes = cells[["bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]].to_numpy(np.float32)
        scores = cells["det_score"].to_numpy(np.float32) if "det_score" in cells else np.ones(len(cells), np.float32)
        return cls(boxes, scores)

    @classmethod
    def empty(cls):
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))


class YoloDetector:
    """Ultralytics YOLO weights loaded from a local file (never from a hub).

    Parameters
    ----------
    weights : path
        ``.pt`` (or exported) weights; ``<weights>.json`` beside it holds the class list,
        training input size and the cell size the network saw (``input_cell_px``).
    """

    name = "yolo"
    #: applied to every tile before detection (see :meth:`with_tile_map`)
    tile_map = None

    def __init__(self, weights: str | Path = DEFAULT_DETECTOR, device: str = "cpu",
                 conf: float | None = None, iou: float = DEFAULT_IOU, classes: tuple[str, ...] = ("WBC",),
                 precision: str = "auto"):
        weights = Path(weights)
        if not weights.is_file():
            raise InputError(f"{weights}: detector weights not found; pass --detector with a "
                             "YOLO .pt file or --detector contour")
        self.meta = read_sidecar(weights)
        from ultralytics import YOLO
        try:
            self.model = YOLO(str(weights), task="detect")
            names = self.model.names
        except Exception as exc:
            raise InputError(f"{weights}: not loadable YOLO weights ({type(exc).__name__}: "
                             f"{first_line(exc)[:200]}); train one with "
                             "'bm-cells train-detector' or pass --detector contour") from None
        from .runtime import autocast_dtype

        self.weights = weights
        self.device = device
        self.autocast = autocast_dtype(device, precision)  # bf16 on CPUs that have it
        # the operating threshold chosen on the validation split when the model was trained
        self.conf = float(conf) if conf is not None else sidecar_conf(self.meta)
        self.operating_conf = self.conf
        self.iou = iou
        wanted = [i for i, n in names.items() if n in classes or n.lower() in ("wbc", "white", "leukocyte")]
        self.class_ids = wanted or None
        self.input_cell_px = float(self.meta.get("input_cell_px", 120.0))
        self.imgsz = int(self.meta.get("imgsz", 320))
        self._rbc_ids = [i for i, n in names.items() if n.lower() in ("rbc", "red", "erythrocyte")]

    def red_cells(self) -> "YoloDetector | None":
        """The same network finding red cells instead of white ones (same interface;
        ``input_cell_px`` is then the red-cell size it was trained on), or None when the
        weights have no red-cell class or their sidecar lacks ``input_rbc_px``."""
        if not self._rbc_ids or not self.meta.get("input_rbc_px"):
            return None
        import copy

        view = copy.copy(self)
        view.class_ids = self._rbc_ids
        view.input_cell_px = float(self.meta["input_rbc_px"])
        return view

    def with_tile_map(self, fn) -> "YoloDetector":
        """The same network seeing every tile through ``fn`` (uint8 RGB stack (N, H, W, 3)
        to the same), e.g. a slide's colour standardisation
        (:func:`~napari_bm_cells.colour.detector_colour`); its :meth:`red_cells` too."""
        import copy

        view = copy.copy(self)
        view.tile_map = fn
        return view

    def __call__(self, tiles: list[np.ndarray]) -> list[Detections]:
        """Detect in RGB uint8 tiles; boxes in tile pixels."""
        if not tiles:
            return []
        if self.tile_map is not None:
            tiles = [self.tile_map(t[None])[0] for t in tiles]
        imgsz = int(math.ceil(max(max(t.shape[:2]) for t in tiles) / 32) * 32)
        from .runtime import autocast

        with autocast(self.device, self.autocast):
            res = self.model.predict([to_bgr(t) for t in tiles], imgsz=imgsz,
                                     conf=self.conf, iou=self.iou, classes=self.class_ids,
                                     device=self.device, verbose=False)
        out = []
        for r in res:
            d = Detections(r.boxes.xyxy.cpu().numpy().astype(np.float32),
                           r.boxes.conf.cpu().numpy().astype(np.float32))
            # YOLO's NMS compares IoU only: a box nested in a better one (a cell and a part
            # of it) survives it. Drop those among the boxes at the operating threshold;
            # lower-scored ones (kept only when evaluating a PR curve) are left as YOLO gave them.
            hi = np.flatnonzero(d.scores >= self.operating_conf)
            if len(hi) > 1:
                keep = np.ones(len(d), bool)
                keep[hi[~_suppress(d.boxes[hi], d.scores[hi], self.iou)]] = False
                d = Detections(d.boxes[keep], d.scores[keep])
            out.append(d)
        return out


def to_bgr(rgb: np.ndarray) -> np.ndarray:
    """Contiguous BGR copy of an RGB tile (ultralytics reads numpy arrays as OpenCV BGR).

    Tiles of a ``c, y, x`` array are channel-planar views (planes merged); interleaved
    tiles take cvtColor.
    """
    from ._opencv import cv2

    from .io import merge_planes

    if rgb.flags.c_contiguous:
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    return merge_planes([rgb[..., k] for k in (2, 1, 0)])


class ContourDetector:
    """Weight-free fallback: stained blobs of white-cell size.

    The stain mask of :func:`~napari_bm_cells.crop.stain_mask` (Otsu, or higher so red
    cells stay out; opened, closed, holes filled); blobs whose equivalent diameter is
    within ``[0.25, 2.0] × input_cell_px`` are cells, scored by their solidity.
    """

    name = "contour"

    def __init__(self, input_cell_px: float = 100.0, imgsz: int = 400):
        self.input_cell_px = input_cell_px
        self.imgsz = imgsz
        self.weights = None

    def __call__(self, tiles: list[np.ndarray]) -> list[Detections]:
        from skimage import measure

        from .crop import stain_channel, stain_mask

        out = []
        for t in tiles:
            chan = stain_channel(t)
            if float(chan.max() - chan.min()) < 0.1:
                out.append(Detections.empty())
                continue
            # nuclei are the most stained structures; a high threshold keeps red cells out
            mask = stain_mask(chan, 2, max(2, int(self.input_cell_px * 0.08)),
                              min_level=float(np.percentile(chan, 50)) + 0.15)
            boxes, scores = [], []
            lo, hi = 0.25 * self.input_cell_px, 2.0 * self.input_cell_px
            for r in measure.regionprops(measure.label(mask)):
                d = r.equivalent_diameter_area
                if lo <= d <= hi:
                    y0, x0, y1, x1 = r.bbox
                    boxes.append((x0, y0, x1, y1))
                    scores.append(min(1.0, r.solidity))
            out.append(Detections(np.array(boxes, np.float32).reshape(-1, 4),
                                  np.array(scores, np.float32)))
        return out


def load_detector(spec: str | Path | None = None, device: str = "cpu", precision: str = "auto"):
    """``None`` -> the shipped YOLO detector; ``"contour"`` -> ContourDetector; a path -> YOLO.

    ``precision`` as for :class:`YoloDetector` (``auto``: bf16 autocast on CPUs with
    native bf16, fp16 on GPU)."""
    if spec is not None and str(spec).lower() == "contour":
        return ContourDetector()
    return YoloDetector(spec or DEFAULT_DETECTOR, device=device, precision=precision)


def _axis_starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    return sorted(set(list(range(0, n - tile, tile - overlap)) + [n - tile]))


def _axis_cores(starts: list[int], tile: int, n: int) -> list[tuple[float, float]]:
    """Owned interval of each tile along one axis: cut at the middle of each overlap."""
    cuts = [(s_next + min(s + tile, n)) / 2 for s, s_next in zip(starts, starts[1:])]
    bounds = [0.0] + cuts + [float(n)]
    return list(zip(bounds[:-1], bounds[1:]))


@dataclass(frozen=True)
class Tile:
    """A tile in detection-level pixels and the part of it that it owns."""

    y0: int
    x0: int
    y1: int
    x1: int
    core: tuple[float, float, float, float]  # cy0, cx0, cy1, cx1


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles covering an image with the given overlap, each with its owned core.

    The last row/column is shifted back to end at the border, so tiles stay full size
    whenever the image is larger than a tile; the cores partition the image.
    """
    if overlap >= tile:
        raise InputError(f"overlap ({overlap}) must be smaller than the tile size ({tile})")
    ys, xs = _axis_starts(height, tile, overlap), _axis_starts(width, tile, overlap)
    ycs, xcs = _axis_cores(ys, tile, height), _axis_cores(xs, tile, width)
    return [Tile(y, x, min(y + tile, height), min(x + tile, width), (yc[0], xc[0], yc[1], xc[1]))
            for y, yc in zip(ys, ycs) for x, xc in zip(xs, xcs)]


#: a tile keeps a box whose centre lies within this share of the box's side outside its
#: core: two tiles place one cell's box a few pixels apart, and a cell whose centre lies
#: on the cut between their cores could otherwise be owned by neither
OWN_SLACK = 0.25


def merge_tiles(per_tile: list[tuple[Tile, Detections]], iou: float = 0.5) -> tuple[Detections, int]:
    """Keep each tile's detections whose centre it owns (its core, widened by
    :data:`OWN_SLACK`), then suppress remaining duplicates (IoU > ``iou``, or one box
    mostly inside another) among boxes near core borders. Boxes are in detection-level
    pixels. Returns the merged boxes and how many duplicates the final suppression removed.
    """
    boxes, scores, near, rank = [], [], [], []
    for t, d in per_tile:
        if not len(d):
            continue
        b = d.boxes + np.array([t.x0, t.y0, t.x0, t.y0], np.float32)
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        cy0, cx0, cy1, cx1 = t.core
        sy, sx = OWN_SLACK * (b[:, 3] - b[:, 1]), OWN_SLACK * (b[:, 2] - b[:, 0])
        own = (cy >= cy0 - sy) & (cy < cy1 + sy) & (cx >= cx0 - sx) & (cx < cx1 + sx)
        # a box reaching across its tile's core border may have a twin in the neighbour
        border = ((b[:, 0] < cx0) & (cx0 > t.x0)) | ((b[:, 2] > cx1) & (cx1 < t.x1)) | \
                 ((b[:, 1] < cy0) & (cy0 > t.y0)) | ((b[:, 3] > cy1) & (cy1 < t.y1))
        # boxes cut by an inner tile edge are partial views: they lose ties to whole boxes
        edge = ((b[:, 0] <= t.x0 + 2) & (cx0 > t.x0)) | ((b[:, 1] <= t.y0 + 2) & (cy0 > t.y0)) | \
               ((b[:, 2] >= t.x1 - 2) & (cx1 < t.x1)) | ((b[:, 3] >= t.y1 - 2) & (cy1 < t.y1))
        boxes.append(b[own])
        scores.append(d.scores[own])
        near.append(border[own])
        rank.append(np.where(edge, 0.5, 1.0)[own] * d.scores[own])
    if not boxes:
        return Detections.empty(), 0
    boxes, scores, near = np.concatenate(boxes), np.concatenate(scores), np.concatenate(near)
    rank = np.concatenate(rank)
    keep = np.ones(len(scores), bool)
    cand = np.flatnonzero(near)
    if len(cand) > 1:
        keep[cand[~_suppress(boxes[cand], rank[cand], iou, contain=0.5)]] = False
    return Detections(boxes[keep], scores[keep]), int((~keep).sum())


def box_overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and intersection over the smaller box between two sets of (x0, y0, x1, y1)
    boxes, both (len(a), len(b)): the one overlap rule of tile merging, evaluation and
    the benchmarks."""
    import torch
    from torchvision.ops import box_area, box_iou

    ta = torch.tensor(np.asarray(a, np.float64).reshape(-1, 4))  # a copy: inputs may be read-only
    tb = torch.tensor(np.asarray(b, np.float64).reshape(-1, 4))
    iou = box_iou(ta, tb)
    aa, ab = box_area(ta)[:, None], box_area(tb)[None, :]
    inter = iou * (aa + ab) / (1 + iou)  # from IoU = I / (A + B - I)
    ios = inter / torch.minimum(aa, ab).clamp(min=1e-9)
    return iou.numpy(), ios.numpy()


def _suppress(boxes: np.ndarray, scores: np.ndarray, iou: float, contain: float = 0.7) -> np.ndarray:
    """Boolean keep-mask: NMS by IoU plus suppression of boxes mostly inside a better one."""
    import torch
    from torchvision.ops import nms

    keep = np.zeros(len(scores), bool)
    keep[nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores).float(), iou).numpy()] = True
    idx = np.flatnonzero(keep)
    if len(idx) > 1:
        frac = box_overlaps(boxes[idx], boxes[idx])[1]
        np.fill_diagonal(frac, 0)
        dropped = np.zeros(len(idx), bool)
        for i in np.argsort(-scores[idx], kind="stable"):
            if not dropped[i]:
                dup = (frac[i] > contain) & ~dropped
                dup[i] = False
                dropped |= dup
        keep[idx[dropped]] = False
    return keep


class Stage(str, Enum):
    """What a :class:`Progress` event counts (compares equal to its string value)."""

    DETECT = "detect"  #: tiles (or counting areas) done
    CLASSIFY = "classify"  #: cells done; ``payload`` holds their new table rows
    DONE = "done"  #: ``payload`` is the :class:`~napari_bm_cells.pipeline.AnalysisResult`
    LOAD = "load"  #: models loading (the napari widget's job)
    ERROR = "error"  #: the widget's job failed (``payload``: the exception)


@dataclass
class Progress:
    """A progress event from the pipeline: ``done`` of ``total`` units of ``stage``."""

    stage: Stage
    done: int
    total: int
    payload: object = None


def run_to_end(gen):
    """Drive a generator of progress events to its end and return its return value
    (headless use of :func:`iter_detect` and the like)."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def iter_detect(slide, detector, tile: int = 640, overlap: int = 160, downsample: float = 2.0,
                region: tuple[int, int, int, int] | None = None, batch: int | None = None,
                iou: float = 0.5, measure: bool = True) -> Generator[Progress, None, Detections]:
    """Tile-by-tile detection over a slide: yields ``Stage.DETECT`` progress events and
    returns the merged :class:`Detections` (level-0 pixels), so a caller writes
    ``dets = yield from iter_detect(...)`` (or :func:`run_to_end` headless).

    Parameters
    ----------
    tile, overlap : int
        Tile side and overlap in detection-level pixels; the overlap should exceed a
        cell's diameter at that level so each cell lies whole in the tile owning it.
    downsample : float
        Detection scale relative to level 0 (read from the best pyramid level).
    region : (y0, x0, y1, x1), optional
        Level-0 region to analyse (default: the whole slide).
    batch : int, optional
        Tiles per detector call; default :func:`default_det_batch`.
    measure : bool
        Measure the cells' diameters on the way (the crops' scale); off for the scale probe.
    """
    H, W = slide.shape
    ry0, rx0, ry1, rx1 = region or (0, 0, H, W)
    ry0, rx0, ry1, rx1 = max(0, int(ry0)), max(0, int(rx0)), min(H, int(ry1)), min(W, int(rx1))
    if ry1 <= ry0 or rx1 <= rx0:
        return Detections.empty()
    d = float(downsample)
    h, w = int(math.ceil((ry1 - ry0) / d)), int(math.ceil((rx1 - rx0) / d))
    tiles = tile_grid(h, w, tile, overlap)
    windows = [(ry0 + t.y0 * d, rx0 + t.x0 * d, ry0 + t.y1 * d, rx0 + t.x1 * d) for t in tiles]
    results, diameters = [], []
    yield Progress(Stage.DETECT, 0, len(tiles))
    for k, dets, diam in _detect_windows(slide, detector, windows, d, batch, measure, spread=True):
        results.append((tiles[k], dets))
        diameters += diam
        if k + 1 == len(tiles) or (k + 1) % (batch or default_det_batch(detector)) == 0:
            yield Progress(Stage.DETECT, k + 1, len(tiles))
    merged, n_dup = merge_tiles(results, iou=iou)
    scale = np.array([d, d, d, d], np.float32)
    offset = np.array([rx0, ry0, rx0, ry0], np.float32)
    boxes = merged.boxes * scale + offset
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, W)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, H)
    cell_px = float(np.median(diameters)) if len(diameters) >= min(8, len(boxes)) and diameters else None
    return Detections(boxes, merged.scores, cell_px, n_dup)


def iter_detect_regions(slide, detector, regions, tile: int = 640, downsample: float = 2.0,
                        batch: int | None = None, measure: bool = True):
    """Detection region by region, in the order given (counting areas best first): each
    level-0 region (y0, x0, y1, x1) is detected in one tile centred on it (the region
    plus what the tile holds around it, so cells at its edge lie whole in the tile), the
    next tiles read while the model runs. Yields, per region, its index and the
    :class:`Detections` (level-0 px) whose centre lies in it; ``cell_px`` of the first
    that has one carries the cells' measured diameter.
    """
    H, W = slide.shape
    d = float(downsample)
    reach = tile * d  # level-0 side of a tile
    windows = []
    for y0, x0, y1, x1 in regions:
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        wy0 = min(max(0.0, cy - reach / 2), max(0.0, H - reach))
        wx0 = min(max(0.0, cx - reach / 2), max(0.0, W - reach))
        windows.append((wy0, wx0, min(H, wy0 + reach), min(W, wx0 + reach)))
    measured = 0
    for k, dets, diam in _detect_windows(slide, detector, windows, d, batch, measure):
        wy0, wx0 = windows[k][:2]
        y0, x0, y1, x1 = regions[k]
        b = dets.boxes * d + np.array([wx0, wy0, wx0, wy0], np.float32)
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, W)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, H)
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        keep = (cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)
        cell_px = float(np.median(diam)) if diam and not measured else None
        measured += len(diam)
        yield k, Detections(b[keep], dets.scores[keep], cell_px)


def _detect_windows(slide, detector, windows, d: float, batch: int | None, measure: bool,
                    spread: bool = False):
    """Run the detector over level-0 ``windows`` read at downsample ``d``, ``batch`` at a
    time, reading the next batch while the model runs. Yields, per window, its index,
    its detections (window pixels at ``d``) and the diameters measured on it, when
    ``measure``: :data:`MEASURE_CELLS` cells spread over the windows (``spread``: at most
    :data:`MEASURE_TILES` of them evenly spaced, so the crops' scale comes from the whole
    slide, not its first tiles), else the first :data:`MEASURE_CELLS` cells (regions
    visited best first, whose first sets the scale before the others are detected)."""
    from concurrent.futures import ThreadPoolExecutor

    def read(ks):
        out = []
        for k in ks:
            y0, x0, y1, x1 = windows[k]
            h, w = int(math.ceil((y1 - y0) / d - 1e-6)), int(math.ceil((x1 - x0) / d - 1e-6))
            out.append(slide.read_region(y0, x0, y1, x1, downsample=d)[:h, :w])
        return out

    if not windows:
        return
    batch = batch or default_det_batch(detector)
    batches = [list(range(i, min(i + batch, len(windows)))) for i in range(0, len(windows), batch)]
    stride = -(-len(windows) // MEASURE_TILES)
    per_window = max(1, round(MEASURE_CELLS / -(-len(windows) // stride)))
    limits = [per_window if k % stride == 0 else 0 for k in range(len(windows))]
    n_measured, prev, meas = 0, None, None
    with ThreadPoolExecutor(1, thread_name_prefix="bm-cells-reader") as pool:
        fut = pool.submit(read, batches[0])
        for bi, ks in enumerate(batches + [None]):
            imgs = fut.result() if ks is not None else None
            if prev is not None:  # the previous batch, with what was measured on it meanwhile
                per = meas.result() if meas is not None else [[] for _ in prev[0]]
                n_measured += sum(len(x) for x in per)
                yield from zip(prev[0], prev[1], per)
            if ks is None:
                return
            dets = detector(imgs)
            # measure cells of these windows in the reader thread while the model runs on
            # the next batch: the crops' scale comes for free (see cut_cells.crop_side)
            left = [limits[k] for k in ks] if spread else [max(0, MEASURE_CELLS - n_measured)] * len(ks)
            meas = pool.submit(_measure_batch, imgs, dets, d, left) if measure and any(left) else None
            if bi + 1 < len(batches):
                fut = pool.submit(read, batches[bi + 1])
            prev = (ks, dets)


def default_det_batch(detector) -> int:
    """Tiles per detector call: 4 on a GPU; 1 on a CPU, where batching gained only ~7%
    while each extra 640 px tile held ~25 MB more activations (benchmark history in
    CHANGELOG.md)."""
    return 1 if str(getattr(detector, "device", "cpu")).startswith("cpu") else 4


#: cells whose diameter the detection stage measures (median -> crop scale), spread over
#: the tiles: this many divided among the tiles, at least one per tile measured
MEASURE_CELLS = 64
#: on a slide of more tiles than this, only evenly spaced tiles are measured
MEASURE_TILES = 256


def _measure_batch(imgs, dets, d: float, limits) -> list[list[float]]:
    """Centre-contour diameters (level-0 px), per tile, of up to ``limits[i]`` cells of
    tile ``i`` lying whole in it, measured as :func:`crop.level0_diameters` measures them but on the
    detection-level tiles already in memory (no extra reads; median ratio to the level-0
    measure 0.999-1.000 over the cells of a BCCD mosaic at downsample 1.6 and 2)."""
    from .crop import box_square, square_crop, square_diameter

    out = []
    for img, det, limit in zip(imgs, dets, limits):
        h, w = img.shape[:2]
        out.append([])
        for box in det.boxes:
            if len(out[-1]) >= limit:
                break
            x0, y0, x1, y1 = box
            if x0 < 1 or y0 < 1 or x1 > w - 1 or y1 > h - 1:  # cut by the tile edge
                continue
            cy, cx, side = box_square(box)
            dia = square_diameter(square_crop(img, (cy, cx), side))
            if dia is not None:
                out[-1].append(dia * d)
    return out
