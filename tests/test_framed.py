"""Fields in a black surround (a camera's round field of view, a scanner's unscanned strip):
the black pixels hold no smear, so they must change neither the colour statistics, nor the
scale, nor what is detected."""
import numpy as np

from napari_bm_cells.colour import detector_colour, slide_lab_stats, surround
from napari_bm_cells.scale import detection_scale
from napari_bm_cells.training.evaluate import FRAME, detection_metrics, detection_samples, rescaled_slide

#: a Raabin-WBC test field of TXL-PBC with a black strip along its top edge
BLACK_STRIP = "82cdedc1-7853-5233-b7cf-b85350e02f19.jpg"


def _scale(detector, slide):
    """The detection scale as analyze finds it (through the slide's colour adaptation)."""
    return detection_scale(detector_colour(detector, slide, "standardise")[0], slide)


def _fields(data_dir):
    bccd, _ = detection_samples(data_dir / "bccd", "test")
    txl, _ = detection_samples(data_dir / "txl-pbc" / "data.yaml", "test")
    from napari_bm_cells.training.labs import field_source

    by_lab = {}
    for s in txl:
        by_lab.setdefault(field_source(s), []).append(s)
    return bccd[:4] + [s for lab in ("BCD", "Raabin-WBC", "PBC") for s in by_lab[lab][:2]]


def test_a_black_surround_changes_neither_colour_nor_scale_nor_detections(data_dir, detector):
    """Ten real fields of four labs, each also set in a black margin of a quarter of its
    side: the same CIELAB statistics, scale and white cells; the detector's tiles show the
    surround as glass and summary.json's ``detector.colour`` says so."""
    samples = _fields(data_dir)
    for s in samples:
        plain, framed = rescaled_slide(s.image, 1.0), rescaled_slide(s.image, 1.0, frame=FRAME)
        a, b = slide_lab_stats(plain), slide_lab_stats(framed)
        assert np.allclose(a["mean"], b["mean"], atol=1.5) and np.allclose(a["std"], b["std"], atol=1.5), s.image.name
        info_a = detector_colour(detector, plain, "standardise")[1]
        info_b = detector_colour(detector, framed, "standardise")[1]
        assert "void_fill" in info_b and "void_fill" not in info_a
        d_a, d_b = _scale(detector, plain)[0], _scale(detector, framed)[0]
        assert abs(np.log(d_b / d_a)) < np.log(1.25), (s.image.name, d_a, d_b)  # within the detector's reach
    m_a, per_a = detection_metrics(samples, detector)
    m_b, per_b = detection_metrics(samples, detector, frame=FRAME)
    assert m_b["recall"] >= m_a["recall"] - 1e-9 and m_a["recall"] >= 0.9
    assert sum(p["n_pred"] for p in per_b) <= sum(p["n_pred"] for p in per_a) + 1  # no boxes on the surround


def test_a_black_strip_does_not_pass_for_nuclei_in_the_scale_probe(data_dir, detector):
    """A camera field whose only dark pixels were a black strip: at twice its
    magnification (too large for the field rule), the white-cell probe found no nucleus
    in the real cell's box and chose a scale 3x too fine (11 boxes of red cells); with
    the strip left out it detects at twice the field's own scale and finds the cell."""
    path = data_dir / "txl-pbc" / "images" / "test" / BLACK_STRIP
    assert surround(np.asarray(rescaled_slide(path, 1.0).read_region(0, 0, 575, 575)))[:10].mean() > 0.5
    d1, _ = _scale(detector, rescaled_slide(path, 1.0))
    d2, info = _scale(detector, rescaled_slide(path, 2.0))
    assert abs(np.log(d2 / (2 * d1))) < np.log(1.15), (d1, d2, info)
    txl, _ = detection_samples(data_dir / "txl-pbc" / "data.yaml", "test")
    samples = [s for s in txl if s.image.name == BLACK_STRIP]
    m, per = detection_metrics(samples, detector, rescale=2.0)
    assert per[0]["n_tp"] >= 1 and per[0]["n_pred"] <= 2


def test_an_underexposed_fields_nuclei_are_not_a_black_surround(data_dir, detector):
    """Raabin-WBC test fields at a fifth of their brightness (glass at about 45): their
    nuclei fall below 25 in every channel, yet beside such glass they are not black, so
    no surround is found and nothing is painted over (recall as the field's own)."""
    from napari_bm_cells.colour import void_pixels
    from napari_bm_cells.io import open_slide
    from napari_bm_cells.training.labs import field_source

    txl, _ = detection_samples(data_dir / "txl-pbc" / "data.yaml", "test")
    fields = [s for s in txl if field_source(s) == "Raabin-WBC"][:6]
    black_at_25 = 0
    for s in fields:
        rgb = np.asarray(rescaled_slide(s.image, 1.0).levels[0], np.float32)
        dark = np.round(rgb * 0.2).astype(np.uint8)
        black_at_25 += int(void_pixels(dark, 25).mean() > 0.01)
        assert not surround(dark).any(), s.image.name
        assert "void_fill" not in detector_colour(detector, open_slide(dark), "standardise")[1]
    assert black_at_25 >= 3  # an absolute level would take their nuclei for a surround
