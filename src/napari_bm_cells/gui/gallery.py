"""The "Cell gallery" dock: the crops of one class as a grid, to scan a class at a glance.

Cells are ordered by the model's probability of the class (:func:`review.gallery`), most
confident first or, to hunt misclassifications, least confident first. Clicking a crop
selects its point and centres the viewer on it; selected crops can be reassigned to
another class with the combo box or the number keys 1-9 (the classes of the cells
layer's Alt+1-9 shortcuts; marked reviewed, like the inspector's reassign), after which
they leave the grid. Crops are read from the image layer in a worker thread, so a large slide
never blocks the viewer; the grid shows a page of cells and grows on request.
"""
from __future__ import annotations

import numpy as np
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtGui import QIcon
from qtpy.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QHBoxLayout, QLabel,
                            QListView, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout,
                            QWidget)
from superqt.utils import qdebounced

from . import layers as L
from .cells_combo import CellsLayerCombo, shrinkable
from .parts import guarded, notify_error, pixmap, reassign_row
from ..cells_table import prob_column
from ..crop import slide_square
from ..review import gallery
from ..taxonomy import CLASSES

THUMB_PX = 96
PAGE = 120  #: crops added per "show more"


class _Grid(QListWidget):
    """The crop grid; number keys 1-9 reassign the selected crops (the classes of the cells
    layer's Alt+1-9; here no napari key is shadowed)."""

    def __init__(self, on_number):
        super().__init__()
        self._on_number = on_number

    def keyPressEvent(self, event):  # noqa: N802 -- Qt's name
        text = event.text()
        if text in "123456789" and text:
            self._on_number(int(text))
            return
        super().keyPressEvent(event)


