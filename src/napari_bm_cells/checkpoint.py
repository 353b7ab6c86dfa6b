"""Our classifier checkpoint format: one ``.safetensors`` file.

The tensors are the timm model's ``state_dict`` (half precision when shipped; for an
ensemble, its members', :mod:`napari_bm_cells.ensemble`); the file's
metadata holds a JSON document under the key ``"bm_cells"`` with the architecture, the
class codes in output order, the input size, normalisation, the field of view the model
was trained on, and provenance. A single file cannot lose its metadata on the way.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import InputError

FORMAT_VERSION = 1


@dataclass
class ClassifierMeta:
    """Everything needed to rebuild and feed a classifier.

    Attributes
    ----------
    arch : str
        timm model name (CoAtNet or ResNeXt family).
    classes : list of str
        Class codes in the order of the model's outputs.
    input_size : int
        Side of the square network input in pixels.
    crop_size_px : int
        Side of the square the model was trained on, in source pixels (360 for PBC,
        250 for the bone-marrow set).
    ref_cell_px : float
        Typical white-cell diameter in the training crops, in source pixels; the
        pipeline scales crops so that cells appear at the size the model knows when a
        slide's pixel size is unknown.
    mpp : float or None
        Microns per pixel of the training crops, when known.
    background : list of float or None
        Median glass colour (RGB, 0-255) of the training images: the reference of the
        run-time white balance (:mod:`napari_bm_cells.colour`).
    lab_reference : dict or None
        Mean and standard deviation of CIELAB L*, a*, b* over the training crops at the
        input size (``{"mean": [3], "std": [3]}``): the reference of the run-time colour
        standardisation (:class:`napari_bm_cells.colour.LabStandard`).
    min_confidence : float or None
        Top-class probability below which a cell is left unclassified (``UNK``) for
        review: chosen on the validation split (see
        :func:`napari_bm_cells.training.calibrate.choose_min_confidence`); None: never.
    members : list of dict or None
        For ``arch="ensemble"`` (:mod:`napari_bm_cells.ensemble`): each member network's
        ``arch``, ``mean``, ``std`` and provenance; None for a single network.
    """

    arch: str
    classes: list[str]
    input_size: int
    crop_size_px: int
    ref_cell_px: float
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    mpp: float | None = None
    trained_on: str = ""
    background: list[float] | None = None
    lab_reference: dict | None = None
    min_confidence: float | None = None
    metrics: dict = field(default_factory=dict)
    members: list[dict] | None = None
    format_version: int = FORMAT_VERSION


def save_checkpoint(path: str | Path, state_dict: dict, meta: ClassifierMeta,
                    half: bool = False) -> Path:
    """Write weights and metadata to one safetensors file (atomically)."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().cpu().contiguous()
        if half and v.is_floating_point():
            v = v.to(torch.float16)
        tensors[k] = v
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"bm_cells": json.dumps(asdict(meta))})
    from .export import set_usual_mode

    set_usual_mode(tmp)
    tmp.replace(path)
    return path


def read_meta(path: str | Path) -> ClassifierMeta:
    """Read only the metadata of a checkpoint."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: classifier checkpoint not found; pass --classifier with "
                         "a .safetensors file written by 'bm-cells train-classifier'")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("bm_cells")
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(f"{path}: not a readable safetensors checkpoint ({exc}); "
                         "re-download or re-train it") from None
    if raw is None:
        raise InputError(f"{path}: safetensors file has no 'bm_cells' metadata; it was not "
                         "written by 'bm-cells train-classifier'")
    d = json.loads(raw)
    known = set(ClassifierMeta.__dataclass_fields__)
    return ClassifierMeta(**{k: v for k, v in d.items() if k in known})


def load_model(path: str | Path, device: str = "cpu"):
    """Build the timm model of a checkpoint and load its weights.

    Returns
    -------
    model : torch.nn.Module
        In eval mode, float32, on ``device``.
    meta : ClassifierMeta
    """
    import timm
    from safetensors.torch import load_file

    from .ensemble import ENSEMBLE, build

    meta = read_meta(path)
    try:
        model = build(meta) if meta.arch == ENSEMBLE else timm.create_model(
            meta.arch, pretrained=False, num_classes=len(meta.classes), **arch_kwargs(meta.arch, meta.input_size))
    except Exception as exc:
        raise InputError(f"{path}: unknown architecture {meta.arch!r} ({exc})") from None
    state = load_file(str(path))
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InputError(
            f"{path}: weights do not match the metadata (arch {meta.arch}, "
            f"{len(meta.classes)} classes): {first[1].strip() if len(first) > 1 else first[0]}"
            "; the class list or architecture in the file is wrong, re-export the checkpoint"
        ) from None
    return model.to(device).eval(), meta


def arch_kwargs(arch: str, input_size: int) -> dict:
    """Extra timm kwargs: transformer-style backbones need the input size up front."""
    if arch.startswith(("coat", "maxvit", "maxxvit")):
        return {"img_size": input_size}
    return {}


def file_sha256(path: str | Path, n: int = 16) -> str:
    """Short content hash used to name models in summaries and batch manifests."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]
