"""One benchmark measurement per fresh process: ``python _tasks.py NAME JSON``.

Prints one JSON line (the last line of stdout). Peak memory is measured for this
process alone: psutil RSS sampled in a thread and the kernel's ``ru_maxrss``.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch  # noqa: F401 -- before ultralytics, which sets OMP_NUM_THREADS=1 when unset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RssSampler, mb  # noqa: E402

warnings.filterwarnings("ignore")

#: where the models run: ``run.py --device`` passes it to every measurement process
DEVICE = os.environ.get("BM_CELLS_BENCH_DEVICE", "cpu")


def analyse(path, level=1, detector=None, classifier=None, batch_size=None):
    """Whole-slide analysis (detection + classification) of a zarr mosaic, with the
    pipeline's default batch sizes unless ``batch_size`` (classifier) is given."""
    from napari_bm_cells.classify import Classifier
    from napari_bm_cells.detect import load_detector
    from napari_bm_cells.pipeline import AnalysisOptions, iter_analysis

    rss0 = RssSampler.rss()
    cls = Classifier(classifier, device=DEVICE)
    det = load_detector(detector, device=DEVICE)
    rss_models = RssSampler.rss()
    t = time.perf_counter()
    stages = {}  # peak RSS seen per stage, and RSS at the stage's last event
    with RssSampler() as s:
        opts = AnalysisOptions(level=level, **({"batch_size": batch_size} if batch_size else {}))
        for ev in iter_analysis(path, det, cls, opts):
            st = stages.setdefault(ev.stage.value, {"events": 0})
            st["events"] += 1
            st["peak_rss_so_far_mb"] = mb(s.peak)
            st["rss_last_mb"] = mb(RssSampler.rss())
            if ev.stage == "done":
                res = ev.payload
    return {"shape": res.summary["image_shape"], "n_cells": len(res.cells), "stages": stages,
            "wall_s": round(time.perf_counter() - t, 2), "timings": res.summary["timings"],
            "rss_after_imports_mb": mb(rss0), "rss_models_loaded_mb": mb(rss_models),
            "peak_rss_mb": mb(s.peak), "ru_maxrss_mb": mb(RssSampler.maxrss()),
            "torch_threads": torch.get_num_threads()}


def detect_ours(npy=None, detector=None, zarr=None, tile=640, overlap=160, batch=None, precision="auto"):
    """Our tiled detection (tile/overlap, merge by core ownership + border NMS) on the
    in-memory image (``npy``) or lazily from an OME-Zarr's level 1 (``zarr``); ``batch``
    tiles per call (default: the pipeline's, 1 on CPU)."""
    import numpy as np

    from napari_bm_cells.detect import default_det_batch, iter_detect, load_detector, run_to_end, tile_grid
    from napari_bm_cells.io import open_slide

    det = load_detector(detector, device=DEVICE, precision=precision)
    batch = batch or default_det_batch(det)
    if zarr:
        slide, d = open_slide(zarr), 2.0
    else:
        slide, d = open_slide(np.load(npy)), 1.0
    det([slide.read_region(0, 0, 640 * d, 640 * d, downsample=d)])  # warm-up
    rss0 = RssSampler.rss()
    t = time.perf_counter()
    with RssSampler() as s:
        gen = iter_detect(slide, det, tile=tile, overlap=overlap, downsample=d, batch=batch)
        n_tiles = next(gen).total
        dets = run_to_end(gen)
    wall = time.perf_counter() - t
    boxes = dets.boxes / d  # in the pixels of the level-1 image, as SAHI sees it
    # the tile owning each box (its centre lies in the tile's core)
    h, w = (int(math.ceil(n / d)) for n in slide.shape)
    cores = np.array([t.core for t in tile_grid(h, w, tile, overlap)])
    cy, cx = (boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2
    inside = ((cy[:, None] >= cores[None, :, 0]) & (cy[:, None] < cores[None, :, 2])
              & (cx[:, None] >= cores[None, :, 1]) & (cx[:, None] < cores[None, :, 3]))
    return {"wall_s": round(wall, 2), "n_tiles": n_tiles, "boxes": boxes.tolist(),
            "tiles": inside.argmax(1).tolist(), "det_batch": batch,
            "scores": dets.scores.tolist(), "rss_before_mb": mb(rss0), "peak_rss_mb": mb(s.peak),
            "ru_maxrss_mb": mb(RssSampler.maxrss()), "torch_threads": torch.get_num_threads()}


def detect_sahi(npy=None, detector=None, tile=640, overlap=160, postprocess="GREEDYNMM", image=None):
    """SAHI's sliced prediction with the same weights, score threshold, slice size and
    overlap, on the in-memory image (``npy``, loaded before measuring) or on an image file
    (``image``: SAHI reads it whole, as it does for any path)."""
    import numpy as np
    from sahi import AutoDetectionModel
    from sahi.predict import get_sliced_prediction

    from napari_bm_cells.detect import DEFAULT_DETECTOR, read_sidecar, sidecar_conf

    img = np.load(npy) if npy else str(image)
    weights = Path(detector or DEFAULT_DETECTOR)
    meta = read_sidecar(weights)
    conf = sidecar_conf(meta)  # our threshold, without loading the weights twice
    # white cells only, as ours: a SAHI user drops the other classes of a 3-class detector
    others = [n for n in meta.get("classes", ["WBC"]) if n != "WBC"] or None
    model = AutoDetectionModel.from_pretrained(
        model_type="ultralytics", model_path=str(weights),
        confidence_threshold=conf, device=DEVICE, image_size=tile)
    kw = dict(slice_height=tile, slice_width=tile, overlap_height_ratio=overlap / tile,
              overlap_width_ratio=overlap / tile, perform_standard_pred=False,
              postprocess_type=postprocess, exclude_classes_by_name=others, verbose=0)
    get_sliced_prediction(np.full((tile, tile, 3), 200, np.uint8), model, **kw)  # warm-up
    rss0 = RssSampler.rss()
    t = time.perf_counter()
    with RssSampler() as s:
        res = get_sliced_prediction(img, model, **kw)
    wall = time.perf_counter() - t
    preds = res.object_prediction_list
    return {"wall_s": round(wall, 2), "boxes": [p.bbox.to_xyxy() for p in preds],
            "scores": [float(p.score.value) for p in preds], "rss_before_mb": mb(rss0),
            "peak_rss_mb": mb(s.peak), "ru_maxrss_mb": mb(RssSampler.maxrss()),
            "torch_threads": torch.get_num_threads()}


TASKS = {"analyse": analyse, "detect_ours": detect_ours, "detect_sahi": detect_sahi}

if __name__ == "__main__":
    out = TASKS[sys.argv[1]](**json.loads(sys.argv[2]))
    print(json.dumps(out))
