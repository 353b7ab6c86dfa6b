"""Unclassified cells (UNK): threshold from validation, out of the differential, reviewed
first, sign-off refused until they have a class."""
import numpy as np
import pytest

from napari_bm_cells import analyze
from napari_bm_cells.errors import InputError
from napari_bm_cells.review import mark_reviewed, pending_review, review_queue, sign_off
from napari_bm_cells.training.calibrate import calibrate_checkpoint, choose_min_confidence


@pytest.fixture(scope="module")
def mosaic_unk(data_dir, detector, classifier):
    from helpers import build_mosaic

    img, _ = build_mosaic(2, 3, source="bccd", split="test", seed=5)
    ref = analyze(img, detector=detector, classifier=classifier, min_confidence=0)
    thr = float(np.median(ref.cells["confidence"]))  # half the cells fall below it
    return ref, analyze(img, detector=detector, classifier=classifier, min_confidence=thr), thr


def test_cells_below_the_threshold_are_unk_and_out_of_the_differential(mosaic_unk):
    ref, res, thr = mosaic_unk
    cells = res.cells
    unk = cells["label"] == "UNK"
    assert unk.any() and (~unk).any()
    assert (cells.loc[unk, "confidence"] < thr).all() and (cells.loc[~unk, "confidence"] >= thr).all()
    # the model's class is kept, and equals the unthresholded run's label
    assert list(cells["model_label"]) == list(ref.cells["label"])
    s = res.summary
    assert s["n_unclassified"] == int(unk.sum()) == s["counts"]["UNK"]
    assert s["percent"]["UNK"] is None and "UNK" in s["excluded_codes"]
    assert s["n_counted"] == ref.summary["n_counted"] - int(unk.sum())
    assert s["min_confidence"] == thr


def test_review_queue_starts_with_unk_and_sign_off_waits_for_them(mosaic_unk):
    _, res, _ = mosaic_unk
    cells = res.cells.assign(reviewed=False)
    n_unk = int((cells["label"] == "UNK").sum())
    queue = review_queue(cells)
    first = cells.set_index("cell_id").loc[queue[:n_unk], "label"]
    assert (first == "UNK").all()
    with pytest.raises(InputError, match=f"{n_unk} unclassified"):
        sign_off(cells, "dr smith")
    assert sign_off(cells, "dr smith", allow_pending=True)["n_unclassified"] == n_unk
    for k, cid in enumerate(queue[:n_unk]):  # reviewer: accept the first, correct the rest
        cells = mark_reviewed(cells, cid, None if k == 0 else "LYT")
    assert pending_review(cells) == 0
    row = cells.set_index("cell_id").loc[queue[0]]
    assert row["label"] == row["model_label"] and row["reviewed"]
    rec = sign_off(cells, "dr smith")
    assert rec["by"] == "dr smith" and rec["n_unclassified"] == 0 and "T" in rec["at"]
    with pytest.raises(InputError, match="name"):
        sign_off(cells, "  ")


def test_choose_min_confidence_reaches_the_target_accuracy():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.2, 1.0, 2000)
    correct = rng.uniform(size=2000) < conf  # accuracy rises with confidence
    r = choose_min_confidence(conf, correct, target_accuracy=0.8, max_reject=0.7)
    kept = conf >= r["min_confidence"]
    assert r["kept_accuracy"] == pytest.approx(correct[kept].mean()) and r["kept_accuracy"] >= 0.8
    assert r["rejected_fraction"] == pytest.approx(1 - kept.mean())
    assert not r["capped"]
    capped = choose_min_confidence(conf, correct, target_accuracy=0.99, max_reject=0.1)
    assert capped["capped"] and capped["rejected_fraction"] <= 0.1 + 1e-9
    assert choose_min_confidence(conf, np.ones(2000, bool))["min_confidence"] == 0.0


def test_calibration_on_the_validation_split_is_stored_in_the_checkpoint(data_dir, classifier_path, tmp_path):
    from napari_bm_cells.checkpoint import read_meta

    out = tmp_path / "calibrated.safetensors"
    r = calibrate_checkpoint(classifier_path, data_dir / "pbc", out, split="val")
    meta = read_meta(out)
    assert meta.min_confidence == r["min_confidence"] > 0
    assert meta.metrics["review_threshold"]["split"] == "val"
    assert r["kept_accuracy"] >= min(0.95, r["accuracy"]) and r["rejected_fraction"] <= 0.2 + 1e-9
    assert (tmp_path / "calibrated.split.csv").is_file()
    # the shipped checkpoint carries the threshold chosen this way (calibrated with bfloat16
    # autocast; in float32, as on CPUs without bf16, probabilities move by a few 1e-3)
    assert read_meta(classifier_path).min_confidence == pytest.approx(r["min_confidence"], abs=0.02)
