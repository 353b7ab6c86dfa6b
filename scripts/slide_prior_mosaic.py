"""Whole-pipeline check of the slide's class prior on one large slide of another lab: the
BCCD fields with one labelled white cell tiled into one mosaic (~330 white cells, a
differential's worth), analysed once; each labelled cell's type with the class prior off
and on (``--class-prior``), and the differential of all counted leukocytes against the
labels' mix.

    python scripts/slide_prior_mosaic.py CHECKPOINT [--data ../shared/data] [--cols 18]
        [--strength 0.25 0.5 1] [--out cells.csv]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from napari_bm_cells.cells_table import prob_column
from napari_bm_cells.options import AnalysisOptions
from napari_bm_cells.pipeline import analyze
from napari_bm_cells.prior import adapt_to_slide
from napari_bm_cells.taxonomy import NON_LEUKOCYTE_CODES
from napari_bm_cells.training.det_data import read_voc
from napari_bm_cells.training.field_cells import LABEL_TO_CODES, read_subtypes


def bccd_mosaic(bccd: Path, cols: int):
    """The BCCD fields with exactly one white-cell box and a type label, in a grid:
    the image and a table of each field's box (mosaic pixels) and type."""
    boxes = {s.image.stem: [b for b in s.boxes if b.cls == "WBC"] for ss in read_voc(bccd).values() for s in ss}
    fields = read_subtypes(bccd)
    fields = fields[fields["image"].map(lambda p: len(boxes.get(p.stem, [])) == 1)].reset_index(drop=True)
    rows = -(-len(fields) // cols)
    h, w = 480, 640
    image = np.empty((rows * h, cols * w, 3), np.uint8)
    image[:] = 235
    truth = []
    for k, (path, label) in enumerate(zip(fields["image"], fields["truth"])):
        y, x = (k // cols) * h, (k % cols) * w
        with Image.open(path) as im:
            f = np.asarray(im.convert("RGB"))[:h, :w]
        image[y:y + f.shape[0], x:x + f.shape[1]] = f
        b = boxes[path.stem][0]
        truth.append((b.x0 + x, b.y0 + y, b.x1 + x, b.y1 + y, label))
    return image, pd.DataFrame(truth, columns=["x0", "y0", "x1", "y1", "truth"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--cols", type=int, default=18)
    ap.add_argument("--strength", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--out", default=None, help="write the cell table (class prior off) here")
    a = ap.parse_args(argv)
    image, truth = bccd_mosaic(Path(a.data) / "bccd", a.cols)
    res = analyze(image, classifier=a.checkpoint, options=AnalysisOptions(class_prior="off", masks=False))
    cells = res.cells
    if a.out:
        cells.to_csv(a.out, index=False)
    classes = list(res.summary["classifier"]["classes"])
    probs = cells[[prob_column(c) for c in classes]].to_numpy(np.float32)
    # each labelled box's cell: the highest-scoring detection whose centre lies in the box
    match = []
    for r in truth.itertuples():
        inside = (cells["x"] >= r.x0) & (cells["x"] <= r.x1) & (cells["y"] >= r.y0) & (cells["y"] <= r.y1)
        match.append(cells.loc[inside, "det_score"].idxmax() if inside.any() else -1)
    match = np.array(match)
    print(f"{len(truth)} labelled white cells in a {image.shape[1]}x{image.shape[0]} mosaic; "
          f"{(match >= 0).sum()} detected; {len(cells)} cells in all; crops scaled by "
          f"{res.summary['classifier']['crop_scale']}")
    mix_truth = truth["truth"].value_counts(normalize=True)
    for strength in [0.0] + a.strength:
        p, info = adapt_to_slide(probs, classes, strength=strength)
        label = np.array(classes)[p.argmax(1)]
        pred = np.where(match >= 0, label[np.maximum(match, 0)], "none")
        hit = np.array([q in LABEL_TO_CODES[t] for q, t in zip(pred, truth["truth"])])
        per = {t[:3]: round(float(hit[truth["truth"] == t].mean()), 2) for t in sorted(set(truth["truth"]))}
        leuk = label[~np.isin(label, list(NON_LEUKOCYTE_CODES))]
        mix = {t: float(np.isin(leuk, LABEL_TO_CODES[t]).mean()) for t in mix_truth.index}
        err = 0.5 * sum(abs(mix[t] - mix_truth[t]) for t in mix_truth.index) + 0.5 * (1 - sum(mix.values()))
        print(f"strength {strength:4}: type accuracy {hit.mean():.3f}, balanced "
              f"{np.mean(list(per.values())):.3f} {per}; differential of {len(leuk)} leukocytes "
              + ", ".join(f"{t[:3]} {mix[t]:.2f} ({mix_truth[t]:.2f})" for t in mix_truth.index)
              + f", other types {1 - sum(mix.values()):.2f}; distance to the labels' mix {err:.3f}")


if __name__ == "__main__":
    main()
