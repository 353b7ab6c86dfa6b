"""``evaluate-classifier`` and ``evaluate-detector``: metrics on held-back data."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..export import atomic_write
from .cls_data import load_images, scan_class_folders
from .metrics import classification_metrics

log = logging.getLogger(__name__)


def evaluation_rows(data_dir: Path, ckpt: Path, split: str) -> pd.DataFrame:
    """Images to evaluate: the checkpoint's held-back test split when it lists files of
    ``data_dir`` (``split="auto"`` or ``"test"``), else every image of ``data_dir``."""
    from .train_classifier import read_split, split_path

    df = scan_class_folders(data_dir)
    sp = split_path(ckpt)
    if split in ("auto", "test", "val", "train") and sp.is_file():
        s = read_split(sp, data_dir)
        # the split belongs to this folder only if it lists exactly its images (a subset
        # or another folder gets evaluated whole); paths compared without resolving files
        # so folders of symlinks still match
        def key(p):
            return str(Path(p).parent.resolve() / Path(p).name)
        if set(s["path"].map(key)) == set(df["path"].map(key)):
            want = "test" if split == "auto" else split
            if (s["split"] == want).any():
                return s[s["split"] == want][["path", "label"]].reset_index(drop=True)
    if split not in ("auto", "all"):
        raise InputError(f"{ckpt}: no {split!r} split of {data_dir} in {sp.name}; "
                         "use --split auto or all")
    return df


def plot_confusion(cm, labels, path: Path, title: str = ""):
    """Save a confusion-matrix PNG (row-normalised colours, counts written in cells)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1 + 0.55 * len(labels), 0.8 + 0.5 * len(labels)))
    ConfusionMatrixDisplay(cm, display_labels=labels).plot(ax=ax, colorbar=False, cmap="Blues",
                                                           xticks_rotation=90)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def folder_codes(folders, classes, data_dir) -> dict[str, tuple[str, ...]]:
    """Class codes each class folder stands for (a code, or a common English name such as
    ``eosinophil``; see :data:`~napari_bm_cells.taxonomy.COMMON_NAMES`), among the
    model's ``classes``.

    Raises
    ------
    InputError
        A folder name that is neither, or whose codes the model does not have.
    """
    from ..taxonomy import COMMON_NAMES, codes_for_name

    out, bad = {}, []
    for f in folders:
        codes = codes_for_name(str(f))
        if codes is not None and str(f) not in classes:
            codes = tuple(c for c in codes if c in classes) or None
        if codes is None:
            bad.append(str(f))
        else:
            out[f] = codes
    if bad:
        raise InputError(f"{data_dir}: class folder(s) {', '.join(sorted(bad))} name no class of this "
                         f"model; use its codes ({', '.join(classes)}) or one of: {', '.join(COMMON_NAMES)}")
    return out


def evaluate_classifier(data_dir, out, checkpoint=None, device: str = "cpu", split: str = "auto",
                        batch_size: int = 64) -> dict:
    """Evaluate a checkpoint on a folder per class; writes metrics.json, confusion PNG,
    per_class.csv and predictions.csv into ``out``. Returns the metrics."""
    from ..classify import DEFAULT_CLASSIFIER, Classifier

    ckpt = Path(checkpoint or DEFAULT_CLASSIFIER)
    clf = Classifier(ckpt, device=device)
    rows = evaluation_rows(Path(data_dir), ckpt, split)
    names = folder_codes(rows["label"].unique(), clf.classes, data_dir)
    imgs, ok = load_images(rows["path"].tolist(), clf.input_size, fov=clf.meta.crop_size_px)
    rows = rows[ok].reset_index(drop=True)
    imgs = imgs[ok]
    probs = clf.predict_in_batches(imgs, batch_size)
    pred = np.asarray(clf.classes, object)[probs.argmax(1)] if len(probs) else np.zeros(0, object)
    # a folder standing for several codes ("neutrophil": NGS or NGB) is right with any of them
    truth = np.array([p if p in names[f] else names[f][0] for f, p in zip(rows["label"], pred)], object)
    m = classification_metrics(truth, probs, clf.classes)
    m.update({"classifier": str(ckpt), "data_dir": str(data_dir), "split": split,
              "folder_codes": {f: list(c) for f, c in names.items()}})
    rows = rows.rename(columns={"label": "folder"}).assign(label=truth)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "metrics.json", json.dumps(m, indent=2))
    pd.DataFrame(m["per_class"]).T.rename_axis("class").to_csv(out / "per_class.csv")
    pred = rows.assign(pred=np.asarray(clf.classes, object)[probs.argmax(1)], confidence=probs.max(1))
    pred.to_csv(out / "predictions.csv", index=False)
    plot_confusion(m["confusion_matrix"], m["labels"], out / "confusion_matrix.png",
                   f"macro-F1 {m['macro_f1']:.3f}, n={m['n']}")
    return m


