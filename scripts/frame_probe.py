"""How a classifier's types move when a cell's crop is framed as at a tight field's edge.

Takes the white cells of one lab whose crops lie wholly inside their fields (written by
``scripts/pseudo_label_fields.py CKPT OUT --min-confidence 0``), replaces a band of each
side with the glass colour (:func:`napari_bm_cells.training.augment.fill_bands`, as the
pipeline fills the part of a square outside the image), standardises the crops together
as that script does and prints the types per band width. The cells and their
surroundings are the same in every row; only the frame differs. With
``--unframed-stats`` the colour statistics come from the crops without a frame, so only
the network sees the frame.

    python scripts/frame_probe.py CKPT OUT/cells.csv [--lab Raabin-WBC] [--bands 0 0.06 0.12 0.18]
        [--unframed-stats]
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch
from PIL import Image

from napari_bm_cells.classify import Classifier
from napari_bm_cells.colour import LabStandard, lab_stats
from napari_bm_cells.crop import resize_square
from napari_bm_cells.training.augment import fill_bands


def framed(crop: np.ndarray, band: float) -> np.ndarray:
    """``crop`` (HWC) with a band of ``band`` x its side on every side filled with the
    glass colour, as ``train-classifier --field-edges`` frames training crops."""
    k = int(round(band * crop.shape[0]))
    return fill_bands(torch.from_numpy(crop).permute(2, 0, 1), k, k, k, k).permute(1, 2, 0).numpy()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("cells_csv", help="cells.csv of a pseudo_label_fields.py run with --min-confidence 0")
    ap.add_argument("--lab", default="Raabin-WBC")
    ap.add_argument("--bands", nargs="+", type=float, default=[0, 0.06, 0.12, 0.18])
    ap.add_argument("--unframed-stats", action="store_true",
                    help="standardise every band with the colour statistics of the unframed crops")
    a = ap.parse_args(argv)
    clf = Classifier(a.checkpoint)
    df = pd.read_csv(a.cells_csv)
    df = df[(df["lab"] == a.lab) & (df["sides_past_edge"] == 0) & df["kept"]]
    crops = [np.asarray(Image.open(p).convert("RGB")) for p in df["path"]]
    crops = np.stack([resize_square(c, clf.input_size) for c in crops])
    rows, unframed = {}, lab_stats(crops)
    for band in a.bands:
        x = np.stack([framed(c, band) for c in crops])
        x = LabStandard(unframed if a.unframed_stats else lab_stats(x), clf.meta.lab_reference)(x)
        labels = np.array(clf.classes)[clf.predict_in_batches(x).argmax(1)]
        rows[f"band {band:.0%}"] = pd.Series(labels).value_counts()
    print(f"{a.lab}: {len(crops)} white cells whose crops lie inside their fields, framed on every side")
    print(pd.DataFrame(rows).fillna(0).astype(int).T.to_string())


if __name__ == "__main__":
    main()
