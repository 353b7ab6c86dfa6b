"""Other ways to fill the part of a cell's square outside a tight field, and how a
classifier types other labs' white cells with each.

The pipeline fills it with the glass colour (:func:`napari_bm_cells.crop.square_crop`).
This probe cuts every white cell of the labs' fields as ``scripts/pseudo_label_fields.py``
does, once per fill, and prints the types per fill: ``glass`` (what runs), ``mirror``
(the field mirrored at its edges), ``wrap`` (the field repeated) and ``shrink`` (the
square shrunk to fit inside the field and enlarged back, so the cell looks larger).

    python scripts/fill_probe.py CKPT [--data .pack/txl-pbc/data.yaml] [--labs Raabin-WBC]
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from PIL import Image

import napari_bm_cells.cut_cells as cut_cells
from napari_bm_cells.classify import Classifier
from napari_bm_cells.colour import LabStandard, lab_stats
from napari_bm_cells.crop import real_part, resize_square, square_crop, square_origin
from napari_bm_cells.training.det_data import read_yolo
from napari_bm_cells.training.labs import field_source
from napari_bm_cells.training.pseudo_labels import cut_lab_cells


def padded(mode: str):
    """A ``square_crop`` that fills outside the field with ``np.pad`` in ``mode``."""
    def crop(image, centre, side, valid=None):
        vy0, vx0, vy1, vx1 = real_part(image, valid)
        n = int(round(side))
        r0, c0 = square_origin(centre, n)
        big = np.pad(np.asarray(image[vy0:vy1, vx0:vx1]), ((n, n), (n, n), (0, 0)), mode=mode)
        return big[r0 - vy0 + n:r0 - vy0 + 2 * n, c0 - vx0 + n:c0 - vx0 + 2 * n]
    return crop


def shrunk(image, centre, side, valid=None):
    """The largest square inside the field around ``centre``, enlarged to ``side``."""
    vy0, vx0, vy1, vx1 = real_part(image, valid)
    n = int(round(side))
    s = min(n, vy1 - vy0, vx1 - vx0)
    if s == n:
        return square_crop(image, centre, side, valid)
    cy = min(max(centre[0], vy0 + s / 2), vy1 - s / 2)
    cx = min(max(centre[1], vx0 + s / 2), vx1 - s / 2)
    small = square_crop(image, (cy, cx), s, valid)
    return np.asarray(Image.fromarray(small).resize((n, n), Image.BILINEAR))


FILLS = {"glass": square_crop, "mirror": padded("reflect"), "wrap": padded("wrap"), "shrink": shrunk}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default=".pack/txl-pbc/data.yaml")
    ap.add_argument("--labs", nargs="+", default=["Raabin-WBC"])
    a = ap.parse_args(argv)
    clf = Classifier(a.checkpoint)
    fields = read_yolo(a.data)
    rows = {}
    for lab in a.labs:
        samples = [s for sp in ("train", "val") for s in fields.get(sp, []) if field_source(s).lower() == lab.lower()]
        for name, fill in FILLS.items():
            cut_cells.square_crop = fill  # the one cut the pipeline's cell crops go through
            try:
                crops = cut_lab_cells(samples, clf.meta, clf.input_size)[0]
            finally:
                cut_cells.square_crop = square_crop
            x = np.stack([resize_square(c, clf.input_size) for c in crops])
            x = LabStandard(lab_stats(x), clf.meta.lab_reference)(x)
            labels = np.array(clf.classes)[clf.predict_in_batches(x).argmax(1)]
            rows[(lab, name)] = pd.Series(labels).value_counts()
    print(pd.DataFrame(rows).fillna(0).astype(int).T.to_string())


if __name__ == "__main__":
    main()
