"""Classification data: a folder per class (PBC, ImageFolder) or the TCIA nested layout.

``<root>/<CODE>/*.jpg`` and ``<root>/<CODE>/<batch>/<CODE>_<n>.jpg`` are both read; the
class is the top-level folder name. Unknown codes are allowed with a warning.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..taxonomy import codes_for_name, is_known

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def _visible_files(root: Path) -> list[Path]:
    """Every file under ``root`` (any depth) outside hidden folders and not hidden, sorted."""
    return [p for p in sorted(root.rglob("*")) if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)]


def image_files(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (any depth, hidden folders skipped), sorted.

    Raises
    ------
    InputError
        ``root`` is not a folder or holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; give a folder of cell images")
    files = [p for p in _visible_files(root) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise InputError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def scan_class_folders(root: str | Path) -> pd.DataFrame:
    """List the images of a folder-per-class tree.

    Returns
    -------
    DataFrame with columns ``path`` and ``label``. Empty class folders and non-image
    files are skipped with a warning; fewer than two classes is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; give a folder with one sub-folder per class code")
    rows, skipped = [], []
    for cls_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _visible_files(cls_dir)
        imgs = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped += [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not imgs:
            warnings.warn(f"{cls_dir}: class folder has no images; class skipped", stacklevel=2)
            continue
        if not is_known(cls_dir.name) and codes_for_name(cls_dir.name) is None:
            warnings.warn(f"{cls_dir}: {cls_dir.name!r} is not a known class code; "
                          "kept as a class of its own", stacklevel=2)
        rows += [(str(p), cls_dir.name) for p in imgs]
    if skipped:
        warnings.warn(f"{root}: skipped {len(skipped)} non-image files, e.g. {skipped[0]}",
                      stacklevel=2)
    df = pd.DataFrame(rows, columns=["path", "label"])
    if df["label"].nunique() < 2:
        raise InputError(f"{root}: found {df['label'].nunique()} class folder(s) with images; "
                         "training needs at least two classes (one sub-folder per class code)")
    return df


def stratified_split(df: pd.DataFrame, val: float = 0.15, test: float = 0.15,
                     seed: int = 0) -> pd.DataFrame:
    """Add a ``split`` column (train/val/test), stratified by label.

    Classes too small to stratify (fewer than 3 images) go to train only.
    """
    rng = np.random.default_rng(seed)
    split = np.empty(len(df), dtype=object)
    for _, idx in df.groupby("label").indices.items():
        idx = rng.permutation(idx)
        n = len(idx)
        n_test = int(round(n * test)) if n >= 3 else 0
        n_val = int(round(n * val)) if n >= 3 else 0
        n_test, n_val = max(n_test, 1 if n >= 3 else 0), max(n_val, 1 if n >= 3 else 0)
        split[idx[:n_test]] = "test"
        split[idx[n_test:n_test + n_val]] = "val"
        split[idx[n_test + n_val:]] = "train"
    return df.assign(split=split)


def load_images(paths, size: int, fov: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode images, cut their central ``fov`` square (source pixels; whole image when
    None or larger) and resize to ``size`` × ``size`` RGB uint8.

    Returns the stacked images and a boolean array of which paths decoded; corrupt
    files are reported with a warning and left out, training goes on.
    """
    from PIL import Image

    out = np.zeros((len(paths), size, size, 3), np.uint8)
    ok = np.zeros(len(paths), bool)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if fov and fov < max(im.size):
                    left, top = (im.size[0] - fov) // 2, (im.size[1] - fov) // 2
                    im = im.crop((left, top, left + fov, top + fov))
                out[i] = np.asarray(im.resize((size, size), Image.BILINEAR))
            ok[i] = True
        except Exception as exc:  # PIL raises many types for broken files
            warnings.warn(f"{p}: unreadable image skipped ({type(exc).__name__}: {exc})",
                          stacklevel=2)
    return out, ok
