"""Red cells as the ruler of a slide without a pixel size: the detector's red-cell boxes set
the detection scale, the same at every magnification."""
import shutil

import numpy as np
from PIL import Image

from napari_bm_cells.detect import YoloDetector
from napari_bm_cells.io import open_slide
from napari_bm_cells.scale import detection_scale, probe_red_cell_px
from napari_bm_cells.training.evaluate import detection_samples, rescaled_slide
from napari_bm_cells.training.labs import field_source


def _fields_per_lab(data_dir, n=2):
    """``n`` test fields of each lab whose fields show red cells (Raabin-WBC's crops
    hold few), with the annotated red-cell boxes' median side."""
    samples, _ = detection_samples(data_dir / "txl-pbc" / "data.yaml", "test")
    out = {}
    for s in samples:
        lab = field_source(s)
        rbc = [max(b.x1 - b.x0, b.y1 - b.y0) for b in s.boxes if b.cls == "RBC"]
        if lab in ("BCCD", "BCD", "PBC") and len(rbc) >= 12 and len(out.setdefault(lab, [])) < n:
            out[lab].append((s, float(np.median(rbc))))
    return [f for fs in out.values() for f in fs]


def test_shipped_detector_boxes_red_cells(detector):
    red = detector.red_cells()
    assert red is not None and red.class_ids != detector.class_ids
    assert 40 < red.input_cell_px < detector.input_cell_px  # smaller than white cells at the input


def test_red_cell_size_is_the_same_at_every_magnification(data_dir, detector):
    """Fields of three labs resized 0.5x, 1x and 2x, no pixel size: the red cells' size
    read off each, brought back to the original pixels, agrees within 10% across the
    three magnifications and with the annotated red-cell boxes within 25%; the detection
    scale comes from it."""
    for s, annotated in _fields_per_lab(data_dir):
        sizes = []
        for f in (0.5, 1.0, 2.0):
            slide = rescaled_slide(s.image, f)
            d, info = detection_scale(detector, slide)
            assert info["source"] == "red cells", (s.image.name, f, info)
            sizes.append(info["red_cell_px"] / f)
        assert max(sizes) / min(sizes) < 1.1, (s.image.name, sizes)
        assert 0.75 < np.median(sizes) / annotated < 1.25, (s.image.name, sizes, annotated)


def test_few_red_cells_leave_the_scale_to_the_white_cells(data_dir, detector):
    """A crop of a field around its white cell holds too few red cells to measure: the
    probe says so, and the white-cell probe sets the scale."""
    samples, _ = detection_samples(data_dir / "bccd", "test")
    s = next(s for s in samples if sum(b.cls == "WBC" for b in s.boxes) == 1)
    b = next(b for b in s.boxes if b.cls == "WBC")
    img = np.asarray(Image.open(s.image).convert("RGB"))
    cell = img[int(b.y0):int(b.y1), int(b.x0):int(b.x1)]
    slide = open_slide(np.ascontiguousarray(cell))
    assert probe_red_cell_px(detector, slide) is None
    assert detection_scale(detector, slide)[1]["source"] != "red cells"


def test_weights_without_a_red_cell_size_have_no_red_cells(detector, tmp_path):
    """Weights whose sidecar does not give the red-cell size the network saw cannot be
    used as a ruler: ``red_cells()`` is None (the scale then comes from the white-cell
    probe: tests/test_scale.py)."""
    w = tmp_path / "det.pt"
    shutil.copy(detector.weights, w)
    assert YoloDetector(w).red_cells() is None


def test_analysis_detects_at_the_red_cells_scale(bccd_jpeg, detector):
    """A whole run on a real field without a pixel size: summary.json records red cells as
    the source of the detection scale and the red-cell size, and the white cell is found."""
    from napari_bm_cells.pipeline import analyze

    res = analyze(bccd_jpeg, detector=detector)
    scale = res.summary["detector"]["scale"]
    assert scale["source"] == "red cells" and 80 < scale["red_cell_px"] < 140, scale
    assert len(res.cells) >= 1
