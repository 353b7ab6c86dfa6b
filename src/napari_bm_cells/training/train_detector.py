"""Train a YOLO cell detector offline (white cells, red cells, platelets; model built from a ``.yaml``, no hub)."""
from __future__ import annotations

import json
import shutil
import statistics
import tempfile
from pathlib import Path

from .det_data import CLASS_SETS, read_detection_set, write_yolo_set
from .labs import in_lab


#: ultralytics augmentation of the shipped detector (hue rotation ±0.3 × 180°, BGR swap)
AUGMENT = {"flipud": 0.5, "fliplr": 0.5, "degrees": 90, "scale": 0.7, "hsv_h": 0.3, "hsv_s": 0.7,
           "hsv_v": 0.4, "bgr": 0.25}


def input_cell_px(sources, imgsz: int, cls: str = "WBC", leave_out: str | None = None) -> float | None:
    """Median long side of ``cls`` boxes as the network sees them at ``imgsz`` (None when
    the training split has none).

    Stored beside the weights: the pipeline picks the detection downsample so that
    cells on a slide reach the detector at this size.
    """
    sizes = []
    for s in train_fields(sources, leave_out):
        scale = imgsz / max(s.width, s.height)
        sizes += [max(b.x1 - b.x0, b.y1 - b.y0) * scale for b in s.boxes if b.cls == cls]
    return float(statistics.median(sizes)) if sizes else None


def train_fields(sources, leave_out: str | None = None) -> list:
    """The training-split samples of ``sources`` (VOC folders, YOLO sets), without the
    fields of the lab ``leave_out``."""
    return [s for src in sources for s in read_detection_set(src).get("train", [])
            if not (leave_out and in_lab(s, leave_out))]


def add_lab_reference(weights, sources, leave_out: str | None = None) -> dict | None:
    """Store the CIELAB statistics of the detector's training fields
    (:func:`~napari_bm_cells.colour.fields_lab_reference`) as ``lab_reference`` in
    ``<weights>.json``: what ``--colour standardise`` maps a slide's tiles onto."""
    ref = lab_reference(sources, leave_out)
    update_sidecar(weights, lab_reference=ref)
    return ref


def lab_reference(sources, leave_out: str | None = None) -> dict | None:
    """:func:`~napari_bm_cells.colour.fields_lab_reference` of the training fields of ``sources``."""
    from ..colour import fields_lab_reference

    return fields_lab_reference([s.image for s in train_fields(sources, leave_out)])


def update_sidecar(weights, **fields) -> None:
    """Set ``fields`` in ``<weights>.json`` (:func:`~napari_bm_cells.detect.read_sidecar`), keeping the rest."""
    from ..detect import read_sidecar

    meta = {**read_sidecar(weights), **fields}
    Path(weights).with_suffix(".json").write_text(json.dumps(meta, indent=2))


