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


def _reference_mask(patch, centre, min_length):
    """The same steps in scikit-image / scipy (the implementation before OpenCV)."""
    from scipy import ndimage as ndi
    from skimage import filters, measure, morphology

    from napari_bm_cells.crop import stain_channel

    h, w = patch.shape[:2]
    chan = filters.gaussian(stain_channel(patch), max(1.0, 0.008 * max(h, w)))
    mask = chan > filters.threshold_otsu(chan)
    r = max(1, int(round(0.012 * max(h, w))))
    mask = ndi.binary_fill_holes(morphology.closing(morphology.opening(mask, morphology.disk(r)),
                                                    morphology.disk(r)))
    labels = measure.label(mask)
    best, best_d = None, np.inf
    for region in measure.regionprops(labels):
        if region.perimeter < min_length:
            continue
        inside = labels[int(round(centre[0])), int(round(centre[1]))] == region.label
        d = 0.0 if inside else float(np.hypot(*(np.subtract(region.centroid, centre))))
        if d < best_d:
            best, best_d = region, d
    return labels == best.label, best.equivalent_diameter_area


def test_centre_contour_matches_the_scikit_image_steps(bm_crops, data_dir):
    """The OpenCV implementation picks the same cell, pixel for pixel, as the same steps
    in scikit-image, on real bone-marrow and PBC crops at the contour search size."""
    pbc = [np.asarray(Image.open(f).convert("RGB"))[55:305, 56:306]
           for c in ("MYB", "NGS", "LYT", "EOS") for f in sorted((data_dir / "pbc" / c).glob("*.jpg"))[:5]]
    for img in list(bm_crops.values()) + pbc:
        patch = resize_square(np.ascontiguousarray(img), 128)
        cc = centre_contour(patch, min_length=51, work_size=None)
        ref_mask, ref_d = _reference_mask(patch, (63.5, 63.5), 51)
        np.testing.assert_array_equal(cc.mask, ref_mask)
        assert cc.diameter == pytest.approx(ref_d)


def test_an_edge_cells_crop_is_the_same_everywhere(data_dir, classifier, detector, monkeypatch):
    """The classifier's input, the inspector / gallery / exported-correction crop (through
    the napari layers) and Explain's crop of a cell cut by the field's edge are the same
    pixels; outside the field they hold the smear's background colour, not streaks."""
    napari = pytest.importorskip("napari")
    from napari_bm_cells.gui import layers as L
    from napari_bm_cells import cut_cells as C
    from napari_bm_cells import pipeline as P
    from napari_bm_cells.crop import slide_square
    from napari_bm_cells.detect import Detections
    from napari_bm_cells.io import open_slide

    seen = {}
    cut = C.crop_cell

    def recording(*args, **kwargs):
        crop, centre, mask = cut(*args, **kwargs)
        seen[centre] = crop
        return crop, centre, mask

    monkeypatch.setattr(C, "crop_cell", recording)
    field = data_dir / "bccd" / "JPEGImages" / "BloodImage_00001.jpg"  # a white cell at the left edge
    res = P.analyze(field, detector=detector, classifier=classifier, device="cpu")
    side = res.summary["classifier"]["crop_px_level0"]
    slide = open_slide(field)
    H, W = slide.shape[:2]
    cells = res.cells
    edge = cells[(cells["x"] < side / 2) | (cells["y"] < side / 2) | (cells["x"] > W - side / 2)
                 | (cells["y"] > H - side / 2)]
    assert len(edge), "the field should have a white cell whose crop reaches past its edge"
    image = napari.layers.Image(np.asarray(Image.open(field).convert("RGB")), rgb=True, name="field")
    points = napari.layers.Points(**L.points_kwargs(cells, image, summary=res.summary))
    n = classifier.input_size
    for i in edge.index:
        r = cells.loc[i]
        # what the classifier was given (cells.csv stores the centre in float32)
        fed = next(c for (y, x), c in seen.items() if abs(y - r["y"]) < 1e-2 and abs(x - r["x"]) < 1e-2)
        direct = resize_square(slide_square(slide, r["y"], r["x"], side), n)
        np.testing.assert_array_equal(direct, fed)
        np.testing.assert_array_equal(resize_square(L.cell_crop(image, points, i), n), fed)
        box = np.array([[r["bbox_x0"], r["bbox_y0"], r["bbox_x1"], r["bbox_y1"]]], np.float32)
        explained = C.read_cell_crops(slide, Detections(box, np.ones(1, np.float32)), [0], side, n,
                                      classifier.meta.crop_size_px)[0][0]
        np.testing.assert_array_equal(explained, fed)
        # past the edge: one flat background colour (no repeated edge pixels)
        full = slide_square(slide, r["y"], r["x"], side)
        outside = full[:, :max(0, int(np.ceil(side / 2 - r["x"])) - 1)]
        if outside.size:
            assert np.ptp(outside.reshape(-1, 3), axis=0).max() == 0


def test_outside_a_tight_camera_field_is_filled_with_its_glass_colour(data_dir):
    """A Raabin-WBC field (575 x 575 px, red cells over most of its border) whose white
    cell's crop is larger than the field: the fill is the glass between the red cells, as
    light as the border's lightest quarter, not the red cells' darker median."""
    from PIL import Image

    path = next((data_dir / "txl-pbc" / "images").rglob("a288af9e-4088-52ce-af7b-3687b0360848.jpg"))
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[:2] == (575, 575)
    crop = square_crop(img, (287, 287), 761)  # the side analyze cuts for this field's cell
    fill = crop[0, 0].astype(float)
    assert (crop[:90] == crop[0, 0]).all() and (crop[-90:] == crop[0, 0]).all()
    np.testing.assert_array_equal(crop[93:93 + 575, 93:93 + 575], img)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).astype(float)
    light = border.sum(1)
    assert fill.sum() >= np.quantile(light, 0.75) - 3
    assert fill.sum() > np.median(border, 0).sum() + 30  # the red cells' median is darker
