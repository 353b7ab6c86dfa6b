"""Crops cut from cached storage tiles equal crops cut from whole windows (real fields)."""
import numpy as np
import pytest

from napari_bm_cells.detect import Detections
from napari_bm_cells.io import open_slide
from napari_bm_cells.cut_cells import cell_blocks, cell_crops, read_cells_window
from helpers import build_mosaic, write_ome_zarr, write_pyramidal_tiff
from napari_bm_cells.tile_cache import TileCache, grid_rects


@pytest.fixture(scope="module")
def mosaic(data_dir):
    """3 x 4 real TXL-PBC fields with their white-cell boxes (sparse cells, as in blood)."""
    return build_mosaic(3, 4, source="txl-pbc", split="test", seed=2)


@pytest.mark.parametrize("fmt", ["zarr", "tiff"])
def test_windows_from_tiles_equal_read_region(mosaic, tmp_path, fmt):
    image = mosaic[0]
    path = (write_ome_zarr(image, tmp_path / "m.ome.zarr", n_levels=2, chunk=256) if fmt == "zarr"
            else write_pyramidal_tiff(image, tmp_path / "m.tif", n_levels=2, tile=256))
    slide = open_slide(path)
    assert slide.tile_shape == (256, 256)
    cache = TileCache(slide, max_bytes=12 * 256 * 256 * 3)  # small: eviction happens
    H, W = slide.shape
    rng = np.random.default_rng(0)
    for k in range(40):  # windows and slices inside, across and wholly outside the edges
        y0, x0 = int(rng.integers(-600, H + 100)), int(rng.integers(-600, W + 100))
        h, w = (int(v) for v in rng.integers(1, 900, 2))
        win = cache.read_window(y0, x0, y0 + h, x0 + w)
        assert win.shape == (h, w, 3)
        a, c = int(rng.integers(0, h)), int(rng.integers(0, w))
        b, d = int(rng.integers(a + 1, h + 1)), int(rng.integers(c + 1, w + 1))
        np.testing.assert_array_equal(win[a:b, c:d], slide.read_region(y0 + a, x0 + c, y0 + b, x0 + d),
                                      err_msg=str((k, y0, x0, h, w, a, b, c, d)))
    assert cache._bytes <= cache.max_bytes
    assert win[5:5, 0:10].shape == (0, 10, 3)  # empty slices, as numpy gives them


def test_crops_from_tiles_equal_whole_window_crops_and_decode_each_tile_once(mosaic, tmp_path):
    image, boxes = mosaic[0], mosaic[1]
    slide = open_slide(write_ome_zarr(image, tmp_path / "m.ome.zarr", n_levels=2, chunk=256))
    dets = Detections(boxes[["x0", "y0", "x1", "y1"]].to_numpy(float), np.ones(len(boxes)))
    side, block = 180.0, 1024  # blocks smaller than the mosaic: windows overlap
    cache = TileCache(slide)
    reads = {"whole": 0}
    for group in cell_blocks(dets, slide.shape, block):
        whole, origin = read_cells_window(slide, dets, group, side)
        tiled, origin2 = read_cells_window(slide, dets, group, side, cache)
        assert origin == origin2 and tiled.shape == whole.shape
        reads["whole"] += np.ceil(whole.shape[0] / 256) * np.ceil(whole.shape[1] / 256)
        a = cell_crops(whole, origin, dets, group, side, 96, 250)
        b = cell_crops(tiled, origin, dets, group, side, 96, 250)
        np.testing.assert_array_equal(a[0], b[0])
        assert np.allclose(a[1], b[1])
    n_tiles = np.ceil(slide.shape[0] / 256) * np.ceil(slide.shape[1] / 256)
    assert len(cell_blocks(dets, slide.shape, block)) > 2 and len(dets) >= 8
    # every tile at most once (overlaps reused), and only tiles some crop reaches
    assert cache.decoded <= n_tiles < reads["whole"]


def test_grid_rects_cover_each_cell_once():
    rng = np.random.default_rng(0)
    for _ in range(300):
        need = rng.random((int(rng.integers(1, 7)), int(rng.integers(1, 7)))) < rng.random()
        cover = np.zeros(need.shape, int)
        for (r0, r1), (c0, c1) in grid_rects(need):
            cover[r0:r1, c0:c1] += 1
        np.testing.assert_array_equal(cover, need)
