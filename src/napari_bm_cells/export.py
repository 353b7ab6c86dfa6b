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

from .cells_table import classes_of, prob_columns
from .taxonomy import colour_of


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        set_usual_mode(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def set_usual_mode(path: str | Path) -> None:
    """Give a file the mode new files get (0666 less the umask): temporary-file writers
    (``mkstemp``, safetensors) make them private (0600)."""
    os.chmod(path, 0o666 & ~_umask())


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


def write_results(result, out_dir: str | Path, report: bool = True, geojson: bool = True,
                  histogram: bool | None = None) -> dict[str, Path]:
    """Write an analysis into ``out_dir``: ``cells.csv``, ``summary.json``, ``cells.geojson``
    (QuPath), ``report.html`` (see :mod:`~napari_bm_cells.report`) and ``differential.png``
    (the histogram, see :func:`write_histogram_png`; with the report unless ``histogram``
    says otherwise). The CLI, batch and the napari panel all write through here."""
    out_dir = Path(out_dir)
    mpp = result.summary.get("mpp")
    paths = {"cells": write_cells_csv(result.cells, out_dir / "cells.csv", mpp),
             "summary": write_summary_json(result.summary, out_dir / "summary.json")}
    if geojson:
        paths["geojson"] = write_geojson(result.cells, out_dir / "cells.geojson", getattr(result, "outlines", None))
    if report:
        from .report import write_report

        areas = getattr(result, "areas", None)
        paths["report"] = write_report(result.cells, result.summary, out_dir / "report.html",
                                       slide=getattr(result, "slide", None),
                                       area_scores=None if areas is None else areas.scores)
    if report if histogram is None else histogram:
        classes = (result.summary.get("classifier") or {}).get("classes") or classes_of(result.cells)
        paths["png"] = write_histogram_png(result.summary, out_dir / "differential.png", classes)
    return paths


def write_histogram_png(summary: dict, path, classes=None) -> Path:
    """Save the differential's histogram as a PNG (matplotlib, no Qt), titled with the
    sample's name, the cells counted and the CI method."""
    from .plots import histogram_png_bytes

    sample = Path(str(summary.get("input") or "")).name
    title = f"{sample}: " if sample else ""
    title += f"{summary.get('n_counted', 0)} cells counted; bars: % with 95% CI (Wilson)"
    return atomic_write(Path(path), histogram_png_bytes(summary, classes, title=title))


def cell_polygon(row: dict, outline=None):
    """A cell's outline as a valid shapely Polygon: its mask outline ((N, 2) level-0 x, y)
    when there is one, else its detection box; None without either."""
    from shapely.geometry import Polygon, box
    from shapely.geometry.polygon import orient
    from shapely.validation import make_valid

    if outline is not None and len(outline) >= 3:
        poly = Polygon(np.asarray(outline, float))
        if not poly.is_valid:
            fixed = make_valid(poly)
            parts = [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type == "Polygon"]
            poly = max(parts, key=lambda g: g.area) if parts else None
        if poly is not None and poly.area > 0:
            return orient(poly)
    if all(k in row and np.isfinite(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")):
        if row["bbox_x1"] > row["bbox_x0"] and row["bbox_y1"] > row["bbox_y0"]:
            return orient(box(row["bbox_x0"], row["bbox_y0"], row["bbox_x1"], row["bbox_y1"]))
    return None


#: measurements every cell carries into QuPath, besides the class probabilities
MEASUREMENTS = ("confidence", "p_blast", "p_atypical", "det_score", "area_score")


def to_geojson(cells: pd.DataFrame, outlines: dict[int, np.ndarray] | None = None) -> dict:
    """QuPath-compatible GeoJSON: one ``cell`` object per cell with its class and colour.

    Each cell's geometry is its mask outline (``outlines``: cell id -> (N, 2) level-0 x, y)
    when the analysis made masks, else its detection box (a point when the table has no
    boxes); measurements are the confidence, P(blast), P(atypical), detection and
    counting-area scores and the class probabilities.
    """
    from shapely.geometry import mapping

    feats = []
    prob_cols = prob_columns(cells)
    for r in cells.to_dict("records"):
        cid = int(r["cell_id"]) if "cell_id" in r and pd.notna(r["cell_id"]) else len(feats) + 1
        poly = cell_polygon(r, (outlines or {}).get(cid))
        geom = mapping(poly) if poly is not None else {"type": "Point", "coordinates": [float(r["x"]), float(r["y"])]}
        if poly is not None:
            geom = {"type": "Polygon", "coordinates": [[[float(x), float(y)] for x, y in ring]
                                                       for ring in geom["coordinates"]]}
        hexc = colour_of(r["label"]).lstrip("#")
        props = {"objectType": "cell",
                 "classification": {"name": str(r["label"]), "color": [int(hexc[i:i + 2], 16) for i in (0, 2, 4)]},
                 "measurements": {k: float(r[k]) for k in list(MEASUREMENTS) + prob_cols
                                  if k in r and pd.notna(r[k])},
                 "cell_id": cid, "centroid": [float(r["x"]), float(r["y"])]}
        for k in ("model_label", "reviewed"):
            if k in r and pd.notna(r[k]):
                props[k] = bool(r[k]) if k == "reviewed" else str(r[k])
        feats.append({"type": "Feature", "geometry": geom, "properties": props})
    return {"type": "FeatureCollection", "features": feats}


def write_geojson(cells: pd.DataFrame, path: str | Path, outlines=None) -> Path:
    """Write cells as GeoJSON that QuPath imports (File > Import objects)."""
    return atomic_write(path, json.dumps(to_geojson(cells, outlines)))


def _measurements(m) -> dict:
    """QuPath writes measurements as a mapping, or (older versions) as a list of
    ``{"name": ..., "value": ...}``."""
    if isinstance(m, dict):
        return m
    if isinstance(m, list):
        return {d["name"]: d.get("value") for d in m if isinstance(d, dict) and "name" in d}
    return {}


def _geojson_cells(gj) -> pd.DataFrame:
    """Cell rows of a GeoJSON FeatureCollection (ours or QuPath's): cells and detections;
    annotations are skipped. Without a class a cell is ``UNK``."""
    from shapely.geometry import shape

    from .taxonomy import UNCLASSIFIED

    feats = gj.get("features", []) if isinstance(gj, dict) else gj
    rows = []
    for f in feats:
        p = f.get("properties") or {}
        if p.get("objectType", "cell") not in ("cell", "detection", "tile"):
            continue
        if "centroid" in p:
            x, y = p["centroid"]
        else:
            c = shape(f["geometry"]).centroid
            x, y = c.x, c.y
        cl = p.get("classification") or {}
        row = {"cell_id": p.get("cell_id", len(rows) + 1), "x": float(x), "y": float(y),
               "label": cl.get("name") or UNCLASSIFIED, **_measurements(p.get("measurements"))}
        g = f.get("geometry") or {}
        if g.get("type") in ("Polygon", "MultiPolygon"):
            x0, y0, x1, y1 = shape(g).bounds
            row.update(bbox_x0=x0, bbox_y0=y0, bbox_x1=x1, bbox_y1=y1)
        for k in ("model_label", "reviewed"):
            if k in p:
                row[k] = p[k]
        rows.append(row)
    return pd.DataFrame(rows)


def read_cells(path: str | Path) -> pd.DataFrame:
    """Read ``cells.csv`` or a GeoJSON of cells (ours or QuPath's export) into a cell table."""
    from .errors import InputError, first_line

    path = Path(path)
    try:
        if path.suffix.lower() in (".geojson", ".json"):
            df = _geojson_cells(json.loads(path.read_text()))
        else:
            df = pd.read_csv(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a readable cells table ({first_line(exc)}); expected cells.csv or "
                         "a GeoJSON of cells (napari-bm-cells or QuPath)") from None
    return _checked(df, path)


def _checked(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    from .errors import InputError

    missing = {"x", "y", "label"} - set(df.columns)
    if missing:
        raise InputError(f"{path}: cells table lacks columns {sorted(missing)}")
    return df
