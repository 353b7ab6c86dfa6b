"""Which lab a detection field comes from, told by its image size (no heavy imports: the
CLI builds its ``--leave-out`` / ``--lab`` choices from it)."""
from __future__ import annotations

#: the lab a field comes from, told by its image size (width, height): TXL-PBC mixes four
#: labs, and BCCD's own fields are 640x480 too
SOURCES_BY_SIZE = {(360, 363): "PBC", (366, 369): "PBC", (575, 575): "Raabin-WBC", (416, 416): "BCD",
                   (640, 480): "BCCD"}


def field_source(sample) -> str:
    """The lab a field (anything with ``width`` and ``height``) comes from, by its image
    size (:data:`SOURCES_BY_SIZE`)."""
    return SOURCES_BY_SIZE.get((sample.width, sample.height), f"other {sample.width}x{sample.height}")


def in_lab(sample, lab: str) -> bool:
    """Whether a field comes from ``lab`` (case-insensitive)."""
    return field_source(sample).lower() == lab.lower()


def source_names() -> list[str]:
    """The labs :func:`field_source` tells apart."""
    return sorted(set(SOURCES_BY_SIZE.values()))
