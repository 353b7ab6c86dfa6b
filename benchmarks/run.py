"""napari-bm-cells benchmarks on real data: ``python benchmarks/run.py [--quick]``.

Sections (``--only`` picks some):

``stages``
    Detection-stage throughput of the pipeline over a real mosaic slide (OME-Zarr) vs the
    raw YOLO throughput on the very same tiles held in memory; classification-stage
    throughput vs the raw classifier forward on the very same crops.
``sahi``
    Our tiled detection vs SAHI's ``get_sliced_prediction`` on the same image, weights,
    slice size and overlap (each in a fresh process): wall time, peak RSS, recall /
    precision and duplicate detections at slice borders against the mosaic's real WBC boxes.
``memory``
    Peak RSS of whole-slide analyses of 5k^2 ... 30k^2 px mosaics of real BCCD fields,
    each in a fresh process (mosaics streamed to OME-Zarr chunk by chunk, cached in
    ``--workdir``).
``target``
    Counting to a target (``--target``) against the whole slide: a mosaic of real BCCD
    fields in four quadrants (in focus, blurred, bare glass, crowded), analysed whole and
    with ``target`` leukocytes from the best counting areas: wall times, their ratio, and
    the share of counted cells that come from the in-focus monolayer.
``colour``
    Detection of a pale, yellowish mosaic of real BCCD fields (crosslab's ``yellow``)
    with the default colour adaptation (the slide mapped into the range of the
    detector's training fields) and without: the detection stage's time on the same
    tiles at the same scale, and white-cell recall of each.
``speedups``
    Classifier on CPU: fp32 (PyTorch) vs bf16 autocast vs ONNX Runtime: throughput and
    macro-F1 on held-back PBC crops.

``--gpu`` runs stages, sahi, memory and target on a GPU (``--device cuda``) in one
command and writes one JSON, for whoever has a GPU for a few minutes.

Everything measured in one run is printed as a table of ratios at the end and written as
JSON (``--json``). The data folder is ``$BM_CELLS_DATA`` or ``../shared/data``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch  # before ultralytics (which sets OMP_NUM_THREADS=1 when it is unset)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

from _common import box_quality, mb, run_napari_task, run_task, write_mosaic_zarr  # noqa: E402

FULL = {"stage_grid": (24, 32), "sahi_grid": (12, 16), "sahi_large_grid": (24, 32),
        "memory_sides": [5000, 10000, 20000, 30000], "speedup_n": 352, "target_fields": 16, "target": 200,
        "colour_grid": (12, 16)}
QUICK = {"stage_grid": (6, 8), "sahi_grid": (6, 8), "sahi_large_grid": (6, 10), "memory_sides": [2500, 5000],
         "speedup_n": 132, "target_fields": 6, "target": 25, "colour_grid": (4, 6)}
#: one GPU: the full stages, SAHI and target sizes, the memory section up to 10k^2 (building
#: the mosaics is CPU work)
GPU = {**FULL, "sahi_large_grid": None, "memory_sides": [5000, 10000]}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def machine() -> dict:
    import psutil

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "os": platform.platform()}


def classifier_path(args, workdir: Path) -> tuple[Path, str]:
    from napari_bm_cells.classify import DEFAULT_CLASSIFIER
    from helpers import data_dir

    if args.classifier:
        return Path(args.classifier), "given"
    if DEFAULT_CLASSIFIER.is_file():
        return DEFAULT_CLASSIFIER, "shipped"
    from napari_bm_cells.training.train_classifier import train_classifier

    out = workdir / "tiny_classifier.safetensors"
    if not out.is_file():
        log("no shipped classifier yet: training a tiny one on real PBC crops (2 steps)")
        train_classifier(data_dir() / "pbc", out, img_size=64, epochs=1, batch_size=16, max_steps=2,
                         max_per_class=10, crop_size_px=250, ref_cell_px=141, progress=lambda s: None)
    return out, "tiny (2 training steps; accuracy meaningless, speed ~ a 64 px model)"


def stage_mosaic(workdir: Path, grid, tag: str):
    """A mosaic of real BCCD fields as OME-Zarr + its level-1 image (npy) + WBC boxes."""
    from helpers import _half, build_mosaic, write_ome_zarr

    z = workdir / f"stage_{tag}_{grid[0]}x{grid[1]}.ome.zarr"
    npy, gt = z.with_suffix(".level1.npy"), z.with_suffix(".gt.npy")
    if not (z.is_dir() and npy.is_file() and gt.is_file()):
        img, boxes = build_mosaic(*grid, source="bccd", split="train+val+test", seed=7)
        write_ome_zarr(img, z, n_levels=3, chunk=512)
        np.save(npy, _half(img))
        np.save(gt, boxes[["x0", "y0", "x1", "y1"]].to_numpy(float))
    return z, npy, np.load(gt)


# --- stages --------------------------------------------------------------------------

def _timed(fn, reps=1):
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


#: analyses timed against the raw classifier forward (each between two raw runs)
PAIRS = 5


def bench_stages(zpath: Path, det, cls, level=1) -> dict:
    from napari_bm_cells.runtime import autocast
    from napari_bm_cells.detect import Detections, default_det_batch, tile_grid
    from napari_bm_cells.io import open_slide
    from napari_bm_cells.cut_cells import cut_cells
    from napari_bm_cells.pipeline import AnalysisOptions, analyze

    opts = AnalysisOptions(level=level)
    slide = open_slide(zpath)
    # warm-up on a quarter of the slide: enough cells for the first batch and full batches,
    # the input shapes the raw forward below is warmed up at too (oneDNN's first call at
    # a new shape costs ~20-50 ms)
    analyze(slide, det, cls, options=dataclasses.replace(
        opts, region=(0, 0, slide.shape[0] // 2, slide.shape[1] // 2)))
    d = float(slide.downsamples[level]) if isinstance(level, int) else None

    # the same tiles, read once into memory
    H, W = slide.shape
    res = None

    def stage():
        nonlocal res
        res = analyze(slide, det, cls, options=opts)

    d = d or 2.0
    tiles = tile_grid(math.ceil(H / d), math.ceil(W / d), opts.tile_size, opts.overlap)
    t_read = time.perf_counter()
    imgs = [slide.read_region(t.y0 * d, t.x0 * d, t.y1 * d, t.x1 * d, downsample=d)[: t.y1 - t.y0, : t.x1 - t.x0]
            for t in tiles]
    t_read = time.perf_counter() - t_read
    bgr = [np.ascontiguousarray(t[..., ::-1]) for t in imgs]  # what ultralytics wants, ready
    imgsz = int(math.ceil(max(max(t.shape[:2]) for t in imgs) / 32) * 32)
    B = opts.det_batch or default_det_batch(det)

    def raw_predict():  # in the precision the pipeline uses (bf16 autocast on such CPUs)
        with autocast(det.device, det.autocast):
            for i in range(0, len(bgr), B):
                det.model.predict(bgr[i:i + B], imgsz=imgsz, conf=det.conf, iou=det.iou,
                                  classes=det.class_ids, device=det.device, verbose=False)

    backend = det.model.predictor.model
    same = len({t.shape for t in imgs}) == 1
    xs = [torch.from_numpy(np.stack(imgs[i:i + B])).permute(0, 3, 1, 2).float().div(255)
          for i in range(0, len(imgs), B)] if same else []

    def raw_forward():
        with torch.inference_mode(), autocast(det.device, det.autocast):
            for x in xs:
                backend(x)

    # interleave: raw, stage, raw (the machine's load drifts); raw = mean of the two
    t_pred = [_timed(raw_predict)]
    t_fwd = [_timed(raw_forward)] if xs else []
    t_stage = _timed(stage)
    t_pred.append(_timed(raw_predict))
    if xs:
        t_fwd.append(_timed(raw_forward))
    tm = res.timings
    n_tiles = len(tiles)
    out = {"slide_shape": list(slide.shape), "detect_downsample": d, "n_tiles": n_tiles,
           "detector_autocast": str(det.autocast), "classifier_autocast": str(cls.autocast),
           "det_batch": B, "raw_forward_s": round(float(np.mean(t_fwd)), 3) if t_fwd else None,
           "tile_read_s": round(t_read, 3),
           "analysis_total_s": round(t_stage, 3)}
    if t_fwd:  # the first analysis against the bare network around it
        out["ratio_detect_vs_forward"] = round(out["raw_forward_s"] / tm["detect_s"], 3)

    # classification: the same crops, cut exactly as the pipeline cuts them
    dets = Detections.from_table(res.cells)
    side = res.summary["classifier"]["crop_px_level0"]
    t = time.perf_counter()
    cut = [c.crop for c in cut_cells(slide, dets, side, cls.input_size, cls.meta.crop_size_px, opts.block)]
    crops = np.stack(cut) if cut else np.zeros((0, cls.input_size, cls.input_size, 3), np.uint8)
    t_crops = time.perf_counter() - t
    bs = opts.batch_size
    cx = [cls.prepare(crops[i:i + bs]) for i in range(0, len(crops), bs)]  # input tensors ready

    def raw_cls():  # the network alone, in the precision the pipeline uses
        with torch.inference_mode(), autocast(cls.device, cls.autocast):
            for x in cx:
                cls.model(x)

    def predict():
        for i in range(0, len(crops), bs):
            cls.predict(crops[i:i + bs])

    raw_cls()  # warm-up at these batch sizes
    t_pred_c = _timed(predict)
    # pairs: each analysis between two raw runs of each model on the same tiles / crops,
    # its ratios against their mean (this VM's speed drifts by +-10 % within minutes; the
    # bracket cancels a linear drift, the median over PAIRS the bursts)
    stage_s, raw_s, det_s, pred_s = [], [_timed(raw_cls)], [], [t_pred[-1]]
    for _ in range(PAIRS):
        r = analyze(slide, det, cls, options=opts)
        raw_s.append(_timed(raw_cls))
        pred_s.append(_timed(raw_predict))
        stage_s.append(r.timings["classify_s"])
        det_s.append(r.timings["detect_s"])
    ratios = [(a + b) / 2 / c for a, b, c in zip(raw_s, raw_s[1:], stage_s)]
    det_ratios = [(a + b) / 2 / c for a, b, c in zip(pred_s, pred_s[1:], det_s)]
    t_det, t_pred_d = float(np.median(det_s)), float(np.median(pred_s))
    out.update({"detect_stage_s": round(t_det, 3), "raw_predict_s": round(t_pred_d, 3),
                "raw_predict_runs_s": [round(v, 3) for v in pred_s],
                "detect_tiles_per_s": round(n_tiles / t_det, 3),
                "raw_predict_tiles_per_s": round(n_tiles / t_pred_d, 3),
                "ratio_detect_vs_predict": round(float(np.median(det_ratios)), 3),
                "ratio_detect_vs_predict_runs": [round(v, 3) for v in det_ratios],
                "first_detect_stage_s": round(tm["detect_s"], 3)})
    n = len(crops)
    t_cls, t_raw = float(np.median(stage_s)), float(np.median(raw_s))
    out.update({"n_cells": n, "cls_batch": bs, "classify_stage_s": round(t_cls, 3),
                "classify_stage_runs_s": [round(v, 3) for v in stage_s],
                "raw_cls_forward_s": round(t_raw, 3),
                "raw_cls_forward_runs_s": [round(v, 3) for v in raw_s],
                "cls_predict_s": round(t_pred_c, 3), "crop_cutting_s": round(t_crops, 3),
                "classify_cells_per_s": round(n / t_cls, 2) if t_cls else None,
                "raw_cls_cells_per_s": round(n / t_raw, 2) if n else None,
                "ratio_classify_vs_forward": round(float(np.median(ratios)), 3) if n else None,
                "ratio_classify_vs_forward_runs": [round(v, 3) for v in ratios],
                "detect_stage_runs_s": [round(v, 3) for v in det_s]})
    return out


# --- colour --------------------------------------------------------------------------

def bench_colour(workdir: Path, grid, detector: str, device: str) -> dict:
    """Detection of the pale yellow version of a BCCD mosaic (level 1) with and without the
    slide's colour mapping, at the scale the adapted run picks: stage times (two
    interleaved runs each, the faster kept) and white-cell recall at the operating threshold."""
    from napari_bm_cells.colour import detector_colour
    from napari_bm_cells.detect import iter_detect, load_detector, run_to_end
    from napari_bm_cells.io import open_slide
    from napari_bm_cells.pipeline import parse_level
    from napari_bm_cells.training.evaluate import match_boxes, weak_yellow

    _, npy, gt = stage_mosaic(workdir, grid, "c")
    slide = open_slide(weak_yellow(np.load(npy)))
    gt = gt / 2  # the level-1 image
    det = load_detector(detector, device=device)
    adapted, info = detector_colour(det, slide, "standardise")
    down = parse_level("auto", slide, adapted)
    out = {"grid": list(grid), "image_shape": list(slide.shape), "downsample": round(down, 3),
           "adapted": info.get("adapted"), "gain": info.get("gain")}
    times: dict = {"with": [], "without": []}
    found = {}
    for _ in range(2):
        for name, d in (("with", adapted), ("without", det)):
            t = time.perf_counter()
            dets = run_to_end(iter_detect(slide, d, downsample=down))
            times[name].append(time.perf_counter() - t)
            tp = match_boxes(dets.boxes, dets.scores, gt)
            found[name] = int(tp[dets.scores >= det.conf].sum())
    for name in times:
        out[f"{name}_s"] = round(min(times[name]), 3)
        out[f"recall_{name}"] = round(found[name] / max(len(gt), 1), 4)
    out["n_white_cells"] = int(len(gt))
    out["ratio_time_with_vs_without"] = round(out["with_s"] / out["without_s"], 3)
    return out


# --- SAHI ----------------------------------------------------------------------------

def _compare(methods, gt1: np.ndarray, detector: str | None, reps: int) -> dict:
    """Each method in a fresh process, ``reps`` rounds (interleaved); the fastest run counts."""
    out = {}
    for rep in range(reps):
        for name, task, kw in methods:
            log(f"  {name} (round {rep + 1}/{reps}) ...")
            r = run_task(task, detector=detector, **kw)
            q = box_quality(np.asarray(r.pop("boxes")), np.asarray(r.pop("scores")), gt1, r.pop("tiles", None))
            prev = out.get(name)
            if prev is None or r["wall_s"] < prev["wall_s"]:
                out[name] = {**r, **q, "wall_s_runs": (prev or {}).get("wall_s_runs", []) + [r["wall_s"]]}
            else:
                prev["wall_s_runs"].append(r["wall_s"])
    return out


def level1_tiff(npy: Path) -> Path:
    """The level-1 image as an uncompressed TIFF, for SAHI to read from a file."""
    import tifffile

    tif = npy.with_suffix(".tif")
    if not tif.is_file():
        tifffile.imwrite(tif, np.load(npy))
    return tif


def bench_sahi(zpath: Path, npy: Path, gt: np.ndarray, detector: str | None, reps: int = 1,
               large: tuple[Path, Path, np.ndarray] | None = None) -> dict:
    """Ours vs SAHI on the level-1 image of a mosaic: both on the image in memory, then
    both from disk (ours lazily from the OME-Zarr, SAHI from a TIFF it reads whole); with
    ``large``, the from-disk pair again on a bigger mosaic."""
    tif = level1_tiff(npy)
    out = {"image_shape": list(np.load(npy, mmap_mode="r").shape[:2]), "tile": 640, "overlap": 160,
           "reps": reps}
    out.update(_compare((
        ("ours_in_memory", "detect_ours", {"npy": str(npy)}),
        ("ours_in_memory_batch4", "detect_ours", {"npy": str(npy), "batch": 4}),
        ("ours_in_memory_fp32", "detect_ours", {"npy": str(npy), "precision": "fp32"}),
        ("ours_lazy_zarr_level1", "detect_ours", {"zarr": str(zpath)}),
        ("ours_lazy_zarr_level1_batch4", "detect_ours", {"zarr": str(zpath), "batch": 4}),
        ("sahi_greedynmm", "detect_sahi", {"npy": str(npy)}),
        ("sahi_nms", "detect_sahi", {"npy": str(npy), "postprocess": "NMS"}),
        ("sahi_nms_from_file", "detect_sahi", {"image": str(tif), "postprocess": "NMS"})),
        gt / 2.0, detector, reps))  # boxes in the level-1 image both methods see
    o, s = out["ours_in_memory"], out["sahi_nms"]
    out["speedup_vs_sahi_nms"] = round(s["wall_s"] / o["wall_s"], 3)
    out["speedup_vs_sahi_greedynmm"] = round(out["sahi_greedynmm"]["wall_s"] / o["wall_s"], 3)
    # both in fp32 (SAHI runs the model as loaded): what is left is the tiling around the model
    f = out["ours_in_memory_fp32"]
    out["fp32_speedup_vs_sahi_nms"] = round(s["wall_s"] / f["wall_s"], 3)
    out["fp32_speedup_vs_sahi_greedynmm"] = round(out["sahi_greedynmm"]["wall_s"] / f["wall_s"], 3)
    if large:
        lz, lnpy, lgt = large
        out["large"] = {"image_shape": list(np.load(lnpy, mmap_mode="r").shape[:2]), **_compare((
            ("ours_lazy_zarr_level1", "detect_ours", {"zarr": str(lz)}),
            ("ours_lazy_zarr_level1_batch4", "detect_ours", {"zarr": str(lz), "batch": 4}),
            ("sahi_nms_from_file", "detect_sahi", {"image": str(level1_tiff(lnpy)), "postprocess": "NMS"})),
            lgt / 2.0, detector, 1)}
    return out


# --- memory --------------------------------------------------------------------------

def bench_memory(workdir: Path, sides, classifier: str, detector: str | None, data: Path,
                 keep: bool) -> dict:
    rows = []
    for side in sides:
        z = workdir / f"mem_{side}.ome.zarr"
        t = time.perf_counter()
        write_mosaic_zarr(z, side, side, data, seed=side)
        t_build = time.perf_counter() - t
        disk = sum(f.stat().st_size for f in z.rglob("*") if f.is_file())
        log(f"  {side}^2: built in {t_build:.0f} s ({disk / 2**30:.2f} GB on disk); analysing ...")
        r = run_task("analyse", path=str(z), level=1, classifier=classifier, detector=detector)
        r.update(side=side, raw_rgb_mb=mb(side * side * 3), zarr_on_disk_mb=mb(disk),
                 build_s=round(t_build, 1))
        r["growth_over_models_mb"] = round(r["peak_rss_mb"] - r["rss_models_loaded_mb"], 1)
        rows.append(r)
        log(f"  {side}^2: peak RSS {r['peak_rss_mb']:.0f} MB (ru_maxrss {r['ru_maxrss_mb']:.0f} MB), "
            f"{r['n_cells']} cells, {r['wall_s']:.0f} s")
        if not keep and side >= 20000:
            shutil.rmtree(z, ignore_errors=True)
    return {"rows": rows}


# --- classifier speed-ups ------------------------------------------------------------

def bench_speedups(ckpt: Path, n: int) -> dict:
    import onnxruntime as ort

    from napari_bm_cells.classify import Classifier
    from helpers import data_dir
    from napari_bm_cells.training.cls_data import load_images
    from napari_bm_cells.training.evaluate import evaluation_rows
    from napari_bm_cells.training.metrics import classification_metrics

    fp32 = Classifier(ckpt, device="cpu", precision="fp32")
    from napari_bm_cells.training.cls_data import scan_class_folders
    from napari_bm_cells.training.train_classifier import split_path

    rows = evaluation_rows(data_dir() / "pbc", ckpt, "auto")
    source = "the checkpoint's held-back test split"
    if len(rows) < n:  # e.g. the tiny smoke-test checkpoint: any PBC image it was not trained on
        rows = scan_class_folders(data_dir() / "pbc")
        sp = split_path(ckpt)
        if sp.is_file():
            import pandas as pd
            seen = pd.read_csv(sp)
            seen = {str(Path(p).resolve()) for p in seen.loc[seen["split"] != "test", "path"]}
            rows = rows[~rows["path"].map(lambda p: str(Path(p).resolve()) in seen)]
        source = "PBC images outside the checkpoint's training/validation split"
    k = max(1, n // rows["label"].nunique())
    rows = rows.sample(frac=1.0, random_state=0).groupby("label").head(k).sort_index().reset_index(drop=True)
    imgs, ok = load_images(rows["path"].tolist(), fp32.input_size, fov=fp32.meta.crop_size_px)
    y = rows["label"].to_numpy()[ok]
    bs = 32
    out = {"n_crops": int(len(imgs)), "crops": source, "batch": bs, "input_size": fp32.input_size,
           "arch": fp32.meta.arch}

    def run_torch(c, a):
        return np.concatenate([c.predict(a[i:i + bs]) for i in range(0, len(a), bs)])

    bf16 = Classifier(ckpt, device="cpu", precision="bf16")
    onnx_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bm_cells_cls_{os.getpid()}.onnx"
    model = fp32.model.to(memory_format=torch.contiguous_format).eval()
    dummy = torch.zeros(1, 3, fp32.input_size, fp32.input_size)
    torch.onnx.export(model, dummy, str(onnx_path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    fp32.model = model.to(memory_format=torch.channels_last)
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    mean = np.asarray(fp32.meta.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(fp32.meta.std, np.float32).reshape(1, 3, 1, 1)

    def run_onnx(a):
        outs = []
        for i in range(0, len(a), bs):
            x = (a[i:i + bs].transpose(0, 3, 1, 2).astype(np.float32) / 255 - mean) / std
            lg = sess.run(None, {"x": x})[0]
            e = np.exp(lg - lg.max(1, keepdims=True))
            outs.append(e / e.sum(1, keepdims=True))
        return np.concatenate(outs)

    from napari_bm_cells.checkpoint import load_model

    unfolded = Classifier.from_model(*load_model(ckpt), device="cpu", precision="fp32")  # batch norms kept
    variants = {"torch_fp32": lambda a: run_torch(fp32, a), "torch_bf16_autocast": lambda a: run_torch(bf16, a),
                "onnxruntime_fp32": run_onnx, "torch_fp32_batchnorm_unfolded": lambda a: run_torch(unfolded, a)}
    probs, times = {}, {k: [] for k in variants}
    for fn in variants.values():  # warm-up on one batch
        fn(imgs[:bs])
    for _ in range(3):  # interleaved repetitions (the machine's load drifts); best of three
        for name, fn in variants.items():
            t = time.perf_counter()
            probs[name] = fn(imgs)
            times[name].append(time.perf_counter() - t)
    base = probs["torch_fp32"]
    for name in variants:
        m = classification_metrics(y, probs[name], fp32.classes)
        t = min(times[name])
        out[name] = {"s": round(t, 3), "crops_per_s": round(len(imgs) / t, 2), "macro_f1": round(m["macro_f1"], 4),
                     "accuracy": round(m["accuracy"], 4),
                     "argmax_agreement_with_fp32": round(float((probs[name].argmax(1) == base.argmax(1)).mean()), 4),
                     "max_abs_prob_diff": round(float(np.abs(probs[name] - base).max()), 5)}
    for name in (v for v in variants if v != "torch_fp32"):
        out[name]["speedup_vs_fp32"] = round(out["torch_fp32"]["s"] / out[name]["s"], 3)
        out[name]["macro_f1_minus_fp32"] = round(out[name]["macro_f1"] - out["torch_fp32"]["macro_f1"], 4)
    onnx_path.unlink(missing_ok=True)
    return out


def bench_detector_backends(detector: str, data: Path, n_fields: int = 24) -> dict:
    """YOLO on real BCCD fields: PyTorch fp32, PyTorch bf16 autocast (our default on CPUs
    with bf16) and ONNX Runtime fp32 (ultralytics export, with as many threads as torch):
    throughput and agreement."""
    import tempfile

    from PIL import Image
    from ultralytics import YOLO

    from _common import bccd_fields

    from napari_bm_cells.detect import box_overlaps
    from napari_bm_cells.detect import read_sidecar, sidecar_conf, to_bgr

    fields = [to_bgr(np.asarray(Image.open(p).convert("RGB"))) for p in bccd_fields(data)[:n_fields]]
    tmp = Path(tempfile.mkdtemp(prefix="bm_cells_onnx_"))
    shutil.copy(detector, tmp / "det.pt")
    torch_model = YOLO(str(tmp / "det.pt"), task="detect")
    onnx_file = YOLO(str(tmp / "det.pt"), task="detect").export(format="onnx", imgsz=640, dynamic=True,
                                                                 simplify=False, opset=17)
    import onnxruntime as ort

    make_session = ort.InferenceSession

    def same_threads(path, sess_options=None, *args, **kwargs):  # as many threads as torch
        so = sess_options or ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = torch.get_num_threads(), 1
        return make_session(path, so, *args, **kwargs)

    ort.InferenceSession = same_threads
    try:
        onnx_model = YOLO(onnx_file, task="detect")
        onnx_model.predict(fields[0], imgsz=640, verbose=False)  # the session is made here
    finally:
        ort.InferenceSession = make_session
    conf = sidecar_conf(read_sidecar(detector))

    def run(model, bf16=False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return [model.predict(f, imgsz=640, conf=conf, verbose=False)[0].boxes.xyxy.cpu().numpy()
                    for f in fields]

    variants = {"torch_fp32": lambda: run(torch_model), "torch_bf16_autocast": lambda: run(torch_model, True),
                "onnxruntime_fp32": lambda: run(onnx_model)}
    for fn in variants.values():
        fn()  # warm-up
    times, boxes = {k: [] for k in variants}, {}
    for _ in range(2):
        for k, fn in variants.items():
            t = time.perf_counter()
            boxes[k] = fn()
            times[k].append(time.perf_counter() - t)
    out = {"n_fields": len(fields), "imgsz": 640}
    base = boxes["torch_fp32"]
    for k in variants:
        agree = []
        for a, b in zip(boxes[k], base):
            if len(a) and len(b):
                iou, _ = box_overlaps(a, b)
                agree.append(float((iou.max(1) >= 0.9).mean()))
            else:
                agree.append(float(len(a) == len(b)))
        out[k] = {"s": round(min(times[k]), 3), "fields_per_s": round(len(fields) / min(times[k]), 2),
                  "n_boxes": int(sum(len(b) for b in boxes[k])),
                  "boxes_matching_fp32_iou90": round(float(np.mean(agree)), 4)}
    for k in ("torch_bf16_autocast", "onnxruntime_fp32"):
        out[k]["speedup_vs_fp32"] = round(out["torch_fp32"]["s"] / out[k]["s"], 3)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


# --- main ----------------------------------------------------------------------------

def _sahi_rows(q: dict, names) -> list[str]:
    L = []
    for name in names:
        x = q[name]
        extra = (f", of which across tiles {x['dup_pairs_across_tiles']}" if "dup_pairs_across_tiles" in x else "")
        L.append(f"  {name:<28} wall {x['wall_s']:6.1f} s  peak RSS {x['peak_rss_mb']:6.0f} MB "
                 f"(+{x['peak_rss_mb'] - x['rss_before_mb']:.0f})  boxes {x['n_pred']}/{x['n_gt']} GT  "
                 f"recall {x['recall']:.3f}  precision {x['precision']:.3f}  "
                 f"extra boxes on one GT cell {x['dup_gt']}  overlapping pairs {x['dup_pairs']}{extra}")
    return L


def bench_target(fields: int, target: int, det, cls) -> dict:
    """Whole-slide analysis vs counting ``target`` leukocytes best areas first (same models,
    same process, the whole run first so neither pays a first-call cost the other does not)."""
    from napari_bm_cells import analyze
    from napari_bm_cells.io import open_slide
    from helpers import build_area_mosaic

    img, _, quads = build_area_mosaic(fields, source="bccd", split=("train", "val", "test"))
    slide = open_slide(img)
    analyze(img[:960, -1280:], detector=det, classifier=cls)  # warm-up on a corner
    t = time.perf_counter()
    full = analyze(slide, detector=det, classifier=cls)
    full_s = time.perf_counter() - t
    t = time.perf_counter()
    part = analyze(slide, detector=det, classifier=cls, target=target)
    part_s = time.perf_counter() - t
    y0, x0, y1, x1 = quads["good"]
    c = part.cells
    good = float((c["x"].between(x0, x1) & c["y"].between(y0, y1)).mean()) if len(c) else None
    cf = full.cells
    good_full = float((cf["x"].between(x0, x1) & cf["y"].between(y0, y1)).mean()) if len(cf) else None
    return {"image_shape": list(img.shape[:2]), "fields_per_quadrant": fields ** 2, "target": target,
            "whole_s": round(full_s, 2), "target_s": round(part_s, 2),
            "ratio_target_vs_whole": round(part_s / full_s, 3),
            "whole_counted": full.summary["n_counted"], "target_counted": part.summary["n_counted"],
            "target_met": part.summary["target"]["met"],
            "fraction_analysed": part.summary["target"]["fraction_analysed"],
            "areas_s": part.summary["timings"]["areas_s"], "scale_s": part.summary["timings"]["scale_s"],
            "share_from_good_quadrant": good, "share_from_good_quadrant_whole": good_full}


def summary_lines(r: dict) -> list[str]:
    L = []
    g = r.get("napari")
    if g:
        e, b = g["event_loop"], g["big_table"]
        L.append(f"napari event loop during a run on a {e['image_shape'][0]}x{e['image_shape'][1]} mosaic "
                 f"({e['n_cells']} cells, {e['run_wall_s']:.1f} s): longest gap {e['max_gap_s']:.3f} s "
                 f"(goal < 0.2), {e['gaps_over_0.2_s']} over 0.2 s, {e['gaps_over_0.1_s']} over 0.1 s; "
                 f"longest five {e['longest_gaps_s']}")
        L.append(f"{b['n_cells']:,}-cell table opened through the reader with the panel: "
                 f"{b['open_with_panel_s']:.2f} s; reassign one cell and recount: "
                 f"{b['reassign_and_recount_s_median']:.3f} s (median of 5)")
    t = r.get("target")
    if t:
        L.append(f"count to {t['target']} vs whole slide ({t['image_shape'][0]}x{t['image_shape'][1]}): "
                 f"{t['target_s']:.1f} s vs {t['whole_s']:.1f} s = x{t['ratio_target_vs_whole']:.2f} of the time "
                 f"({t['target_counted']} vs {t['whole_counted']} cells counted, "
                 f"{100 * t['fraction_analysed']:.0f}% of the slide visited; "
                 f"{100 * t['share_from_good_quadrant']:.0f}% of its cells from the in-focus monolayer vs "
                 f"{100 * t['share_from_good_quadrant_whole']:.0f}% of the whole run's; map {t['areas_s']:.2f} s)")
    c = r.get("colour")
    if c:
        L.append(f"detection of a pale yellow {c['grid'][0]}x{c['grid'][1]}-field mosaic "
                 f"({c['image_shape'][0]}x{c['image_shape'][1]} px, {c['n_white_cells']} white cells), "
                 f"slide mapped into the detector's colour range / as it is: "
                 f"time x{c['ratio_time_with_vs_without']:.2f} "
                 f"({c['with_s']:.1f} vs {c['without_s']:.1f} s), recall {c['recall_with']:.3f} vs "
                 f"{c['recall_without']:.3f}" + ("" if c["adapted"] else " (slide inside the range: not mapped)"))
    s = r.get("stages")
    if s:
        L.append(f"detection stage / raw YOLO predict, same {s['n_tiles']} tiles: "
                 f"{s['ratio_detect_vs_predict']:.2f}, median of "
                 f"{' / '.join(f'{v:.2f}' for v in s.get('ratio_detect_vs_predict_runs', []))} "
                 f"(goal >= 0.85; {s['detect_tiles_per_s']:.2f} vs "
                 f"{s['raw_predict_tiles_per_s']:.2f} tiles/s; reading the tiles alone took {s['tile_read_s']:.2f} s "
                 f"of the stage's {s['detect_stage_s']:.2f} s)")
        if s.get("ratio_detect_vs_forward"):
            L.append(f"detection stage / bare network forward (no pre/post-processing): "
                     f"{s['ratio_detect_vs_forward']:.2f}")
        if s.get("ratio_classify_vs_forward") is not None:
            L.append(f"classification stage / raw classifier forward, same {s['n_cells']} crops: "
                     f"{s['ratio_classify_vs_forward']:.2f}, median of "
                     f"{' / '.join(f'{v:.2f}' for v in s.get('ratio_classify_vs_forward_runs', []))} "
                     f"(goal >= 0.90; {s['classify_cells_per_s']:.1f} vs "
                     f"{s['raw_cls_cells_per_s']:.1f} cells/s; cutting the crops took {s['crop_cutting_s']:.2f} s "
                     f"of {s['classify_stage_s']:.2f} s)")
    q = r.get("sahi")
    if q:
        L.append(f"vs SAHI, same {q['image_shape'][0]}x{q['image_shape'][1]} image, weights, 640 px slices, "
                 f"160 px overlap (best of {q['reps']}):")
        L += _sahi_rows(q, ("ours_in_memory", "ours_in_memory_batch4", "ours_in_memory_fp32", "sahi_nms",
                            "sahi_greedynmm", "ours_lazy_zarr_level1", "ours_lazy_zarr_level1_batch4",
                            "sahi_nms_from_file"))
        if q.get("large"):
            sh = q["large"]["image_shape"]
            L.append(f"  larger image, {sh[0]}x{sh[1]}, from disk:")
            L += _sahi_rows(q["large"], ("ours_lazy_zarr_level1", "ours_lazy_zarr_level1_batch4",
                                         "sahi_nms_from_file"))
        L.append(f"  speed-up of ours vs SAHI: x{q['speedup_vs_sahi_nms']:.2f} (NMS), "
                 f"x{q['speedup_vs_sahi_greedynmm']:.2f} (GREEDYNMM, SAHI's default); both in fp32: "
                 f"x{q['fp32_speedup_vs_sahi_nms']:.2f} (NMS), x{q['fp32_speedup_vs_sahi_greedynmm']:.2f} (GREEDYNMM)")
        a, b = q["ours_in_memory"], q["ours_in_memory_fp32"]
        L.append(f"detector bf16 autocast (default where the CPU has bf16) vs fp32: "
                 f"x{b['wall_s'] / a['wall_s']:.2f} wall, recall {a['recall'] - b['recall']:+.3f}, "
                 f"precision {a['precision'] - b['precision']:+.3f}")
    m = r.get("memory")
    if m:
        rows = m["rows"]
        L.append("peak RSS by slide side: " + ", ".join(
            f"{x['side'] // 1000 if x['side'] % 1000 == 0 else x['side'] / 1000}k^2 {x['peak_rss_mb']:.0f} MB"
            for x in rows) + " (goal flat; 30k^2 < 2500 MB)")
        if len(rows) > 1:
            a, b = rows[0], rows[-1]
            L.append(f"  area x{(b['side'] / a['side']) ** 2:.0f} -> "
                     f"peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}")
    for model, key, rate, unit, n in (("classifier", "speedups", "crops_per_s", "crops/s", "n_crops"),
                                      ("detector", "detector_backends", "fields_per_s", "fields/s", "n_fields")):
        x = r.get(key)
        for k in (k for k, v in (x or {}).items() if isinstance(v, dict) and "speedup_vs_fp32" in v):
            same = (f"macro-F1 {x[k]['macro_f1_minus_fp32']:+.4f}, argmax agreement "
                    f"{x[k]['argmax_agreement_with_fp32']:.3f}" if model == "classifier" else
                    f"{x[k]['boxes_matching_fp32_iou90']:.3f} of boxes match fp32's (IoU >= 0.9)")
            L.append(f"{model} {k}: x{x[k]['speedup_vs_fp32']:.2f} vs fp32 ({x[k][rate]:.1f} vs "
                     f"{x['torch_fp32'][rate]:.1f} {unit}), {same} (n={x[n]})")
    return L


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    p.add_argument("--only", default="stages,sahi,memory,speedups,target,colour,napari",
                   help="comma-separated sections")
    p.add_argument("--workdir", default=None, help="mosaics and temporary files (default: $TMPDIR/bm_cells_bench)")
    p.add_argument("--json", default=None, help="write all results here (default: WORKDIR/results.json)")
    p.add_argument("--classifier", default=None, help="default: the shipped checkpoint")
    p.add_argument("--detector", default=None, help="default: the shipped YOLO weights")
    p.add_argument("--memory-sides", default=None, help="e.g. 5000,10000 (overrides the preset)")
    p.add_argument("--stage-grid", default=None,
                   help="fields of the stages mosaic, e.g. 12x16 (197 cells; default 24x32, 782 cells)")
    p.add_argument("--keep-mosaics", action="store_true", help="keep the >= 20k^2 mosaics")
    p.add_argument("--device", default=None,
                   help="where the models run (default cpu; cuda with --gpu) in the stages, sahi, memory and target "
                        "sections; speedups compares CPU back-ends and always runs on the CPU")
    p.add_argument("--gpu", action="store_true",
                   help="the GPU preset: --device cuda, sections stages,sahi,memory,target at sizes that "
                        "run in a few minutes on one GPU (give --device to pick another)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="the models' precision in the stages section (auto: bf16 autocast on CPUs with "
                        "native bf16); fp32 measures an fp32-only CPU's pipeline on any CPU")
    p.add_argument("--threads", type=int, default=None,
                   help="torch / OpenMP threads in every process (default: torch's default). "
                        "On a machine whose cores are busy, 1 avoids spin-waiting threads")
    a = p.parse_args(argv)
    a.device = a.device or ("cuda" if a.gpu else "cpu")
    if a.gpu:
        a.only = "stages,sahi,memory,target" if a.only == p.get_default("only") else a.only
    os.environ["BM_CELLS_BENCH_DEVICE"] = a.device  # inherited by the measurement processes
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)  # inherited by the measurement processes
        torch.set_num_threads(a.threads)
    cfg = dict(QUICK if a.quick else GPU if a.gpu else FULL)
    if a.memory_sides:
        cfg["memory_sides"] = [int(s) for s in a.memory_sides.split(",")]
    if a.stage_grid:
        cfg["stage_grid"] = tuple(int(v) for v in a.stage_grid.lower().split("x"))
    workdir = Path(a.workdir or Path(os.environ.get("TMPDIR", "/tmp")) / "bm_cells_bench")
    workdir.mkdir(parents=True, exist_ok=True)
    sections = a.only.split(",")

    from napari_bm_cells.classify import Classifier
    from napari_bm_cells.detect import DEFAULT_DETECTOR, load_detector, read_sidecar
    from helpers import data_dir

    data = data_dir()
    ckpt, ckpt_kind = classifier_path(a, workdir)
    detector = a.detector or str(DEFAULT_DETECTOR)
    preset = "quick" if a.quick else "gpu" if a.gpu else "full"
    results = {"command": " ".join([Path(sys.executable).name] + sys.argv), "preset": preset,
               "device": a.device, "precision": a.precision,
               "machine": machine(), "classifier": {"path": str(ckpt), "kind": ckpt_kind},
               "detector": {"path": detector,
                            "meta": read_sidecar(detector) or None},
               "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    t0 = time.perf_counter()
    if "stages" in sections:
        log("stages: building mosaic ...")
        z, _, _ = stage_mosaic(workdir, cfg["stage_grid"], "s")
        cls = Classifier(ckpt, device=a.device, precision=a.precision)
        det = load_detector(detector, device=a.device, precision=a.precision)
        log("stages: measuring ...")
        results["stages"] = bench_stages(z, det, cls)
        del cls, det
    if "sahi" in sections:
        log("sahi: ...")
        z, npy, gt = stage_mosaic(workdir, cfg["sahi_grid"], "s")
        large = stage_mosaic(workdir, cfg["sahi_large_grid"], "s") if cfg["sahi_large_grid"] else None
        results["sahi"] = bench_sahi(z, npy, gt, detector, reps=1 if a.quick else 2, large=large)
    if "target" in sections:
        log("target: ...")
        cls = Classifier(ckpt, device=a.device)
        det = load_detector(detector, device=a.device)
        results["target"] = bench_target(cfg["target_fields"], cfg["target"], det, cls)
        del cls, det
    if "colour" in sections:
        log("colour: ...")
        results["colour"] = bench_colour(workdir, cfg["colour_grid"], detector, a.device)
    if "speedups" in sections:
        log("speedups: ...")
        results["speedups"] = bench_speedups(ckpt, cfg["speedup_n"])
        results["detector_backends"] = bench_detector_backends(detector, data)
    if "napari" in sections:
        log("napari: event-loop probe during a run, 100,000-cell table ...")
        results["napari"] = {
            "event_loop": run_napari_task("event_loop", classifier=str(ckpt)),
            "big_table": run_napari_task("big_table", classifier=str(ckpt), workdir=str(workdir))}
    if "memory" in sections:
        log("memory: ...")
        results["memory"] = bench_memory(workdir, cfg["memory_sides"], str(ckpt), detector, data,
                                         a.keep_mosaics)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    out = Path(a.json) if a.json else workdir / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results["summary"] = summary_lines(results)
    out.write_text(json.dumps(results, indent=2))
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, torch {m['torch']} "
          f"({m['torch_threads']} threads), load average {m['load_avg_1m_at_start']} -> {m['load_avg_1m_at_end']}")
    print(f"classifier: {ckpt_kind} ({ckpt.name}); detector: {Path(detector).name}")
    for line in results["summary"]:
        print(line)
    print(f"({results['wall_s']:.0f} s; all numbers in {out})")


if __name__ == "__main__":
    main()
