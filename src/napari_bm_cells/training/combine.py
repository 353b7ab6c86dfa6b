"""Combine trained classifiers into one ensemble checkpoint (:mod:`napari_bm_cells.ensemble`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import pandas as pd

from ..errors import InputError

#: a crop trained on by any member is a training crop of the ensemble; one that some member
#: validated on (and none trained on) a validation crop; a test crop only if held out from all
_ORDER = ("train", "val", "test")


def combine(paths: list[str | Path], out: str | Path, progress: Callable[[str], None] | None = None) -> Path:
    """Write one ensemble checkpoint of the classifiers ``paths`` (mean of their
    probabilities).

    The members must share the class list, input size, field of view, cell size and
    colour reference; the review threshold is left unset (choose it with
    ``bm-cells calibrate-confidence``). The members' split files (``<name>.split.csv``)
    are merged beside ``out``: its test crops are those no member trained or validated on,
    so evaluation of the ensemble holds out what each member held out.

    Parameters
    ----------
    paths : list of str or Path
        Two or more classifier checkpoints.
    out : str or Path
        The ensemble checkpoint to write.
    progress : callable, optional
        Receives one line when members were trained on other splits, or have no split file.

    Returns
    -------
    Path
        ``out``.
    """
    from safetensors.torch import load_file

    from ..checkpoint import read_meta, save_checkpoint
    from ..ensemble import ENSEMBLE, SHARED

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
    merge_splits(paths, out, progress or (lambda s: None))
    return out


def merge_splits(paths: list[str | Path], out: str | Path, say: Callable[[str], None]) -> None:
    """Write ``out``'s split file from its members': a crop is a test crop only where every
    member with a split file held it out (see :data:`_ORDER`)."""
    from .train_classifier import split_path

    have = [p for p in paths if split_path(p).is_file()]
    if not have:
        return
    if missing := [str(p) for p in paths if p not in have]:
        say(f"{', '.join(missing)}: no split file beside it (<name>.split.csv); the ensemble's "
            "test crops are held out from the other members only")
    splits = [pd.read_csv(split_path(p)) for p in have]
    rank = pd.concat(splits).assign(split=lambda d: d["split"].map(_ORDER.index))
    merged = rank.groupby("path", sort=False).agg(label=("label", "first"), split=("split", "min"))
    merged["split"] = merged["split"].map(dict(enumerate(_ORDER)))
    n_first, n = int((splits[0]["split"] == "test").sum()), int((merged["split"] == "test").sum())
    if n < n_first:
        say(f"{have[0]}: {n_first - n} of its {n_first} test crops were trained or validated on by "
            f"another member (other splits); the ensemble's test split is the {n} none of them saw")
    merged.reset_index()[["path", "label", "split"]].to_csv(split_path(out), index=False)
