"""Slide reading (napari_bm_cells.io) on real fields and mosaics built from them."""
import tracemalloc

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image
from skimage.transform import downscale_local_mean

from napari_bm_cells.errors import InputError
from napari_bm_cells.io import as_rgb_uint8, is_slide_path, open_slide
from helpers import build_mosaic, write_ome_zarr, write_pyramidal_tiff


@pytest.fixture(scope="module")
def field(bccd_jpeg):
    return np.asarray(Image.open(bccd_jpeg).convert("RGB"))


@pytest.fixture(scope="module")
def mosaic(data_dir):
    """2 x 3 real BCCD fields (960 x 1920) and their WBC boxes."""
    return build_mosaic(2, 3, source="bccd", split="test", seed=1)


@pytest.fixture(scope="module")
def mosaic_zarr(mosaic, tmp_path_factory):
    return write_ome_zarr(mosaic[0], tmp_path_factory.mktemp("z") / "m.ome.zarr",
                          n_levels=3, chunk=256, mpp=0.25)


# --- formats -------------------------------------------------------------------------

def test_real_jpeg(bccd_jpeg, field):
    s = open_slide(bccd_jpeg)
    assert s.shape == (480, 640) and s.name == bccd_jpeg.name and s.path == bccd_jpeg
    assert isinstance(s.levels[0], np.ndarray) and s.levels[0].dtype == np.uint8  # no dask for a field
    assert s.downsamples == [1.0] and s.mpp is None
    np.testing.assert_array_equal(s.levels[0], field)
    region = s.read_region(-5, 600, 40, 650)  # edge-padded, and a copy, never a view of the level
    np.testing.assert_array_equal(region[5:, :40], field[:40, 600:])
    region[:] = 0
    assert s.levels[0].any()


