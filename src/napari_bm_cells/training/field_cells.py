"""Labelled single cells cut from annotated smear fields, as the pipeline cuts them.

BCCD fields come from another lab, stain and camera than PBC; each field of
``bccd/wbc_subtypes.csv`` with one labelled white cell gives one training crop of that
lab's look. The crop is cut exactly as :func:`~napari_bm_cells.pipeline.iter_analysis`
cuts cells from a slide (cell size measured, field of view scaled to the training
cells, centre contour), so the model learns what it will be shown.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..checkpoint import ClassifierMeta
from ..detect import Detections
from ..errors import InputError
from ..taxonomy import COMMON_NAMES
from .det_data import read_voc

log = logging.getLogger(__name__)

#: BCCD label -> class codes that count as correct; the first is the training label
#: (BCCD does not tell band from segmented neutrophils; most are segmented)
LABEL_TO_CODES = {k: COMMON_NAMES[k.lower()] for k in
                  ("NEUTROPHIL", "EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "BASOPHIL")}


def read_subtypes(bccd_dir: str | Path, splits: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Single-valued white-cell labels of BCCD fields.

    Parameters
    ----------
    splits : tuple of str, optional
        Keep fields of these ``ImageSets/Main`` splits only (default: all fields).

    Returns
    -------
    DataFrame with ``image`` (path), ``truth`` (BCCD label) and ``split``.
    """
    bccd_dir = Path(bccd_dir)
    csv = bccd_dir / "wbc_subtypes.csv"
    if not csv.is_file():
        raise InputError(f"{bccd_dir}: no wbc_subtypes.csv (BCCD white-cell labels) in this folder")
    df = pd.read_csv(csv).dropna(subset=["Category"])
    df = df[df["Category"].isin(list(LABEL_TO_CODES))]
    df["image"] = df["Image"].map(lambda i: bccd_dir / "JPEGImages" / f"BloodImage_{int(i):05d}.jpg")
    df = df[df["image"].map(Path.is_file)]
    split_of = {}
    for split in ("train", "val", "test"):
        f = bccd_dir / "ImageSets" / "Main" / f"{split}.txt"
        if f.is_file():
            split_of.update({s.strip(): split for s in f.read_text().split()})
    df["split"] = df["image"].map(lambda p: split_of.get(p.stem, "train"))
    if splits is not None:
        df = df[df["split"].isin(splits)]
    return df.rename(columns={"Category": "truth"})[["image", "truth", "split"]].reset_index(drop=True)


def export_field_cells(voc_dir: str | Path, out_dir: str | Path, meta: ClassifierMeta,
                       splits: tuple[str, ...] = ("train",)) -> pd.DataFrame:
    """Write one crop per labelled single-white-cell field into ``out_dir/<CODE>/``.

    Parameters
    ----------
    voc_dir : path
        BCCD-like folder: Pascal VOC annotations plus ``wbc_subtypes.csv``.
    meta : ClassifierMeta
        Field of view (``crop_size_px``) and training cell size (``ref_cell_px``) of the
        model to be trained; crops are written at ``crop_size_px`` px.
    splits : tuple of str
        Which of the VOC splits to use (keep the others for evaluation).

    Returns
    -------
    DataFrame with ``path`` and ``label`` of the written crops.
    """
    from PIL import Image

    from ..io import open_slide
    from ..cut_cells import crop_side, read_cell_crops
    from ..options import AnalysisOptions

    out_dir = Path(out_dir)
    labels = read_subtypes(voc_dir, splits)
    boxes = {s.image.stem: [b for b in s.boxes if b.cls == "WBC"]
             for ss in read_voc(voc_dir).values() for s in ss}
    rows, skipped = [], 0
    for r in labels.itertuples():
        wbc = boxes.get(r.image.stem, [])
        if len(wbc) != 1:  # the label cannot be tied to one cell
            skipped += 1
            continue
        b = wbc[0]
        dets = Detections(np.array([[b.x0, b.y0, b.x1, b.y1]], np.float32), np.ones(1, np.float32))
        slide = open_slide(r.image)
        side = crop_side(meta, slide, dets, AnalysisOptions())
        crop = read_cell_crops(slide, dets, [0], side, int(meta.crop_size_px), meta.crop_size_px)[0][0]
        code = LABEL_TO_CODES[r.truth][0]
        path = out_dir / code / f"{Path(voc_dir).name}_{r.image.stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(path)
        rows.append((str(path), code))
    if skipped:
        log.info("%s: %d labelled fields skipped (not exactly one white-cell box)", voc_dir, skipped)
    return pd.DataFrame(rows, columns=["path", "label"])
