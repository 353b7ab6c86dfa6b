"""Sample data: a real peripheral-blood smear field (BCCD, MIT licence).

Fetched with pooch from the BCCD repository on GitHub and cached in the user cache
folder; offline, the copy in the real-data folder (``$BM_CELLS_DATA`` or
``../shared/data``) is used when it exists.
"""
from __future__ import annotations

from pathlib import Path

from .errors import InputError

BCCD_URL = ("https://raw.githubusercontent.com/Shenggan/BCCD_Dataset/master/BCCD/JPEGImages/"
            "{name}")
BCCD_FIELD = "BloodImage_00000.jpg"
#: a second field (second sample)
BCCD_FIELD_2 = "BloodImage_00022.jpg"


def fetch_bccd_field(name: str = BCCD_FIELD) -> Path:
    """Local path of a BCCD field: pooch cache (downloaded once), else the real-data folder.

    Raises
    ------
    InputError
        Offline and no local copy: the message names both places.
    """
    errors = []
    try:
        import pooch

        return Path(pooch.retrieve(BCCD_URL.format(name=name), known_hash=None, fname=name,
                                   path=pooch.os_cache("napari-bm-cells"), progressbar=False))
    except Exception as exc:  # noqa: BLE001 -- offline, proxy, HTTP errors...
        errors.append(f"download failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    try:
        from .testing import data_dir

        local = data_dir() / "bccd" / "JPEGImages" / name
        if local.is_file():
            return local
        errors.append(f"{local} not found")
    except FileNotFoundError as exc:
        errors.append(str(exc))
    raise InputError(f"sample image {name} is not available: {'; '.join(errors)}. Connect to the "
                     f"internet (source: {BCCD_URL.format(name=name)}) or set BM_CELLS_DATA to a "
                     "folder holding bccd/JPEGImages/")


def _field(name: str) -> list[tuple]:
    from ._reader import slide_layer_data

    data, kwargs, kind = slide_layer_data(fetch_bccd_field(name))
    kwargs["name"] = f"BCCD {Path(name).stem}"
    return [(data, kwargs, kind)]


def bccd_field() -> list[tuple]:
    """npe2 sample: one 640x480 peripheral blood smear field (BCCD, MIT)."""
    return _field(BCCD_FIELD)


def bccd_field_2() -> list[tuple]:
    """npe2 sample: another BCCD field."""
    return _field(BCCD_FIELD_2)
