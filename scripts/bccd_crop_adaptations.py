"""Run-time adaptations of a classifier's crops on another lab's cells (docs/models.md).

The labelled white cell of each BCCD field (``wbc_subtypes.csv``), cut as ``analyze``
cuts it, typed by CHECKPOINT: without adaptation, with the CIELAB standardisation
(statistics of all the crops, or of each crop alone as on a one-cell field), then
sharpened towards the training crops (unsharp mask), averaged over flips and rotations, or
shown smaller / larger (and averaged over those scales). Prints accuracy, balanced accuracy and per type.

    python scripts/bccd_crop_adaptations.py CHECKPOINT [--data ../shared/data] [--work /tmp/bccd_cells]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from napari_bm_cells.classify import Classifier
from napari_bm_cells.colour import LabStandard, lab_stats
from napari_bm_cells.crop import resize_square
from napari_bm_cells.training.field_cells import export_field_cells

#: BCCD types and the codes that count as right (a neutrophil may be band or segmented)
RIGHT = {"NGS": {"NGS", "NGB"}, "EOS": {"EOS"}, "LYT": {"LYT"}, "MON": {"MON"}, "BAS": {"BAS"}}


def sharpness(crop: np.ndarray) -> float:
    """Laplacian variance over grey variance: blur-sensitive, contrast-free."""
    g = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    return float(cv2.Laplacian(g, cv2.CV_32F).var() / (g.var() + 1e-6))


def unsharp(crop: np.ndarray, amount: float, sigma: float = 1.0) -> np.ndarray:
    blur = cv2.GaussianBlur(crop.astype(np.float32), (0, 0), sigma)
    return np.clip(crop + amount * (crop - blur), 0, 255).astype(np.uint8)


def zoom(crop: np.ndarray, factor: float) -> np.ndarray:
    """The cell shown ``factor`` times as large, the square's size kept (glass colour fills
    around a shrunk crop)."""
    h = crop.shape[0]
    if factor > 1:
        m = int(round(h / factor))
        o = (h - m) // 2
        return cv2.resize(crop[o:o + m, o:o + m], (h, h), interpolation=cv2.INTER_AREA)
    m = int(round(h * factor))
    glass = np.median(np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]]), 0)
    out = np.empty_like(crop)
    out[:] = glass.astype(np.uint8)
    o = (h - m) // 2
    out[o:o + m, o:o + m] = cv2.resize(crop, (m, m), interpolation=cv2.INTER_AREA)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--work", default="/tmp/bccd_cells", help="where the cut cells are kept")
    a = ap.parse_args(argv)
    cls = Classifier(a.checkpoint, device="cpu")
    work = Path(a.work)
    if not work.exists():
        export_field_cells(Path(a.data) / "bccd", work, cls.meta, splits=("train", "val", "test"))
    rows = pd.DataFrame([(str(p), p.parent.name) for p in sorted(work.glob("*/*.png"))], columns=["path", "label"])
    n = cls.input_size
    crops = np.stack([resize_square(np.asarray(Image.open(p).convert("RGB")), n) for p in rows["path"]])
    truth = rows["label"].to_numpy()

    def score(views):
        probs = sum(cls.predict_in_batches(v) for v in views)
        pred = np.array(cls.classes)[probs.argmax(1)]
        hit = np.array([p in RIGHT[t] for p, t in zip(pred, truth)])
        per = {t: round(float(hit[truth == t].mean()), 2) for t in RIGHT if (truth == t).any()}
        return f"{hit.mean():.3f}  balanced {np.mean(list(per.values())):.3f}  {per}"

    std = LabStandard(lab_stats(crops), cls.meta.lab_reference)(crops)
    print(f"{len(crops)} cells; sharpness median {np.median([sharpness(c) for c in crops]):.3f}")
    print("none                 ", score([crops]))
    print("standardise          ", score([std]))
    alone = np.stack([LabStandard(lab_stats(c), cls.meta.lab_reference)(c[None])[0] for c in crops])
    print("standardise each crop", score([alone]), " (as a one-cell field is)")
    for amount in (0.5, 1.0, 1.5):
        print(f"+ unsharp {amount}         ", score([np.stack([unsharp(c, amount) for c in std])]))
    flips = [std, std[:, :, ::-1], std[:, ::-1], np.rot90(std, 1, axes=(1, 2))]
    print("+ 2 / 4 flips        ", score(flips[:2]), "/", score(flips))
    scaled = {f: np.stack([zoom(c, f) for c in std]) for f in (0.8, 0.9, 1.1, 1.25)}
    for f, v in scaled.items():
        print(f"+ shown {f}x           ", score([v]))
    print("+ mean of 0.9x/1x/1.1x", score([scaled[0.9], std, scaled[1.1]]))


if __name__ == "__main__":
    main()
