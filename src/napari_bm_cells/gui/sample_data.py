"""napari sample data: real peripheral-blood smear fields (BCCD, MIT licence), found or
fetched through :mod:`napari_bm_cells.samples`."""
from __future__ import annotations

from pathlib import Path


def _field(name: str) -> list[tuple]:
    from .reader import slide_layer_data
    from ..samples import sample_path

    path = sample_path(name)
    data, kwargs, kind = slide_layer_data(path)
    kwargs["name"] = f"BCCD {Path(path).stem}"
    return [(data, kwargs, kind)]


def bccd_field() -> list[tuple]:
    """npe2 sample: one 640x480 peripheral blood smear field (BCCD, MIT)."""
    return _field("bccd-field-0")


def bccd_field_2() -> list[tuple]:
    """npe2 sample: another BCCD field."""
    return _field("bccd-field-22")
