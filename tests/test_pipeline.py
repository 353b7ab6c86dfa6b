"""End-to-end analysis on real fields: tables, summary, masks, regions, cancellation."""
import numpy as np
import pandas as pd
import pytest

from napari_bm_cells import AnalysisOptions, analyze
from napari_bm_cells.export import read_cells, write_results
from napari_bm_cells.detect import Stage
from napari_bm_cells.pipeline import iter_analysis

BASE_COLUMNS = ["cell_id", "x", "y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "det_score",
                "label", "model_label", "confidence", "p_blast", "p_atypical", "area_score"]


def test_analyze_real_field_end_to_end(data_dir, detector, classifier, tmp_path):
    # BloodImage_00001: its white cell touches the bottom edge of the field
    res = analyze(data_dir / "bccd/JPEGImages/BloodImage_00001.jpg", detector=detector,
                  classifier=classifier, masks=True)
    cells = res.cells
    assert list(cells.columns[:14]) == BASE_COLUMNS
    assert [c for c in cells.columns if c.startswith("prob_")] == [f"prob_{c}" for c in classifier.classes]
    assert len(cells) >= 1
    assert (cells["bbox_y1"] >= 470).any(), "the cell at the slide edge was dropped"
    probs = cells[[f"prob_{c}" for c in classifier.classes]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)
    assert (cells["confidence"].to_numpy() == pytest.approx(probs.max(1)))
    s = res.summary
    assert s["n_cells"] == len(cells)
    assert sum(s["counts"].values()) == len(cells)
    for key in ("blast_pct", "atypical_pct", "me_ratio", "ci95", "lineage_counts", "timings",
                "detector", "classifier", "input"):
        assert key in s
    assert len(s["classifier"]["sha256"]) == 16
    # masks: one label per cell, inside its box
    lab = np.asarray(res.labels[:])
    assert set(np.unique(lab)) - {0} == set(cells["cell_id"])
    paths = write_results(res, tmp_path)
    back = read_cells(paths["cells"])
    pd.testing.assert_frame_equal(back[BASE_COLUMNS[:3]], cells[BASE_COLUMNS[:3]], check_dtype=False)


def test_every_annotated_white_cell_of_several_fields_is_classified(data_dir, detector, classifier):
    from napari_bm_cells.training.det_data import read_voc
    samples = read_voc(data_dir / "bccd")["test"][:6]
    for s in samples:
        res = analyze(s.image, detector=detector, classifier=classifier)
        n_wbc = sum(b.cls == "WBC" for b in s.boxes)
        assert abs(len(res.cells) - n_wbc) <= 1, (s.image, len(res.cells), n_wbc)


def test_region_limits_the_analysis(data_dir, detector, classifier):
    from helpers import build_mosaic

    img, boxes = build_mosaic(2, 3, source="bccd", split="test", seed=3)
    full = analyze(img, detector=detector, classifier=classifier, level="2x")
    region = (0, 0, 480, 1280)  # first row, two fields
    part = analyze(img, detector=detector, classifier=classifier, level="2x", region=region)
    assert 0 < len(part.cells) < len(full.cells)
    assert (part.cells["y"] < 480 + 50).all() and (part.cells["x"] < 1280 + 50).all()


def test_batches_spanning_blocks_give_the_same_cells_and_masks(data_dir, detector, classifier):
    """Cells are classified in full batches that cross level-0 blocks (after a small
    first batch that starts the model early); the table and the mask labels do not
    depend on how cells fall into blocks and batches."""
    from napari_bm_cells.pipeline import FIRST_BATCH
    from helpers import build_mosaic

    img, _ = build_mosaic(2, 3, source="bccd", split="test", seed=3)
    runs = []
    for block, batch in ((4096, 32), (512, 5), (700, 3)):
        events = list(iter_analysis(img, detector, classifier, AnalysisOptions(
            level="2x", block=block, batch_size=batch, masks=True)))
        sizes = [len(e.payload) for e in events if e.stage == "classify" and e.payload is not None]
        res = events[-1].payload
        assert sum(sizes) == len(res.cells) and sizes[0] == min(batch, FIRST_BATCH), sizes
        assert all(n == batch for n in sizes[1:-1]), sizes
        runs.append(res)
    ref = runs[0]
    assert len(ref.cells) >= 5
    probs = [f"prob_{c}" for c in classifier.classes]
    for res in runs[1:]:
        pd.testing.assert_frame_equal(res.cells[BASE_COLUMNS[:8]], ref.cells[BASE_COLUMNS[:8]])
        np.testing.assert_allclose(res.cells[probs].to_numpy(), ref.cells[probs].to_numpy(), atol=0.02)
        np.testing.assert_array_equal(np.asarray(res.labels[:]), np.asarray(ref.labels[:]))


