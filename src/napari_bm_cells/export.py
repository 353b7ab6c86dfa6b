"""Write results a lab can keep: cells.csv, summary.json, QuPath GeoJSON; read them back.

Every file is written to a temporary name and renamed, so an interrupted run never
leaves a half-written file behind.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .taxonomy import colour_of


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cells_table(cells: pd.DataFrame, mpp: float | None = None) -> pd.DataFrame:
    """The cell table with physical coordinates (``x_um``, ``y_um``) when the pixel size is known."""
    out = cells.copy()
    if mpp:
        out.insert(3, "x_um", out["x"] * mpp)
        out.insert(4, "y_um", out["y"] * mpp)
    return out


def write_cells_csv(cells: pd.DataFrame, path: str | Path, mpp: float | None = None) -> Path:
    """Write ``cells.csv`` (one row per cell, level-0 pixel coordinates)."""
    return atomic_write(path, cells_table(cells, mpp).to_csv(index=False, float_format="%.6g"))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_summary_json(summary: dict, path: str | Path) -> Path:
    """Write ``summary.json``."""
    return atomic_write(path, json.dumps(summary, indent=2, default=_json_default))


def write_results(result, out_dir: str | Path) -> dict[str, Path]:
    """Write ``cells.csv`` and ``summary.json`` of an analysis into ``out_dir``."""
    out_dir = Path(out_dir)
    mpp = result.summary.get("mpp")
    return {"cells": write_cells_csv(result.cells, out_dir / "cells.csv", mpp),
            "summary": write_summary_json(result.summary, out_dir / "summary.json")}


def to_geojson(cells: pd.DataFrame, polygons: dict[int, np.ndarray] | None = None) -> dict:
    """QuPath-compatible GeoJSON: one detection per cell with its class and colour.

    Cells are points (or polygons of their mask contour, (N, 2) x/y in level-0
    pixels, when ``polygons`` has them).
    """
    feats = []
    prob_cols = [c for c in cells.columns if c.startswith("prob_")]
    for row in cells.itertuples(index=False):
        r = row._asdict()
        poly = (polygons or {}).get(int(r["cell_id"]))
        if poly is not None and len(poly) >= 3:
            ring = [[float(x), float(y)] for x, y in poly] + [[float(poly[0][0]), float(poly[0][1])]]
            geom = {"type": "Polygon", "coordinates": [ring]}
        else:
            geom = {"type": "Point", "coordinates": [float(r["x"]), float(r["y"])]}
        hexc = colour_of(r["label"]).lstrip("#")
        props = {"objectType": "detection",
                 "classification": {"name": r["label"], "color": [int(hexc[i:i + 2], 16) for i in (0, 2, 4)]},
                 "measurements": {k: float(r[k]) for k in ["confidence", "p_blast", "p_atypical", "det_score"] + prob_cols
                                  if k in r},
                 "cell_id": int(r["cell_id"])}
        for k in ("reviewed",):
            if k in r:
                props[k] = bool(r[k])
        feats.append({"type": "Feature", "geometry": geom, "properties": props})
    return {"type": "FeatureCollection", "features": feats}


def write_geojson(cells: pd.DataFrame, path: str | Path, polygons=None) -> Path:
    """Write cells as GeoJSON that QuPath imports (File > Import objects)."""
    return atomic_write(path, json.dumps(to_geojson(cells, polygons)))


def read_cells(path: str | Path) -> pd.DataFrame:
    """Read ``cells.csv`` or our GeoJSON back into a cell table."""
    from .errors import InputError, first_line

    path = Path(path)
    try:
        if path.suffix.lower() in (".geojson", ".json"):
            gj = json.loads(path.read_text())
            rows = []
            for f in gj.get("features", []):
                p, g = f["properties"], f["geometry"]
                if g["type"] == "Point":
                    x, y = g["coordinates"]
                else:
                    ring = np.asarray(g["coordinates"][0][:-1], float)
                    x, y = ring.mean(0)
                row = {"cell_id": p.get("cell_id"), "x": x, "y": y,
                       "label": p["classification"]["name"], **p.get("measurements", {})}
                if "reviewed" in p:
                    row["reviewed"] = p["reviewed"]
                rows.append(row)
            return pd.DataFrame(rows)
        df = pd.read_csv(path)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: not a readable cells table ({first_line(exc)}); expected cells.csv or "
                         "a GeoJSON written by napari-bm-cells") from None
    missing = {"x", "y", "label"} - set(df.columns)
    if missing:
        raise InputError(f"{path}: cells table lacks columns {sorted(missing)}")
    return df