def train_detector(sources: list[str | Path], out: str | Path, epochs: int = 10,
                   imgsz: int = 320, batch: int = 16, device: str = "cpu",
                   model_yaml: str = "yolov8n.yaml", classes: str = "all", seed: int = 0,
                   workers: int = 2, init: str | Path | None = None,
                   lr0: float | None = None, close_mosaic: int = 10, translate: float = 0.1,
                   stain_copies: int = 1, leave_out: str | None = None,
                   hours: float | None = None, field_of_view: float = 0.0) -> Path:
    """Train a detector on VOC / YOLO sets and write ``out`` (.pt) plus ``out.json``.

    Parameters
    ----------
    sources : list of path
        Pascal VOC folders and/or YOLO ``data.yaml`` files; their splits are merged.
    out : path
        Weights file to write (ultralytics ``.pt``); ``<out>.json`` gets the metadata.
    classes : {"all", "wbc"}
        White cells, red cells and platelets (the red cells are the pipeline's ruler for
        the detection scale, :func:`~napari_bm_cells.scale.probe_red_cell_px`), or white
        cells only.
    init : path, optional
        Start from these local weights (fine-tuning) instead of ``model_yaml``.
    lr0 : float, optional
        Initial learning rate. From scratch the default lets ultralytics choose optimizer
        and rate; fine-tuning (``init``) uses AdamW at 5e-4 (ultralytics' automatic choice,
        which ignores ``lr0``, made a fine-tuned detector diverge).
    close_mosaic : int
        Epochs at the end trained without mosaic augmentation.
    translate : float
        Random shift as a fraction of the image side (ultralytics' default 0.1); larger
        shifts cut more cells at the image edge, as fields cut cells at theirs.
    stain_copies : int
        Extra copies of every training field, each recoloured by
        :func:`~napari_bm_cells.training.augment.random_stain` (another lab's stain,
        background and camera; boxes unchanged).
    field_of_view : float
        Share of the recoloured copies also cut to a camera's round field of view or a
        scanner's unscanned strip, painted in the field's glass colour as the pipeline
        paints a black surround (:func:`~napari_bm_cells.training.augment.cut_field_of_view`;
        boxes cut to what stays visible).
    leave_out : str, optional
        A lab whose fields are left out (:func:`~.labs.field_source`), to test the
        detector on a lab it never saw (``bm-cells crosslab --lab``).
    hours : float, optional
        Training time budget: ultralytics fits the number of epochs and the learning-rate
        schedule to it (``epochs`` is then ignored).

    Colour and scale augmentation (:data:`AUGMENT`): hue rotated by up to ±54°, red and
    blue swapped in a quarter of the images (pink <-> blue-grey stains), saturation and
    brightness jitter, cells scaled 0.3-1.7x, so the detector holds up on other labs'
    stains and magnifications.
    """
    from ultralytics import YOLO

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = CLASS_SETS[classes]
    work = Path(tempfile.mkdtemp(prefix="bm_cells_det_"))
    try:
        data_yaml = write_yolo_set(sources, work / "data", names, stain_copies=stain_copies, seed=seed,
                                   leave_out=leave_out, field_of_view=field_of_view)
        model = YOLO(str(init) if init else model_yaml)
        if init:
            opt = {"optimizer": "AdamW", "lr0": lr0 or 5e-4, "warmup_epochs": 1}
        else:
            opt = {"optimizer": "auto" if lr0 is None else "SGD", "lr0": lr0 or 0.01, "warmup_epochs": 3}
        model.train(data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch, device=device,
                    workers=workers, seed=seed, plots=False, amp=False, project=str(work),
                    name="run", exist_ok=True, **AUGMENT, translate=translate, cache=True,
                    patience=10_000 if hours else max(epochs, 5),  # no early stop: the schedule is fixed
                    verbose=False, close_mosaic=close_mosaic, **opt,
                    **({"time": hours} if hours else {}))
        best = work / "run" / "weights" / "best.pt"
        shutil.copy2(best, out)
        from ultralytics.utils.torch_utils import strip_optimizer
        strip_optimizer(str(out))  # drop optimizer state: 6 MB instead of 30
        meta = {"classes": list(names), "imgsz": imgsz,
                "input_cell_px": input_cell_px(sources, imgsz, leave_out=leave_out) or imgsz / 3,
                # the red-cell size the network saw: the pipeline's ruler (none without red-cell boxes)
                "input_rbc_px": input_cell_px(sources, imgsz, "RBC", leave_out) if "RBC" in names else None,
                "arch": model_yaml, "epochs": _epochs_run(work / "run"), "init": str(init) if init else None,
                "translate": translate,
                "augment": AUGMENT, "stain_copies": stain_copies, "field_of_view": field_of_view, "left_out": leave_out,
                "trained_on": [f"{Path(s).parent.name}/{Path(s).name}" if Path(s).is_file() else Path(s).name
                               for s in sources],
                # what --colour standardise maps a slide from outside its range into
                "lab_reference": lab_reference(sources, leave_out)}
        out.with_suffix(".json").write_text(json.dumps(meta, indent=2))
        calibrate_threshold(out, data_yaml)
    finally:  # the YOLO set (links, recoloured copies) and ultralytics' run folder
        shutil.rmtree(work, ignore_errors=True)
    return out


def _epochs_run(run_dir: Path) -> int:
    """Epochs ultralytics trained (rows of its results.csv)."""
    csv = run_dir / "results.csv"
    return max(0, len(csv.read_text().splitlines()) - 1) if csv.is_file() else 0


#: bounds of the operating threshold. The upper one is low on purpose: on a lab it never
#: saw, a detector's scores fall, so the best-F1 threshold of its own labs' validation
#: fields (often 0.4-0.5) misses cells there. Leave-one-lab-out detectors (docs/models.md)
#: found 0.91-0.94 of the left-out lab's cells at that threshold and 0.94-0.95 at 0.3, at
#: the same precision.
CONF_RANGE = (0.05, 0.3)


def calibrate_threshold(weights: str | Path, data_yaml: str | Path) -> float:
    """Choose the detector's operating score threshold on the validation split (best
    F1 of white cells, within :data:`CONF_RANGE`: a differential needs both few missed
    and few spurious cells) and store it as ``conf`` in ``<weights>.json``; the test
    split stays untouched for evaluation."""
    from .evaluate import evaluate_detector

    weights = Path(weights)
    m = evaluate_detector(data_yaml, tempfile.mkdtemp(prefix="bm_cells_cal_"), detector=weights,
                          split="val")
    conf = float(min(CONF_RANGE[1], max(CONF_RANGE[0], m["threshold_best_f1"])))
    update_sidecar(weights, conf=conf,
                   val_metrics_before_calibration={k: m[k] for k in ("conf", "recall", "precision", "ap50")})
    return conf
