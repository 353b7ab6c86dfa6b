"""The slide's class mix as the prior of each cell's type (``--class-prior slide``)."""
import numpy as np
import pandas as pd
import pytest

from napari_bm_cells.classify import Classifier
from napari_bm_cells.prior import adapt_to_slide, estimate_mix

#: a blood-like white-cell mix (cells per type) of one slide, rare immature cells included
BLOOD = {"NGS": 75, "LYT": 40, "MON": 9, "EOS": 5, "NGB": 5, "BAS": 2, "MYB": 2, "MMZ": 2, "EBO": 2, "PMO": 2}
RARE = ("BAS", "MYB", "MMZ", "EBO", "PMO")


@pytest.fixture(scope="module")
def blood_slide(data_dir, classifier_path):
    """The shipped classifier's probabilities of PBC's held-back test crops drawn in a
    blood-like mix, and their types."""
    from napari_bm_cells.training.cls_data import load_images
    from napari_bm_cells.training.train_classifier import read_split, split_path

    clf = Classifier(classifier_path, device="cpu")
    test = read_split(split_path(classifier_path), data_dir / "pbc").query("split == 'test'")
    rows = pd.concat([test[test["label"] == c].head(n) for c, n in BLOOD.items()])
    crops, ok = load_images(rows["path"].tolist(), clf.input_size, fov=clf.meta.crop_size_px)
    assert ok.all() and len(rows) == sum(BLOOD.values())
    return clf.predict(crops), rows["label"].to_numpy(), list(clf.classes)


def test_the_slides_mix_is_estimated_and_types_the_cells_better(blood_slide):
    """On a blood-like slide of real crops the estimated mix is closer to the slide's than
    the classifier's own counts, more cells are typed right, and the rare immature cells
    and erythroblasts mostly keep their type."""
    probs, truth, classes = blood_slide
    adapted, info = adapt_to_slide(probs, classes)
    assert info["adapted"] and info["n_cells"] == len(truth) and sum(info["mix"].values()) == pytest.approx(1, abs=1e-3)
    true_mix = np.array([np.mean(truth == c) for c in classes])
    counted = np.array([np.mean(probs.argmax(1) == k) for k in range(len(classes))])
    mix = estimate_mix(probs)
    assert np.abs(mix - true_mix).sum() < 0.75 * np.abs(counted - true_mix).sum()
    before, after = (np.asarray(classes)[p.argmax(1)] == truth for p in (probs, adapted))
    assert after.mean() > before.mean() + 0.02, (before.mean(), after.mean())
    rare = np.isin(truth, RARE)
    assert after[rare].sum() >= before[rare].sum() - 2, (before[rare].sum(), after[rare].sum())


def test_few_cells_or_no_strength_keep_the_probabilities(blood_slide):
    probs, _, classes = blood_slide
    few, info = adapt_to_slide(probs[:49], classes)
    assert not info["adapted"] and np.array_equal(few, probs[:49])
    same, info = adapt_to_slide(probs, classes, strength=0)
    assert not info["adapted"] and np.array_equal(same, probs)
    full, _ = adapt_to_slide(probs, classes, strength=1)
    half, _ = adapt_to_slide(probs, classes, strength=0.5)
    common = classes.index("NGS")  # the commonest type gains most with the full update
    assert full[:, common].mean() > half[:, common].mean() > probs[:, common].mean()


def test_analyze_types_each_cell_with_the_slides_mix_and_records_it(data_dir, detector, classifier_path,
                                                                     monkeypatch, tmp_path):
    """The pipeline's cells are the same with the prior off and on; on, their probabilities
    are the off run's re-weighted by the slide's estimated mix (recorded in summary.json);
    a slide of fewer cells than ``MIN_CELLS`` keeps them."""
    import json

    from helpers import build_mosaic

    from napari_bm_cells import prior
    from napari_bm_cells.cells_table import prob_column
    from napari_bm_cells.export import write_results
    from napari_bm_cells.options import AnalysisOptions
    from napari_bm_cells.pipeline import analyze

    img, _ = build_mosaic(2, 3, "bccd", split="test", seed=6)
    run = {m: analyze(img, detector, classifier_path, AnalysisOptions(class_prior=m, masks=False))
           for m in ("off", "slide")}
    assert run["slide"].summary["classifier"]["class_prior"] == {
        "mode": "slide", "adapted": False, "n_cells": len(run["slide"].cells), "min_cells": 50, "strength": 0.5}
    monkeypatch.setattr(prior, "MIN_CELLS", 4)
    run["slide"] = analyze(img, detector, classifier_path, AnalysisOptions(class_prior="slide", masks=False))
    off, on = run["off"].cells, run["slide"].cells
    assert len(off) == len(on) >= 4 and np.allclose(off[["x", "y"]], on[["x", "y"]])
    classes = run["off"].summary["classifier"]["classes"]
    cols = [prob_column(c) for c in classes]
    want, info = prior.adapt_to_slide(off[cols].to_numpy(), classes)
    np.testing.assert_allclose(on[cols].to_numpy(), want, atol=1e-5)
    assert (on["model_label"].to_numpy() == np.asarray(classes)[want.argmax(1)]).all()
    assert run["off"].summary["classifier"]["class_prior"] == {"mode": "off", "adapted": False}
    write_results(run["slide"], tmp_path, report=False, geojson=False)
    saved = json.loads((tmp_path / "summary.json").read_text())["classifier"]["class_prior"]
    assert saved["adapted"] and saved["mix"] == info["mix"]
