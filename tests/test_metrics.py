"""Classification metrics against hand computation; evaluate_classifier on real PBC crops."""
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from napari_bm_cells.training.metrics import classification_metrics, tolerant_predictions




def _probs(y_pred, classes, hi=0.7):
    """Probabilities whose argmax is ``y_pred`` (rows sum to 1)."""
    lo = (1 - hi) / (len(classes) - 1)
    p = np.full((len(y_pred), len(classes)), lo)
    p[np.arange(len(y_pred)), [classes.index(c) for c in y_pred]] = hi
    return p


def _from_confusion(cm, classes):
    """y_true / y_pred lists from a confusion matrix (rows true, columns predicted)."""
    yt, yp = [], []
    for i, row in enumerate(cm):
        for j, n in enumerate(row):
            yt += [classes[i]] * n
            yp += [classes[j]] * n
    return yt, yp


# rows: true EOS, LYT, NGS; columns: predicted EOS, LYT, NGS
CLASSES = ["EOS", "LYT", "NGS"]
CM = [[3, 1, 0],
      [0, 2, 0],
      [2, 1, 1]]


def test_classification_metrics_equal_hand_computation():
    yt, yp = _from_confusion(CM, CLASSES)
    m = classification_metrics(yt, _probs(yp, CLASSES), CLASSES)
    # column sums (predicted) 5, 4, 1; row sums (true) 4, 2, 4; 6 of 10 correct
    prec = {"EOS": 3 / 5, "LYT": 2 / 4, "NGS": 1 / 1}
    rec = {"EOS": 3 / 4, "LYT": 2 / 2, "NGS": 1 / 4}
    f1 = {c: 2 * prec[c] * rec[c] / (prec[c] + rec[c]) for c in CLASSES}  # 2/3, 2/3, 0.4
    assert f1["NGS"] == pytest.approx(0.4)
    for c in CLASSES:
        pc = m["per_class"][c]
        assert pc["precision"] == pytest.approx(prec[c])
        assert pc["recall"] == pytest.approx(rec[c])
        assert pc["f1"] == pytest.approx(f1[c])
    assert [m["per_class"][c]["support"] for c in CLASSES] == [4, 2, 4]
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.4) / 3)
    assert m["weighted_f1"] == pytest.approx((4 * 2 / 3 + 2 * 2 / 3 + 4 * 0.4) / 10)
    # multi-class MCC (Gorodkin): (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2))
    c, s, p, t = 6, 10, [5, 4, 1], [4, 2, 4]
    mcc = (c * s - sum(a * b for a, b in zip(p, t))) / math.sqrt(
        (s * s - sum(a * a for a in p)) * (s * s - sum(b * b for b in t)))
    assert mcc == pytest.approx(28 / math.sqrt(58 * 64))
    assert m["mcc"] == pytest.approx(mcc)
    assert m["labels"] == CLASSES
    assert m["confusion_matrix"] == CM


def test_binary_mcc_by_hand():
    classes = ["LYT", "NGS"]
    # TP 4 (LYT as LYT), FN 1, FP 2, TN 3
    yt, yp = _from_confusion([[4, 1], [2, 3]], classes)
    m = classification_metrics(yt, _probs(yp, classes), classes)
    tp, fn, fp, tn = 4, 1, 2, 3
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m["mcc"] == pytest.approx(mcc)
    assert m["accuracy"] == pytest.approx(7 / 10)