def match_boxes(pred: np.ndarray, scores: np.ndarray, gt: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Greedy matching by descending score: True for each prediction that hits an unused
    ground-truth box at IoU >= ``iou``."""
    from ..detect import box_overlaps

    tp = np.zeros(len(pred), bool)
    if not len(pred) or not len(gt):
        return tp
    ious = box_overlaps(pred, gt)[0]
    used = np.zeros(len(gt), bool)
    for i in np.argsort(-scores):
        cand = np.where(~used, ious[i], 0)
        j = int(cand.argmax())
        if cand[j] >= iou:
            tp[i] = used[j] = True
    return tp


def detection_scores(tp: np.ndarray, scores: np.ndarray, n_gt: int, conf: float) -> dict:
    """Recall and precision at the operating threshold ``conf`` and AP50 over all scores."""
    from ultralytics.utils.metrics import compute_ap

    order = np.argsort(-scores)
    tpc = np.cumsum(tp[order])
    fpc = np.cumsum(~tp[order])
    recall = tpc / max(n_gt, 1)
    precision = tpc / np.maximum(tpc + fpc, 1)
    ap = float(compute_ap(recall, precision)[0]) if len(tp) else 0.0
    at = scores >= conf
    n_tp = int(tp[at].sum())
    return {"recall": n_tp / max(n_gt, 1), "precision": n_tp / max(int(at.sum()), 1), "ap50": ap,
            "n_gt": int(n_gt), "n_pred": int(at.sum()), "conf": conf}


def choose_threshold(tp: np.ndarray, scores: np.ndarray, n_gt: int, min_recall: float | None = 0.95) -> float:
    """Highest score threshold whose recall reaches ``min_recall``; with ``None`` (or
    when no threshold reaches it) the one with the best F1."""
    order = np.argsort(-scores)
    s, tpc = scores[order], np.cumsum(tp[order])
    recall, precision = tpc / max(n_gt, 1), tpc / np.arange(1, len(s) + 1)
    ok = np.flatnonzero(recall >= min_recall) if min_recall is not None else []
    if len(ok):
        return float(s[ok[0]])
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-9)
    return float(s[int(np.argmax(f1))]) if len(s) else 0.25


def detection_samples(data, split: str | None = None) -> tuple[list, str]:
    """The samples of a VOC folder or YOLO set to evaluate and the split's name: the
    test split, else val; a folder without split lists (VOC without ``ImageSets/``)
    gives all its images (``"all"``)."""
    from .det_data import read_detection_set

    sets = read_detection_set(data)
    if split == "all" or (split is None and not sets.get("test") and not sets.get("val")):
        return [x for v in sets.values() for x in v], "all"
    split = split or ("test" if sets.get("test") else "val")
    samples = sets.get(split) or []
    if not samples:
        raise InputError(f"{data}: no {split!r} split (has {sorted(k for k, v in sets.items() if v)}); "
                         "pass --split with one of those or all")
    return samples, split


#: glass colour (0-1 per channel) and optical-density scale of the ``yellow`` condition
YELLOW_GLASS = (1.0, 0.93, 0.68)
YELLOW_STAIN = 0.55


def weak_yellow(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` as a pale stain on yellowish glass: optical density scaled by
    :data:`YELLOW_STAIN` (every stained thing paler), then lit through glass of colour
    :data:`YELLOW_GLASS`."""
    od = -np.log((rgb.astype(np.float32) + 1) / 256)
    out = 256 * np.exp(-YELLOW_STAIN * od) * np.asarray(YELLOW_GLASS, np.float32) - 1
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


#: brightness left at a field's corners by :func:`vignette`
VIGNETTE = 0.5


def vignette(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` lit unevenly, as a camera with a misaligned lamp or condenser shows a field:
    full brightness at the centre falling with the squared distance to :data:`VIGNETTE`
    of it at the corners."""
    h, w = rgb.shape[:2]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((y - (h - 1) / 2) / (h / 2)) ** 2 + ((x - (w - 1) / 2) / (w / 2)) ** 2
    gain = 1 - (1 - VIGNETTE) * r2 / 2
    return np.clip(np.round(rgb * gain[..., None]), 0, 255).astype(np.uint8)


#: radius of the round field of view of :func:`eyepiece`, as a share of half the diagonal
EYEPIECE = 0.85


def eyepiece_mask(shape) -> np.ndarray:
    """True outside the round field of view :func:`eyepiece` leaves of an image of
    ``shape`` (height, width)."""
    from .augment import outside_circle

    return outside_circle(shape, EYEPIECE)


def eyepiece(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` as a camera looking down the eyepiece shows it: a round field of view
    (:data:`EYEPIECE`), black outside it."""
    out = rgb.copy()
    out[eyepiece_mask(rgb.shape)] = 0
    return out


#: recolourings of a field as another lab's stain might show it (crosslab conditions)
RECOLOUR = {
    "rb": lambda rgb: rgb[..., ::-1],  # red and blue swapped: a pink smear turned blue-grey
    "grey": lambda rgb: np.repeat(rgb.mean(-1, keepdims=True), 3, -1).astype(np.uint8),  # no stain colour
    "yellow": weak_yellow,  # a pale stain on yellowish glass (a rapid stain)
    "vignette": vignette,  # uneven lighting, dark corners
    "eyepiece": eyepiece,  # a round field of view, black corners
}


#: the ``framed`` condition's black margin on each side, as a share of the image's side
FRAME = 0.25


def frame_offset(shape, frame: float) -> tuple[int, int]:
    """(rows, columns) of black margin :func:`rescaled_slide` adds above and left of an
    image of ``shape`` (height, width) for ``frame``."""
    return int(shape[0] * frame), int(shape[1] * frame)


def rescaled_slide(path, factor: float, recolour: str | None = None, frame: float = 0.0):
    """The image at ``path`` resized by ``factor`` (bilinear), as a slide with no pixel size
    (another magnification, as a user's camera would give), recoloured by one of
    :data:`RECOLOUR` when named, and with ``frame`` > 0 set in a black surround of that
    share of its side on each side (a camera's round field of view, a scanner's
    unscanned strip; :func:`frame_offset`)."""
    from PIL import Image

    from ..io import open_slide

    if factor == 1 and recolour is None and not frame:
        return open_slide(path)
    with Image.open(path) as im:
        im = im.convert("RGB")
        if factor != 1:
            im = im.resize((max(1, round(im.width * factor)), max(1, round(im.height * factor))), Image.BILINEAR)
        rgb = np.asarray(im)
    rgb = RECOLOUR[recolour](rgb) if recolour else rgb
    if frame:
        (h, w), (py, px) = rgb.shape[:2], frame_offset(rgb.shape, frame)
        out = np.zeros((h + 2 * py, w + 2 * px, 3), np.uint8)
        out[py:py + h, px:px + w] = rgb
        rgb = out
    return open_slide(np.ascontiguousarray(rgb))


def detection_metrics(samples, det, cls: str = "WBC", rescale: float = 1.0, level="auto",
                      recolour: str | None = None, colour: str = "standardise",
                      frame: float = 0.0) -> tuple[dict, list]:
    """Recall, precision, AP50 (IoU 0.5) and per-image counts of ``det`` as the pipeline
    runs it (scale chosen as ``level``, tiles colour-adapted as ``colour``, each image its
    own slide) on ``samples``, images resized by ``rescale`` (recoloured and framed as
    :func:`rescaled_slide` does)."""
    from ..colour import detector_colour
    from ..detect import YoloDetector, iter_detect, run_to_end
    from ..pipeline import parse_level
    from .augment import visible_boxes

    op_conf = getattr(det, "conf", 0.0)
    if isinstance(det, YoloDetector):
        det.conf = 0.01  # keep low scores for the precision-recall curve
    try:
        tps, scs, n_gt, per_image, n_repeated = [], [], 0, [], 0
        for s in samples:
            slide = rescaled_slide(s.image, rescale, recolour, frame)
            run_det = detector_colour(det, slide, colour)[0]
            down = parse_level(level, slide, run_det)
            d = run_to_end(iter_detect(slide, run_det, downsample=down))
            gt = np.array([[b.x0, b.y0, b.x1, b.y1] for b in s.boxes if b.cls == cls],
                          np.float32).reshape(-1, 4) * rescale
            if frame:
                py, px = frame_offset((round(s.height * rescale), round(s.width * rescale)), frame)
                gt = gt + np.array([px, py, px, py], np.float32)
            if recolour == "eyepiece":  # boxed as a labeller boxes them: the part in view
                gt = visible_boxes(gt, eyepiece_mask(slide.shape))[0].astype(np.float32)
            # a box listed twice in one label file is one cell (TXL-PBC's test set has a file
            # repeating one white cell's box six times): count it once
            uniq = np.unique(gt.round(1), axis=0)
            if len(uniq) < len(gt):
                n_repeated += len(gt) - len(uniq)
                log.warning("%s: %d repeated %s boxes counted once", s.image.name, len(gt) - len(uniq), cls)
                gt = uniq
            tp = match_boxes(d.boxes, d.scores, gt)
            tps.append(tp)
            scs.append(d.scores)
            n_gt += len(gt)
            per_image.append({"image": str(s.image), "n_gt": len(gt), "downsample": round(down, 3),
                              "n_tp": int(tp[d.scores >= op_conf].sum()),
                              "n_pred": int((d.scores >= op_conf).sum())})
    finally:
        if isinstance(det, YoloDetector):
            det.conf = op_conf
    tp_all = np.concatenate(tps) if tps else np.zeros(0, bool)
    sc_all = np.concatenate(scs) if scs else np.zeros(0, np.float32)
    m = detection_scores(tp_all, sc_all, n_gt, op_conf)
    m["threshold_for_recall_0.95"] = choose_threshold(tp_all, sc_all, n_gt)
    m["threshold_best_f1"] = choose_threshold(tp_all, sc_all, n_gt, None)
    m.update({"n_images": len(samples), "rescale": rescale, "repeated_gt_boxes_ignored": n_repeated})
    return m, per_image


def evaluate_detector(data, out, detector=None, device: str = "cpu", split: str | None = None,
                      cls: str = "WBC", precision: str = "auto", rescale: float = 1.0,
                      colour: str = "standardise") -> dict:
    """White-cell recall, precision (IoU 0.5, at the detector's threshold) and AP50 of the
    pipeline's detection stage on a VOC folder or YOLO data set's test (else val) split,
    or all images of a folder without split lists (or ``split="all"``); ``rescale``
    resizes every image first (another magnification, no pixel size); ``colour`` as
    analyze's ``--colour`` (each image's tiles standardised to the detector's training
    fields by default)."""
    from ..detect import load_detector

    if not rescale > 0:
        raise InputError(f"--rescale {rescale}: give a positive factor such as 0.5 or 2")
    samples, split = detection_samples(data, split)
    det = load_detector(detector, device=device, precision=precision)
    m, per_image = detection_metrics(samples, det, cls, rescale, colour=colour)
    m.update({"colour": colour, "split": split, "data": str(data),
              "detector": str(getattr(det, "weights", None) or "contour"), "numeric_precision": precision})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "metrics.json", json.dumps(m, indent=2))
    pd.DataFrame(per_image).to_csv(out / "per_image.csv", index=False)
    return m
