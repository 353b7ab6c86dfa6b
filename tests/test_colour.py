"""Run-time colour adaptation: a slide's crops matched to the classifier's training crops."""
import numpy as np
import pytest

from napari_bm_cells.colour import (LabStandard, SlideColour, background_rgb, images_background, lab_stats,
                                    white_balance_gain)


def test_glass_colour_of_real_images(data_dir):
    """PBC crops have a warm (yellow-pink) glass, BCCD fields a grey one; the gain turns
    one into the other and leaves a slide already like the reference alone."""
    from PIL import Image

    pbc = images_background(sorted((data_dir / "pbc").glob("*/*.jpg"))[::50])
    assert pbc[0] > pbc[1] > pbc[2] and pbc[0] > 240  # warm, bright
    field = np.asarray(Image.open(data_dir / "bccd" / "JPEGImages" / "BloodImage_00000.jpg").convert("RGB"))
    bg = background_rgb(field)
    assert np.ptp(bg) < 15  # grey glass
    gain = white_balance_gain(bg, pbc)
    assert np.allclose(bg * gain, pbc, atol=1) and gain[0] > gain[2]
    assert np.allclose(white_balance_gain(pbc, pbc), 1)
    assert white_balance_gain(None, pbc) is None and background_rgb(np.zeros((4, 4, 3), np.uint8)) is None