class CellGallery(QWidget):
    """Dock widget: a grid of the crops of one class of a cells layer.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self._viewer = napari_viewer
        self.layer = None
        self._limit = PAGE
        self._ids: list[int] = []  # cell ids of the class, in gallery order
        self._cache: dict[tuple[int, int], np.ndarray] = {}  # (layer id, cell id) -> crop
        self._worker = None
        self._schedule = qdebounced(self.refresh, timeout=150, parent=self)  # after a burst of events

        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("cells layer"))
        self.layer_combo = CellsLayerCombo(napari_viewer, self.set_layer)
        row.addWidget(self.layer_combo, 1)
        lay.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("class"))
        self.class_combo = shrinkable(QComboBox())
        self.class_combo.currentIndexChanged.connect(lambda _: self._restart())
        row.addWidget(self.class_combo, 1)
        self.lowest_first = QCheckBox("least confident first")
        self.lowest_first.toggled.connect(lambda _: self._restart())
        row.addWidget(self.lowest_first)
        lay.addLayout(row)

        self.grid = _Grid(self._number_key)
        self.grid.setViewMode(QListView.IconMode)
        self.grid.setIconSize(QSize(THUMB_PX, THUMB_PX))
        # a fixed cell per crop: with uniform sizes, the first item (still without its
        # crop) would otherwise set every item's size to a sliver
        self.grid.setGridSize(QSize(THUMB_PX + 8, THUMB_PX + 8 + self.grid.fontMetrics().height()))
        self.grid.setResizeMode(QListView.Adjust)
        self.grid.setMovement(QListView.Static)
        self.grid.setUniformItemSizes(True)
        self.grid.setSpacing(2)
        self.grid.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.grid.itemClicked.connect(self._on_click)
        self.grid.itemSelectionChanged.connect(self._on_selection)
        lay.addWidget(self.grid, 1)

        row = QHBoxLayout()
        self.status = QLabel("")
        row.addWidget(self.status, 1)
        self.more_button = QPushButton("Show more")
        self.more_button.clicked.connect(self.show_more)
        row.addWidget(self.more_button)
        lay.addLayout(row)
        row, self.target_combo, self.reassign_button = reassign_row("Reassign selected", self.reassign_selected)
        lay.addLayout(row)
        self.layer_combo.update_choices()
        QTimer.singleShot(0, self.tab_beside_panel)  # once napari has put the gallery in its dock

    def tab_beside_panel(self) -> bool:
        """Share the Differential count panel's place as a tab (raised), rather than
        squeezing a further dock into the column; False when no panel is docked."""
        from qtpy.QtWidgets import QDockWidget, QMainWindow

        from .panel import DifferentialPanel

        dock = self.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        main = dock.parentWidget() if dock is not None else None
        if not isinstance(main, QMainWindow):
            return False
        for other in main.findChildren(QDockWidget):
            if other is not dock and other.findChild(DifferentialPanel) is not None:
                main.tabifyDockWidget(other, dock)
                dock.raise_()
                return True
        return False

    # ------------------------------------------------------------------ layer / class
    def set_layer(self, layer):
        """Show the cells of ``layer`` (a cells Points layer, or None)."""
        if self.layer is not None:
            self.layer.events.features.disconnect(self._schedule)
            self.layer.events.data.disconnect(self._schedule)
        self.layer = layer
        if layer is not None:
            layer.events.features.connect(self._schedule)
            layer.events.data.connect(self._schedule)
        self._fill_classes()
        self._restart()

    def _fill_classes(self):
        keep = self.class_combo.currentData()
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        self.target_combo.clear()
        classes = L.layer_classes(self.layer) if self.layer is not None else []
        counts = (self.layer.features["label"].astype(str).value_counts()
                  if self.layer is not None and len(self.layer.features) else {})
        present = sorted((c for c in counts.keys()), key=lambda c: (-counts[c], c))
        for code in present:
            self.class_combo.addItem(f"{code} ({counts[code]})", code)
        for code in classes + [c for c in CLASSES if c not in classes]:
            self.target_combo.addItem(L.describe(code), code)
        k = self.class_combo.findData(keep)
        self.class_combo.setCurrentIndex(k if k >= 0 else 0)
        self.class_combo.blockSignals(False)

    def set_class(self, code: str) -> None:
        """Show the cells currently labelled ``code``."""
        k = self.class_combo.findData(code)
        if k < 0:
            raise ValueError(f"no cell of class {code!r} in this layer")
        self.class_combo.setCurrentIndex(k)
        self._restart()

    def _restart(self):
        self._limit = PAGE
        self.refresh()

    def show_more(self):
        self._limit += PAGE
        self.refresh()

    # ------------------------------------------------------------------ grid
    def cell_ids(self) -> list[int]:
        """Cell ids shown in the grid, in order."""
        return [int(self.grid.item(k).data(Qt.UserRole)) for k in range(self.grid.count())]

    def loaded(self) -> bool:
        """True when every shown crop has its picture."""
        return self._worker is None and all(
            not self.grid.item(k).icon().isNull() for k in range(self.grid.count()))

    def refresh(self, *_):
        """Rebuild the grid from the layer's current features."""
        self._schedule.cancel()
        guarded("gallery", self._refresh)

    def _refresh(self):
        self._stop_worker()
        self._fill_classes()  # counts change on reassignment; an emptied class goes
        self.grid.clear()
        code = self.class_combo.currentData()
        if self.layer is None or code is None:
            self._ids = []
            self.status.setText("no cells layer" if self.layer is None else "no cells")
            self.more_button.setEnabled(False)
            return
        feats = self.layer.features
        self._ids = gallery(feats, code, lowest_first=self.lowest_first.isChecked())
        shown = self._ids[:self._limit]
        row_of = {int(c): i for i, c in enumerate(feats["cell_id"].to_numpy())}
        conf_col = prob_column(code) if prob_column(code) in feats.columns else "confidence"
        todo = []
        key = id(self.layer)
        for cid in shown:
            i = row_of[cid]
            item = QListWidgetItem(f"{float(feats[conf_col].iloc[i]):.2f}")
            item.setData(Qt.UserRole, cid)
            item.setToolTip(f"cell {cid}: {code}, P({code}) {float(feats[conf_col].iloc[i]):.3f}"
                            f"{', reviewed' if bool(feats['reviewed'].iloc[i]) else ''}")
            item.setTextAlignment(Qt.AlignHCenter)
            item.setSizeHint(self.grid.gridSize())  # full size before its crop arrives
            self.grid.addItem(item)
            if (key, cid) in self._cache:
                item.setIcon(QIcon(pixmap(self._cache[(key, cid)], THUMB_PX)))
            else:
                todo.append((self.grid.count() - 1, cid, i))
        self.status.setText(f"{len(shown)} of {len(self._ids)} {code} cells")
        self.more_button.setEnabled(len(shown) < len(self._ids))
        if todo:
            self._load_crops(todo)

    def _load_crops(self, todo):
        from napari.qt.threading import thread_worker

        img = L.image_layer_for(self._viewer, self.layer)
        if img is None:
            return
        slide = L.layer_slide(img)
        side = L.default_crop_side(self.layer)
        jobs = [(k, cid, L.cell_centre_level0(img, self.layer, i)) for k, cid, i in todo]
        key = id(self.layer)

        def read():
            for k, cid, (y, x) in jobs:
                yield k, cid, slide_square(slide, y, x, side)

        def show(args):
            k, cid, crop = args
            self._cache[(key, cid)] = crop
            item = self.grid.item(k)
            if item is not None and int(item.data(Qt.UserRole)) == cid:
                item.setIcon(QIcon(pixmap(crop, THUMB_PX)))

        worker = thread_worker(read, start_thread=False)()
        worker.yielded.connect(show)
        worker.finished.connect(lambda w=worker: self._worker_done(w))
        worker.errored.connect(lambda exc: notify_error("gallery crops", exc))
        self._worker = worker
        worker.start()

    def _worker_done(self, worker):
        if self._worker is worker:
            self._worker = None

    def _stop_worker(self):
        if self._worker is not None:
            self._worker.quit()
            self._worker = None

    # ------------------------------------------------------------------ interaction
    def _rows(self, items) -> list[int]:
        ids = self.layer.features["cell_id"].to_numpy()
        want = {int(it.data(Qt.UserRole)) for it in items}
        return [int(i) for i in np.flatnonzero(np.isin(ids, list(want)))]

    def _on_click(self, item):
        """Centre the viewer on the clicked cell and select it."""
        if self.layer is None:
            return
        rows = self._rows([item])
        if rows:
            L.focus_cell(self._viewer, self.layer, rows[0])

    def _on_selection(self):
        if self.layer is not None:
            rows = self._rows(self.grid.selectedItems())
            if rows:
                self.layer.selected_data = set(rows)

    def _number_key(self, k: int):
        codes = L.shortcut_codes(L.layer_classes(self.layer)) if self.layer is not None else []
        if 1 <= k <= len(codes):
            self.reassign_selected(codes[k - 1])

    def reassign_selected(self, code: str | None) -> list[int]:
        """Reassign the cells selected in the grid to ``code`` (marked reviewed)."""
        if self.layer is None or not code:
            return []
        return guarded("reassign", lambda: L.reassign(self.layer, self._rows(self.grid.selectedItems()), code)) or []
