"""The one analysis pipeline: slide -> detections -> centre-contour crops -> classes -> counts.

:func:`iter_analysis` is a generator of :class:`~napari_bm_cells.detect.Progress` events;
napari's ``thread_worker`` drives it in the GUI (closing the generator cancels the run)
and :func:`analyze` loops over it headless. Memory stays bounded: detection reads tiles
lazily, crops are cut block by block from the level-0 image, and only the cell table
(and, optionally, the mask labels as a sparse chunked array) grows with the slide.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from .areas import AreaMap, score_areas
from . import runtime
from .cells_table import prob_column
from .colour import FIT_CELLS, SlideColour, detector_colour
from .count import blast_atypical_scores, differential
from .cut_cells import crop_scale, cut_cells
from .detect import Detections, Progress, Stage, iter_detect, iter_detect_regions
from .scale import detection_scale
from .errors import InputError
from .io import Slide, open_slide
from .taxonomy import UNCLASSIFIED
from .options import AnalysisOptions  # noqa: F401 -- part of the pipeline's API
from .masks import new_label_levels, new_labels
from .prior import adapt_to_slide
from .tile_cache import TileCache



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


def iter_analysis(source, detector=None, classifier=None, options: AnalysisOptions | None = None,
                  device: str = "auto") -> Iterator[Progress]:
    """Analyse one slide, yielding progress; the last event (stage ``"done"``) carries the
    :class:`AnalysisResult`.

    Parameters
    ----------
    source : path, array or Slide
    detector : detector, path or "contour", optional
        A loaded detector (reused across slides) or what :func:`load_detector` takes.
    classifier : Classifier or path, optional
    options : AnalysisOptions

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

    # 1. scale and counting-area map: one region per detection tile
    t = time.perf_counter()
    det, det_colour = detector_colour(det, slide, opts.colour, opts.region)
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
    prior_info = {"adapted": False}
    if opts.class_prior == "slide":
        probs, prior_info = adapt_to_slide(probs, cls.classes)
    centres = np.concatenate([np.zeros((0, 2))] + all_centres)
    cells = _rows(dets, np.arange(len(dets)), centres, probs, cls.classes, min_conf)
    # the region a cell was counted from holds its box centre (as iter_detect_regions
    # assigns it), which its contour's centre (x, y) may lie just outside of
    cells.insert(cells.columns.get_loc("p_atypical") + 1, "area_score", areas.score_at(
        (cells["bbox_x0"] + cells["bbox_x1"]).to_numpy() / 2,
        (cells["bbox_y0"] + cells["bbox_y1"]).to_numpy() / 2).astype(np.float32))
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
                     "border_duplicates_removed": n_dup, "colour": det_colour},
        "classifier": {"arch": cls.meta.arch, "weights": str(cls.path), "sha256": cls.sha,
                       **({"members": [m["arch"] for m in cls.meta.members]} if cls.meta.members else {}),
                       "classes": cls.classes, "crop_px_level0": side, "crop_scale": scale_by,
                       "input_size": cls.input_size, "device": cls.device,
                       "colour": colour.info(), "class_prior": {"mode": opts.class_prior, **prior_info}},
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
