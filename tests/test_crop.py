"""Centre-contour crops on real bone-marrow crops and at slide edges."""
import numpy as np
import pytest
from PIL import Image

from napari_bm_cells.crop import centre_contour, resize_square, square_crop


@pytest.fixture(scope="module")
def bm_crops(data_dir):
    files = sorted((data_dir / "matek-bm").glob("*.jpg"))
    assert len(files) == 14
    return {f.name[:3]: np.asarray(Image.open(f).convert("RGB")) for f in files}


def test_centre_contour_keeps_the_central_cell(bm_crops):
    inside = 0
    for code, img in bm_crops.items():
        cc = centre_contour(img, min_length=100)
        assert cc is not None, code
        assert cc.mask.shape == img.shape[:2]
        # the chosen contour is long enough and is a closed outline of a cell-sized region
        length = np.sum(np.hypot(*np.diff(cc.contour, axis=0).T))
        assert length >= 100, code
        inside += bool(cc.mask[125, 125])
        # the crop re-centred on it still holds the central cell: the shift stays small
        assert np.hypot(cc.centroid[0] - 124.5, cc.centroid[1] - 124.5) < 70, code
    assert inside >= 13, f"central pixel inside the chosen contour for only {inside}/14 crops"


def test_short_contours_are_dropped():
    img = np.full((250, 250, 3), 235, np.uint8)
    img[120:128, 120:128] = (90, 40, 140)  # a speck: perimeter ~ 30 px
    assert centre_contour(img, min_length=100) is None
    img[60:190, 60:190] = (90, 40, 140)  # a cell-sized blob
    cc = centre_contour(img, min_length=100)
    assert cc is not None and cc.mask[125, 125]


def test_blank_patch_has_no_contour():
    assert centre_contour(np.full((250, 250, 3), 240, np.uint8)) is None


def test_cells_touching_the_edge_are_padded_not_dropped(bm_crops):
    img = bm_crops["LYT"]
    for centre in [(0, 0), (249, 249), (10, 240), (125, -20)]:
        crop = square_crop(img, centre, 250)
        assert crop.shape == (250, 250, 3)
    # the part inside the image is the image itself
    crop = square_crop(img, (0, 0), 100)
    np.testing.assert_array_equal(crop[50:, 50:], img[:50, :50])


def test_square_crop_reads_only_a_window_of_a_dask_array(bm_crops):
    import dask.array as da
    arr = da.from_array(np.tile(bm_crops["NGS"], (8, 8, 1)), chunks=(250, 250, 3))
    crop = square_crop(arr, (1000, 1000), 250)
    np.testing.assert_array_equal(crop, np.asarray(arr[875:1125, 875:1125]))


def test_resize_square():
    img = np.random.default_rng(0).integers(0, 255, (250, 250, 3), dtype=np.uint8)
    out = resize_square(img, 112)
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
