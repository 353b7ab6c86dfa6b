"""Qt pieces shared by the panel and the gallery: the reassign row, guarded slots,
error notifications and crops as pixmaps."""
from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QPushButton

from .cells_combo import shrinkable


def reassign_row(text: str, on_reassign):
    """A row: a class combo box and a button calling ``on_reassign(chosen code)``;
    returns ``(layout, combo, button)``."""
    row = QHBoxLayout()
    combo = shrinkable(QComboBox(), 12)
    row.addWidget(combo, 1)
    button = QPushButton(text)
    button.clicked.connect(lambda: on_reassign(combo.currentData()))
    row.addWidget(button)
    return row, combo, button


def guarded(what: str, fn, *args):
    """Run a Qt slot's body; an exception becomes a napari error notification (a slot
    must never raise into Qt)."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        notify_error(what, exc)
        return None


def notify_error(what: str, exc: BaseException) -> None:
    """An exception as a napari error notification naming what failed."""
    from napari.utils.notifications import show_error

    show_error(f"napari-bm-cells {what}: {type(exc).__name__}: {exc}")


def pixmap(rgb: np.ndarray, side: int) -> QPixmap:
    """An RGB array as a ``side``-px pixmap (aspect kept, smooth scaling)."""
    a = np.ascontiguousarray(rgb[..., :3])
    h, w = a.shape[:2]
    qimg = QImage(a.data, w, h, 3 * w, QImage.Format_RGB888).copy()
    return QPixmap.fromImage(qimg).scaled(side, side, Qt.KeepAspectRatio, Qt.SmoothTransformation)
