"""Test helpers: slide-sized images built from real annotated fields, pyramid writers and a
private Xvfb display (for tests, benchmarks and the screenshot script).

The real data (see ``../shared/data/README.md``) is never copied into the repository:
it is found through the ``BM_CELLS_DATA`` environment variable.
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np

#: data sets :func:`build_mosaic` knows by name, relative to :func:`data_dir`
_SOURCES = {"bccd": "bccd", "txl-pbc": "txl-pbc/data.yaml"}


def data_dir() -> Path:
    """Folder with the real data: ``$BM_CELLS_DATA`` or ``<repo>/../shared/data``.

    Raises
    ------
    FileNotFoundError
        When the folder does not exist (the message says how to point to it).
    """
    env = os.environ.get("BM_CELLS_DATA")
    d = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: real-data folder not found; set BM_CELLS_DATA to the "
                                "folder holding bccd/, txl-pbc/, pbc/")
    return d


@functools.lru_cache(maxsize=8)
def _read_set(path: str):
    from napari_bm_cells.training.det_data import read_detection_set

    return read_detection_set(path)


def _fit_field(img: np.ndarray, boxes: np.ndarray, hw: tuple[int, int]):
    """Centre-crop / pad (with the median border colour) ``img`` to ``hw``; shift boxes."""
    h, w = hw
    H, W = img.shape[:2]
    cy, cx = max(0, (H - h) // 2), max(0, (W - w) // 2)
    img = img[cy:cy + h, cx:cx + w]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    out = np.empty((h, w, 3), np.uint8)
    out[:] = np.median(border, axis=0).astype(np.uint8)
    py, px = (h - img.shape[0]) // 2, (w - img.shape[1]) // 2
    out[py:py + img.shape[0], px:px + img.shape[1]] = img
    if len(boxes):
        orig = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        boxes = boxes - [cx - px, cy - py, cx - px, cy - py]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(px, px + img.shape[1])
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(py, py + img.shape[0])
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        boxes = boxes[area >= 0.5 * np.maximum(orig, 1e-9)]  # keep cells mostly inside
    return out, boxes


def build_mosaic(n_rows: int, n_cols: int, source: str = "bccd", split="test", seed: int = 0,
                 field_hw: tuple[int, int] = (480, 640), gap: int = 0):
    """Tile real annotated fields into one large RGB image with its white-cell boxes.

    Parameters
    ----------
    n_rows, n_cols : int
        Grid of fields.
    source : str or path
        ``"bccd"`` (Pascal VOC), ``"txl-pbc"`` (YOLO) or a path to any detection set.
    split : str or sequence of str
        Split(s) to take fields from, e.g. ``"test"``, ``("test", "val")`` or ``"test+val"``.
    seed : int
        Order in which fields are drawn; they repeat when the grid needs more.
    field_hw : (int, int)
        Size of each grid cell. Fields of exactly this size are preferred; others are
        centre-cropped or padded with their median border colour (never resized, so
        cells keep their real size).
    gap : int
        Pixels between fields, filled with the first field's border colour.

    Returns
    -------
    image : numpy.ndarray
        ``(n_rows * h + (n_rows - 1) * gap, n_cols * w + (n_cols - 1) * gap, 3)`` uint8.
    boxes : pandas.DataFrame
        WBC boxes in mosaic pixels: ``x0, y0, x1, y1`` and ``field`` (source image path).
    """
    import pandas as pd
    from PIL import Image

    path = data_dir() / _SOURCES[source] if source in _SOURCES else Path(source)
    sets = _read_set(str(path))
    splits = split.split("+") if isinstance(split, str) else list(split)
    missing = [s for s in splits if s not in sets]
    if missing:
        raise ValueError(f"{path}: no split {missing}; has {sorted(sets)}")
    samples = [s for sp in splits for s in sets[sp]]
    fitting = [s for s in samples if (s.height, s.width) == tuple(field_hw)]
    pool = fitting or samples
    order = np.random.default_rng(seed).permutation(len(pool))
    h, w = field_hw
    H, W = n_rows * h + (n_rows - 1) * gap, n_cols * w + (n_cols - 1) * gap
    image, rows, fill = None, [], None
    for k in range(n_rows * n_cols):
        s = pool[order[k % len(pool)]]
        with Image.open(s.image) as im:
            field = np.asarray(im.convert("RGB"))
        wbc = np.array([[b.x0, b.y0, b.x1, b.y1] for b in s.boxes if b.cls == "WBC"],
                       np.float64).reshape(-1, 4)
        field, wbc = _fit_field(field, wbc, (h, w))
        if image is None:
            fill = np.median(np.concatenate([field[0], field[-1]]), axis=0).astype(np.uint8)
            image = np.empty((H, W, 3), np.uint8)
            image[:] = fill
        y, x = (k // n_cols) * (h + gap), (k % n_cols) * (w + gap)
        image[y:y + h, x:x + w] = field
        rows += [(bx0 + x, by0 + y, bx1 + x, by1 + y, str(s.image)) for bx0, by0, bx1, by1 in wbc]
    boxes = pd.DataFrame(rows, columns=["x0", "y0", "x1", "y1", "field"])
    return image, boxes


#: the kinds of area :func:`build_area_mosaic` builds, in quadrant order (row by row)
AREA_KINDS = ("crowded", "blurred", "empty", "good")


def build_area_mosaic(fields: int = 4, source: str = "bccd", split="test+val", seed: int = 0,
                      blur_sigma: float = 4.0, kinds=AREA_KINDS):
    """A 2 x 2 mosaic of quadrants of real fields, each ``fields`` x ``fields`` fields, one
    quadrant per kind of area: ``good`` (fields as they are), ``blurred`` (Gaussian blur of
    ``blur_sigma`` px: out of focus), ``empty`` (bare glass: haemodiluted or a gap) and
    ``crowded`` (three fields laid over each other, darkest pixel wins: cells overlap,
    no glass between them, as in a thick area).

    Returns
    -------
    image : (H, W, 3) uint8
    boxes : pandas.DataFrame
        White-cell boxes (``x0 y0 x1 y1 field``) of the good and blurred quadrants (the
        crowded one has cells of three fields; its boxes are those of the first).
    quadrants : dict
        Kind -> level-0 (y0, x0, y1, x1).
    """
    import pandas as pd
    from skimage.filters import gaussian

    parts, boxes, quadrants = [], [], {}
    for q, kind in enumerate(kinds):
        img, b = build_mosaic(fields, fields, source, split, seed=seed + 7 * q)
        if kind == "blurred":
            img = np.clip(gaussian(img, sigma=blur_sigma, channel_axis=-1, preserve_range=True),
                          0, 255).astype(np.uint8)
        elif kind == "empty":
            glass = np.quantile(img.reshape(-1, 3), 0.95, axis=0)
            noise = np.random.default_rng(seed + q).normal(0, 2.0, img.shape)
            img = np.clip(glass + noise, 0, 255).astype(np.uint8)
            b = b.iloc[:0]
        elif kind == "crowded":
            for extra in (1, 2):
                other, _ = build_mosaic(fields, fields, source, split, seed=seed + 7 * q + 100 * extra)
                img = np.minimum(img, np.roll(other, (97 * extra, 151 * extra), axis=(0, 1)))
        h, w = img.shape[:2]
        y, x = (q // 2) * h, (q % 2) * w
        quadrants[kind] = (y, x, y + h, x + w)
        parts.append(img)
        if kind != "empty":
            boxes.append(b.assign(x0=b.x0 + x, x1=b.x1 + x, y0=b.y0 + y, y1=b.y1 + y))
    image = np.concatenate([np.concatenate(parts[:2], 1), np.concatenate(parts[2:], 1)], 0)
    return image, pd.concat(boxes, ignore_index=True), quadrants


def _half(a: np.ndarray) -> np.ndarray:
    """2x2 mean (odd sizes padded by repeating the last row / column), uint8."""
    if a.shape[0] % 2 or a.shape[1] % 2:
        a = np.pad(a, ((0, a.shape[0] % 2), (0, a.shape[1] % 2), (0, 0)), mode="edge")
    s = a[0::2, 0::2].astype(np.uint16) + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


def _level_shapes(shape, n_levels):
    h, w = shape[:2]
    out = [(h, w)]
    for _ in range(n_levels - 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        out.append((h, w))
    return out


def _level_bands(image, level: int, rows: int):
    """Yield ``(y0, band)``: ``rows``-high bands of pyramid ``level`` (iterated 2x2 means),
    each computed from the matching band of ``image`` (numpy, dask or zarr array)."""
    f = 2 ** level
    H = _level_shapes(image.shape, level + 1)[-1][0]
    for y0 in range(0, H, rows):
        band = np.asarray(image[y0 * f:(y0 + rows) * f])[..., :3]
        for _ in range(level):
            band = _half(band)
        yield y0, band


def write_ome_zarr(image, path, n_levels: int = 3, chunk: int = 512,
                   mpp: float | None = None) -> Path:
    """Write an RGB image as a pyramidal OME-Zarr (NGFF v0.4, axes ``c, y, x``).

    Levels are halved by 2x2 means and written band by band, so memory stays at a few
    bands whatever the image size (``image`` may be a dask or zarr array).

    Parameters
    ----------
    image : (Y, X, 3) uint8 array
    path : str or Path
        Output ``.zarr`` folder (replaced if it exists).
    n_levels : int
        Pyramid levels including level 0.
    chunk : int
        Chunk side in pixels.
    mpp : float, optional
        Microns per pixel at level 0, stored as the axis scale in micrometers.
    """
    import zarr

    path = Path(path)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    unit = {"unit": "micrometer"} if mpp else {}
    datasets = []
    for lvl, (h, w) in enumerate(_level_shapes(image.shape, n_levels)):
        z = root.create_array(str(lvl), shape=(3, h, w), chunks=(3, chunk, chunk), dtype="uint8")
        for y0, band in _level_bands(image, lvl, chunk):
            z[:, y0:y0 + band.shape[0]] = np.moveaxis(band, -1, 0)
        s = (mpp or 1.0) * 2 ** lvl
        datasets.append({"path": str(lvl),
                         "coordinateTransformations": [{"type": "scale", "scale": [1.0, s, s]}]})
    root.attrs["multiscales"] = [{
        "version": "0.4", "name": path.stem,
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", **unit},
                 {"name": "x", "type": "space", **unit}],
        "datasets": datasets}]
    root.attrs["omero"] = {"version": "0.4", "rdefs": {"model": "color"}, "channels": [
        {"label": n, "color": c, "active": True, "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
        for n, c in (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))]}
    return path


def write_pyramidal_tiff(image, path, n_levels: int = 3, tile: int = 256,
                         mpp: float | None = None, compression: str | None = "jpeg") -> Path:
    """Write an RGB image as a tiled pyramidal TIFF (reduced levels in SubIFDs).

    Tiles are generated band by band (see :func:`write_ome_zarr`).

    Parameters
    ----------
    image : (Y, X, 3) uint8 array
    path : str or Path
    n_levels : int
        Pyramid levels including level 0.
    tile : int
        Tile side (a multiple of 16).
    mpp : float, optional
        Microns per pixel, stored as X/YResolution in pixels per centimetre.
    compression : str or None
        tifffile compression (``"jpeg"``, ``"zlib"``, ``None``...).
    """
    import tifffile

    path = Path(path)

    def tiles(lvl):
        for _, band in _level_bands(image, lvl, tile):
            for x0 in range(0, band.shape[1], tile):
                t = band[:, x0:x0 + tile]
                yield np.pad(t, ((0, tile - t.shape[0]), (0, tile - t.shape[1]), (0, 0)))

    shapes = _level_shapes(image.shape, n_levels)
    with tifffile.TiffWriter(path, bigtiff=image.shape[0] * image.shape[1] * 3 > 2**31) as tif:
        for lvl, (h, w) in enumerate(shapes):
            res = {"resolution": (1e4 / mpp / 2**lvl,) * 2, "resolutionunit": "CENTIMETER"} if mpp else {}
            tif.write(tiles(lvl), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile),
                      photometric="rgb", compression=compression, metadata=None,
                      subifds=n_levels - 1 if lvl == 0 else None,
                      subfiletype=1 if lvl else 0, **res)
    return path


def ensure_display(first: int = 97, last: int = 200) -> bool:
    """An X display for napari's OpenGL canvas: ``$DISPLAY``, else a private Xvfb.

    The Xvfb is watched by a small shell loop that ends it (within a second) after this
    process exits: killing it while Qt is still connected would make Qt abort the
    process. Returns False when there is no display and no Xvfb to start.
    """
    import os
    import shutil
    import subprocess
    import time

    if os.environ.get("DISPLAY"):
        return True
    xvfb = shutil.which("Xvfb")
    if not xvfb:
        return False
    for n in range(first, last):
        if os.path.exists(f"/tmp/.X{n}-lock") or os.path.exists(f"/tmp/.X11-unix/X{n}"):
            continue
        watch = (f'"{xvfb}" :{n} -screen 0 1920x1200x24 -nolisten tcp >/dev/null 2>&1 & x=$!; '
                 f'while kill -0 {os.getpid()} 2>/dev/null && kill -0 $x 2>/dev/null; do sleep 1; done; '
                 'kill $x 2>/dev/null')
        proc = subprocess.Popen(["sh", "-c", watch], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if os.path.exists(f"/tmp/.X11-unix/X{n}") or proc.poll() is not None:
                break
            time.sleep(0.05)
        if proc.poll() is None and os.path.exists(f"/tmp/.X11-unix/X{n}"):
            os.environ["DISPLAY"] = f":{n}"
            return True
    return False
