"""A classifier on PBC's held-back test crops at their natural size and shown as a
one-cell field shows them (each cell magnified to the checkpoint's typical diameter),
per class (docs/models.md, "Cells shown at one size"). Crops are cut by the package's
one crop rule (:func:`napari_bm_cells.crop.square_crop`).

    python scripts/one_size_probe.py CHECKPOINT [--split SPLIT_CSV] [--data ../shared/data/pbc]

The split defaults to the checkpoint's own ``<stem>.split.csv``; a checkpoint trained on a
packed copy (``scripts/pack_training_set.py``) and restated to a 250 px field of view
takes the shipped split (the same seed gives the same test crops).
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from PIL import Image

from napari_bm_cells.classify import Classifier
from napari_bm_cells.crop import cell_diameter, resize_square, square_crop
from napari_bm_cells.training.train_classifier import read_split, split_path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--split", default=None, help="split CSV (default: the checkpoint's)")
    ap.add_argument("--data", default="../shared/data/pbc")
    a = ap.parse_args(argv)
    cls = Classifier(a.checkpoint, device="cpu")
    fov, ref, n = cls.meta.crop_size_px, cls.meta.ref_cell_px, cls.input_size
    df = read_split(a.split or split_path(a.checkpoint), a.data)
    df = df[df["split"] == "test"]
    natural, one_size, ratios = [], [], []
    for p in df["path"]:
        img = np.asarray(Image.open(p).convert("RGB"))
        centre = (img.shape[0] / 2, img.shape[1] / 2)
        crop = square_crop(img, centre, fov)
        d = cell_diameter(crop)
        r = d / ref if d else 1.0
        ratios.append(r)
        natural.append(resize_square(crop, n))
        one_size.append(resize_square(square_crop(img, centre, fov * r), n))  # cut as analyze cuts
    labels = df["label"].to_numpy()
    print("cell diameter / typical, median per class:",
          pd.Series(ratios).groupby(labels).median().round(2).to_dict())
    for name, x in (("natural size", natural), ("one size", one_size)):
        x = np.stack(x)
        probs = cls.predict_in_batches(x)
        pred = np.array(cls.classes)[probs.argmax(1)]
        per = pd.Series(pred == labels).groupby(labels).mean().round(2).to_dict()
        print(f"{name:13s} accuracy {np.mean(pred == labels):.3f}", per)


if __name__ == "__main__":
    main()
