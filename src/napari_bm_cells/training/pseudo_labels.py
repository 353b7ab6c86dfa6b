"""White cells of other labs' fields, typed by a teacher model (pseudo-labels).

The detection sets hold white cells of labs our class-labelled crops do not come from
(TXL-PBC: Raabin-WBC and BCD, told apart by image size), boxed but not typed. Cut as
``analyze`` cuts them and typed by a classifier that is sure of itself, they add those
labs' stains, cameras and blur to a classifier's training crops
(``train-classifier --extra-data``). The teacher sees each lab's crops standardised in
CIELAB from the statistics of all of them (``colour.LabStandard``); the crops are written
as the fields show them, so the student learns the lab's own colours.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .labs import field_source

log = logging.getLogger(__name__)


def cut_lab_cells(samples, meta, out_px: int) -> tuple[np.ndarray, list[str], list[int]]:
    """Every white-cell box of ``samples`` (detection fields), cut as ``analyze`` cuts
    cells for a classifier with ``meta``'s field of view and cell size (the crop scaled by
    the field's white cells' measured size), at ``out_px`` px.

    Returns the crops (N, out_px, out_px, 3), a name per crop (``<field>_<box>``) and
    how many sides of each crop's square reach past its field (0-4: filled with the
    glass colour there; :func:`~napari_bm_cells.crop.sides_past_edge`).
    """
    from ..crop import sides_past_edge
    from ..cut_cells import crop_side, read_cell_crops
    from ..detect import Detections
    from ..io import open_slide
    from ..options import AnalysisOptions

    crops, names, edges = [], [], []
    for s in samples:
        wbc = [b for b in s.boxes if b.cls == "WBC"]
        if not wbc:
            continue
        dets = Detections(np.array([[b.x0, b.y0, b.x1, b.y1] for b in wbc], np.float32),
                          np.ones(len(wbc), np.float32))
        slide = open_slide(s.image)
        side = crop_side(meta, slide, dets, AnalysisOptions())
        cut, centres, _ = read_cell_crops(slide, dets, np.arange(len(wbc)), side, out_px, meta.crop_size_px)
        crops += list(cut)
        names += [f"{s.image.stem}_{i}" for i in range(len(wbc))]
        edges += [sides_past_edge(c, side, slide.shape[:2]) for c in centres]
    return (np.stack(crops) if crops else np.zeros((0, out_px, out_px, 3), np.uint8)), names, edges


def lab_samples(fields: dict, lab: str, splits, data_yaml="") -> list:
    """The fields of ``lab`` (:func:`~napari_bm_cells.training.labs.field_source`) in
    ``splits`` of a detection set read by ``read_yolo``; none is an InputError."""
    samples = [s for sp in splits for s in fields.get(sp, []) if field_source(s).lower() == lab.lower()]
    if not samples:
        raise InputError(f"{data_yaml}: no field of lab {lab!r} in splits {list(splits)}")
    return samples


def write_lab_cells(data_yaml: str | Path, out_dir: str | Path, meta,
                    labs: tuple[str, ...] = ("Raabin-WBC", "BCD"),
                    splits: tuple[str, ...] = ("train", "val"), out_px: int = 112) -> dict[str, int]:
    """Write every white cell of ``labs``' fields, untyped, into
    ``out_dir/<lab>/<field>_<box>.png``, cut as :func:`cut_lab_cells` cuts them for a
    classifier with ``meta``'s crop geometry: crops for ``train-classifier --unlabelled``.

    Returns the number of cells written per lab.
    """
    from PIL import Image

    from .det_data import read_yolo

    fields, written = read_yolo(data_yaml), {}
    for lab in labs:
        crops, names, _ = cut_lab_cells(lab_samples(fields, lab, splits, data_yaml), meta, out_px)
        folder = Path(out_dir) / lab
        folder.mkdir(parents=True, exist_ok=True)
        for c, n in zip(crops, names):
            Image.fromarray(c).save(folder / f"{n}.png")
        written[lab] = len(crops)
    return written


def pseudo_label_fields(data_yaml: str | Path, out_dir: str | Path, teacher: str | Path,
                        labs: tuple[str, ...] = ("Raabin-WBC", "BCD"),
                        splits: tuple[str, ...] = ("train", "val"), out_px: int = 112,
                        min_confidence: float | None = None, device: str = "cpu") -> pd.DataFrame:
    """Write the white cells of ``labs``' fields that ``teacher`` types with confidence
    into ``out_dir/<CODE>/<lab>_<field>_<box>.png``.

    Parameters
    ----------
    data_yaml : path
        YOLO detection set with white-cell boxes (TXL-PBC's ``data.yaml``).
    teacher : path
        Classifier checkpoint; its class codes name the folders. It should not have seen
        a lab that the student is to be tested on.
    labs : tuple of str
        Which labs' fields (:func:`~napari_bm_cells.training.labs.field_source`).
    splits : tuple of str
        Which splits of the detection set (keep its test split for evaluation).
    out_px : int
        Side of the written crops: the ``--crop-size-px`` the student is trained with
        (112 for the packed crops of ``scripts/pack_training_set.py``).
    min_confidence : float, optional
        Cells whose top probability is lower are left out (default: the teacher's review
        threshold). Cells typed as platelets are left out too (every box is a white cell).

    Returns
    -------
    DataFrame with ``path`` (empty where not written), ``label``, ``lab``, ``confidence``,
    ``kept`` (written) and ``sides_past_edge`` (:func:`cut_lab_cells`) of every white cell.
    """
    from PIL import Image

    from ..classify import Classifier
    from ..colour import LabStandard, lab_stats
    from ..crop import resize_square
    from .det_data import read_yolo

    clf = Classifier(teacher, device=device)
    threshold = clf.meta.min_confidence if min_confidence is None else min_confidence
    fields = read_yolo(data_yaml)
    out_dir = Path(out_dir)
    rows = []
    for lab in labs:
        crops, names, edges = cut_lab_cells(lab_samples(fields, lab, splits, data_yaml), clf.meta, out_px)
        x = np.stack([resize_square(c, clf.input_size) for c in crops])
        if clf.meta.lab_reference is not None:
            x = LabStandard(lab_stats(x), clf.meta.lab_reference)(x)
        probs = clf.predict_in_batches(x)
        label, conf = np.array(clf.classes)[probs.argmax(1)], probs.max(1)
        keep = (conf >= (threshold or 0.0)) & (label != "PLT")
        for c, n, lb, p, k, e in zip(crops, names, label, conf, keep, edges):
            path = out_dir / lb / f"{lab}_{n}.png"
            if k:
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(c).save(path)
            rows.append((str(path) if k else "", lb, lab, round(float(p), 4), bool(k), e))
        log.info("%s: %d of %d white cells typed with confidence >= %.2f", lab, keep.sum(), len(crops),
                 threshold or 0.0)
    return pd.DataFrame(rows, columns=["path", "label", "lab", "confidence", "kept", "sides_past_edge"])
