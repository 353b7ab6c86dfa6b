"""Combine trained classifiers into one ensemble checkpoint (:mod:`napari_bm_cells.ensemble`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import InputError


def combine(paths: list[str | Path], out: str | Path) -> Path:
    """Write one ensemble checkpoint of the classifiers ``paths`` (mean of their
    probabilities).

    The members must share the class list, input size, field of view, cell size and
    colour reference; the review threshold is left unset (choose it with
    ``bm-cells calibrate-confidence``). The first member's split file
    (``<name>.split.csv``) is copied beside ``out`` so evaluation holds out the same crops.

    Returns
    -------
    Path
        ``out``.
    """
    from safetensors.torch import load_file

    from ..checkpoint import read_meta, save_checkpoint
    from ..ensemble import ENSEMBLE, SHARED
    from .train_classifier import copy_split

    if len(paths) < 2:
        raise InputError("combine-classifiers: give two or more checkpoints to combine")
    metas = [read_meta(p) for p in paths]
    first = metas[0]
    for p, m in zip(paths[1:], metas[1:]):
        for name in SHARED:
            a, b = getattr(first, name), getattr(m, name)
            if a != b and not (isinstance(a, float) and isinstance(b, float) and abs(a - b) <= 1e-3 * abs(a)):
                raise InputError(f"{p}: {name} {b!r} differs from {paths[0]}'s {a!r}; ensemble members "
                                 "must be trained on the same crops (same classes, input size and field of view)")
    members, tensors = [], {}
    for i, (p, m) in enumerate(zip(paths, metas)):
        if m.arch == ENSEMBLE:
            raise InputError(f"{p}: is an ensemble already; combine its members instead")
        members.append({"arch": m.arch, "mean": m.mean, "std": m.std, "trained_on": m.trained_on,
                        "file": Path(p).name})
        tensors.update({f"members.{i}.net.{k}": v for k, v in load_file(str(p)).items()})
    meta = dataclasses.replace(
        first, arch=ENSEMBLE, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], members=members,
        trained_on="mean of the probabilities of " + "; ".join(f"{m['arch']} ({m['trained_on']})" for m in members),
        min_confidence=None, metrics={})
    out = Path(out)
    save_checkpoint(out, tensors, meta, half=True)
    copy_split(paths[0], out)
    return out