def test_png_rgba_and_grey(field, tmp_path):
    rgba = np.dstack([field, np.full(field.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(open_slide(tmp_path / "rgba.png").levels[0].compute(), field)
    grey = np.asarray(Image.fromarray(field).convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    got = open_slide(tmp_path / "grey.png").levels[0].compute()
    assert got.shape == (480, 640, 3)
    np.testing.assert_array_equal(got, np.dstack([grey] * 3))


def test_uint16_tiff(field, tmp_path):
    tifffile.imwrite(tmp_path / "f16.tif", field.astype(np.uint16) * 257, photometric="rgb")
    s = open_slide(tmp_path / "f16.tif")
    assert s.levels[0].dtype == np.uint8
    np.testing.assert_array_equal(s.levels[0].compute(), field)


def test_plain_zarr_arrays(field, tmp_path):
    z = zarr.create_array(tmp_path / "yxc.zarr", shape=field.shape, chunks=(128, 128, 3),
                          dtype="uint8")
    z[:] = field
    np.testing.assert_array_equal(open_slide(tmp_path / "yxc.zarr").levels[0].compute(), field)
    z = zarr.create_array(tmp_path / "cyx.zarr", shape=(3, 480, 640), dtype="uint8")
    z[:] = field.transpose(2, 0, 1)  # channel first, no metadata: transposed
    np.testing.assert_array_equal(open_slide(tmp_path / "cyx.zarr").levels[0].compute(), field)


def test_ome_zarr_multiscale(mosaic, mosaic_zarr):
    img = mosaic[0]
    assert is_slide_path(mosaic_zarr)
    s = open_slide(mosaic_zarr)
    assert len(s.levels) == 3 and s.downsamples == [1.0, 2.0, 4.0] and s.mpp == 0.25
    assert [lv.shape for lv in s.levels] == [(960, 1920, 3), (480, 960, 3), (240, 480, 3)]
    assert all(isinstance(lv, da.Array) for lv in s.levels)
    np.testing.assert_array_equal(s.levels[0].compute(), img)
    small = downscale_local_mean(img.astype(float), (4, 4, 1))
    assert np.abs(s.levels[2].compute() - small).max() <= 1


def test_ome_zarr_v05_tczyx(field, tmp_path):
    g = zarr.open_group(tmp_path / "v05.zarr", mode="w", zarr_format=3)
    a = g.create_array("s0", shape=(1, 3, 1, 480, 640), chunks=(1, 3, 1, 256, 256), dtype="uint8")
    a[:] = field.transpose(2, 0, 1)[None, :, None]
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [
        {"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [1, 1, 1, 0.5, 0.5]}]}]}]}
    s = open_slide(tmp_path / "v05.zarr")
    assert s.mpp == 0.5 and s.shape == (480, 640)
    np.testing.assert_array_equal(s.levels[0].compute(), field)


def test_pyramidal_tiff(mosaic, tmp_path):
    img = mosaic[0]
    s = open_slide(write_pyramidal_tiff(img, tmp_path / "raw.tif", mpp=0.5, compression=None))
    assert s.downsamples == [1.0, 2.0, 4.0] and s.mpp == pytest.approx(0.5)
    np.testing.assert_array_equal(s.levels[0].compute(), img)
    np.testing.assert_array_equal(s.levels[2].compute(), open_slide(
        write_ome_zarr(img, tmp_path / "ref.zarr")).levels[2].compute())
    s = open_slide(write_pyramidal_tiff(img, tmp_path / "jpeg.tif", mpp=0.5))
    assert len(s.levels) == 3 and s.mpp == pytest.approx(0.5)
    assert np.abs(s.levels[0].compute().astype(int) - img).mean() < 2


def test_tiff_pixel_size_sources(field, tmp_path):
    tifffile.imwrite(tmp_path / "a.ome.tif", field.transpose(2, 0, 1), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.345, "PhysicalSizeXUnit": "µm"})
    tifffile.imwrite(tmp_path / "b.svs", field, photometric="rgb", metadata=None,
                     description="Aperio Image Library v10\n640x480 |AppMag = 40|MPP = 0.2527")
    tifffile.imwrite(tmp_path / "c.tif", field, photometric="rgb", resolution=(72, 72),
                     resolutionunit="INCH")
    got = [open_slide(tmp_path / n) for n in ("a.ome.tif", "b.svs", "c.tif")]
    assert [s.mpp for s in got] == [pytest.approx(0.345), pytest.approx(0.2527), None]
    np.testing.assert_array_equal(got[0].levels[0].compute(), field)


def test_in_memory_arrays(field):
    s = open_slide(field)
    assert s.path is None and s.name == "array" and s.shape == (480, 640)
    np.testing.assert_array_equal(open_slide(da.from_array(field.transpose(2, 0, 1)))
                                  .levels[0].compute(), field)
    pyr = open_slide([field, field[::2, ::2]])
    assert pyr.downsamples == [1.0, 2.0]


# --- regions -------------------------------------------------------------------------

def test_level_for(mosaic_zarr):
    s = open_slide(mosaic_zarr)
    assert [s.level_for(d) for d in (0.5, 1, 1.5, 1.99, 2, 3, 4, 16)] == [0, 0, 0, 1, 1, 1, 2, 2]


@pytest.mark.parametrize("d", [1, 2, 4, 0.5])
def test_read_region(mosaic, mosaic_zarr, d):
    img = mosaic[0].astype(float)
    y0, x0, y1, x1 = 200, 480, 520, 1000  # crosses a field border
    r = open_slide(mosaic_zarr).read_region(y0, x0, y1, x1, downsample=d)
    assert r.dtype == np.uint8 and r.shape == (round(320 / d), round(520 / d), 3)
    crop = img[y0:y1, x0:x1]
    ref = crop.repeat(2, 0).repeat(2, 1) if d < 1 else downscale_local_mean(crop, (d, d, 1))
    err = np.abs(r[2:-2, 2:-2] - ref[2:-2, 2:-2]).mean()
    assert err < (0.5 if d == 1 else 3)
    shifted = img[y0 + 2:y1 + 2, x0:x1]  # content check is sharp enough to see a shift
    ref2 = (shifted.repeat(2, 0).repeat(2, 1) if d < 1
            else downscale_local_mean(shifted, (d, d, 1)))
    assert err < np.abs(r[2:-2, 2:-2] - ref2[2:-2, 2:-2]).mean()


def test_read_region_non_pyramid_and_fractional(mosaic):
    img = mosaic[0]
    s = open_slide(img)
    r = s.read_region(100, 100, 400, 700, downsample=3)
    assert r.shape == (100, 200, 3)
    assert np.abs(r - downscale_local_mean(img[100:400, 100:700].astype(float), (3, 3, 1))
                  )[2:-2, 2:-2].mean() < 3
    assert s.read_region(10.4, 20.6, 50.4, 60.6).shape == (40, 40, 3)


def test_region_outside_is_edge_padded(mosaic, mosaic_zarr):
    img = mosaic[0]
    s = open_slide(mosaic_zarr)
    H, W = s.shape
    r = s.read_region(-10, -20, 50, 60)
    assert r.shape == (60, 80, 3)
    np.testing.assert_array_equal(r[10:, 20:], img[:50, :60])
    np.testing.assert_array_equal(r[:10, 20:], np.broadcast_to(img[0, :60], (10, 60, 3)))
    np.testing.assert_array_equal(r[10:, :20], np.broadcast_to(img[:50, :1], (50, 20, 3)))
    r = s.read_region(H - 30, W - 30, H + 70, W + 70, downsample=2)
    assert r.shape == (50, 50, 3)
    r = s.read_region(H + 100, W + 100, H + 200, W + 200)  # wholly outside: the corner pixel
    assert (r == img[-1, -1]).all()


# --- bad input -----------------------------------------------------------------------

def _bad_inputs(tmp, jpeg):
    data = jpeg.read_bytes()
    (tmp / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp / "notes.tif").write_text("this is a text file, not a TIFF\n")
    tifffile.imwrite(tmp / "float.tif", np.random.rand(64, 64, 3).astype(np.float32))
    tifffile.imwrite(tmp / "stack.tif", np.zeros((7, 64, 64), np.uint8))
    z = zarr.create_array(tmp / "five.zarr", shape=(64, 64, 5), dtype="uint8")
    z[:] = 0
    zarr.create_array(tmp / "empty.zarr", shape=(0, 0, 3), dtype="uint8")
    (tmp / "zero.png").write_bytes(b"")
    (tmp / "cells.txt").write_text("x")
    return ["truncated.jpg", "notes.tif", "missing.tif", "float.tif", "stack.tif",
            "five.zarr", "empty.zarr", "zero.png", "cells.txt"]


def test_bad_inputs_name_file_and_fix(tmp_path, bccd_jpeg):
    for name in _bad_inputs(tmp_path, bccd_jpeg):
        with pytest.raises(InputError) as exc:
            open_slide(tmp_path / name)
        msg = str(exc.value)
        assert name in msg and "\n" not in msg and ";" in msg, msg  # "<file>: problem; fix"


@pytest.mark.parametrize("arr", [np.zeros((32, 32, 5), np.uint8), np.zeros((0, 0), np.uint8),
                                 np.zeros((0, 0, 3), np.uint8), np.zeros((8, 8, 3), bool),
                                 np.zeros((8, 8, 3), np.float32), np.zeros((7, 8, 8), np.uint8)])
def test_bad_arrays(arr):
    with pytest.raises(InputError, match="^array: "):
        open_slide(arr)
    with pytest.raises(InputError, match="^my.tif: "):
        as_rgb_uint8(arr, "my.tif")


def test_blank_white_png_is_valid(tmp_path):
    Image.fromarray(np.full((300, 400, 3), 255, np.uint8)).save(tmp_path / "blank.png")
    s = open_slide(tmp_path / "blank.png")
    assert s.shape == (300, 400) and (s.read_region(0, 0, 300, 400, 2) == 255).all()


# --- mosaics -------------------------------------------------------------------------

def test_build_mosaic_boxes(mosaic, data_dir):
    img, boxes = build_mosaic(2, 2, source="bccd", split="test", seed=3, gap=16)
    assert img.shape == (2 * 480 + 16, 2 * 640 + 16, 3) and img.dtype == np.uint8
    assert list(boxes.columns) == ["x0", "y0", "x1", "y1", "field"] and len(boxes) >= 1
    assert (boxes.x0 >= 0).all() and (boxes.x1 <= img.shape[1]).all()
    assert (boxes.y1 > boxes.y0).all() and (boxes.y1 <= img.shape[0]).all()
    # the first field sits at the top left, unchanged
    first = boxes.field.iloc[0]
    np.testing.assert_array_equal(img[:480, :640], np.asarray(Image.open(first).convert("RGB")))
    img2, boxes2 = build_mosaic(1, 3, source="txl-pbc", split="test")
    assert img2.shape == (480, 1920, 3) and len(boxes2) >= 1


# --- slide-sized mosaic: lazily read ------------------------------------------------

@pytest.fixture(scope="module")
def big(tmp_path_factory):
    img, _ = build_mosaic(13, 10, source="bccd", split="test+val")  # 6240 x 6400
    d = tmp_path_factory.mktemp("big")
    return img, [write_ome_zarr(img, d / "big.ome.zarr", chunk=1024, mpp=0.3),
                 write_pyramidal_tiff(img, d / "big.tif", mpp=0.3)]


@pytest.mark.parametrize("i", [0, 1])
def test_big_mosaic_opens_lazily(big, i):
    img, paths = big
    tracemalloc.start()
    try:
        s = open_slide(paths[i])
        r = s.read_region(3000, 3100, 3600, 3740)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert s.shape == (6240, 6400) and s.mpp == pytest.approx(0.3) and len(s.levels) == 3
    assert all(isinstance(lv, da.Array) and lv.npartitions > 1 for lv in s.levels)
    assert peak < img.nbytes / 4, peak  # only the tiles under the region were read
    assert np.abs(r.astype(int) - img[3000:3600, 3100:3740]).mean() < 1


def test_regions_past_the_edge_repeat_the_edge_pixels(bccd_jpeg, field):
    """Level-0 reads partly or wholly outside the image: every pixel is the nearest edge
    pixel (the index-clipping definition); OME-Zarr direct reads are compared with these below."""
    s = open_slide(bccd_jpeg)
    H, W = field.shape[:2]
    rng = np.random.default_rng(3)
    for _ in range(60):
        y0, x0 = (int(v) for v in rng.integers(-900, 900, 2))
        h, w = (int(v) for v in rng.integers(1, 900, 2))
        ref = field[np.clip(np.arange(y0, y0 + h), 0, H - 1)][:, np.clip(np.arange(x0, x0 + w), 0, W - 1)]
        np.testing.assert_array_equal(s.read_region(y0, x0, y0 + h, x0 + w), ref)


@pytest.mark.parametrize("layout", ["cyx", "tczyx", "yxc", "tiff", "numpy"])
def test_direct_reads_equal_the_dask_path(mosaic, tmp_path, layout):
    """OME-Zarr and pyramidal-TIFF RGB uint8 levels are read straight from zarr, numpy
    images straight from the array (no dask graph): the same pixels as through dask, for
    any region, scale and edge padding."""
    import dask.array as da
    import zarr

    mosaic = mosaic[0]
    if layout == "tiff":
        path = write_pyramidal_tiff(mosaic, tmp_path / "m.tif", mpp=0.5, compression=None)
    elif layout == "numpy":
        path = mosaic
    elif layout == "cyx":
        path = write_ome_zarr(mosaic, tmp_path / "m.ome.zarr", n_levels=3, chunk=256)
    else:  # a hand-written single-level OME-Zarr with other axes
        path = tmp_path / f"{layout}.zarr"
        g = zarr.open_group(str(path), mode="w")
        data = mosaic if layout == "yxc" else np.moveaxis(mosaic, -1, 0)[None, :, None]
        g.create_array("0", data=data, chunks=(256, 256, 3) if layout == "yxc" else (1, 3, 1, 256, 256))
        g.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a} for a in layout],
                                   "datasets": [{"path": "0"}]}]
    s = open_slide(path)
    assert s.readers is not None and all(r is not None for r in s.readers)
    if layout == "numpy":  # the dask path for comparison
        s.levels = [da.from_array(a, chunks=(512, 512, 3)) for a in s.levels]
    rng = np.random.default_rng(1)
    H, W = s.shape
    for k in range(24):
        y0, x0 = int(rng.integers(-200, H)), int(rng.integers(-200, W))
        h, w = (int(v) for v in rng.integers(1, 700, 2))
        d = [1.0, 1.5, 2.0, 4.0][k % 4]
        direct = s.read_region(y0, x0, y0 + h, x0 + w, downsample=d)
        readers, s.readers = s.readers, None
        via_dask = s.read_region(y0, x0, y0 + h, x0 + w, downsample=d)
        s.readers = readers
        assert direct.dtype == np.uint8 and np.array_equal(direct, via_dask), (k, y0, x0, h, w, d)
    if layout in ("cyx", "tiff", "numpy"):
        np.testing.assert_array_equal(s.read_region(0, 0, H, W), mosaic)
