"""Review helpers on cell tables: uncertainty order, galleries, lineage roll-up, corrections."""
import numpy as np
import pandas as pd
import pytest

from napari_bm_cells.errors import InputError
from napari_bm_cells.review import (gallery, lineage_rollup, mark_reviewed, review_queue,
                                    uncertainty_scores)
from napari_bm_cells.taxonomy import NON_LEUKOCYTE_CODES, lineage_of


def _table(probs: np.ndarray, classes) -> pd.DataFrame:
    """A cell table with the pipeline's columns for the given probabilities."""
    from napari_bm_cells.detect import Detections
    from napari_bm_cells.pipeline import _rows

    n = len(probs)
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (n, 1)) + np.arange(n)[:, None] * 20
    dets = Detections(boxes.astype(np.float32), np.ones(n, np.float32))
    centres = np.stack([(boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2], 1)
    return _rows(dets, np.arange(n), centres.astype(float), probs.astype(np.float32), classes)


@pytest.fixture(scope="module")
def real_cells(classifier, data_dir):
    """Cell table of 3 real PBC crops from each of 4 classes, classified by the classifier."""
    from napari_bm_cells.training.cls_data import load_images

    paths = [p for c in ("NGS", "LYT", "MON", "PLT") for p in sorted((data_dir / "pbc" / c).glob("*.jpg"))[:3]]
    imgs, _ = load_images(paths, classifier.input_size, fov=classifier.meta.crop_size_px)
    return _table(classifier.predict(imgs), classifier.classes)


@pytest.fixture
def toy():
    classes = ["NGS", "LYT", "MON", "PLT"]
    probs = np.array([[0.90, 0.05, 0.05, 0.00],   # 1: sure NGS        margin 0.15
                      [0.45, 0.44, 0.11, 0.00],   # 2: NGS vs LYT      margin 0.99
                      [0.10, 0.60, 0.30, 0.00],   # 3: LYT             margin 0.70
                      [0.40, 0.10, 0.10, 0.40],   # 4: tie NGS / PLT   margin 1.00 (label NGS)
                      [0.05, 0.05, 0.85, 0.05],   # 5: MON             margin 0.20
                      [0.55, 0.05, 0.40, 0.00]])  # 6: NGS vs MON      margin 0.85
    return _table(probs, classes)


def test_margin_score_is_one_minus_top_two_gap(toy):
    s = uncertainty_scores(toy)
    np.testing.assert_allclose(s.to_numpy(), [0.15, 0.99, 0.70, 1.00, 0.20, 0.85], atol=1e-6)
    np.testing.assert_allclose(uncertainty_scores(toy, "confidence").to_numpy(),
                               1 - toy["confidence"].to_numpy(), atol=1e-6)
    ent = uncertainty_scores(toy, "entropy")
    assert ent.between(0, 1).all() and ent.idxmax() == 3 and ent.idxmin() == 0
    with pytest.raises(InputError):
        uncertainty_scores(toy, "random")


def test_review_queue_follows_the_score(toy, real_cells):
    assert review_queue(toy) == [4, 2, 6, 3, 5, 1]
    assert review_queue(toy, by="confidence") == [4, 2, 6, 3, 5, 1]
    # the documented score, on a real table
    q = review_queue(real_cells, by="margin")
    s = uncertainty_scores(real_cells).to_numpy()
    ids = real_cells["cell_id"].to_numpy()
    assert sorted(q) == sorted(ids.tolist())
    assert np.all(np.diff(s[[int(np.flatnonzero(ids == c)[0]) for c in q]]) <= 1e-9)
    # reviewed cells go last; the rest keep their order
    reviewed = mark_reviewed(mark_reviewed(toy, 4), 2, new_label="LYT")
    assert review_queue(reviewed) == [6, 3, 5, 1, 4, 2]
    assert review_queue(reviewed, reviewed_last=False) == [4, 2, 6, 3, 5, 1]
    assert review_queue(toy, labels=["NGS"]) == [4, 2, 6, 1]


def test_review_queue_blast_first():
    probs = np.zeros((3, 3), np.float32)
    probs[:, 0] = [0.2, 0.9, 0.5]   # BLA
    probs[:, 1] = 1 - probs[:, 0]   # LYT
    cells = _table(probs, ["BLA", "LYT", "NGS"])
    assert review_queue(cells, by="p_blast") == [2, 3, 1]


def test_gallery_is_one_class_by_confidence(toy, real_cells):
    assert gallery(toy, "NGS") == [1, 6, 2, 4]
    assert gallery(toy, "NGS", lowest_first=True) == [4, 2, 6, 1]
    assert gallery(toy, "EOS") == []
    for label in real_cells["label"].unique():
        g = gallery(real_cells, label)
        sub = real_cells[real_cells["label"] == label]
        assert sorted(g) == sorted(sub["cell_id"].tolist())
        conf = sub.set_index("cell_id").loc[g, "confidence"].to_numpy()
        assert np.all(np.diff(conf) <= 0)
    # a corrected cell joins its new class, ranked by the model's probability of that class
    moved = mark_reviewed(toy, 3, new_label="MON")
    assert gallery(moved, "MON") == [5, 3]


def test_lineage_rollup_counts_by_lineage(real_cells, toy):
    r = lineage_rollup(real_cells)
    counted = [lab for lab in real_cells["label"] if lab not in NON_LEUKOCYTE_CODES]
    for lin, row in r.iterrows():
        assert row["count"] == sum(lineage_of(lab) == lin for lab in counted)
    assert r["count"].sum() == len(counted)
    assert r.attrs["differential"]["n_counted"] == len(counted)
    t = lineage_rollup(toy)
    assert t.loc["granulopoiesis", "count"] == 4 and t.loc["lymphopoiesis", "count"] == 1
    assert t.loc["monopoiesis", "count"] == 1
    assert t["percent"].sum() == pytest.approx(100.0)


def test_mark_reviewed(toy):
    out = mark_reviewed(toy, 2, new_label="LYT")
    assert "reviewed" not in toy.columns and toy.loc[1, "label"] == "NGS"  # a copy
    assert out.loc[1, "label"] == "LYT" and out.loc[1, "model_label"] == "NGS"
    assert bool(out.loc[1, "reviewed"]) and not out["reviewed"].drop(index=1).any()
    out = mark_reviewed(out, 2, new_label="MON")
    assert out.loc[1, "model_label"] == "NGS"  # the model's label survives a second correction
    mark_reviewed(out, 5, inplace=True)
    assert bool(out.loc[4, "reviewed"]) and out.loc[4, "label"] == "MON"
    with pytest.raises(InputError, match="cell_id"):
        mark_reviewed(toy, 99)
    with pytest.raises(InputError, match="class code"):
        mark_reviewed(toy, 1, new_label="NOPE")
