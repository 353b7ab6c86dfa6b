"""Magnification-free detection: the white-cell scale probe on real fields at other
magnifications, and snapping to a pyramid level (the red-cell probe, which the shipped
detector uses first: tests/test_red_cells.py)."""
import json
import shutil

import numpy as np
import pytest

from napari_bm_cells.detect import YoloDetector
from napari_bm_cells.scale import TRAINED_RANGE, detection_scale, snap_to_level
from napari_bm_cells.training.evaluate import rescaled_slide


@pytest.fixture(scope="module")
def white_detector(detector, tmp_path_factory):
    """The shipped weights with a sidecar that gives no red-cell size, as weights trained on
    white cells only: the scale then comes from the white-cell probe (a marrow area with
    few red cells falls back to it too)."""
    d = tmp_path_factory.mktemp("white")
    shutil.copy(detector.weights, d / "det.pt")
    meta = {k: v for k, v in detector.meta.items() if k != "input_rbc_px"}
    (d / "det.json").write_text(json.dumps(meta))
    det = YoloDetector(d / "det.pt")
    assert det.red_cells() is None
    return det


def _fields(data_dir, n=3):
    from napari_bm_cells.training.evaluate import detection_samples

    samples, _ = detection_samples(data_dir / "bccd", "test")
    return [s for s in samples if sum(b.cls == "WBC" for b in s.boxes) == 1][:n]


def _gt_side(sample, factor=1.0):
    b = next(b for b in sample.boxes if b.cls == "WBC")
    return max(b.x1 - b.x0, b.y1 - b.y0) * factor


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_probe_puts_cells_at_the_trained_size_on_rescaled_fields(data_dir, white_detector, factor):
    """BCCD fields resized 0.5x (320x240: a camera field) and 2x (1280x960: too large to
    pass for one, cells ~400 px), no pixel size: the chosen downsample brings each white
    cell within the size range the detector was trained on."""
    for s in _fields(data_dir):
        slide = rescaled_slide(s.image, factor)
        assert slide.mpp is None
        d, info = detection_scale(white_detector, slide)
        ratio = _gt_side(s, factor) / d / white_detector.input_cell_px
        assert TRAINED_RANGE[0] * 0.8 <= ratio <= TRAINED_RANGE[1] * 1.2, (s.image.name, factor, d, info)
        assert info["source"] in ("probe", "field") and info["downsample"] == d


def test_probe_finds_smaller_cells_of_a_wider_field(data_dir, white_detector, tmp_path):
    """2x2 BCCD fields shrunk into one 640x480 image (a lower magnification: cells half
    the size, as another lab's objective gives): the probe replaces the training-field
    scale (which would show cells at a quarter of their trained size) and detects
    near the trained size."""
    from napari_bm_cells.io import open_slide
    from napari_bm_cells.training.crosslab import wide_fields

    samples, _ = __import__("napari_bm_cells.training.evaluate", fromlist=["x"]).detection_samples(
        data_dir / "bccd", "test")
    for w in wide_fields(samples[:8], tmp_path, k=2):
        slide = open_slide(w.image)
        d, info = detection_scale(white_detector, slide)
        sides = [max(b.x1 - b.x0, b.y1 - b.y0) for b in w.boxes if b.cls == "WBC"]
        ratio = np.median(sides) / d / white_detector.input_cell_px
        assert info["source"] == "probe", info
        assert TRAINED_RANGE[0] * 0.8 <= ratio <= TRAINED_RANGE[1] * 1.2, (d, info)
        assert d < max(slide.shape) / white_detector.imgsz  # finer than the training-field scale


def test_given_cell_size_and_pixel_size_skip_the_probe(data_dir, detector):
    from napari_bm_cells.io import open_slide

    slide = open_slide(data_dir / "bccd" / "JPEGImages" / "BloodImage_00000.jpg")
    d, info = detection_scale(detector, slide, cell_px=2 * detector.input_cell_px)
    assert info["source"] == "cell_size" and d == pytest.approx(2.0)
    slide.mpp = 0.1  # 12 um white cell -> 120 px
    d, info = detection_scale(detector, slide)
    assert info["source"] == "pixel_size" and d == pytest.approx(120 / detector.input_cell_px)


def test_auto_snaps_to_a_close_pyramid_level():
    class Pyr:
        downsamples = [1.0, 2.0, 4.0]

    assert snap_to_level(Pyr, 1.61) == 2.0  # within 1.3x: read level 1 as it is
    assert snap_to_level(Pyr, 2.9) == 2.9  # between levels: resample
    assert snap_to_level(Pyr, 0.8) == 0.8  # upsampling never snaps
    assert snap_to_level(Pyr, 3.5) == 4.0


def test_probe_recovers_the_white_cells_of_a_lower_magnification(data_dir, white_detector, tmp_path):
    """3x3 BCCD fields shrunk into one 640x480 image (white cells ~70 px, as another lab's
    lower magnification gives): at the training-field scale the detector misses many of
    them; at the probe's scale it finds nearly all."""
    from napari_bm_cells.training.crosslab import wide_fields
    from napari_bm_cells.training.evaluate import detection_metrics, detection_samples

    samples, _ = detection_samples(data_dir / "bccd", "test")
    wide = wide_fields(samples[:27], tmp_path, k=3)
    probe, _ = detection_metrics(wide, white_detector)
    fixed, _ = detection_metrics(wide, white_detector, level="2x")  # long side to the 320 px input
    assert probe["n_gt"] >= 20
    assert probe["recall"] >= 0.9 and probe["recall"] > fixed["recall"] + 0.15, (probe, fixed)