def test_codes_the_model_lacks_count_as_errors_and_do_not_break_macro_f1():
    classes = ["LYT", "NGS"]
    yt = ["LYT", "NGS", "BLA"]           # BLA is not a class of the model
    yp = ["LYT", "NGS", "NGS"]
    m = classification_metrics(yt, _probs(yp, classes), classes)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["per_class"]["BLA"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    # LYT f1 1, NGS f1 2/3 (P 1/2, R 1), BLA f1 0
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_tolerant_evaluation_forgives_only_neighbouring_stages():
    yt = ["NGB", "NGS", "MYB", "MMZ", "NGS", "MYB", "LYT", "NGB", "EOS", "MMZ"]
    yp = ["NGS", "NGB", "MMZ", "MYB", "MYB", "NGS", "NGS", "MMZ", "EOS", "MMZ"]
    forgiven = [True, True, True, True, False, False, False, False, True, True]
    tol = tolerant_predictions(yt, yp)
    assert [a == b for a, b in zip(tol, yt)] == forgiven
    # not forgiven: the prediction is kept as it was
    assert list(tol[[4, 5, 6, 7]]) == ["MYB", "NGS", "NGS", "MMZ"]
    classes = ["EOS", "LYT", "MMZ", "MYB", "NGB", "NGS"]
    m = classification_metrics(yt, _probs(yp, classes), classes)
    assert m["accuracy"] == pytest.approx(2 / 10)
    assert m["tolerant"]["accuracy"] == pytest.approx(6 / 10)
    assert sorted(map(sorted, m["tolerant"]["pairs"])) == [["MMZ", "MYB"], ["NGB", "NGS"]]
    # no tolerance asked for: nothing is forgiven
    m0 = classification_metrics(yt, _probs(yp, classes), classes, tolerant_pairs=())
    assert m0["tolerant"]["accuracy"] == pytest.approx(m0["accuracy"])


def test_lineage_accuracy():
    yt, yp = _from_confusion(CM, CLASSES)
    m = classification_metrics(yt, _probs(yp, CLASSES), CLASSES)
    # EOS and NGS are both granulopoiesis: NGS->EOS (2) is right at lineage level,
    # EOS->LYT (1) and NGS->LYT (1) are not
    assert m["lineage"]["accuracy"] == pytest.approx(8 / 10)
    assert 0 <= m["lineage"]["macro_f1"] <= 1


def test_roc_auc_of_p_blast_by_hand():
    classes = ["BLA", "MYB", "LYT", "NGS"]
    yt = ["BLA", "BLA", "LYT", "NGS", "MYB"]
    p = np.array([[0.90, 0.00, 0.10, 0.00],   # blast, P(blast) .9
                  [0.40, 0.00, 0.60, 0.00],   # blast, P(blast) .4
                  [0.50, 0.00, 0.00, 0.50],   # not,   P(blast) .5
                  [0.20, 0.00, 0.00, 0.80],   # not,   P(blast) .2
                  [0.10, 0.80, 0.05, 0.05]])  # not,   P(blast) .1
    m = classification_metrics(yt, p, classes)
    # blast/non-blast pairs ranked right: .9 beats .5 .2 .1, .4 beats .2 .1 but not .5 -> 5/6
    assert m["roc_auc_blast"] == pytest.approx(5 / 6)
    # P(atypical) = P(BLA) + P(MYB): atypical cells (BLA, BLA, MYB) score .9 .4 .9, the others
    # .5 .2; every pair is ranked right except .4 < .5 -> 5/6
    assert m["roc_auc_atypical"] == pytest.approx(5 / 6)


def test_roc_auc_is_left_out_when_only_one_group_is_present():
    classes = ["BLA", "LYT"]
    m = classification_metrics(["LYT", "LYT"], np.array([[0.2, 0.8], [0.6, 0.4]]), classes)
    assert "roc_auc_blast" not in m


def test_p_blast_of_an_aml_model_sums_myeloblasts_and_monoblasts():
    classes = ["MOB", "MYO", "LYT"]
    yt = ["MOB", "MYO", "LYT", "LYT"]
    p = np.array([[0.35, 0.30, 0.35],   # P(blast) .65, argmax MOB
                  [0.10, 0.60, 0.30],   # .70
                  [0.30, 0.30, 0.40],   # .60 (a non-blast scored below the blasts)
                  [0.00, 0.10, 0.90]])  # .10
    m = classification_metrics(yt, p, classes)
    assert m["roc_auc_blast"] == pytest.approx(1.0)


# --- evaluate_classifier on real crops --------------------------------------------------

EVAL_CLASSES = ("EOS", "LYT", "NGS")


def _pbc_subset(data_dir, dst, classes=EVAL_CLASSES, n=5, copy=False):
    for c in classes:
        (dst / c).mkdir(parents=True)
        for p in sorted((data_dir / "pbc" / c).glob("*.jpg"))[:n]:
            shutil.copy(p, dst / c / p.name) if copy else (dst / c / p.name).symlink_to(p)
    return dst


def test_evaluate_classifier_on_a_real_folder_writes_metrics(data_dir, classifier_path, tmp_path):
    from napari_bm_cells.checkpoint import read_meta
    from napari_bm_cells.training.evaluate import evaluate_classifier

    folder = _pbc_subset(data_dir, tmp_path / "pbc5")
    out = tmp_path / "eval"
    m = evaluate_classifier(folder, out, checkpoint=classifier_path, device="cpu")
    saved = json.loads((out / "metrics.json").read_text())
    for k in ("macro_f1", "mcc", "accuracy", "per_class", "confusion_matrix", "tolerant", "lineage"):
        assert k in saved
    assert saved["n"] == m["n"] == 15
    for c in EVAL_CLASSES:
        assert saved["per_class"][c]["support"] == 5
    assert 0 <= saved["macro_f1"] <= 1 and 0 <= saved["accuracy"] <= 1 and -1 <= saved["mcc"] <= 1
    assert sum(map(sum, saved["confusion_matrix"])) == 15
    png = out / "confusion_matrix.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == 15
    assert set(pred["pred"]) <= set(read_meta(classifier_path).classes)
    assert (pred["label"] == pred["pred"]).mean() == pytest.approx(saved["accuracy"])
    assert set(pd.read_csv(out / "per_class.csv")["class"]) >= set(EVAL_CLASSES)


def test_evaluate_ignores_a_split_file_of_a_sibling_folder(data_dir, classifier_path, tmp_path):
    """The checkpoint's split lists ``<x>/pbc5_more``; evaluating ``<x>/pbc5`` must use all
    of ``pbc5``, not the sibling's test split (path prefix is not folder containment)."""
    from napari_bm_cells.training.evaluate import evaluate_classifier
    from napari_bm_cells.training.train_classifier import split_path

    folder = _pbc_subset(data_dir, tmp_path / "pbc5")
    sibling = _pbc_subset(data_dir, tmp_path / "pbc5_more", n=2, copy=True)
    ckpt = tmp_path / "clf.safetensors"
    shutil.copy2(classifier_path, ckpt)
    rows = [(str(p), p.parent.name, "test") for p in sorted(sibling.rglob("*.jpg"))]
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(split_path(ckpt), index=False)
    m = evaluate_classifier(folder, tmp_path / "eval", checkpoint=ckpt, device="cpu")
    assert m["n"] == 15
    # ... and the sibling itself is evaluated on its listed test split
    m2 = evaluate_classifier(sibling, tmp_path / "eval2", checkpoint=ckpt, device="cpu", split="test")
    assert m2["n"] == 6


def test_evaluate_with_a_missing_split_is_an_input_error(data_dir, classifier_path, tmp_path):
    from napari_bm_cells.errors import InputError
    from napari_bm_cells.training.evaluate import evaluate_classifier

    folder = _pbc_subset(data_dir, tmp_path / "pbc5", n=1)
    ckpt = tmp_path / "clf.safetensors"
    shutil.copy2(classifier_path, ckpt)
    with pytest.raises(InputError, match="split"):
        evaluate_classifier(folder, tmp_path / "eval", checkpoint=ckpt, device="cpu", split="test")
