"""Helpers of the benchmarks: streamed OME-Zarr mosaics of real fields, peak-memory
sampling, box matching, and running one measurement in a fresh Python process."""
from __future__ import annotations

import functools
import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

# the real-data mosaics and pyramid writers the tests use (tests/helpers.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np

HERE = Path(__file__).resolve().parent


# --- memory --------------------------------------------------------------------------

class RssSampler:
    """Peak resident memory of this process: psutil RSS sampled every ``interval`` s in a
    thread, plus the kernel's high-water mark (``ru_maxrss``)."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @staticmethod
    def rss() -> int:
        import psutil
        return psutil.Process().memory_info().rss

    @staticmethod
    def maxrss() -> int:
        """Kernel high-water mark of this process in bytes (Linux reports KiB)."""
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r * 1024 if sys.platform.startswith("linux") else r


def mb(n_bytes) -> float:
    return round(n_bytes / 2**20, 1)


# --- fresh processes -----------------------------------------------------------------

def run_task(name: str, timeout: float = 3600, script: str = "_tasks.py", **kwargs) -> dict:
    """Run ``SCRIPT NAME JSON`` (default ``_tasks.py``) in a fresh interpreter; return the
    JSON it prints last."""
    cmd = [sys.executable, str(HERE / script), name, json.dumps(kwargs)]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if p.returncode != 0:
        raise RuntimeError(f"task {name} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = round(time.perf_counter() - t, 2)
    return out


def run_napari_task(name: str, **kwargs) -> dict:
    """A napari measurement of ``_napari_tasks.py`` in a fresh interpreter."""
    return run_task(name, script="_napari_tasks.py", **kwargs)


# --- mosaics -------------------------------------------------------------------------

def bccd_fields(data_dir: Path, hw=(480, 640)) -> list[Path]:
    """BCCD field images of exactly ``hw`` (all of them, sorted)."""
    from PIL import Image

    out = []
    for p in sorted((data_dir / "bccd" / "JPEGImages").glob("*.jpg")):
        with Image.open(p) as im:
            if im.size == (hw[1], hw[0]):
                out.append(p)
    return out


def write_mosaic_zarr(path, height: int, width: int, data_dir: Path, seed: int = 0,
                      chunk: int = 512, n_levels: int = 4) -> Path:
    """A pyramidal OME-Zarr (NGFF 0.4, ``c, y, x``) tiled from real 640x480 BCCD fields,
    written chunk-row by chunk-row: memory stays at a few bands whatever the size.

    A ``.complete`` file records the parameters; an existing complete mosaic with the same
    parameters is reused.
    """
    import zarr
    from PIL import Image

    from helpers import _half

    path = Path(path)
    stamp = path / ".complete"
    params = {"height": height, "width": width, "seed": seed, "chunk": chunk, "n_levels": n_levels}
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return path
    fields = bccd_fields(data_dir)
    order = np.random.default_rng(seed).permutation(len(fields))
    fh, fw = 480, 640
    ncols = math.ceil(width / fw)

    @functools.lru_cache(maxsize=2 * ncols + 8)
    def field(k: int) -> np.ndarray:
        with Image.open(fields[order[k % len(fields)]]) as im:
            return np.asarray(im.convert("RGB"))

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    shapes = [(height, width)]
    for _ in range(n_levels - 1):
        shapes.append((math.ceil(shapes[-1][0] / 2), math.ceil(shapes[-1][1] / 2)))
    z = root.create_array("0", shape=(3, height, width), chunks=(3, chunk, chunk), dtype="uint8")
    for y0 in range(0, height, chunk):
        y1 = min(height, y0 + chunk)
        band = np.empty((y1 - y0, width, 3), np.uint8)
        for r in range(y0 // fh, (y1 - 1) // fh + 1):
            a, b = max(y0, r * fh), min(y1, (r + 1) * fh)
            for c in range(ncols):
                x0, x1 = c * fw, min(width, (c + 1) * fw)
                band[a - y0:b - y0, x0:x1] = field(r * ncols + c)[a - r * fh:b - r * fh, :x1 - x0]
        z[:, y0:y1] = np.moveaxis(band, -1, 0)
    for lvl in range(1, n_levels):
        prev = root[str(lvl - 1)]
        h, w = shapes[lvl]
        zl = root.create_array(str(lvl), shape=(3, h, w), chunks=(3, chunk, chunk), dtype="uint8")
        for y0 in range(0, h, chunk):
            band = np.moveaxis(np.asarray(prev[:, 2 * y0:2 * (y0 + chunk)]), 0, -1)
            zl[:, y0:y0 + chunk] = np.moveaxis(_half(band), -1, 0)
    root.attrs["multiscales"] = [{
        "version": "0.4", "name": path.stem,
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
                 {"name": "x", "type": "space"}],
        "datasets": [{"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 2.0 ** i, 2.0 ** i]}]} for i in range(n_levels)]}]
    stamp.write_text(json.dumps(params))
    return path


# --- boxes ---------------------------------------------------------------------------

def box_quality(pred: np.ndarray, scores: np.ndarray, gt: np.ndarray, tiles=None) -> dict:
    """Recall / precision at IoU 0.5 (greedy by score) and duplicate counts.

    ``dup_gt``: predictions beyond the first that overlap the same ground-truth box at
    IoU >= 0.5; ``dup_pairs``: pairs of predictions with IoU > 0.5 or one box > 70 %
    inside the other; with ``tiles`` (the tile owning each prediction),
    ``dup_pairs_across_tiles`` counts the pairs whose boxes come from different tiles
    (true border duplicates) and ``dup_pairs_same_tile`` the nested boxes the detector
    itself returns within one tile.
    """
    from napari_bm_cells.detect import box_overlaps
    from napari_bm_cells.training.evaluate import match_boxes

    pred, gt = np.asarray(pred, float).reshape(-1, 4), np.asarray(gt, float).reshape(-1, 4)
    tp = match_boxes(pred, np.asarray(scores, float), gt, 0.5) if len(pred) else np.zeros(0, bool)
    iou_pg, _ = box_overlaps(pred, gt)
    hits = (iou_pg >= 0.5).sum(0) if len(pred) and len(gt) else np.zeros(len(gt), int)
    iou_pp, ios_pp = box_overlaps(pred, pred)
    upper = np.triu(np.ones((len(pred), len(pred)), bool), 1)
    close = upper & ((iou_pp > 0.5) | (ios_pp > 0.7))
    out = {"n_pred": int(len(pred)), "n_gt": int(len(gt)),
           "recall": round(float(tp.sum()) / max(1, len(gt)), 4),
           "precision": round(float(tp.sum()) / max(1, len(pred)), 4),
           "dup_gt": int(np.clip(hits - 1, 0, None).sum()), "dup_pairs": int(close.sum())}
    if tiles is not None:
        t = np.asarray(tiles)
        across = t[:, None] != t[None, :]
        out["dup_pairs_across_tiles"] = int((close & across).sum())
        out["dup_pairs_same_tile"] = int((close & ~across).sum())
    return out
