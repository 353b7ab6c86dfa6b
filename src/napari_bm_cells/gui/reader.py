"""npe2 readers: slides as lazy multiscale images, and our results as a cells Points layer.

* slides (OME-Zarr / zarr folders, TIFF / OME-TIFF / SVS, JPEG / PNG / BMP): the
  pyramid levels as dask arrays (``multiscale=True`` with more than one level), the
  scale in micrometres when the file states the pixel size (else 1); big single-level
  images get a lazy strided pyramid for display so that zooming out stays cheap.
* results (``cells.csv`` and GeoJSON written by napari-bm-cells or QuPath): one point
  per cell with its features and class colours, in the same level-0 pixel frame as the
  slide (scaled by the pixel size when the CSV has micrometre columns).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .layers import META, points_kwargs
from ..io import is_slide_path, open_slide

#: single-level images larger than this (pixels per side) get a display pyramid
PYRAMID_ABOVE = 8192
#: single-level images up to this many pixels are loaded into memory (fast display)
IN_MEMORY_MAX = 4096 * 4096


def _paths(path) -> list[str] | None:
    if isinstance(path, (str, Path)):
        return [str(path)]
    if isinstance(path, (list, tuple)) and path and all(isinstance(p, (str, Path)) for p in path):
        return [str(p) for p in path]
    return None


# --------------------------------------------------------------------------- slides
def get_slide_reader(path):
    """npe2 reader: a callable when every path is a slide we can open, else None."""
    paths = _paths(path)
    if not paths or not all(is_slide_path(p) for p in paths):
        return None
    return read_slides


def read_slides(path) -> list[tuple]:
    """Layer data of slides: ``[(levels or array, kwargs, "image"), ...]``."""
    return [slide_layer_data(p) for p in _paths(path)]


def _display_pyramid(a, min_side: int = 2048) -> list:
    """Lazy strided levels of one big dask array (display only: never analysed)."""
    levels, f = [a], 2
    while max(a.shape[:2]) / f >= min_side:
        levels.append(a[::f, ::f])
        f *= 2
    return levels


def slide_layer_data(path) -> tuple:
    """``(data, kwargs, "image")`` of one slide, level 0 first, lazily read."""
    slide = open_slide(path)
    levels = list(slide.levels)
    n_file = len(levels)
    if n_file == 1 and max(levels[0].shape[:2]) > PYRAMID_ABOVE:
        levels = _display_pyramid(levels[0])
    multiscale = len(levels) > 1
    if multiscale:
        data = levels
    else:
        a = levels[0]
        data = np.asarray(a) if a.shape[0] * a.shape[1] <= IN_MEMORY_MAX else a
    mpp = slide.mpp
    kwargs = {
        "name": slide.name, "rgb": True, "multiscale": multiscale,
        "scale": (mpp, mpp) if mpp else (1.0, 1.0), "contrast_limits": (0, 255),
        "metadata": {META: {"kind": "slide", "path": str(Path(path).resolve()), "mpp": mpp,
                            "file_levels": n_file, "downsamples": list(slide.downsamples)}},
    }
    if mpp:
        kwargs["units"] = ("micrometer", "micrometer")
    return data, kwargs, "image"


# --------------------------------------------------------------------------- results
def _is_results_file(p: Path) -> bool:
    name = p.name.lower()
    if not p.is_file():
        return False
    if name.endswith(".geojson"):
        return True
    if name.endswith(".csv"):
        try:
            with open(p, encoding="utf-8", errors="replace") as fh:
                header = fh.readline().strip().split(",")
        except OSError:
            return False
        return {"x", "y", "label"} <= {h.strip().strip('"') for h in header}
    return False


def get_results_reader(path):
    """npe2 reader for ``cells.csv`` / ``*.geojson`` cell tables; None for other files."""
    paths = _paths(path)
    if not paths or not all(_is_results_file(Path(p)) for p in paths):
        return None
    return read_results


def _sibling_summary(p: Path) -> dict:
    s = p.with_name("summary.json")
    if s.is_file():
        try:
            return json.loads(s.read_text())
        except (OSError, ValueError):
            return {}
    return {}


def results_layer_data(path) -> tuple:
    """``(coords, kwargs, "points")`` of one cells table (CSV or GeoJSON)."""
    from ..export import read_cells

    p = Path(path)
    cells = read_cells(p)
    summary = _sibling_summary(p)
    mpp = summary.get("mpp")
    if {"x_um", "x"} <= set(cells.columns):
        ok = cells["x"].to_numpy(float) > 0
        if ok.any():
            mpp = float(np.median(cells["x_um"].to_numpy(float)[ok] / cells["x"].to_numpy(float)[ok]))
    classes = (summary.get("classifier") or {}).get("classes")
    # named as the analysis named it: after the image it was run on (summary.json's input)
    source = Path(str(summary.get("input") or "")).name
    stem = source if source else (p.stem if p.stem != "cells" else p.parent.name)
    kw = points_kwargs(cells, name=f"{stem} cells", classes=classes, mpp=mpp, summary=summary)
    kw["metadata"][META]["path"] = str(p.resolve())
    data = kw.pop("data")
    return data, kw, "points"


def read_results(path) -> list[tuple]:
    """Layer data of cell tables: ``[(coords, kwargs, "points"), ...]``."""
    return [results_layer_data(p) for p in _paths(path)]
