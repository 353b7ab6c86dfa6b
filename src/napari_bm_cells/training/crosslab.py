"""Cross-lab check: the whole pipeline on BCCD fields (another lab and stain than PBC).

``bccd/wbc_subtypes.csv`` gives the white-cell type of each BCCD image; the most
confident white cell the pipeline finds in the field is compared with it. Images with a
blank or multi-valued label are left out. NEUTROPHIL matches NGS or NGB. By default only
BCCD's val and test fields are scored (the shipped classifier saw cells of its train
split), minus near-copies of train fields.

Run: ``python -m napari_bm_cells.training.crosslab ../shared/data/bccd --out DIR``
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from .det_data import DuplicateFinder
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
                    device: str = "cpu", splits=HELD_OUT) -> dict:
    """Accuracy of the most confident white cell's class against the field label,
    on the fields of ``splits`` (``None``: every labelled field)."""
    from ..classify import Classifier
    from ..detect import load_detector
    from ..pipeline import analyze

    rows = held_out_fields(bccd_dir, splits) if splits else read_subtypes(bccd_dir)
    if limit:
        rows = rows.groupby("truth", group_keys=False).head(max(1, limit // len(LABEL_TO_CODES)))
    det = load_detector(detector, device=device)
    clf = Classifier(classifier, device=device)
    preds = []
    for r in rows.itertuples():
        cells = analyze(r.image, detector=det, classifier=clf).cells
        top = cells.sort_values("confidence", ascending=False).head(1)
        pred = top["label"].iloc[0] if len(top) else "none"
        preds.append({"image": r.image.name, "truth": r.truth, "pred": pred, "n_cells": len(cells),
                      "correct": pred in LABEL_TO_CODES[r.truth]})
    df = pd.DataFrame(preds)
    per_class = df.groupby("truth")["correct"].agg(["mean", "size"]).rename(
        columns={"mean": "accuracy", "size": "n"}).to_dict("index")
    m = {"n": int(len(df)), "accuracy": float(df["correct"].mean()) if len(df) else 0.0,
         "balanced_accuracy": float(pd.Series({k: v["accuracy"] for k, v in per_class.items()}).mean())
         if per_class else 0.0,
         "per_class": per_class, "no_cell_found": int((df["pred"] == "none").sum()) if len(df) else 0}
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / "bccd_fields.csv", index=False)
        (out / "bccd_fields_metrics.json").write_text(json.dumps(m, indent=2))
    return m


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
