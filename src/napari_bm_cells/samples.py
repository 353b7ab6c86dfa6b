"""Real sample images, one registry for the CLI's demo and napari's sample data.

The samples are fields of the BCCD data set (Shenggan/BCCD_Dataset on GitHub, MIT
licence): May-Grünwald-Giemsa peripheral blood smears at 100x, 640 x 480 px. A copy in
the real-data folder (``$BM_CELLS_DATA``, else ``../shared/data``) is used when there is
one, checked against its hash; otherwise pooch downloads the file once into the user
cache and checks it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import InputError

BCCD_URL = "https://raw.githubusercontent.com/Shenggan/BCCD_Dataset/master/BCCD/JPEGImages/{name}"

#: sample name -> (file of the BCCD set, its sha256)
SAMPLES = {
    "bccd-field": ("BloodImage_00010.jpg", "814dad6947309a9ada5383ab622c6f548302c91be9db436d1f2a6030088cedca"),
    "bccd-field-0": ("BloodImage_00000.jpg", "e1dcc488889acba247a895df7be839e514850030217b4025048619f664fd4cb3"),
    "bccd-field-22": ("BloodImage_00022.jpg", "916d8d1cd4854a96809333ac2a42111ef815d802141c27c9b78b3fbd6a0fb256"),
}


def _local_data_dir() -> Path | None:
    """The real-data folder when it holds BCCD's images."""
    env = os.environ.get("BM_CELLS_DATA")
    # a folder named by the user is the only one looked at
    cands = [Path(env)] if env else [Path.cwd() / ".." / "shared" / "data",
                                     Path(__file__).resolve().parents[3] / "shared" / "data"]
    return next((c for c in cands if (c / "bccd" / "JPEGImages").is_dir()), None)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sample_path(name: str = "bccd-field") -> Path:
    """Local path of a sample image: the real-data folder's copy, else pooch's cached
    download (fetched once, nothing printed).

    Raises
    ------
    InputError
        An unknown name, or offline without a local copy: the message says where to put
        the data.
    """
    if name not in SAMPLES:
        raise InputError(f"unknown sample {name!r}; choose one of {sorted(SAMPLES)}")
    fname, sha = SAMPLES[name]
    local = _local_data_dir()
    if local is not None:
        f = local / "bccd" / "JPEGImages" / fname
        if f.is_file() and _sha256(f) == sha:
            return f
    import logging

    import pooch

    pooch.get_logger().setLevel(logging.WARNING)  # no "Downloading ..." lines (pooch's own logger)
    try:
        return Path(pooch.retrieve(BCCD_URL.format(name=fname), known_hash=f"sha256:{sha}", fname=fname,
                                   path=pooch.os_cache("napari-bm-cells"), progressbar=False))
    except Exception as exc:  # noqa: BLE001 -- offline, proxy, HTTP errors, a hash mismatch...
        raise InputError(f"{fname}: sample image not found locally and download failed "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
                         "set BM_CELLS_DATA to a folder holding bccd/JPEGImages, or connect "
                         f"to the internet once (source: {BCCD_URL.format(name=fname)})") from None
