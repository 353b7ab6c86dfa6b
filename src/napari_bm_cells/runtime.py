"""Where models run: device choice, mixed precision, and one cache of loaded models.

Every entry point (napari widgets, CLI, batch workers, Explain) asks here for its
device and its models, so the rules live in one place: ``auto`` picks cuda, then mps,
then cpu; the YOLO detector runs on the CPU when the classifier has an mps device
(ultralytics' mps support is incomplete); a model file is loaded once per process (per
thread where a model must not be shared between threads) and reloaded when it changes.
"""
from __future__ import annotations

import threading
from pathlib import Path

from .errors import InputError


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> cuda, then mps, then cpu; an unavailable explicit device is an error."""
    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps' requested but not available; use --device cpu or auto")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise InputError(f"unknown device {device!r}; choose auto, cpu, cuda or mps")
    return device


def autocast_dtype(device: str, precision: str = "auto", training: bool = False):
    """The autocast dtype for ``precision`` on ``device`` (None = float32).

    ``auto``: bfloat16 on CPUs with native bf16 (AVX512-BF16 / AMX; 1.7-1.9x faster for
    both models here, accuracy unchanged, see docs/performance.md), float16 for GPU
    inference, bfloat16 for GPU training where supported; float32 elsewhere.
    """
    import torch

    if precision not in ("auto", "fp32", "bf16"):
        raise InputError(f"precision {precision!r}: choose auto, fp32 or bf16")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.startswith("cuda"):
        return torch.bfloat16 if training and torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return None if training else torch.float16
    if device == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: str, dtype):
    """``torch.autocast`` for ``device`` with ``dtype``, or a no-op context for None."""
    import contextlib

    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if device.startswith("cuda") else device, dtype=dtype)


def detector_device(device: str) -> str:
    """The detector's device for a classifier on ``device``: the same, but cpu for mps."""
    return "cpu" if device == "mps" else device


_LOCK = threading.Lock()
_MODELS: dict = {}  # (kind, spec, file mtime, device, thread or None) -> model
MAX_MODELS = 8
#: how many models this process loaded (the batch tests check one pair per worker)
LOAD_COUNT = {"n": 0}


def _cached(kind: str, spec, device: str, load, per_thread: bool = False):
    path = None if spec in (None, "contour") else Path(spec)
    key = (kind, str(path) if path else spec, path.stat().st_mtime if path and path.is_file() else None,
           device, threading.get_ident() if per_thread else None)
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
    model = load()  # outside the lock: another thread may load another model meanwhile
    with _LOCK:
        if len(_MODELS) >= MAX_MODELS:
            _MODELS.clear()
        LOAD_COUNT["n"] += 1
        return _MODELS.setdefault(key, model)


def classifier(spec=None, device: str = "auto", precision: str = "auto"):
    """The :class:`~napari_bm_cells.classify.Classifier` of checkpoint ``spec`` (None: the
    shipped one) on ``device``, loaded once per process; a Classifier is returned as is."""
    from .classify import Classifier

    if isinstance(spec, Classifier):
        return spec
    device = resolve_device(device)
    return _cached(f"classifier-{precision}", spec, device,
                   lambda: Classifier(spec, device=device, precision=precision))


def detector(spec=None, device: str = "cpu", per_thread: bool = False):
    """The detector of ``spec`` (None: the shipped YOLO, ``"contour"``, or a ``.pt``) on
    ``device``, loaded once per process (``per_thread``: once per thread, as ultralytics'
    predictor must not be shared between threads); a loaded detector is returned as is."""
    from .detect import load_detector

    if callable(spec):
        return spec
    return _cached("detector", spec, device, lambda: load_detector(spec, device=device), per_thread)


def models(det_spec=None, cls_spec=None, device: str = "auto", per_thread: bool = False):
    """The (detector, classifier) pair of a run: the classifier on ``device``, the detector
    on :func:`detector_device` of the classifier's device."""
    cls = classifier(cls_spec, device)
    return detector(det_spec, detector_device(cls.device), per_thread), cls
