"""Run-time white balance: the slide's glass colour matched to the training crops'."""
import numpy as np

from napari_bm_cells.colour import background_rgb, images_background, white_balance_gain


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


def test_white_balance_in_the_pipeline_is_switchable_and_recorded(data_dir, classifier):
    """``white_balance=True`` multiplies the crops by the slide's gain before the network
    (probabilities change) and summary.json records glass, reference and gain; off, or
    with a checkpoint that stores no background, the crops go in as read."""
    import copy

    from napari_bm_cells.pipeline import AnalysisOptions, analyze

    img = data_dir / "bccd" / "JPEGImages" / "BloodImage_00007.jpg"
    clf = copy.copy(classifier)
    clf.meta = copy.copy(classifier.meta)
    clf.meta.background = images_background(sorted((data_dir / "pbc").glob("*/*.jpg"))[::100])
    on = analyze(img, classifier=clf, options=AnalysisOptions(white_balance=True))
    off = analyze(img, classifier=clf, options=AnalysisOptions(white_balance=False))
    wb = on.summary["classifier"]["white_balance"]
    assert wb["on"] and len(wb["gain"]) == 3 and wb["reference"] == clf.meta.background
    assert off.summary["classifier"]["white_balance"] == {"on": False}
    assert len(on.cells) == len(off.cells) > 0
    p_on = on.cells.filter(like="prob_").to_numpy()
    p_off = off.cells.filter(like="prob_").to_numpy()
    assert not np.allclose(p_on, p_off, atol=1e-3)
    clf.meta.background = None
    none = analyze(img, classifier=clf, options=AnalysisOptions(white_balance=True))
    assert none.summary["classifier"]["white_balance"]["on"] is False
    assert np.allclose(none.cells.filter(like="prob_").to_numpy(), p_off, atol=1e-4)
