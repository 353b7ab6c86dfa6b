"""Cross-lab checks: models on other labs' smears and at other magnifications.

``bm-cells crosslab`` runs both:

- the detector per source lab (TXL-PBC split into its four labs by image size; BCCD),
  on the fields as they are, resized 0.5x and 2x, and as wide fields (2 x 2 fields
  shrunk to one: a lower magnification, cells half the size), never with a pixel size,
  so the scale is found as a user's image would have it found
  (:func:`evaluate_detector_crosslab`);
- the whole pipeline on BCCD fields: ``bccd/wbc_subtypes.csv`` gives the white-cell type
  of each BCCD image; the most confident leukocyte the pipeline finds in the field (a
  cell the model calls a platelet is not one) is compared with it. Images with a
  blank or multi-valued label are left out. NEUTROPHIL matches NGS or NGB. By default
  only BCCD's val and test fields are scored (the shipped classifier saw cells of its
  train split), minus near-copies of train fields.

Run: ``bm-cells crosslab --detection-data ../shared/data/txl-pbc/data.yaml
--detection-data ../shared/data/bccd --bccd ../shared/data/bccd --out DIR``
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..taxonomy import NON_LEUKOCYTE_CODES
from .det_data import DuplicateFinder
from .labs import field_source, in_lab
from .field_cells import LABEL_TO_CODES, read_subtypes

#: the shipped classifier trains on cells of BCCD's train split: evaluate on the others
HELD_OUT = ("val", "test")


def held_out_fields(bccd_dir, splits=HELD_OUT) -> pd.DataFrame:
    """Labelled fields of ``splits``, minus re-shot copies of training-split fields
    (BCCD holds near-identical frames of one spot in different splits)."""
    labels = read_subtypes(bccd_dir)
    held = labels["split"].isin(splits)
    finder = DuplicateFinder()
    for p in labels.loc[~held, "image"]:
        finder.seen(p)
    rows = labels[held]
    return rows[[finder.seen(p, remember=False) is None for p in rows["image"]]].reset_index(drop=True)


def evaluate_fields(bccd_dir, out=None, detector=None, classifier=None, limit: int | None = None,
                    device: str = "cpu", splits=HELD_OUT, options=None, condition: str = "x1",
                    progress=None) -> dict:
    """Accuracy of the most confident leukocyte's class against the field label,
    on the fields of ``splits`` (``None``: every labelled field) as ``condition``
    (:func:`type_images`) shows them; ``classifier`` a checkpoint path or a
    :class:`~napari_bm_cells.classify.Classifier`, ``options`` the
    :class:`~napari_bm_cells.pipeline.AnalysisOptions` of the runs. Writes
    ``bccd_fields.csv`` and ``bccd_fields_metrics.json`` into ``out`` (``bccd_fields_<condition>``
    for a condition other than ``x1``)."""
    rows = held_out_fields(bccd_dir, splits) if splits else read_subtypes(bccd_dir)
    if limit:
        rows = rows.groupby("truth", group_keys=False).head(max(1, limit // len(LABEL_TO_CODES)))
    rows = rows.assign(codes=rows["truth"].map(LABEL_TO_CODES))
    name = "bccd_fields" if condition == "x1" else f"bccd_fields_{condition}"
    return type_images(rows, out, name, detector, classifier, device, options, condition, progress)


def type_images(rows: pd.DataFrame, out=None, name: str = "images", detector=None, classifier=None,
                device: str = "cpu", options=None, condition: str = "x1", progress=None) -> dict:
    """Whole-pipeline type accuracy on images that each hold one labelled white cell.

    Each image is analysed as its own slide (detection, scale, crops, colour adaptation,
    classification); its most confident leukocyte (a box the model calls a platelet is not
    the image's white cell, nor counted in a differential) is compared with the label.
    An image where none is found counts as wrong.

    Parameters
    ----------
    rows : DataFrame
        ``image`` (path), ``truth`` (label name) and ``codes`` (the class codes that are
        right for it: "neutrophil" is NGS or NGB).
    name : str
        Files written into ``out``: ``<name>.csv`` (one row per image) and
        ``<name>_metrics.json``.
    condition : str
        A :data:`CONDITIONS` entry other than ``wide<k>``: ``x<f>`` resizes each image by
        f, ``rb``/``grey`` recolour it; never with a pixel size.
    progress : callable, optional
        Called with a line every 100 images.

    Returns
    -------
    dict
        ``accuracy`` with its Wilson 95% interval ``accuracy_ci95`` (how far two models'
        accuracies must differ to tell them apart), ``balanced_accuracy`` (mean over
        labels), ``per_class``, ``no_cell_found`` and review statistics.
    """
    from ..classify import Classifier
    from ..count import wilson_ci
    from ..detect import load_detector
    from ..pipeline import analyze
    from .evaluate import rescaled_slide

    kind, value = parse_condition(condition)
    if kind == "wide":
        raise InputError(f"crosslab: {condition} joins fields of several cells; labelled images "
                         "take x<f>, rb or grey")
    det = load_detector(detector, device=device)
    clf = classifier if isinstance(classifier, Classifier) else Classifier(classifier, device=device)
    preds = []
    for i, r in enumerate(rows.itertuples()):
        slide = rescaled_slide(r.image, *slide_args(kind, value))
        cells = analyze(slide, detector=det, classifier=clf, options=options).cells
        leuko = cells[~cells["model_label"].isin(NON_LEUKOCYTE_CODES)]
        top = leuko.sort_values("confidence", ascending=False).head(1)
        # the model's class, also for a cell left to review (UNK)
        pred = top["model_label"].iloc[0] if len(top) else "none"
        preds.append({"image": Path(r.image).name, "truth": r.truth, "pred": pred, "n_cells": len(cells),
                      "confidence": float(top["confidence"].iloc[0]) if len(top) else None,
                      "unclassified": bool(len(top) and top["label"].iloc[0] == "UNK"),
                      "correct": pred in r.codes})
        if progress and (i + 1) % 100 == 0:
            progress(f"{name} {condition}: {i + 1} of {len(rows)} images")
    df = pd.DataFrame(preds)
    per_class = df.groupby("truth")["correct"].agg(["mean", "size"]).rename(
        columns={"mean": "accuracy", "size": "n"}).to_dict("index") if len(df) else {}
    m = {"n": int(len(df)), "condition": condition,
         "accuracy": float(df["correct"].mean()) if len(df) else 0.0,
         "accuracy_ci95": list(wilson_ci(int(df["correct"].sum()) if len(df) else 0, len(df))),
         "balanced_accuracy": float(pd.Series({k: v["accuracy"] for k, v in per_class.items()}).mean())
         if per_class else 0.0,
         "per_class": per_class, "no_cell_found": int((df["pred"] == "none").sum()) if len(df) else 0,
         "review": _review_stats(df)}
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / f"{name}.csv", index=False)
        (out / f"{name}_metrics.json").write_text(json.dumps(m, indent=2))
    return m


def labelled_images(folder, classifier=None, limit: int | None = None) -> pd.DataFrame:
    """Whole images in class-named subfolders (``eosinophil/``, ``LYT/``, ...; names as
    ``evaluate-classifier`` reads them), one white cell each: single-cell images such as
    CellaVision exports, or camera fields around one cell.

    When the folder is the one a checkpoint was trained on, only its held-back test
    split is used. Folders of cells that are not white cells (platelets) are left out:
    the pipeline's answer for an image is its most confident leukocyte.

    Returns
    -------
    DataFrame with ``image``, ``truth`` (the folder name) and ``codes``; at most
    ``limit`` images per folder (evenly spaced).
    """
    from ..checkpoint import read_meta
    from ..classify import DEFAULT_CLASSIFIER
    from .evaluate import evaluation_rows, folder_codes

    ckpt = Path(classifier or DEFAULT_CLASSIFIER)
    rows = evaluation_rows(Path(folder), ckpt, "auto")
    names = folder_codes(rows["label"].unique(), read_meta(ckpt).classes, folder)
    white = {f: c for f, c in names.items() if not set(c) <= NON_LEUKOCYTE_CODES}
    rows = rows[rows["label"].isin(list(white))]
    if limit:
        keep = [i for _, idx in rows.groupby("label").groups.items()
                for i in idx[::max(1, int(np.ceil(len(idx) / limit)))]]
        rows = rows.loc[sorted(keep)]
    return pd.DataFrame({"image": rows["path"].to_numpy(), "truth": rows["label"].to_numpy(),
                         "codes": rows["label"].map(white).to_numpy()})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bccd_dir")
    p.add_argument("--out", default=None)
    p.add_argument("--detector", default=None)
    p.add_argument("--classifier", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--splits", default=",".join(HELD_OUT),
                   help="BCCD splits to evaluate, comma-separated, or 'all' (default: val,test)")
    a = p.parse_args(argv)
    splits = None if a.splits == "all" else tuple(a.splits.split(","))
    m = evaluate_fields(a.bccd_dir, a.out, a.detector, a.classifier, a.limit, splits=splits)
    print(json.dumps(m, indent=2))


if __name__ == "__main__":
    main()


def wide_fields(samples, out_dir, k: int = 2, seed: int = 0) -> list:
    """Fields of a lower magnification made from real ones: ``k`` x ``k`` fields side by
    side, shrunk ``k`` times, so each image is the size of one field and shows ``k``²
    times the area, its cells ``k`` times smaller (another lab's objective or camera).
    Boxes are moved and scaled with them; JPEGs written to ``out_dir``."""
    from PIL import Image

    from .det_data import Box, Sample

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(samples))
    out = []
    for g in range(len(samples) // (k * k)):
        group = [samples[i] for i in order[g * k * k:(g + 1) * k * k]]
        w, h = group[0].width, group[0].height
        canvas = Image.new("RGB", (w * k, h * k))
        boxes = []
        for j, s in enumerate(group):
            oy, ox = (j // k) * h, (j % k) * w
            with Image.open(s.image) as im:
                canvas.paste(im.convert("RGB").resize((w, h)), (ox, oy))
            sx, sy = w / s.width, h / s.height
            boxes += [Box(b.cls, (b.x0 * sx + ox) / k, (b.y0 * sy + oy) / k,
                          (b.x1 * sx + ox) / k, (b.y1 * sy + oy) / k) for b in s.boxes]
        path = out_dir / f"wide{k}_{g:04d}.jpg"
        canvas.resize((w, h), Image.LANCZOS).save(path, quality=92)
        out.append(Sample(path, w, h, boxes))
    return out


#: conditions a detector is checked at: images resized (same field, other pixel size),
#: wide fields (k x k fields shrunk to one: k² the area, cells 1/k the size), and fields
#: recoloured as other stains (``rb``: red and blue swapped, a blue-grey smear; ``grey``),
#: unevenly lit (``vignette``: dark corners), seen through the eyepiece (``eyepiece``: a
#: round field of view, black corners) and in a black surround (``framed``)
CONDITIONS = ("x1", "x0.5", "x2", "wide2", "wide3", "rb", "grey", "yellow", "vignette", "eyepiece", "framed")


def evaluate_detector_crosslab(sources, out=None, detector=None, device: str = "cpu",
                               conditions=CONDITIONS, limit: int | None = None, progress=print,
                               split: str | None = None, lab: str | None = None,
                               colour: str = "standardise") -> pd.DataFrame:
    """White-cell recall / precision / AP50 per source lab and magnification, no pixel size.

    Parameters
    ----------
    sources : list of path
        VOC folders or YOLO sets; their test split (else val, else all images) is used.
        A TXL-PBC set is split into its labs by image size (:func:`~.labs.field_source`).
    conditions : subset of :data:`CONDITIONS`
    limit : int, optional
        At most this many images per source (evenly spaced).
    split : {None, "all", "train", "val", "test"}
        Which images of each set: ``None`` its test split (else val, else all).
    lab : str, optional
        Only fields of this lab (:func:`~.labs.field_source`): with ``split="all"``,
        every field of the lab a leave-one-source-out detector never saw.
    colour : str
        The run-time colour adaptation, as analyze's ``--colour``.

    Returns
    -------
    DataFrame, one row per source and condition, plus a ``worst`` row per condition;
    written to ``out/detector_crosslab.csv`` with ``.json`` when ``out`` is given.
    """
    import tempfile

    from ..detect import load_detector
    from .evaluate import detection_metrics, detection_samples

    parsed = [parse_condition(c) for c in conditions]
    det = load_detector(detector, device=device)
    groups: dict[str, list] = {}
    for src in sources:
        samples, used = detection_samples(src, split)
        for s in samples:
            if lab and not in_lab(s, lab):
                continue
            name = field_source(s) if len({(x.width, x.height) for x in samples}) > 1 else Path(src).name
            groups.setdefault(f"{Path(src).parent.name if Path(src).is_file() else Path(src).name}"
                              f"/{name} ({used})", []).append(s)
    if not groups:
        raise InputError(f"crosslab: no field of lab {lab!r} in {', '.join(map(str, sources))}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for gname, samples in groups.items():
            if limit and len(samples) > limit:
                samples = samples[::int(np.ceil(len(samples) / limit))]
            for cond, (kind, value) in zip(conditions, parsed):
                if kind == "wide":
                    m, _ = detection_metrics(wide_fields(samples, Path(tmp) / f"{len(rows)}", value), det,
                                             colour=colour)
                else:
                    factor, recolour, frame = slide_args(kind, value)
                    m, _ = detection_metrics(samples, det, rescale=factor, recolour=recolour, frame=frame,
                                             colour=colour)
                rows.append({"source": gname, "condition": cond, **{k: m[k] for k in
                             ("recall", "precision", "ap50", "n_gt", "n_images",
                                                                    "threshold_for_recall_0.95")}})
                progress(f"{gname} {cond}: recall {m['recall']:.3f} precision {m['precision']:.3f} "
                         f"AP50 {m['ap50']:.3f} ({m['n_gt']} cells)")
    df = pd.DataFrame(rows)
    worst = df.loc[df.groupby("condition")["recall"].idxmin()].assign(source=lambda d: "worst: " + d["source"])
    df = pd.concat([df, worst], ignore_index=True)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / "detector_crosslab.csv", index=False)
        (out / "detector_crosslab.json").write_text(json.dumps(
            {"detector": str(getattr(det, "weights", None) or "contour"), "rows": df.to_dict("records")}, indent=2))
    return df


def parse_condition(cond: str) -> tuple[str, object]:
    """A crosslab condition as (kind, value): ``x<f>`` -> ("rescale", f), ``wide<k>`` ->
    ("wide", k), a :data:`~napari_bm_cells.training.evaluate.RECOLOUR` name ->
    ("recolour", name), ``framed`` -> ("frame", :data:`~.evaluate.FRAME`); anything else is
    an :class:`InputError`."""
    from .evaluate import FRAME, RECOLOUR

    if cond in RECOLOUR:
        return "recolour", cond
    if cond == "framed":
        return "frame", FRAME
    if re.fullmatch(r"x(?:[0-9]+\.?[0-9]*|\.[0-9]+)", cond) and float(cond[1:]) > 0:
        return "rescale", float(cond[1:])
    if re.fullmatch(r"wide[1-9][0-9]*", cond):
        return "wide", int(cond[4:])
    raise InputError(f"crosslab: unknown condition {cond!r}; choose from {', '.join(CONDITIONS)} "
                     "(x<f>: any positive factor, wide<k>: any k)")


def slide_args(kind: str, value) -> tuple[float, str | None, float]:
    """(factor, recolour, frame) of :func:`~.evaluate.rescaled_slide` for a condition
    parsed by :func:`parse_condition` (any kind but ``wide``)."""
    return (value if kind == "rescale" else 1.0, value if kind == "recolour" else None,
            value if kind == "frame" else 0.0)


def _review_stats(df: pd.DataFrame) -> dict:
    """How many fields' cells went to review (UNK), and how right the model was on the
    kept and on the unclassified ones."""
    if not len(df) or "unclassified" not in df:
        return {}
    unk = df["unclassified"].astype(bool)
    found = df["pred"] != "none"
    return {"unclassified_fraction": float(unk[found].mean()) if found.any() else None,
            "kept_accuracy": float(df.loc[found & ~unk, "correct"].mean()) if (found & ~unk).any() else None,
            "unclassified_accuracy": float(df.loc[unk, "correct"].mean()) if unk.any() else None}
