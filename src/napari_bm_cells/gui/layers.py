"""napari layers of an analysis, as plain functions (no Qt: usable headless and in tests).

Coordinates: the pipeline's cell table holds level-0 pixel coordinates where pixel ``k``
spans ``[k, k + 1)``; napari centres pixel ``k`` on data coordinate ``k``. Points
layers therefore hold ``(y - 0.5, x - 0.5)`` and share the image layer's data-to-world
transform (scale, translate, rotate, shear, affine), so cells sit on their pixels at any
zoom, and level-0 regions map to world rectangles the same way as the image.

Layers made here carry ``metadata["bm_cells"]`` (classes, pixel size, image layer name,
the run's summary) so the panel and the exports can recompute everything from the
layer's *current* features after a user reassigns or deletes cells.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..cells_table import classes_of, prob_columns
from ..count import differential
from ..crop import slide_square
from ..errors import InputError
from ..plots import draw_histogram  # noqa: F401 -- the panel draws with it
from ..io import Slide, open_slide
from ..taxonomy import CLASSES, NON_LEUKOCYTE_CODES, PALETTE, UNCLASSIFIED, UNKNOWN_COLOUR, full_name

META = "bm_cells"  #: key of our entry in ``layer.metadata``
#: preferred order of the number-key shortcuts (the commonest classes first)
SHORTCUT_ORDER = ("NGS", "LYT", "MON", "EOS", "BAS", "BLA", "MYO", "NGB", "EBO", "PLM", "MYB",
                  "MMZ", "PMO", "LYA", "MOB", "PEB", "LYI", "PLT", "ART", "KSC", "NIF", "OTH")
#: columns of the pipeline's table that never become features (they are the coordinates)
_COORD_COLS = ("x", "y", "x_um", "y_um")


# --------------------------------------------------------------------------- colours
def _rgba(hexstr: str) -> tuple[float, float, float, float]:
    h = hexstr.lstrip("#")
    return tuple(int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)) + (1.0,)


_RGBA = {code: _rgba(c) for code, c in PALETTE.items()}
_UNKNOWN_RGBA = _rgba(UNKNOWN_COLOUR)


def class_colours(labels) -> np.ndarray:
    """``(N, 4)`` float RGBA face colours of class codes (taxonomy.PALETTE)."""
    labels = list(labels)
    out = np.empty((len(labels), 4), np.float32)
    for i, lab in enumerate(labels):
        out[i] = _RGBA.get(str(lab), _UNKNOWN_RGBA)
    return out


# --------------------------------------------------------------------------- image layer
def unwrap(obj):
    """The object behind napari's ``PublicOnlyProxy`` (plugin widgets get proxied viewers,
    so layers they add or list are proxies: identity checks need the real layer)."""
    return getattr(obj, "__wrapped__", obj)


def _napari_version_compat_camera(viewer):
    return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera


def canvas_size(viewer) -> tuple[int, int]:
    """``(height, width)`` of the viewer's canvas in screen pixels."""
    canvas = getattr(viewer, "canvas", None)
    if canvas is not None and hasattr(canvas, "size"):
        return tuple(int(s) for s in canvas.size)
    return tuple(int(s) for s in viewer._canvas_size)  # napari < 0.6


def layer_levels(layer) -> list:
    """The arrays of an image layer, level 0 first (one for a single-scale layer)."""
    return list(layer.data) if getattr(layer, "multiscale", False) else [layer.data]


def layer_slide(layer) -> Slide:
    """A :class:`Slide` over an image layer's data (lazy; nothing is copied).

    The pixel size comes from our reader's metadata when the layer was opened with it.

    Raises
    ------
    InputError
        When the layer is not a 2-D grey or RGB image of uint8 / uint16 pixels.
    """
    meta = layer.metadata.get(META, {}) if isinstance(layer.metadata, dict) else {}
    levels = layer_levels(layer)
    if meta.get("file_levels"):  # our reader's display-only levels are not analysed
        levels = levels[:int(meta["file_levels"])]
    try:
        slide = open_slide(levels)
    except InputError as exc:
        raise InputError(f"layer {layer.name!r}: {str(exc).removeprefix('array: ')}") from None
    slide.mpp = meta.get("mpp")
    slide.name = layer.name
    if meta.get("path"):
        slide.path = Path(meta["path"])
    return slide