def test_input_tensors_built_in_the_crop_thread_give_predicts_probabilities(data_dir, detector, classifier):
    """The crop thread prepares each batch's tensor (Classifier.prepare) and the model's
    thread only runs Classifier.forward: the same numbers as predict() on the same crops
    in the same batches, after the run's colour adaptation."""
    from napari_bm_cells.colour import SlideColour
    from napari_bm_cells.detect import Detections
    from napari_bm_cells.io import open_slide
    from napari_bm_cells.cut_cells import cut_cells
    from napari_bm_cells.pipeline import FIRST_BATCH
    from helpers import build_mosaic

    img, _ = build_mosaic(3, 4, source="bccd", split="test", seed=3)
    opts = AnalysisOptions(level="2x", batch_size=3)
    res = analyze(img, detector=detector, classifier=classifier, options=opts)
    assert len(res.cells) > FIRST_BATCH + opts.batch_size
    scale = res.summary["classifier"]["crop_scale"]  # no pixel size: the white cells' measured size
    assert scale["by"] == "white cells"
    assert res.summary["classifier"]["crop_px_level0"] == pytest.approx(
        classifier.meta.crop_size_px * scale["cell_px"] / classifier.meta.ref_cell_px, rel=1e-3)
    dets = Detections.from_table(res.cells)
    cells = list(cut_cells(open_slide(img), dets, res.summary["classifier"]["crop_px_level0"],
                           classifier.input_size, classifier.meta.crop_size_px, opts.block))
    colour = SlideColour.from_info(res.summary["classifier"]["colour"])
    assert res.summary["classifier"]["colour"]["on"]
    probs = np.zeros((len(cells), len(classifier.classes)), np.float32)
    bounds = [0, FIRST_BATCH, *range(FIRST_BATCH + opts.batch_size, len(cells), opts.batch_size), len(cells)]
    for a, b in zip(bounds, bounds[1:]):
        idx = [c.index for c in cells[a:b]]
        probs[idx] = classifier.predict(colour(np.stack([c.crop for c in cells[a:b]])))
    got = res.cells[[f"prob_{c}" for c in classifier.classes]].to_numpy()
    np.testing.assert_allclose(got, probs, atol=1e-5)


def test_blank_image_yields_zero_cells(detector, classifier):
    res = analyze(np.full((480, 640, 3), 238, np.uint8), detector=detector, classifier=classifier)
    assert len(res.cells) == 0
    assert res.summary["n_cells"] == 0 and res.summary["blast_pct"] == 0.0


def test_closing_the_generator_cancels_and_ends_its_threads(data_dir, detector, classifier):
    """Cancelling is closing the pipeline generator (napari's worker quits, the widget
    closes it): no further event, and the pipeline's reader threads end."""
    import threading
    import time

    from helpers import build_mosaic

    img, _ = build_mosaic(3, 3, source="bccd", split="test")
    gen = iter_analysis(img, detector, classifier, AnalysisOptions(tile_size=256, overlap=96))
    events = [next(gen) for _ in range(3)]
    gen.close()
    assert all(ev.stage != Stage.DONE for ev in events)
    with pytest.raises(StopIteration):
        next(gen)
    end = time.perf_counter() + 5
    while any(t.name.startswith("bm-cells") for t in threading.enumerate()) and time.perf_counter() < end:
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("bm-cells")]


def test_options_validation(data_dir, detector, classifier):
    from napari_bm_cells.errors import InputError
    with pytest.raises(InputError, match="level"):
        analyze(data_dir / "bccd/JPEGImages/BloodImage_00000.jpg", detector=detector,
                classifier=classifier, level=5)


def test_ahead_yields_in_order_raises_and_stops_on_close():
    import threading
    import time

    from napari_bm_cells.pipeline import _ahead

    assert list(_ahead(iter(range(10)), depth=2)) == list(range(10))

    def bad():
        yield 1
        raise ValueError("broken block")

    it = _ahead(bad())
    assert next(it) == 1
    with pytest.raises(ValueError, match="broken block"):
        next(it)

    produced = []

    def endless():
        k = 0
        while True:
            produced.append(k)
            yield k
            k += 1

    it = _ahead(endless(), depth=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # a cancelled run: the producer thread ends
    time.sleep(0.3)
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n <= 3 + 2 + 1
    assert not any(t.name == "bm-cells-crops" for t in threading.enumerate())


def test_to_bgr_on_planar_and_interleaved_tiles(bccd_jpeg):
    from PIL import Image

    from napari_bm_cells.detect import to_bgr

    rgb = np.asarray(Image.open(bccd_jpeg).convert("RGB"))
    planar = np.moveaxis(np.ascontiguousarray(np.moveaxis(rgb, -1, 0)), 0, -1)  # c, y, x storage
    assert not planar.flags.c_contiguous
    for t in (rgb, planar, rgb[50:300, 70:400]):
        out = to_bgr(t)
        assert out.flags.c_contiguous and np.array_equal(out, t[..., ::-1])


def test_resize_nearest_matches_scikit_image_on_real_cell_masks(bccd_jpeg):
    """Cell masks are painted at the crop's level-0 size by nearest-neighbour upscaling of
    the 128 px contour mask; it must equal scikit-image's order-0 resize it replaced."""
    from PIL import Image
    from skimage.transform import resize

    from napari_bm_cells.crop import CONTOUR_PX, centre_contour, resize_square, square_crop
    from napari_bm_cells.masks import resize_nearest

    field = np.asarray(Image.open(bccd_jpeg).convert("RGB"))
    masks = []
    for cy, cx in ((240, 320), (150, 200), (300, 450), (100, 500)):
        cc = centre_contour(resize_square(square_crop(field, (cy, cx), 260), CONTOUR_PX), work_size=None)
        if cc is not None:
            masks.append(cc.mask)
    assert masks
    for mask in masks:
        for n in (97, 128, 250, 303, 304, 511):
            ref = resize(mask.astype(np.float32), (n, n), order=0) > 0.5
            np.testing.assert_array_equal(resize_nearest(mask, n), ref, err_msg=str(n))
