"""Real sample images: from ``../shared/data`` when present, else fetched once with pooch.

The sample is a field of the BCCD data set (Shenggan/BCCD_Dataset, MIT licence), a
May-Grünwald-Giemsa peripheral blood smear at 100x, 640 x 480 px.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError

BCCD_URL = "https://raw.githubusercontent.com/Shenggan/BCCD_Dataset/master/BCCD/JPEGImages/{name}"
SAMPLES = {
    # name: (file in the BCCD set, sha256 of that file)
    "bccd-field": ("BloodImage_00010.jpg", None),
}


def _local_data_dir() -> Path | None:
    env = os.environ.get("BM_CELLS_DATA")
    cands = [Path(env)] if env else []
    cands += [Path.cwd() / ".." / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"]
    return next((c for c in cands if (c / "bccd" / "JPEGImages").is_dir()), None)


def sample_path(name: str = "bccd-field") -> Path:
    """Local path of a sample image, downloading it (cached by pooch) if needed.

    Raises
    ------
    InputError
        Offline and no local copy: the message says where to put the data.
    """
    if name not in SAMPLES:
        raise InputError(f"unknown sample {name!r}; choose one of {sorted(SAMPLES)}")
    fname, sha = SAMPLES[name]
    local = _local_data_dir()
    if local is not None and (local / "bccd" / "JPEGImages" / fname).is_file():
        return local / "bccd" / "JPEGImages" / fname
    import pooch
    try:
        return Path(pooch.retrieve(BCCD_URL.format(name=fname), known_hash=sha, fname=fname,
                                   path=pooch.os_cache("napari-bm-cells"), progressbar=False))
    except Exception as exc:  # network errors come in many types
        raise InputError(f"{fname}: sample image not found locally and download failed ({exc}); "
                         "set BM_CELLS_DATA to a folder holding bccd/JPEGImages, or connect "
                         "to the internet once") from None
