"""Reading slides: pyramidal TIFF / SVS / OME-TIFF, (OME-)Zarr, JPEG / PNG and arrays.

Every format becomes a :class:`Slide`: a list of lazily read ``(Y, X, 3)`` uint8 dask
arrays (level 0 first) plus the pixel size when the file states it. Regions are read
in level-0 coordinates at any downsample from the best pyramid level.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, first_line

SLIDE_SUFFIXES = (".zarr", ".ome.zarr", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".svs",
                  ".jpg", ".jpeg", ".png", ".bmp")
_TIFF_SUFFIXES = (".tif", ".tiff", ".svs")
_PIL_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
#: micrometres per unit of the OME axis / physical-size units we understand
_UM_PER_UNIT = {"micrometer": 1.0, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0,
                "nanometer": 1e-3, "nm": 1e-3, "millimeter": 1e3, "mm": 1e3}
_FIX_FORMAT = "save it as RGB uint8 (or uint16) TIFF, OME-Zarr, JPEG or PNG"


@dataclass
class Slide:
    """A lazily read RGB image pyramid.

    Attributes
    ----------
    path : Path or None
        Source file (``None`` for in-memory arrays).
    levels : list of dask.array.Array or numpy.ndarray
        ``(Y, X, 3)`` uint8 arrays, level 0 (full resolution) first: lazy dask arrays for
        files, numpy for in-memory RGB uint8 images and small JPEG/PNG fields (dask,
        scipy.sparse and dask.distributed are then never imported: ~45 MB less memory).
    downsamples : list of float
        Level-0 width divided by each level's width (1.0 for level 0).
    mpp : float or None
        Microns per pixel at level 0 when the file states it.
    name : str
        File name, or ``"array"``.
    """

    path: Path | None
    levels: list
    downsamples: list[float]
    mpp: float | None
    name: str
    #: per level, an optional direct reader ``(y0, y1, x0, x1) -> (h, w, 3) uint8`` that
    #: bypasses dask (OME-Zarr RGB uint8 levels: 2-3x faster for the pipeline's block reads)
    readers: list | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(Y, X)`` of level 0."""
        return tuple(int(s) for s in self.levels[0].shape[:2])

    @property
    def tile_shape(self) -> tuple[int, int] | None:
        """``(rows, cols)`` of level 0's storage tiles (zarr chunks or TIFF tiles, at least
        ~256 px), or None for in-memory images, where any window is equally cheap."""
        lvl = self.levels[0]
        return None if isinstance(lvl, np.ndarray) else tuple(int(c) for c in lvl.chunksize[:2])

    def level_for(self, downsample: float) -> int:
        """Index of the coarsest level whose downsample is <= ``downsample`` (+1 %)."""
        ok = [i for i, d in enumerate(self.downsamples) if d <= downsample * 1.01]
        return max(ok, key=lambda i: self.downsamples[i]) if ok else 0

    def read_region(self, y0: float, x0: float, y1: float, x1: float,
                    downsample: float = 1.0) -> np.ndarray:
        """Read a region given in level-0 pixels, returned at ``downsample``.

        Parameters
        ----------
        y0, x0, y1, x1 : float
            Region in level-0 pixel coordinates; parts outside the image are filled by
            repeating the edge pixels.
        downsample : float
            Output scale relative to level 0 (2 = half size; < 1 upsamples).

        Returns
        -------
        numpy.ndarray
            ``(round((y1 - y0) / d), round((x1 - x0) / d), 3)`` uint8, read from the best
            pyramid level and resized (anti-aliased) by the remaining factor.
        """
        d = float(downsample)
        if d <= 0 or y1 <= y0 or x1 <= x0:
            raise ValueError(f"empty region ({y0}, {x0}, {y1}, {x1}) or downsample {d} <= 0")
        out_h, out_w = max(1, round((y1 - y0) / d)), max(1, round((x1 - x0) / d))
        li = self.level_for(d)
        lvl = self.levels[li]
        if self.readers and self.readers[li] is not None:
            lvl = _DirectLevel(lvl.shape, self.readers[li])
        sy, sx = self.shape[0] / lvl.shape[0], self.shape[1] / lvl.shape[1]
        ly0, lx0 = y0 / sy, x0 / sx  # region origin in level pixels
        fy, fx = sy / d, sx / d  # output pixels per level pixel
        if abs(fy - 1) < 1e-3 and abs(fx - 1) < 1e-3:
            return _read_padded(lvl, round(ly0), round(lx0), out_h, out_w)
        # read the covering window plus a margin for the anti-aliasing filter, blur it
        # when shrinking (as skimage's resize does), then sample output pixel centres
        from skimage.filters import gaussian
        from skimage.transform import warp

        sig = (max(0.0, (1 / fy - 1) / 2), max(0.0, (1 / fx - 1) / 2))
        my, mx = math.ceil(4 * sig[0]) + 2, math.ceil(4 * sig[1]) + 2
        wy0, wx0 = math.floor(ly0) - my, math.floor(lx0) - mx
        wy1, wx1 = math.ceil(ly0 + out_h / fy) + my, math.ceil(lx0 + out_w / fx) + mx
        win = _read_padded(lvl, wy0, wx0, wy1 - wy0, wx1 - wx0).astype(np.float32)
        if max(sig) > 0:
            win = gaussian(win, sigma=(*sig, 0), mode="nearest", preserve_range=True)
        # output (col, row) -> window (x, y), pixel centres at +0.5
        m = np.array([[1 / fx, 0, lx0 - wx0 + 0.5 / fx - 0.5],
                      [0, 1 / fy, ly0 - wy0 + 0.5 / fy - 0.5], [0, 0, 1]])
        res = warp(win, m, output_shape=(out_h, out_w), order=1, mode="edge", preserve_range=True)
        return np.clip(np.rint(res), 0, 255).astype(np.uint8)


