"""The confidence threshold below which cells go to review as ``UNK``, chosen on validation.

As in CellaVision's "unidentified" class: a cell the model is unsure of is not counted
until a person gives it a class. The threshold is the lowest top-class probability at
which the cells kept (at or above it) reach :data:`TARGET_ACCURACY` on the validation
split, but never so high that more than :data:`MAX_REJECT` of the validation cells would
go to review; it is stored in the checkpoint (``ClassifierMeta.min_confidence``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: accuracy the cells kept out of review should reach on the validation split
TARGET_ACCURACY = 0.95

#: at most this fraction of validation cells goes to review
MAX_REJECT = 0.2


def choose_min_confidence(confidence, correct, target_accuracy: float = TARGET_ACCURACY,
                          max_reject: float = MAX_REJECT) -> dict:
    """The review threshold for cells with top-class probabilities ``confidence`` whose
    prediction was ``correct`` (bools).

    Returns
    -------
    dict
        ``min_confidence`` (0 when every cell may be kept), ``rejected_fraction`` and
        ``kept_accuracy`` on these cells, ``accuracy`` of all, ``target_accuracy``,
        ``capped`` (True when :data:`MAX_REJECT` set the threshold), ``n``.
    """
    conf = np.asarray(confidence, float)
    ok = np.asarray(correct, bool)
    n = len(conf)
    out = {"n": n, "accuracy": float(ok.mean()) if n else None, "target_accuracy": target_accuracy}
    if not n:
        return {**out, "min_confidence": 0.0, "rejected_fraction": 0.0, "kept_accuracy": None, "capped": False}
    order = np.argsort(-conf, kind="stable")
    kept_acc = np.cumsum(ok[order]) / np.arange(1, n + 1)  # accuracy of the k most confident
    n_min = int(np.ceil((1 - max_reject) * n))  # keep at least this many
    reach = np.flatnonzero(kept_acc >= target_accuracy)
    k = int(reach.max()) + 1 if len(reach) else 0  # most cells kept at the target accuracy
    capped = k < n_min
    k = max(k, n_min)
    thr = 0.0 if k >= n else float(conf[order[k - 1]])
    kept = conf >= thr
    return {**out, "min_confidence": round(thr, 4), "rejected_fraction": float(1 - kept.mean()),
            "kept_accuracy": float(ok[kept].mean()), "capped": bool(capped)}


def calibrate_checkpoint(checkpoint, data_dir, out=None, split: str = "val", device: str = "cpu",
                         target_accuracy: float = TARGET_ACCURACY, max_reject: float = MAX_REJECT,
                         batch_size: int = 64) -> dict:
    """Choose a checkpoint's review threshold on ``split`` of its training folder and write
    it into the checkpoint's metadata (``out``, default in place; weights unchanged).

    Returns
    -------
    dict
        :func:`choose_min_confidence`'s result plus ``split`` and ``checkpoint``.
    """
    from safetensors.torch import load_file

    from ..checkpoint import read_meta, save_checkpoint
    from ..classify import Classifier
    from ..errors import InputError
    from .cls_data import load_images
    from .evaluate import evaluation_rows, folder_codes
    from .train_classifier import copy_split

    ckpt = Path(checkpoint)
    clf = Classifier(ckpt, device=device)
    rows = evaluation_rows(Path(data_dir), ckpt, split)
    if not len(rows):
        raise InputError(f"{data_dir}: no images to calibrate on")
    names = folder_codes(rows["label"].unique(), clf.classes, data_dir)
    imgs, ok = load_images(rows["path"].tolist(), clf.input_size, fov=clf.meta.crop_size_px)
    rows, imgs = rows[ok].reset_index(drop=True), imgs[ok]
    probs = clf.predict_in_batches(imgs, batch_size)
    pred = np.asarray(clf.classes, object)[probs.argmax(1)]
    correct = np.array([p in names[f] for f, p in zip(rows["label"], pred)])
    res = choose_min_confidence(probs.max(1), correct, target_accuracy, max_reject)
    res.update(split=split, data_dir=str(data_dir))
    meta = read_meta(ckpt)
    if meta.lab_reference is None:
        meta.lab_reference = colour_reference(ckpt, data_dir)
    meta.min_confidence = res["min_confidence"]
    meta.metrics = {**meta.metrics, "review_threshold": {k: v for k, v in res.items() if k != "data_dir"}}
    target = Path(out) if out else ckpt
    save_checkpoint(target, load_file(str(ckpt)), meta)
    copy_split(ckpt, target)
    res["checkpoint"] = str(target)
    return res


def colour_reference(checkpoint, data_dir) -> dict:
    """The CIELAB reference (``ClassifierMeta.lab_reference``) of a checkpoint, from the
    crops of its training split in ``data_dir`` as training computes it."""
    from ..checkpoint import read_meta
    from .cls_data import load_images
    from .evaluate import evaluation_rows
    from .train_classifier import lab_reference

    meta = read_meta(checkpoint)
    rows = evaluation_rows(Path(data_dir), Path(checkpoint), "train").reset_index(drop=True)
    pick = np.sort(np.random.default_rng(0).permutation(len(rows))[:800])
    imgs, ok = load_images(rows["path"].iloc[pick].tolist(), meta.input_size, fov=meta.crop_size_px)
    return lab_reference(imgs[ok])


def summary_line(res: dict) -> str:
    """One line for the terminal."""
    return (f"min confidence {res['min_confidence']:.3f} on the {res['split']} split (n={res['n']}): "
            f"{100 * res['rejected_fraction']:.1f}% of cells to review, kept cells {100 * res['kept_accuracy']:.1f}% "
            f"correct (all {100 * res['accuracy']:.1f}%)" + (f"; capped at {100 * MAX_REJECT:.0f}% to review"
                                                            if res["capped"] else ""))