def transform_kwargs(layer, ndim: int = 2) -> dict:
    """The data-to-world transform of ``layer`` (its last ``ndim`` axes)."""
    out = {"scale": tuple(layer.scale[-ndim:]), "translate": tuple(layer.translate[-ndim:])}
    units = getattr(layer, "units", None)  # napari >= 0.6: world units must agree across layers
    if units is not None:
        out["units"] = tuple(str(u) for u in tuple(units)[-ndim:])
    rot = np.asarray(layer.rotate)[-ndim:, -ndim:]
    if not np.allclose(rot, np.eye(ndim)):
        out["rotate"] = rot
    shear = np.asarray(layer.shear)
    if shear.size and not np.allclose(shear, 0):
        out["shear"] = shear[-(ndim * (ndim - 1) // 2):]
    aff = np.asarray(layer.affine.affine_matrix)[-(ndim + 1):, -(ndim + 1):]
    if not np.allclose(aff, np.eye(ndim + 1)):
        out["affine"] = aff
    return out


def _to_level0(layer, world_pts: np.ndarray) -> np.ndarray:
    """World points (N, 2) -> level-0 pixel-edge coordinates (y, x) of an image layer."""
    return np.array([np.asarray(layer.world_to_data(p))[-2:] for p in world_pts]) + 0.5


def _bbox_region(level0: np.ndarray, shape) -> tuple[int, int, int, int]:
    H, W = shape
    y0, x0 = np.floor(level0.min(0)).astype(int)
    y1, x1 = np.ceil(level0.max(0)).astype(int)
    y0, x0, y1, x1 = max(0, y0), max(0, x0), min(H, y1), min(W, x1)
    if y1 - y0 < 2 or x1 - x0 < 2:
        raise InputError("the region does not overlap the image; pan to the image or draw "
                         "the rectangle over it")
    return int(y0), int(x0), int(y1), int(x1)


def visible_region(viewer, layer) -> tuple[int, int, int, int]:
    """Level-0 rectangle ``(y0, x0, y1, x1)`` of ``layer`` visible in the canvas.

    From the camera centre and zoom (screen pixels per world unit) and the canvas size;
    the corners go through the layer's world-to-data transform (scale, translate, ...).
    """
    if viewer.dims.ndisplay != 2:
        raise InputError("'current field of view' needs the 2-D view; switch off 3-D")
    cam = _napari_version_compat_camera(viewer)
    centre = np.asarray(cam.center, float)[-2:]
    half = np.asarray(canvas_size(viewer), float) / float(cam.zoom) / 2
    corners = np.array([centre + [sy * half[0], sx * half[1]] for sy in (-1, 1) for sx in (-1, 1)])
    shape = layer_levels(layer)[0].shape[:2]
    return _bbox_region(_to_level0(layer, corners), shape)


def shapes_region(shapes_layer, layer) -> tuple[int, int, int, int]:
    """Level-0 bounding rectangle of the selected shape (else the last one) of a Shapes layer."""
    if shapes_layer is None or len(shapes_layer.data) == 0:
        raise InputError("draw a rectangle in a Shapes layer first (or pick another region)")
    sel = sorted(shapes_layer.selected_data)
    verts = np.concatenate([np.asarray(shapes_layer.data[i])[:, -2:] for i in (sel or [-1])])
    world = np.array([np.asarray(shapes_layer.data_to_world(v))[-2:] for v in verts])
    shape = layer_levels(layer)[0].shape[:2]
    return _bbox_region(_to_level0(layer, world), shape)


# --------------------------------------------------------------------------- points
def _has_units() -> bool:
    import inspect

    from napari.layers import Points

    return "units" in inspect.signature(Points.__init__).parameters


def cell_features(cells: pd.DataFrame) -> pd.DataFrame:
    """Feature table of a cells layer: the cell table without coordinates, plus ``reviewed``."""
    f = cells.drop(columns=[c for c in _COORD_COLS if c in cells.columns]).reset_index(drop=True)
    if "reviewed" not in f.columns:
        f["reviewed"] = False
    f["reviewed"] = f["reviewed"].fillna(False).astype(bool)
    f["label"] = f["label"].astype(object).astype(str)
    for c in ("confidence", "p_blast", "p_atypical"):
        if c not in f.columns:
            f[c] = np.nan
    if "cell_id" not in f.columns or f["cell_id"].isna().any():
        f["cell_id"] = np.arange(1, len(f) + 1)
    f["cell_id"] = f["cell_id"].astype(np.int64)
    return f


def cell_coords(cells: pd.DataFrame) -> np.ndarray:
    """``(N, 2)`` napari data coordinates (row, col) of the cells' level-0 centres."""
    return np.column_stack([cells["y"].to_numpy(float), cells["x"].to_numpy(float)]).reshape(-1, 2) - 0.5




def point_size(cells: pd.DataFrame, default: float = 40.0) -> float:
    """Marker diameter in level-0 pixels: a quarter of the median cell box side."""
    if len(cells) and {"bbox_x0", "bbox_x1", "bbox_y0", "bbox_y1"} <= set(cells.columns):
        side = np.maximum(cells["bbox_x1"] - cells["bbox_x0"], cells["bbox_y1"] - cells["bbox_y0"])
        med = float(np.nanmedian(side))
        if math.isfinite(med) and med > 0:
            return max(4.0, med / 4)
    return default


def points_kwargs(cells: pd.DataFrame, image_layer=None, *, name: str = "cells",
                  classes=None, mpp: float | None = None, summary: dict | None = None,
                  size: float | None = None) -> dict:
    """Keyword arguments of ``viewer.add_points`` / ``napari.layers.Points`` for a cell table.

    One point per cell, ``features`` = the table (``cell_id, label, confidence, p_blast,
    p_atypical, prob_<CODE>..., reviewed``, plus the boxes), face colour by class, and
    the image layer's transform (else a ``(mpp, mpp)`` scale when the pixel size is known).
    """
    feats = cell_features(cells)
    classes = list(classes) if classes is not None else classes_of(feats)
    if image_layer is not None:
        tf = transform_kwargs(image_layer)
        image_name = image_layer.name
        if mpp is None:
            mpp = (image_layer.metadata or {}).get(META, {}).get("mpp")
    else:
        tf = {"scale": (mpp, mpp) if mpp else (1.0, 1.0)}
        if mpp and _has_units():
            tf["units"] = ("micrometer", "micrometer")
        image_name = None
    return dict(
        # napari cannot take an empty colour array: a field without white cells gets a
        # layer without points, coloured by class once cells are added
        data=cell_coords(cells), features=feats,
        face_color=class_colours(feats["label"]) if len(feats) else "white",
        border_color="white", border_width=0.08, size=size or point_size(cells), symbol="disc",
        canvas_size_limits=(3, 60), name=name, opacity=0.9,
        metadata={META: {"kind": "cells", "classes": classes, "mpp": mpp, "image": image_name,
                         "summary": summary or {}}},
        **tf,
    )


def is_cells_layer(layer) -> bool:
    """True for Points layers holding cells (ours, or any with a ``label`` feature)."""
    from napari.layers import Points

    return isinstance(layer, Points) and "label" in layer.features.columns


def append_cells(layer, new_cells: pd.DataFrame) -> None:
    """Append cells to a cells Points layer (one data, features and colour update)."""
    if new_cells is None or len(new_cells) == 0:
        return
    feats = cell_features(new_cells)
    if len(layer.data):
        old = layer.features
        feats = pd.concat([old, feats], ignore_index=True)
        colours = np.concatenate([np.asarray(layer.face_color), class_colours(new_cells["label"])])
        coords = np.concatenate([layer.data, cell_coords(new_cells)])
    else:
        colours, coords = class_colours(feats["label"]), cell_coords(new_cells)
    layer.data = coords
    layer.features = feats
    layer.face_color = colours


def replace_cells(layer, cells: pd.DataFrame) -> None:
    """Replace all points of a cells layer by ``cells``."""
    feats = cell_features(cells)
    if len(layer.data):
        layer.selected_data = set()
        layer.data = np.zeros((0, 2))
    layer.data = cell_coords(cells)
    layer.features = feats
    layer.face_color = class_colours(feats["label"]) if len(feats) else np.zeros((0, 4))


def reassign(layer, indices, code: str) -> list[int]:
    """Give the points ``indices`` the class ``code``, mark them reviewed, recolour them."""
    idx = sorted(int(i) for i in indices)
    if not idx:
        return []
    f = layer.features.copy()
    f["label"] = f["label"].astype(object)
    f.loc[idx, "label"] = code
    f.loc[idx, "reviewed"] = True
    f["label"] = f["label"].astype(str)
    colours = np.asarray(layer.face_color).copy()
    colours[idx] = _RGBA.get(code, _UNKNOWN_RGBA)
    layer.features = f
    layer.face_color = colours
    return idx


def confirm(layer, indices) -> list[int]:
    """Mark the points ``indices`` reviewed, keeping their classes (the reviewer agrees);
    an unclassified (``UNK``) cell takes the model's class, ``model_label``."""
    idx = sorted(int(i) for i in indices)
    if idx:
        f = layer.features.copy()
        if "model_label" in f:
            unk = [i for i in idx if f.at[i, "label"] == UNCLASSIFIED]
            if unk:
                f["label"] = f["label"].astype(object)
                f.loc[unk, "label"] = f.loc[unk, "model_label"].astype(str)
                colours = np.asarray(layer.face_color).copy()
                colours[unk] = class_colours(f.loc[unk, "label"])
        f.loc[idx, "reviewed"] = True
        layer.features = f
        if "model_label" in f and unk:
            layer.face_color = colours
    return idx


def delete_cells(layer, indices) -> None:
    """Remove the points ``indices`` (features and colours follow)."""
    idx = {int(i) for i in indices}
    if idx:
        layer.selected_data = idx
        layer.remove_selected()


def shortcut_codes(classes) -> list[str]:
    """Up to nine class codes for the keys Alt+1-9: the model's commonest classes first."""
    classes = list(classes)
    pref = [c for c in SHORTCUT_ORDER if c in classes] + [c for c in classes if c not in SHORTCUT_ORDER]
    return pref[:9]


#: modifier of the class keys: napari's own Points keys are the plain digits (1 deletes,
#: 2-5 switch modes), so Alt + digit reassigns and the status bar's hints stay true
CLASS_KEY_MODIFIER = "Alt"


def bind_class_keys(layer, classes) -> dict[str, str]:
    """Bind Alt + number keys on a cells layer: Alt+k reassigns the selected cells to a
    class. napari's plain digit keys (delete, mode switches) keep working. Returns
    ``{key: code}`` with keys as napari names them (``"Alt-1"``)."""
    keys = {}
    for k, code in enumerate(shortcut_codes(classes), start=1):
        def _assign(lyr, code=code):
            reassign(lyr, lyr.selected_data, code)

        key = f"{CLASS_KEY_MODIFIER}-{k}"
        layer.bind_key(key, _assign, overwrite=True)
        keys[key] = code
    return keys


def cells_from_layer(layer) -> pd.DataFrame:
    """The cell table of a cells layer as it is now (moved, reassigned, deleted cells).

    ``x, y`` are level-0 pixel coordinates taken from the point positions.
    """
    f = layer.features.reset_index(drop=True).copy()
    data = np.asarray(layer.data, float).reshape(-1, layer.data.shape[1] if len(layer.data) else 2)
    xy = pd.DataFrame({"cell_id": f["cell_id"] if "cell_id" in f else np.arange(1, len(f) + 1),
                       "x": data[:, -1] + 0.5, "y": data[:, -2] + 0.5})
    rest = f.drop(columns=[c for c in ("cell_id",) if c in f.columns])
    out = pd.concat([xy, rest], axis=1)
    if "label" in out:
        out["label"] = out["label"].astype(str)
    return out


def layer_meta(layer) -> dict:
    md = layer.metadata if isinstance(layer.metadata, dict) else {}
    return md.get(META, {})


def layer_classes(layer) -> list[str]:
    """The model's classes of a cells layer (metadata, else the ``prob_`` columns)."""
    return list(layer_meta(layer).get("classes") or classes_of(layer.features))


def layer_differential(layer, exclude=tuple(sorted(NON_LEUKOCYTE_CODES))) -> dict:
    """:func:`count.differential` of a cells layer's *current* features."""
    f = layer.features
    labels = f["label"].astype(str).tolist() if "label" in f else []
    pb = f["p_blast"].to_numpy(float) if "p_blast" in f else None
    pa = f["p_atypical"].to_numpy(float) if "p_atypical" in f else None
    return differential(labels, layer_classes(layer) or None, exclude=exclude, p_blast=pb, p_atypical=pa)


# --------------------------------------------------------------------------- labels
def labels_kwargs(labels, image_layer=None, *, name: str = "cell masks", slide: Slide | None = None,
                  small: int = 4096 * 4096, cells: pd.DataFrame | None = None, levels=()) -> dict:
    """Keyword arguments of ``viewer.add_labels`` for the pipeline's mask array.

    Small masks become a numpy array (editable); large ones stay lazy, as a pyramid of
    the analysis' coarser mask levels (``levels``, painted with the masks; else strided
    views of the sparse array), so a zoomed-out view reads a small array, not the whole
    slide's masks. With ``cells`` each mask takes its cell's class colour.
    """
    import dask.array as da

    H, W = labels.shape
    tf = transform_kwargs(image_layer) if image_layer is not None else {}
    if H * W <= small:
        data, multiscale = np.asarray(labels[:]), False
    else:
        base = da.from_zarr(labels)
        # napari reads the level it shows when the layer is added, on the GUI thread: the
        # small levels come as arrays, and what a first Labels layer imports (dask's first
        # compute imports dask.distributed, ~0.3 s; napari's default label colours import
        # scikit-image's colour module and SciPy's linalg, ~0.1 s) is imported here, in the
        # worker that prepares the layer
        da.zeros(1).compute()
        from napari.utils.colormaps import label_colormap
        label_colormap(2)
        if levels:
            data = [base] + [np.asarray(a[:]) if a.size <= small else da.from_zarr(a) for _, a in levels]
        else:
            downs = slide.downsamples if slide is not None and len(slide.levels) > 1 else [1]
            data = [base] + [base[::int(round(d)), ::int(round(d))] for d in downs[1:] if round(d) >= 2]
        multiscale = len(data) > 1
        if not multiscale:
            data = base
    out = dict(data=data, multiscale=multiscale, name=name, opacity=0.35, **tf)
    if cells is not None:
        out["colormap"] = mask_colormap(cells)
    return out


def mask_colormap(cells: pd.DataFrame):
    """Mask colours of the cells' classes (label = ``cell_id``), as their points are coloured."""
    from napari.utils.colormaps import DirectLabelColormap

    colours = {int(cid): _RGBA.get(str(lab), _UNKNOWN_RGBA)
               for cid, lab in zip(cells["cell_id"], cells["label"])}
    return DirectLabelColormap(color_dict={None: (0.6, 0.6, 0.6, 1.0), 0: (0, 0, 0, 0), **colours})


# --------------------------------------------------------------------------- counting areas
def area_map_kwargs(areas, image_layer=None, *, name: str = "counting areas",
                    per_region: int = 8) -> dict:
    """Keyword arguments of ``viewer.add_image`` for an :class:`~napari_bm_cells.areas.AreaMap`,
    placed over exactly the mapped part of the image: regions unfit for counting tinted
    red, fair ones yellow, fit ones left clear (:func:`area_colormap`), so the cells where
    one counts keep their stain's colours.

    The regions along the far edges are clipped to the image; drawn one data pixel per
    region they would spill past it. So the map is drawn on a finer grid (about
    ``per_region`` pixels per region side) whose pixels tile the mapped extent exactly,
    each taking the score of the region its centre falls in.
    """
    rp = float(areas.region_px)
    grids, steps = [], []
    for n_regions, lo, hi in zip(areas.shape, areas.origin, areas.extent):
        length = float(hi - lo)
        n = max(1, int(round(length / rp * per_region)))
        step = length / n
        grids.append(np.minimum(((np.arange(n) + 0.5) * step // rp).astype(int), n_regions - 1))
        steps.append(step)
    data = np.asarray(areas.scores, np.float32)[np.ix_(*grids)]
    # napari centres data pixel k on k: pixel k spans level-0 [origin + k * step, ...)
    t = [o + st / 2 - 0.5 for o, st in zip(areas.origin, steps)]
    tf = transform_kwargs(image_layer) if image_layer is not None else {"scale": (1.0, 1.0), "translate": (0.0, 0.0)}
    s, T = tf.pop("scale"), tf.pop("translate")
    tf.update(scale=(s[0] * steps[0], s[1] * steps[1]), translate=(T[0] + s[0] * t[0], T[1] + s[1] * t[1]))
    return dict(data=data, name=name, colormap=area_colormap(),
                contrast_limits=(0.0, 1.0), opacity=1.0, blending="translucent",
                metadata={META: {"kind": "areas"}}, **tf)


def area_colormap():
    """Counting-area score 0-1 -> translucent red (0), yellow (0.5), clear (from 0.75)."""
    from napari.utils.colormaps import Colormap

    return Colormap(colors=[[0.85, 0.1, 0.1, 0.45], [1.0, 0.85, 0.0, 0.25], [1.0, 1.0, 1.0, 0.0],
                            [1.0, 1.0, 1.0, 0.0]],
                    controls=[0.0, 0.5, 0.75, 1.0], name="counting areas")


# --------------------------------------------------------------------------- crops
def cell_centre_level0(image_layer, points_layer, index: int) -> tuple[float, float]:
    """Level-0 pixel position (y, x) of point ``index`` on the image layer (through world
    coordinates, so differing transforms are fine)."""
    p = np.asarray(points_layer.data[int(index)], float)
    world = np.asarray(points_layer.data_to_world(p))
    y, x = np.asarray(image_layer.world_to_data(world))[-2:] + 0.5
    return float(y), float(x)


def cell_crop(image_layer, points_layer, index: int, side: float | None = None,
              slide: Slide | None = None) -> np.ndarray:
    """RGB crop of ``side`` level-0 pixels around point ``index``, cut from the image layer."""
    slide = slide or layer_slide(image_layer)
    y, x = cell_centre_level0(image_layer, points_layer, index)
    side = float(side or default_crop_side(points_layer, index))
    return slide_square(slide, y, x, side)


def image_layer_for(viewer, points_layer):
    """The image layer a cells layer was computed on (by the name stored with it), else
    the first image layer, else None."""
    from napari.layers import Image

    name = layer_meta(points_layer).get("image") if points_layer is not None else None
    if name and name in viewer.layers:
        return unwrap(viewer.layers[name])
    imgs = [unwrap(lyr) for lyr in viewer.layers if isinstance(lyr, Image)]
    return imgs[0] if imgs else None


#: a focused cell fills about this fraction of the canvas' shorter side
FOCUS_FRACTION = 0.25


def focus_cell(viewer, points_layer, index: int) -> None:
    """Select point ``index`` (only it), centre the camera on it and zoom in until the
    cell spans about :data:`FOCUS_FRACTION` of the canvas (never zooming out)."""
    i = int(index)
    points_layer.selected_data = {i}
    world = np.asarray(points_layer.data_to_world(points_layer.data[i]))
    viewer.camera.center = tuple(world[-2:])
    f = points_layer.features
    if {"bbox_x0", "bbox_x1", "bbox_y0", "bbox_y1"} <= set(f.columns):
        side = float(max(f.at[i, "bbox_x1"] - f.at[i, "bbox_x0"], f.at[i, "bbox_y1"] - f.at[i, "bbox_y0"]))
    else:
        side = 4.0 * float(np.ravel(points_layer.size)[i] if np.size(points_layer.size) > 1 else points_layer.size)
    side_world = side * float(np.abs(points_layer.scale[-1]))
    h, w = canvas_size(viewer)
    if np.isfinite(side_world) and side_world > 0 and min(h, w) > 0:
        zoom = FOCUS_FRACTION * min(h, w) / side_world
        if zoom > viewer.camera.zoom:
            viewer.camera.zoom = zoom


def explain_point(image_layer, points_layer, index: int, classifier, method: str = "gradcam",
                  target=None) -> tuple[np.ndarray, dict]:
    """Attribution map of cell ``index`` as ``(map, image-layer kwargs)``.

    The crop is cut as the pipeline cut it (the point is the cell's centre, the side the
    run's field of view), adapted with the run's colour adaptation, and explained with
    :func:`explain.explain_crop`; the kwargs place the map exactly over that square of
    the image (``viewer.add_image(map, **kwargs)``).
    """
    from ..colour import SlideColour
    from ..crop import resize_square
    from ..explain import explain_crop

    side = default_crop_side(points_layer, index)
    y, x = cell_centre_level0(image_layer, points_layer, index)
    crop = slide_square(layer_slide(image_layer), y, x, side)
    run = (layer_meta(points_layer).get("summary") or {}).get("classifier", {})
    amap, label, probs = explain_crop(classifier, resize_square(crop, classifier.input_size),
                                      method=method, target=target,
                                      colour=SlideColour.from_info(run.get("colour")))
    n = amap.shape[0]
    s = side / n  # level-0 px per map pixel
    sc, tr = np.asarray(image_layer.scale[-2:], float), np.asarray(image_layer.translate[-2:], float)
    # map pixel r covers level-0 edges [y0 + r s, y0 + (r + 1) s]; data = edge - 0.5
    y0, x0 = y - side / 2, x - side / 2
    kwargs = {"scale": tuple(sc * s), "translate": tuple(tr + sc * (np.array([y0, x0]) + s / 2 - 0.5)),
              "colormap": "turbo", "opacity": 0.35, "blending": "translucent",
              "contrast_limits": (0.0, 1.0),
              "metadata": {META: {"explained_cell": int(points_layer.features["cell_id"].iloc[index])
                                  if "cell_id" in points_layer.features else int(index),
                                  "method": method, "label": label}}}
    units = transform_kwargs(image_layer).get("units")
    if units is not None:  # the image's units, or napari stops using units for all layers
        kwargs["units"] = units
    return amap, kwargs


def default_crop_side(points_layer, index: int | None = None) -> float:
    """Crop side in level-0 px: the classifier's field of view of the run, else twice the
    cell's box, else 200 px."""
    meta = layer_meta(points_layer)
    side = (meta.get("summary") or {}).get("classifier", {}).get("crop_px_level0")
    if side:
        return float(side)
    f = points_layer.features
    if index is not None and {"bbox_x0", "bbox_x1", "bbox_y0", "bbox_y1"} <= set(f.columns):
        r = f.iloc[int(index)]
        s = max(r["bbox_x1"] - r["bbox_x0"], r["bbox_y1"] - r["bbox_y0"])
        if np.isfinite(s) and s > 0:
            return float(2 * s)
    return 200.0


# --------------------------------------------------------------------------- plots / export
def layer_summary(layer) -> dict:
    """The run's summary updated with the differential of the layer's current cells."""
    meta = layer_meta(layer)
    out = dict(meta.get("summary") or {})
    out.update(layer_differential(layer))
    f = layer.features
    out["n_reviewed"] = int(f["reviewed"].sum()) if "reviewed" in f else 0
    out["mpp"] = meta.get("mpp", out.get("mpp"))
    return out


def export_results(layer, folder, figure=None, stem: str = "cells", image_layer=None) -> dict[str, Path]:
    """Write a cells layer as it is now, as the CLI writes an analysis
    (:func:`~napari_bm_cells.export.write_results`: ``cells.csv``, ``summary.json``,
    ``cells.geojson``, ``report.html``; the report's thumbnails come from
    ``image_layer``; ``differential.png`` is ``figure`` when given)."""
    from ..export import write_results
    from ..pipeline import AnalysisResult

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cells = cells_from_layer(layer)
    summary = layer_summary(layer)
    meta = layer_meta(layer)
    slide = None
    if image_layer is not None:
        try:
            slide = layer_slide(image_layer)
        except InputError:
            slide = None
    res = AnalysisResult(cells, summary, slide=slide, areas=meta.get("areas"),
                         outlines=meta.get("outlines") or {})
    out = write_results(res, folder, histogram=figure is None)
    if stem != "cells":
        for key in ("cells", "geojson"):
            out[key] = out[key].rename(out[key].with_name(stem + out[key].suffix))
    if figure is not None:  # the panel's own chart, as shown
        out["png"] = folder / "differential.png"
        figure.savefig(out["png"], facecolor="white")
    return out


def export_corrections(points_layer, image_layer, folder, side: float | None = None) -> list[Path]:
    """Save crops of the reviewed cells into ``folder/<CODE>/`` (for retraining) and a
    ``corrections.csv`` listing them with the model's original prediction."""
    from PIL import Image

    from ..export import atomic_write

    folder = Path(folder)
    f = points_layer.features
    if "reviewed" not in f or not f["reviewed"].any():
        raise InputError("no reviewed cells yet: reassign cells (number keys or the "
                         "inspector) before exporting corrections")
    slide = layer_slide(image_layer)
    probs = prob_columns(f)
    stem = Path(str(image_layer.name)).stem.replace(" ", "_")
    rows, paths = [], []
    for i in np.flatnonzero(f["reviewed"].to_numpy(bool)):
        r = f.iloc[i]
        code = str(r["label"])
        crop = cell_crop(image_layer, points_layer, i, side or default_crop_side(points_layer, i), slide)
        p = folder / code / f"{stem}_cell{int(r['cell_id'])}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(p)
        paths.append(p)
        pred = classes_of(f)[int(np.argmax(r[probs].to_numpy(float)))] if probs else ""
        y, x = np.asarray(points_layer.data[i])[-2:] + 0.5
        rows.append({"file": str(p.relative_to(folder)), "cell_id": int(r["cell_id"]), "label": code,
                     "predicted": pred, "x": x, "y": y, "image": str(image_layer.name)})
    atomic_write(folder / "corrections.csv", pd.DataFrame(rows).to_csv(index=False))
    return paths


def describe(code: str) -> str:
    """``"NGS - segmented neutrophil"``."""
    return f"{code} - {full_name(code)}" if code in CLASSES else code