class _DirectLevel:
    """A level read through its direct reader (see :attr:`Slide.readers`)."""

    def __init__(self, shape, reader):
        self.shape, self.reader = shape, reader


def read_thumbnail(slide: Slide, region=None, max_side: int = 1024) -> tuple[np.ndarray, float]:
    """A thumbnail of ``region`` (level-0 (y0, x0, y1, x1), default the whole slide; long
    side about ``max_side``) and its downsample (level-0 px per thumbnail px), read
    from the nearest pyramid level in strips and subsampled without filtering (much
    cheaper than an anti-aliased resize of the whole region; masks and colour statistics
    need no more)."""
    ry0, rx0, ry1, rx1 = (int(v) for v in (region or (0, 0, *slide.shape)))
    td = max(1.0, max(ry1 - ry0, rx1 - rx0) / max_side)
    ds = float(slide.downsamples[slide.level_for(td)])
    k = max(1, int(td / ds))
    step = ds * k  # level-0 pixels per thumbnail pixel
    strip = max(1, 512 // k) * k  # level pixels per strip, a multiple of k
    rows = []
    y = ry0
    while y < ry1:
        y_end = min(ry1, y + strip * ds)
        rows.append(slide.read_region(y, rx0, y_end, rx1, downsample=ds)[::k, ::k])
        y = y_end
    return np.concatenate(rows, 0), step


def _read_padded(arr, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """``arr[y0:y0+h, x0:x0+w]`` with out-of-image parts filled by edge padding."""
    rows = np.clip(np.arange(y0, y0 + h), 0, arr.shape[0] - 1)
    cols = np.clip(np.arange(x0, x0 + w), 0, arr.shape[1] - 1)
    if isinstance(arr, _DirectLevel):
        got = arr.reader(int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    else:
        # synchronous: no thread-pool hand-off for small reads (2x faster for a 330 px
        # window) and never a distributed client's scheduler inside a batch worker
        got = np.asarray(arr[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].compute(scheduler="synchronous"))
    if got.shape[:2] != (h, w):  # repeat the edge rows/columns (15x faster than a gather)
        top = min(max(0, int(rows[0]) - y0), h - got.shape[0])
        left = min(max(0, int(cols[0]) - x0), w - got.shape[1])
        pad = ((top, h - got.shape[0] - top), (left, w - got.shape[1] - left))
        return np.pad(got, pad + ((0, 0),) * (got.ndim - 2), mode="edge")
    return got if got.flags.writeable else got.copy()


def is_slide_path(path) -> bool:
    """True when ``path`` has a slide suffix or is a zarr directory."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith(SLIDE_SUFFIXES):
        return True
    return p.is_dir() and any((p / f).exists() for f in (".zarray", ".zgroup", "zarr.json"))


def as_rgb_uint8(arr, source: str):
    """Normalise an image array to a lazy ``(Y, X, 3)`` uint8 dask array (a numpy
    ``(Y, X, 3)`` uint8 array is returned as it is).

    Grey ``(Y, X)`` / ``(Y, X, 1)`` and grey+alpha ``(Y, X, 2)`` become RGB, alpha is
    dropped from ``(Y, X, 4)``, channel-first ``(C, Y, X)`` arrays (C in 1, 3, 4) are
    transposed, leading singleton axes are squeezed and uint16 is scaled to uint8.

    Raises
    ------
    InputError
        For empty images, dtypes other than uint8/uint16, more than 4 channels or
        image stacks; the message starts with ``source``.
    """
    if _is_rgb8(arr) and arr.size:
        return arr
    import dask.array as da

    a = arr if isinstance(arr, da.Array) else da.asarray(arr)
    if a.size == 0:
        raise InputError(f"{source}: the image is empty (shape {tuple(a.shape)}); "
                         "give an image with pixels")
    if a.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{source}: unsupported pixel type {a.dtype}; {_FIX_FORMAT}")
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[-1] > 4 and a.shape[0] in (1, 3, 4):
        a = da.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] > 4:
        raise InputError(f"{source}: expected a 2-D grey or RGB image, got shape "
                         f"{tuple(a.shape)} (a stack or >4 channels); {_FIX_FORMAT}")
    if a.shape[-1] in (1, 2):
        a = da.concatenate([a[..., :1]] * 3, axis=-1)
    a = a[..., :3]
    if a.dtype == np.uint16:
        a = ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return a


def _reorder(a, axes: str, source: str):
    """Move axes named in ``axes`` (e.g. ``"tczyx"``, ``"yxs"``) to ``(Y, X[, C])``.

    Other axes must be singletons; unknown axis names (tifffile's ``Q``) leave ``a``
    unchanged for :func:`as_rgb_uint8` to interpret.
    """
    axes = axes.lower().replace("s", "c")
    if len(axes) != a.ndim or not {"y", "x"} <= set(axes) or set(axes) - set("tczyx"):
        return a
    keep = [axes.index("y"), axes.index("x")] + ([axes.index("c")] if "c" in axes else [])
    for i, name in enumerate(axes):
        if i not in keep and a.shape[i] != 1:
            raise InputError(f"{source}: has {a.shape[i]} planes along axis '{name}'; "
                             "give a single 2-D RGB plane (export one plane)")
    a = a.transpose(keep + [i for i in range(a.ndim) if i not in keep])
    return a.reshape(a.shape[:len(keep)])


def open_slide(path_or_array) -> Slide:
    """Open a slide file or wrap an in-memory image.

    Parameters
    ----------
    path_or_array : str, Path, array or list of arrays
        A ``.zarr`` / OME-Zarr, TIFF / OME-TIFF / SVS, JPEG, PNG or BMP file; a numpy or
        dask array; or a list of arrays (a pyramid, level 0 first, e.g. napari data).

    Returns
    -------
    Slide

    Raises
    ------
    InputError
        Missing or unreadable file, unsupported format, dtype or channel count.
    """
    if isinstance(path_or_array, Slide):
        return path_or_array
    if not isinstance(path_or_array, (str, Path)):
        arrs = path_or_array if isinstance(path_or_array, (list, tuple)) else [path_or_array]
        return _make_slide(None, [as_rgb_uint8(a, "array") for a in arrs], None, "array",
                           [_array_reader(a) for a in arrs])
    path = Path(path_or_array).expanduser()
    name = path.name.lower()
    if not path.exists():
        raise InputError(f"{path}: file not found; check the path")
    if path.is_dir() and not is_slide_path(path):
        raise InputError(f"{path}: is a folder, not a zarr store; give an image file or a .zarr")
    if not is_slide_path(path):
        raise InputError(f"{path}: unsupported file type '{path.suffix}'; use one of "
                         f"{', '.join(SLIDE_SUFFIXES)}")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes); re-export or re-copy it")
    readers = None
    if path.is_dir() or name.endswith(".zarr"):
        levels, mpp, readers = _read_zarr(path)
    elif name.endswith(_TIFF_SUFFIXES):
        levels, mpp, readers = _read_tiff(path)
    else:
        levels, readers = _read_pil(path)
        mpp = None
    return _make_slide(path, levels, mpp, path.name, readers)


def _make_slide(path, levels, mpp, name, readers=None) -> Slide:
    order = sorted(range(len(levels)), key=lambda i: -levels[i].shape[1])
    levels = [levels[i] for i in order]
    readers = [readers[i] for i in order] if readers and any(r is not None for r in readers) else None
    w0 = levels[0].shape[1]
    return Slide(path, levels, [w0 / a.shape[1] for a in levels], mpp, name, readers)


def _is_rgb8(a) -> bool:
    """A numpy ``(Y, X, 3)`` uint8 image: used as it is, read without dask."""
    return isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 3 and a.shape[-1] == 3


def _array_reader(a):
    """A direct reader for an in-memory ``(Y, X, 3)`` uint8 numpy image, else None.

    It returns read-only views, which :func:`_read_padded` copies: reads never go through
    dask (whose first compute also imports dask.distributed, ~20 MB) and never hand out
    the caller's own pixels to write into.
    """
    if not _is_rgb8(a):
        return None

    def read(y0, y1, x0, x1):
        v = a[y0:y1, x0:x1].view()
        v.flags.writeable = False
        return v

    return read


def _direct_reader(z, axes: str):
    """A reader ``(y0, y1, x0, x1) -> (h, w, 3) uint8`` straight from zarr array ``z`` with
    OME or TIFF axes ``axes`` (e.g. ``"tczyx"``, ``"YXS"``), or None when ``z`` is not
    3-channel uint8 with singleton other axes (those go through dask and
    :func:`as_rgb_uint8`)."""
    axes = axes.lower().replace("s", "c")
    if z.dtype != np.uint8 or len(axes) != len(z.shape) or not {"y", "x", "c"} <= set(axes):
        return None
    if z.shape[axes.index("c")] != 3 or any(z.shape[i] != 1 for i, a in enumerate(axes) if a not in "yxc"):
        return None
    planar = axes.index("c") < axes.index("y")

    def read(y0, y1, x0, x1):
        idx = tuple(slice(y0, y1) if a == "y" else slice(x0, x1) if a == "x" else
                    slice(None) if a == "c" else 0 for a in axes)
        a = np.asarray(z[idx])
        return merge_planes([a[k] for k in range(3)]) if planar else a

    return read


def merge_planes(planes) -> np.ndarray:
    """``(Y, X, C)`` uint8 image from C ``(Y, X)`` planes (views of any layout): OpenCV's
    merge is 5-20x faster than numpy's strided gather for channel-planar data."""
    from ._opencv import cv2

    return cv2.merge([np.ascontiguousarray(p) for p in planes])


def _read_pil(path: Path) -> tuple[list, list]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # full decode: a truncated file fails here, not later
            if im.mode not in ("L", "LA", "RGB", "RGBA") and not im.mode.startswith("I;16"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB")
            arr = np.asarray(im)
    except Image.DecompressionBombError:
        raise InputError(f"{path}: image too large for {path.suffix}; convert it to a tiled "
                         "pyramidal TIFF or OME-Zarr") from None
    except (OSError, SyntaxError, ValueError) as exc:
        msg = first_line(exc)
        raise InputError(f"{path}: cannot read the image ({msg}); the file is damaged or "
                         "not an image, re-export or re-copy it") from None
    if not _is_rgb8(arr):  # grey, alpha or 16-bit: normalised lazily by dask
        import dask.array as da
        arr = da.from_array(arr, chunks=(2048, 2048) + arr.shape[2:])
    return [as_rgb_uint8(arr, str(path))], [_array_reader(arr)]


def _zarr_levels_dask(z):
    """Dask array over a zarr array, with chunks of at least ~256 px along Y and X."""
    import dask.array as da

    chunks = tuple(c if s <= 4 or c >= 256 else min(s, math.ceil(256 / c) * c)
                   for c, s in zip(z.chunks, z.shape))
    return da.from_zarr(z, chunks=chunks)


def _read_zarr(path: Path) -> tuple[list, float | None, list | None]:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 -- zarr raises many kinds
        raise InputError(f"{path}: cannot open as zarr ({first_line(exc)}); "
                         "give a zarr array or an OME-Zarr image") from None
    if isinstance(node, zarr.Array):
        return [as_rgb_uint8(_zarr_levels_dask(node), str(path))], None, None
    attrs = dict(node.attrs)
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not ms:
        raise InputError(f"{path}: zarr group without OME 'multiscales' metadata; give the "
                         "image array itself (e.g. path/0) or an OME-Zarr image")
    ms = ms[0]
    axes = [a if isinstance(a, dict) else {"name": a} for a in ms.get("axes", [])]
    names = "".join(a["name"][0].lower() for a in axes)
    levels, readers = [], []
    for ds in ms["datasets"]:
        z = node[ds["path"]]
        a = _zarr_levels_dask(z)
        levels.append(as_rgb_uint8(_reorder(a, names, str(path)) if names else a, str(path)))
        readers.append(_direct_reader(z, names) if names else None)
    mpp = None
    if "x" in names:
        ix = names.index("x")
        unit = _UM_PER_UNIT.get(axes[ix].get("unit", ""))
        scale = 1.0
        for tr in _scales(ms["datasets"][0]) + _scales(ms):
            scale *= float(tr["scale"][ix])
        if unit is not None and scale > 0:
            mpp = scale * unit
    return levels, mpp, readers


def _scales(d: dict) -> list[dict]:
    return [t for t in d.get("coordinateTransformations", []) if t.get("type") == "scale"]


def _read_tiff(path: Path) -> tuple[list, float | None, list]:
    import tifffile
    import zarr

    try:
        tf = tifffile.TiffFile(path)
        series = tf.series[0]
        levels, readers = [], []
        for i, lev in enumerate(series.levels):
            z = zarr.open(tf.aszarr(series=0, level=i), mode="r")
            levels.append(_reorder(_zarr_levels_dask(z), lev.axes, str(path)))
            readers.append(_direct_reader(z, lev.axes))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 -- tifffile raises many kinds
        msg = first_line(exc)
        raise InputError(f"{path}: cannot read as TIFF ({msg}); the file is damaged or not a "
                         "TIFF, re-export or re-copy it") from None
    levels = [as_rgb_uint8(a, str(path)) for a in levels]
    return levels, _tiff_mpp(tf), readers


def _tiff_mpp(tf) -> float | None:
    """Pixel size from SVS description, OME-XML or resolution tags (plausible values only)."""
    import tifffile
    from tifffile.tifffile import svs_description_metadata

    page = tf.pages[0]
    if (page.description or "").startswith("Aperio"):
        try:
            mpp = svs_description_metadata(page.description).get("MPP")
        except ValueError:
            mpp = None
        if mpp:
            return float(mpp)
    if tf.ome_metadata:
        image = tifffile.xml2dict(tf.ome_metadata).get("OME", {}).get("Image", {})
        pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
        if pixels.get("PhysicalSizeX"):
            return float(pixels["PhysicalSizeX"]) * _UM_PER_UNIT.get(pixels.get("PhysicalSizeXUnit", "µm"), 1.0)
    tags = page.tags
    res, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
    if res is None or unit is None:
        return None
    num, den = res.value if isinstance(res.value, tuple) else (res.value, 1)
    per_unit = {2: 25400.0, 3: 10000.0}.get(int(unit.value))  # inch, centimetre in um
    if not per_unit or not num or not den:
        return None
    mpp = per_unit * den / num
    return mpp if 0.01 < mpp < 10 else None  # 72 dpi defaults etc. are no pixel size
