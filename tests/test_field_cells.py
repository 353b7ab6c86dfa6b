"""Cells cut from another lab's annotated fields (BCCD) for training, and the held-out
fields the cross-lab check scores."""
from collections import Counter

import numpy as np
import pytest

from napari_bm_cells.crop import cell_diameter, centre_contour
from napari_bm_cells.training.det_data import DuplicateFinder, read_voc
from napari_bm_cells.training.field_cells import LABEL_TO_CODES, export_field_cells, read_subtypes


@pytest.fixture(scope="module")
def test_split_cells(data_dir, classifier, tmp_path_factory):
    out = tmp_path_factory.mktemp("fields")
    return out, export_field_cells(data_dir / "bccd", out, classifier.meta, splits=("test",))


def test_one_crop_per_labelled_single_cell_field(data_dir, test_split_cells):
    _, df = test_split_cells
    bccd = data_dir / "bccd"
    labels = read_subtypes(bccd, ("test",))
    one_wbc = {s.image.stem for ss in read_voc(bccd).values() for s in ss
               if sum(b.cls == "WBC" for b in s.boxes) == 1}
    want = labels[labels["image"].map(lambda p: p.stem in one_wbc)]
    assert len(want) >= 40
    assert Counter(df["label"]) == Counter(LABEL_TO_CODES[t][0] for t in want["truth"])
    assert sorted(df["path"].map(lambda p: p.split("_", 1)[1].rsplit(".", 1)[0])) == \
        sorted(p.stem for p in want["image"])


def test_field_crops_look_like_the_training_crops(test_split_cells, classifier):
    """Same field of view and apparent cell size as the classifier's training crops, and
    the cell in the middle (as analyze cuts it)."""
    from PIL import Image

    _, df = test_split_cells
    meta = classifier.meta
    diam, centred = [], 0
    for p in df["path"]:
        crop = np.asarray(Image.open(p).convert("RGB"))
        assert crop.shape == (meta.crop_size_px, meta.crop_size_px, 3)
        d = cell_diameter(crop)
        if d is not None:
            diam.append(d)
        cc = centre_contour(crop)  # the stained cell nearest the middle
        mid = (crop.shape[0] - 1) / 2
        centred += cc is not None and np.hypot(*(np.array(cc.centroid) - mid)) < 0.15 * crop.shape[0]
    assert centred >= 0.9 * len(df), (centred, len(df))
    ratio = np.median(diam) / meta.ref_cell_px
    assert 0.8 < ratio < 1.25, ratio


def test_held_out_fields_share_nothing_with_training_fields(data_dir):
    from napari_bm_cells.training.crosslab import held_out_fields
    from napari_bm_cells.training.det_data import image_signature

    bccd = data_dir / "bccd"
    held = held_out_fields(bccd)
    train = read_subtypes(bccd, ("train",))
    assert set(held["split"]) == {"val", "test"} and len(held) >= 140
    assert not set(held["image"]) & set(train["image"])
    finder = DuplicateFinder()
    for p in train["image"]:
        finder.add(image_signature(p), str(p))
    assert all(finder.match(image_signature(p)) is None for p in held["image"])


def test_training_with_field_cells_adds_them_to_train_only(data_dir, tmp_path):
    from napari_bm_cells.checkpoint import read_meta
    from napari_bm_cells.training.train_classifier import read_split, split_path, train_classifier

    msgs = []
    out = tmp_path / "m.safetensors"
    train_classifier(data_dir / "pbc", out, arch="resnet10t", img_size=32, batch_size=4, epochs=1,
                     max_steps=1, max_per_class=6, crop_size_px=250, field_cells=[data_dir / "bccd"],
                     progress=msgs.append)
    n = next(int(m.split()[0]) for m in msgs if "cells cut from fields" in m)
    assert n >= 150  # BCCD train-split fields with one labelled white cell
    assert "bccd train-split fields" in read_meta(out).trained_on
    split = read_split(split_path(out), data_dir / "pbc")
    assert not split["path"].str.contains("bccd").any()  # val/test stay PBC-only


def test_bccd_field_types_use_the_model_class_and_report_review(data_dir, classifier_path, tmp_path):
    from napari_bm_cells.training.crosslab import evaluate_fields

    m = evaluate_fields(data_dir / "bccd", tmp_path, None, classifier_path, limit=5)
    import pandas as pd

    df = pd.read_csv(tmp_path / "bccd_fields.csv")
    assert "UNK" not in set(df["pred"])  # a field's type is the model's class, reviewed or not
    from napari_bm_cells.taxonomy import NON_LEUKOCYTE_CODES

    assert not set(df["pred"]) & NON_LEUKOCYTE_CODES  # the field's type is a leukocyte's
    assert m["n"] == len(df) >= 4
    r = m["review"]
    assert r["unclassified_fraction"] == pytest.approx(df.loc[df["pred"] != "none", "unclassified"].mean())