def _bccd_crops(data_dir, n=6):
    """Squares around the labelled white cells of a few BCCD fields (another lab's stain)."""
    import xml.etree.ElementTree as ET

    from PIL import Image

    crops = []
    for xml in sorted((data_dir / "bccd" / "Annotations").glob("*.xml"))[:40]:
        root = ET.parse(xml).getroot()
        for o in root.iter("object"):
            if o.findtext("name") != "WBC":
                continue
            b = [int(float(o.find("bndbox").findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")]
            img = np.asarray(Image.open(data_dir / "bccd" / "JPEGImages" / root.findtext("filename")).convert("RGB"))
            cx, cy, h = (b[0] + b[2]) // 2, (b[1] + b[3]) // 2, 110
            c = img[max(0, cy - h):cy + h, max(0, cx - h):cx + h]
            if c.shape[:2] == (2 * h, 2 * h):
                crops.append(np.asarray(Image.fromarray(c).resize((112, 112))))
        if len(crops) >= n:
            return np.stack(crops)
    pytest.fail("no BCCD white cells found")


def test_lab_standardisation_maps_another_labs_crops_onto_the_reference(data_dir, classifier):
    """BCCD crops (grey glass, half PBC's contrast) standardised with the shipped
    checkpoint's CIELAB reference take its mean and spread; the reference's own crops are
    left nearly as they are; a flat channel is not stretched into noise."""
    ref = classifier.meta.lab_reference
    assert ref is not None and 60 < ref["mean"][0] < 90  # measured on PBC's training crops
    crops = _bccd_crops(data_dir)
    before = lab_stats(crops)
    out = LabStandard(before, ref)(crops)
    assert out.dtype == np.uint8 and out.shape == crops.shape
    after = lab_stats(out)
    assert np.allclose(after["mean"], ref["mean"], atol=3) and np.allclose(after["std"], ref["std"], rtol=0.15)
    assert not np.allclose(before["std"], ref["std"], rtol=0.15)  # BCCD differs: the test can fail
    same = LabStandard(ref, ref)(crops)
    assert np.abs(same.astype(int) - crops).max() <= 2
    flat = np.full((1, 16, 16, 3), 200, np.uint8)
    assert np.abs(LabStandard(lab_stats(flat), ref).gain).max() <= 4.0


def test_slide_colour_is_fitted_once_recorded_and_rebuilt(data_dir, classifier):
    """standardise: fitted on the first crops; ``info`` rebuilds the same mapping (what
    Explain uses later); off, or a checkpoint without reference, leaves crops alone."""
    import copy

    crops = _bccd_crops(data_dir)
    sc = SlideColour("standardise", classifier.meta)
    assert sc.needs_fit and np.array_equal(sc(crops), crops)
    sc.fit(crops)
    assert not sc.needs_fit and sc.info()["on"] and sc.info()["fitted_on_cells"] == len(crops)
    assert np.array_equal(SlideColour.from_info(sc.info())(crops), sc(crops))
    assert not np.array_equal(sc(crops), crops)
    meta = copy.copy(classifier.meta)
    meta.lab_reference = None
    bare = SlideColour("standardise", meta).fit(crops)
    assert not bare.info()["on"] and "lab_reference" in bare.info()["why"] and np.array_equal(bare(crops), crops)
    assert np.array_equal(SlideColour.from_info(None)(crops), crops)


def test_colour_adaptation_in_the_pipeline_is_switchable_and_recorded(data_dir, classifier, detector):
    """The default standardises the crops (probabilities change) and summary.json records
    the slide's and the reference's statistics; ``white-balance`` records glass,
    reference and gain; ``off``, or a checkpoint without the reference, reads crops as
    they are (a detector without its own reference here, so the boxes are the same)."""
    import copy

    from napari_bm_cells.pipeline import AnalysisOptions, analyze

    img = data_dir / "bccd" / "JPEGImages" / "BloodImage_00007.jpg"
    clf = copy.copy(classifier)
    clf.meta = copy.copy(classifier.meta)
    clf.meta.background = images_background(sorted((data_dir / "pbc").glob("*/*.jpg"))[::100])
    det = copy.copy(detector)
    det.meta = {k: v for k, v in detector.meta.items() if k != "lab_reference"}
    std = analyze(img, detector=det, classifier=clf)
    assert not std.summary["detector"]["colour"]["on"]
    wb_run = analyze(img, detector=det, classifier=clf, options=AnalysisOptions(colour="white-balance"))
    off = analyze(img, detector=det, classifier=clf, options=AnalysisOptions(colour="off"))
    info = std.summary["classifier"]["colour"]
    assert info["mode"] == "standardise" and info["on"] and info["reference_lab"] == clf.meta.lab_reference
    assert info["fitted_on_cells"] == len(std.cells) > 0
    wb = wb_run.summary["classifier"]["colour"]
    assert wb["on"] and len(wb["gain"]) == 3 and wb["reference"] == clf.meta.background
    assert off.summary["classifier"]["colour"] == {"mode": "off", "on": False}
    assert len(std.cells) == len(wb_run.cells) == len(off.cells) > 0
    p_off = off.cells.filter(like="prob_").to_numpy()
    for run in (std, wb_run):
        assert not np.allclose(run.cells.filter(like="prob_").to_numpy(), p_off, atol=1e-3)
    clf.meta.lab_reference = None
    none = analyze(img, detector=det, classifier=clf)
    assert none.summary["classifier"]["colour"]["on"] is False
    assert np.allclose(none.cells.filter(like="prob_").to_numpy(), p_off, atol=1e-4)


def test_detection_standardised_finds_white_cells_of_a_pale_yellow_stain(data_dir, detector, classifier):
    """Four BCCD test fields as a pale stain on yellowish glass: the detector shown the
    tiles as they are misses their white cells; with the default ``--colour standardise``
    (tiles mapped into the range of CIELAB statistics its training fields span,
    ``lab_reference`` in the shipped sidecar) it finds each of them, in recall scoring and
    through analyze, whose summary.json records the mapping; ``off`` records that it was
    off; the field as BCCD gives it lies inside the range and is left as it is."""
    from napari_bm_cells.pipeline import AnalysisOptions, analyze
    from napari_bm_cells.training.evaluate import detection_metrics, detection_samples, rescaled_slide

    names = {"BloodImage_00007.jpg", "BloodImage_00075.jpg", "BloodImage_00233.jpg", "BloodImage_00346.jpg"}
    samples = [s for s in detection_samples(data_dir / "bccd")[0] if s.image.name in names]
    assert len(samples) == 4
    off, _ = detection_metrics(samples, detector, recolour="yellow", colour="off")
    on, _ = detection_metrics(samples, detector, recolour="yellow")
    assert off["recall"] <= 0.25 and on["recall"] == 1.0, (off["recall"], on["recall"])
    slide = rescaled_slide(data_dir / "bccd" / "JPEGImages" / "BloodImage_00007.jpg", 1.0, recolour="yellow")
    std = analyze(slide, detector=detector, classifier=classifier)
    info = std.summary["detector"]["colour"]
    assert info["on"] and info["adapted"]
    # a pale stain: less contrast than any training field's, brought up to their range's edge
    low = detector.meta["lab_reference"]["std_range"][0][0]
    assert info["slide_lab"]["std"][0] < low and info["reference_lab"]["std"][0] == pytest.approx(low, abs=1e-3)
    leuko = std.cells[std.cells["model_label"] != "PLT"]
    assert len(leuko) >= 1
    none = analyze(slide, detector=detector, classifier=classifier, options=AnalysisOptions(colour="off"))
    assert none.summary["detector"]["colour"] == {"mode": "off", "on": False}
    from napari_bm_cells.colour import detector_colour
    from napari_bm_cells.io import open_slide

    same, info = detector_colour(detector, open_slide(samples[0].image), "standardise")
    assert same is detector and info["on"] and not info["adapted"] and info["gain"] == [1.0, 1.0, 1.0]


def test_slide_statistics_leave_out_empty_glass(data_dir):
    """A BCCD field in the middle of a slide nine times its area of bare glass has about
    the field's own CIELAB statistics (glass blocks are dropped), where all pixels would
    give a much brighter, flatter mean; the contour detector stores no reference, so
    detection runs unadapted and says why."""
    from PIL import Image

    from napari_bm_cells.colour import detector_colour, lab_stats, slide_lab_stats
    from napari_bm_cells.detect import load_detector
    from napari_bm_cells.io import open_slide

    field = np.asarray(Image.open(data_dir / "bccd" / "JPEGImages" / "BloodImage_00010.jpg").convert("RGB"))
    h, w = field.shape[:2]
    big = np.empty((3 * h, 3 * w, 3), np.uint8)
    big[:] = background_rgb(field).astype(np.uint8)
    big[h:2 * h, w:2 * w] = field
    own, embedded = slide_lab_stats(open_slide(field)), slide_lab_stats(open_slide(big))
    assert abs(own["mean"][0] - embedded["mean"][0]) < 3 and abs(own["std"][0] - embedded["std"][0]) < 3
    every = lab_stats(big[::3, ::3])
    assert every["mean"][0] > own["mean"][0] + 5 and every["std"][0] < own["std"][0] - 3
    contour = load_detector("contour")
    same, info = detector_colour(contour, open_slide(field), "standardise")
    assert same is contour and not info["on"] and "lab_reference" in info["why"]
