"""The "Differential count" dock: histogram, table, scores, cell inspector and exports.

Every number shown is :func:`count.differential` of the cells layer's *current*
features: the panel listens to the layer's ``data`` / ``features`` events (new cells
during a run, reassigned or deleted cells) and recounts after a short debounce. The
inspector shows the selected cell's crop (cut from the image layer), its class
probabilities and P(blast) / P(atypical); reassigning (combo box or Alt + number keys on
the cells layer) marks the cell ``reviewed``; the review queue starts with the
unclassified (``UNK``) cells, and Sign off is refused while any remain (unless allowed).
Exports: as the CLI writes them (cells CSV, summary JSON with the sign-off, QuPath GeoJSON,
report.html), the histogram PNG, and crops of reviewed cells per class for retraining.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFrame, QGroupBox, QHBoxLayout,
                            QHeaderView, QLabel, QLineEdit, QPushButton, QScrollArea, QTableWidget,
                            QTableWidgetItem, QTabWidget, QVBoxLayout, QWidget)
from superqt.utils import qdebounced

from . import layers as L
from .. import runtime
from .chart import ChartView, draw_histogram_figure, draw_probabilities_figure, theme_colours
from .cells_combo import CellsLayerCombo, shrinkable
from .parts import guarded, notify_error, pixmap, reassign_row
from ..cells_table import probabilities
from ..errors import InputError
from ..taxonomy import CLASSES, colour_of, full_name

if TYPE_CHECKING:
    import napari

DEBOUNCE_MS = 150
CROP_VIEW_PX = 160


def _fmt_pct(p, ci=None) -> str:
    if p is None:
        return "(excl)"
    return f"{p:.1f}" if ci is None else f"{p:.1f} ({ci[0]:.1f}-{ci[1]:.1f})"


class DifferentialPanel(QWidget):
    """Dock widget: live differential of a cells layer, cell inspector and exports.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = napari_viewer
        self.layer = None  #: the cells Points layer shown
        self.summary: dict | None = None  #: last differential of the layer's features
        self.keys: dict[str, str] = {}
        self._index: int | None = None  # cell shown in the inspector
        bg, fg = theme_colours(napari_viewer)
        self._bg, self._fg = bg, fg

        # recount once a burst of layer events is over; follow the selection at most every 50 ms
        self._schedule = qdebounced(self.refresh, timeout=DEBOUNCE_MS, parent=self)
        self._schedule_inspector = qdebounced(self.update_inspector, timeout=50, parent=self)

        outer = QVBoxLayout(self)
        outer.setContentsMargins(2, 2, 2, 2)
        # three tabs, so each part fits a dock's height: the numbers, one cell, the sign-off
        self.tabs = QTabWidget()
        outer.addWidget(self.tabs, 1)
        self._build_counts_page(napari_viewer)
        self._build_cell_page()
        self._build_signoff_page()
        self.layer_combo.update_choices()
        self._set_inspector_enabled(False)
        napari_viewer.events.theme.connect(self._on_theme)

    def _build_counts_page(self, napari_viewer):
        """The numbers: key figures with their caveats, histogram and table."""
        lay = self._page("Counts")

        row = QHBoxLayout()
        row.addWidget(QLabel("cells layer"))
        self.layer_combo = CellsLayerCombo(napari_viewer, self.set_layer)
        row.addWidget(self.layer_combo, 1)
        self.view_combo = shrinkable(QComboBox(), 6)  # histogram of classes or of lineages
        self.view_combo.addItems(["classes", "lineages"])
        self.view_combo.setToolTip("histogram by class, or rolled up by lineage")
        self.view_combo.currentIndexChanged.connect(self._schedule)
        lay.addLayout(row)

        # the key numbers first, each caveat beside the number it qualifies
        self.summary_label = QLabel("no cells yet: run 'Analyze smear'")
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextFormat(Qt.RichText)
        lay.addWidget(self.summary_label)
        row = QHBoxLayout()
        row.addWidget(QLabel("histogram by"))
        row.addWidget(self.view_combo)
        row.addStretch(1)
        lay.addLayout(row)
        self.chart = ChartView(draw_histogram_figure, (4.2, 2.6))
        self.chart.setMinimumHeight(220)
        lay.addWidget(self.chart)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["class", "n", "%", "95% CI"])
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(20)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        hh = self.table.horizontalHeader()
        for k in range(4):  # every column as wide as its text: "20.7-100.0" never clipped
            hh.setSectionResizeMode(k, QHeaderView.ResizeToContents)
        hh.setStretchLastSection(True)
        self.table.setMinimumHeight(170)
        lay.addWidget(self.table)
        lay.addStretch(1)

    def _build_cell_page(self):
        """One cell: review queue, crop, probabilities, reassign / confirm / delete, Explain."""
        il = self._page("Cell")
        il.addWidget(QLabel("the selected cell (click a point, or Next >)"))
        top = QHBoxLayout()
        self.crop_label = QLabel()
        self.crop_label.setFixedSize(CROP_VIEW_PX, CROP_VIEW_PX)
        self.crop_label.setAlignment(Qt.AlignCenter)
        top.addWidget(self.crop_label)
        self.prob_chart = ChartView(draw_probabilities_figure, (2.4, 1.8))
        self.prob_chart.setFixedHeight(CROP_VIEW_PX)
        top.addWidget(self.prob_chart, 1)
        il.addLayout(top)
        self.cell_label = QLabel("")
        self.cell_label.setWordWrap(True)
        self.cell_label.setTextFormat(Qt.RichText)
        il.addWidget(self.cell_label)
        row, self.class_combo, self.reassign_button = reassign_row("Reassign", self.reassign_selected)
        il.addLayout(row)
        row = QHBoxLayout()  # a second row: the dock is narrow
        self.confirm_button = QPushButton("Confirm")
        self.confirm_button.setToolTip("mark the selected cells reviewed, keeping their class")
        self.confirm_button.clicked.connect(self.confirm_selected)
        row.addWidget(self.confirm_button)
        self.delete_button = QPushButton("Delete")
        self.delete_button.clicked.connect(self.delete_selected)
        row.addWidget(self.delete_button)
        row.addStretch(1)
        il.addLayout(row)
        self.keys_label = QLabel("")
        self.keys_label.setWordWrap(True)
        il.addWidget(self.keys_label)
        row = QHBoxLayout()  # review queue: most uncertain cells first (review.review_queue)
        self.prev_button = QPushButton("< Prev")
        self.prev_button.clicked.connect(lambda: self.review_step(-1))
        self.next_button = QPushButton("Next >")
        self.next_button.setToolTip("select the next cell of the review queue and centre the view on it")
        self.next_button.clicked.connect(lambda: self.review_step(+1))
        self.queue_label = QLabel("")
        from ..review import SCORES
        self.queue_order = shrinkable(QComboBox(), 6)  # which uncertainty score orders the queue
        self.queue_order.addItems(list(SCORES))
        self.queue_order.setToolTip("margin: 1 - (p1 - p2); confidence: 1 - p1; entropy; "
                                    "p_blast / p_atypical: likely blasts / atypical cells first")
        self.queue_order.currentIndexChanged.connect(self._reset_queue)
        row.addWidget(QLabel("queue"))
        row.addWidget(self.queue_order, 1)
        row.addWidget(self.prev_button)
        row.addWidget(self.next_button)
        il.insertLayout(1, row)  # the review queue first: it picks the cell shown below
        il.insertWidget(2, self.queue_label)
        row = QHBoxLayout()  # attribution map of the selected cell, as an image layer over it
        self.method_combo = shrinkable(QComboBox(), 8)
        from ..explain import METHODS
        self.method_combo.addItems(list(METHODS))
        self.method_combo.setToolTip("Grad-CAM ~0.1 s, integrated gradients ~2 s, occlusion ~4 s on CPU")
        self.explain_button = QPushButton("Explain")
        self.explain_button.setToolTip("why the model chose this class: an attribution map layer over the cell")
        self.explain_button.clicked.connect(lambda: self.explain_selected())
        row.addWidget(QLabel("explain"))
        row.addWidget(self.method_combo, 1)
        row.addWidget(self.explain_button)
        il.addLayout(row)
        self._explain_worker = None
        self.attribution_layer = None
        self._queue: list[int] | None = None  # cell ids, snapshot taken at the first step
        self._queue_pos, self._queue_layer = -1, None
        il.addStretch(1)

    def _build_signoff_page(self):
        """Sign-off and exports."""
        lay = self._page("Sign-off")
        sign = QGroupBox("sign-off")
        sl = QVBoxLayout(sign)
        row = QHBoxLayout()
        import getpass
        self.signer = QLineEdit(getpass.getuser())
        self.signer.setToolTip("who reviewed and signs this differential")
        row.addWidget(QLabel("by"))
        row.addWidget(self.signer, 1)
        self.sign_button = QPushButton("Sign off")
        self.sign_button.setToolTip("record who signed and when (in summary.json and report.html); "
                                    "refused while unclassified (UNK) cells remain")
        self.sign_button.clicked.connect(lambda: self.sign_off())
        row.addWidget(self.sign_button)
        sl.addLayout(row)
        self.allow_pending = QCheckBox("allow sign-off with unclassified cells")
        sl.addWidget(self.allow_pending)
        self.sign_label = QLabel("not signed")
        self.sign_label.setWordWrap(True)
        sl.addWidget(self.sign_label)
        lay.addWidget(sign)

        row = QHBoxLayout()
        self.export_button = QPushButton("Export results...")
        self.export_button.setToolTip("cells CSV, summary JSON, QuPath GeoJSON, report.html and histogram PNG")
        self.export_button.clicked.connect(self._export_dialog)
        row.addWidget(self.export_button)
        self.corrections_button = QPushButton("Export corrections...")
        self.corrections_button.setToolTip("crops of reviewed cells, one folder per class (retraining)")
        self.corrections_button.clicked.connect(self._corrections_dialog)
        row.addWidget(self.corrections_button)
        lay.addLayout(row)
        lay.addStretch(1)

    def _on_theme(self, *_):
        """Follow a light / dark theme change: figures and text redrawn in its colours."""
        self._bg, self._fg = theme_colours(self._viewer)
        self.refresh()
        self.update_inspector()

    def _page(self, title: str) -> QVBoxLayout:
        """A tab scrolling vertically only (text wraps to the dock's width); its layout."""
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setFrameShape(QFrame.NoFrame)
        content = QWidget()
        lay = QVBoxLayout(content)
        lay.setContentsMargins(4, 4, 4, 4)
        scroll.setWidget(content)
        self.tabs.addTab(scroll, title)
        return lay

    # ---------------------------------------------------------------- layer choice
    def set_layer(self, layer):
        """Show (and follow the events of) a cells Points layer."""
        if layer is self.layer:
            return
        if self.layer is not None:
            for em in (self.layer.events.data, self.layer.events.features):
                em.disconnect(self._schedule)
            _selection_signal(self.layer).disconnect(self._schedule_inspector)
        self.layer = layer
        self._index = None
        if layer is not None:
            layer.events.data.connect(self._schedule)
            layer.events.features.connect(self._schedule)
            _selection_signal(layer).connect(self._schedule_inspector)
            self.keys = L.bind_class_keys(layer, L.layer_classes(layer))
        else:
            self.keys = {}
        self._fill_class_combo()
        self.refresh()
        self.update_inspector()

    def _fill_class_combo(self):
        self.class_combo.clear()
        classes = L.layer_classes(self.layer) if self.layer is not None else []
        for code in classes + [c for c in CLASSES if c not in classes]:
            self.class_combo.addItem(L.describe(code), code)
        self.keys_label.setText(
            "keys on the cells layer: " + ", ".join(f"{k.replace('-', '+')} {c}" for k, c in self.keys.items())
            + "; Delete removes; napari's own keys (1-5, P/S/Z) work as usual" if self.keys else "")

    # ---------------------------------------------------------------- differential
    def refresh(self, *_):
        """Recount the differential of the layer's current features and redraw."""
        self._schedule.cancel()
        guarded("panel", self._refresh)

    def _refresh(self):
        if self.layer is None or self.layer not in self._viewer.layers:
            self.summary = None
            self.table.setRowCount(0)
            self.chart.show_chart(None, [], self._fg, self._bg, "class")
            self.summary_label.setText("no cells layer: run 'Analyze smear' or open a cells.csv")
            return
        s = L.layer_differential(self.layer)
        self.summary = s
        self._draw_histogram(s)
        self._fill_table(s)
        self._fill_summary(s)
        if self._index is not None:
            self._update_inspector()

    def _draw_histogram(self, s):
        by = "lineage" if self.view_combo.currentText() == "lineages" else "class"
        self.chart.show_chart(copy.deepcopy(s), L.layer_classes(self.layer), self._fg, self._bg, by)

    def _fill_table(self, s):
        counts = s["counts"]
        codes = sorted(counts, key=lambda c: (s["percent"].get(c) is None, -counts[c], c))
        self.table.setRowCount(len(codes))
        for r, c in enumerate(codes):
            p, ci = s["percent"].get(c), s["ci95"].get(c)
            items = [c, str(counts[c]), _fmt_pct(p), "" if ci is None else f"{ci[0]:.1f}-{ci[1]:.1f}"]
            for k, text in enumerate(items):
                it = QTableWidgetItem(text)
                it.setToolTip(full_name(c))
                if k:
                    it.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                else:  # the class's colour on the points and masks: the table is the legend
                    it.setData(Qt.DecorationRole, QColor(colour_of(c)))
                self.table.setItem(r, k, it)

    def _fill_summary(self, s):
        me = s.get("me_ratio")
        n = s["n_counted"]
        targets = ", ".join(
            f"{t}: {'reached' if v['reached'] else str(v['remaining']) + ' to go'}"
            for t, v in s["targets"].items())
        lin = ", ".join(f"{k} {v} ({s['lineage_percent'][k]:.0f}%)"
                        for k, v in s["lineage_counts"].items() if v)
        f = self.layer.features
        reviewed = int(f["reviewed"].sum()) if "reviewed" in f else 0
        from ..count import cutoff_flags, has_blast_class

        def pct(key):
            if not n:
                return "n/a"
            lo, hi = s[f"{key}_ci95"]
            return f"<b>{s[key]:.1f}%</b> ({lo:.1f}-{hi:.1f})"

        blast = pct("blast_pct") if has_blast_class(s) else \
            "<b>n/a</b> <i>(the model has no blast class: it cannot count blasts)</i>"
        unk = int(s["counts"].get("UNK", 0))
        lines = [
            f"<b>{n}</b> counted of {s['n_cells']} cells; {reviewed} of {s['n_cells']} reviewed"
            + (f"; <b>{unk} unclassified</b> (UNK: review them, Next &gt;)" if unk else ""),
            f"blast {blast}",
            f"atypical {pct('atypical_pct')}",
            f"M:E <b>{'n/a' if me is None else f'{me:.2f}'}</b>; {lin or 'no lineage yet'}",
            f"targets {targets}",
        ]
        lines += [f"<span style='color:#d62728'>the {f['cutoff']}% {f['what']} cut-off lies inside the "
                  f"95% CI</span>" for f in cutoff_flags(s)]
        self.summary_label.setText("<br>".join(lines))

    # ---------------------------------------------------------------- inspector
    def _set_inspector_enabled(self, on: bool):
        for w in (self.reassign_button, self.confirm_button, self.delete_button, self.class_combo,
                  self.explain_button):
            w.setEnabled(on)

    def _image_layer(self):
        return L.image_layer_for(self._viewer, self.layer)

    def update_inspector(self, *_):
        """Show the (first) selected cell: crop, probabilities, scores."""
        self._schedule_inspector.cancel()
        try:
            self._update_inspector()
        except Exception as exc:  # noqa: BLE001
            notify_error("inspector", exc)

    def _update_inspector(self):
        sel = sorted(self.layer.selected_data) if self.layer is not None else []
        sel = [i for i in sel if i < len(self.layer.data)] if sel else []
        self._set_inspector_enabled(bool(sel))
        if not sel:
            self._index = None
            self.crop_label.clear()
            self.prob_chart.show_chart({}, self._fg, self._bg)
            self.cell_label.setText("")
            return
        i = self._index = sel[0]
        r = self.layer.features.iloc[i]
        img = self._image_layer()
        if img is not None:
            try:
                crop = L.cell_crop(img, self.layer, i)
                self.crop_label.setPixmap(pixmap(crop, CROP_VIEW_PX))
            except Exception:  # noqa: BLE001 -- e.g. a non-RGB image layer
                self.crop_label.setText("(no crop)")
        probs = probabilities(r)
        self.prob_chart.show_chart(probs, self._fg, self._bg)
        more = f" (+{len(sel) - 1} more selected)" if len(sel) > 1 else ""
        label = str(r["label"])
        conf = r.get("confidence", np.nan)
        self.cell_label.setText(
            f"cell {int(r['cell_id']) if 'cell_id' in r else i}: <b>{L.describe(label)}</b>"
            f" conf {float(conf):.2f}; P(blast) {float(r.get('p_blast', np.nan)):.2f}, "
            f"P(atypical) {float(r.get('p_atypical', np.nan)):.2f}"
            f"{'; reviewed' if bool(r.get('reviewed', False)) else ''}{more}")
        k = self.class_combo.findData(label)
        if k >= 0:
            self.class_combo.setCurrentIndex(k)

    # ---------------------------------------------------------------- explain
    def _classifier(self):
        path = ((L.layer_meta(self.layer).get("summary") or {}).get("classifier") or {}).get("weights")
        return runtime.classifier(path or None, device="cpu")

    def explain_selected(self, method: str | None = None):
        """Attribution map of the selected cell, computed in a worker thread and shown as
        the image layer ``attribution`` over the cell. Returns the worker (or None)."""
        from napari.qt.threading import thread_worker

        if self._index is None or self.layer is None or self._explain_worker is not None:
            return None
        img = self._image_layer()
        if img is None:
            notify_error("explain", ValueError("needs the image layer the cells came from"))
            return None
        method = method or self.method_combo.currentText()
        layer, i = self.layer, self._index

        def work():
            return L.explain_point(img, layer, i, self._classifier(), method=method)

        worker = thread_worker(work, start_thread=False)()
        worker.returned.connect(self._show_attribution)
        worker.errored.connect(lambda exc: notify_error("explain", exc))
        worker.finished.connect(self._explain_finished)
        self._explain_worker = worker
        self.explain_button.setText("Explaining...")
        worker.start()
        return worker

    def _explain_finished(self):
        self._explain_worker = None
        self.explain_button.setText("Explain")

    def _show_attribution(self, result):
        amap, kwargs = result
        info = kwargs["metadata"][L.META]
        name = "attribution"
        lyr = self.attribution_layer
        if lyr is not None and lyr in self._viewer.layers:
            self._viewer.layers.remove(lyr)
        self.attribution_layer = L.unwrap(self._viewer.add_image(amap, name=name, **kwargs))
        layers = self._viewer.layers
        if self.layer in layers:  # under the points, which stay active and clickable
            layers.move(layers.index(self.attribution_layer), layers.index(self.layer))
            layers.selection.active = self.layer
        self.cell_label.setText(self.cell_label.text() + f"<br>{info['method']} map of cell "
                                f"{info['explained_cell']} ({info['label']}) in layer '{name}'")

    # ---------------------------------------------------------------- corrections
    def _reset_queue(self, *_):
        self._queue = None
        self.queue_label.setText("")

    def review_step(self, step: int) -> int | None:
        """Move ``step`` cells along the review queue (:func:`review.review_queue` by the
        chosen score, default the smallest margin between the two most likely classes;
        reviewed cells last), select that cell and centre the camera on it. Returns its
        cell id."""
        from ..review import review_queue

        if self.layer is None or len(self.layer.data) == 0:
            return None
        feats = self.layer.features
        if self._queue is None or self._queue_layer is not self.layer:
            order = self.queue_order.currentText()
            self._queue, self._queue_pos, self._queue_layer = review_queue(feats, by=order), -1, self.layer
        self._queue_pos = int(np.clip(self._queue_pos + step, 0, len(self._queue) - 1))
        cid = self._queue[self._queue_pos]
        rows = np.flatnonzero(feats["cell_id"].to_numpy() == cid)
        if not len(rows):
            return None
        L.focus_cell(self._viewer, self.layer, int(rows[0]))
        self.queue_label.setText(f"{self._queue_pos + 1} of {len(self._queue)} in the queue")
        self.update_inspector()
        return cid

    def reassign_selected(self, code: str | None = None):
        """Reassign the selected cells to ``code`` (marks them reviewed)."""
        if self.layer is None or not code:
            return []
        return guarded("reassign", L.reassign, self.layer, self.layer.selected_data, code) or []

    def confirm_selected(self):
        """Mark the selected cells reviewed, keeping their classes."""
        if self.layer is not None:
            return guarded("confirm", L.confirm, self.layer, self.layer.selected_data) or []
        return []

    def reassign(self, indices, code: str):
        """Reassign cells ``indices`` of the layer to ``code`` (marks them reviewed)."""
        return L.reassign(self.layer, indices, code)

    def delete_selected(self):
        if self.layer is not None:
            try:
                L.delete_cells(self.layer, list(self.layer.selected_data))
            except Exception as exc:  # noqa: BLE001
                notify_error("delete", exc)

    # ---------------------------------------------------------------- sign-off
    def sign_off(self, by: str | None = None) -> dict | None:
        """Sign the layer's differential as reviewed by ``by`` (default the name field):
        refused (a notification) while unclassified cells remain, unless allowed. The
        record goes into the layer's summary, so exports carry it."""
        from napari.utils.notifications import show_error, show_info

        from ..review import sign_off

        if self.layer is None:
            show_error("napari-bm-cells: no cells layer to sign off")
            return None
        try:
            rec = sign_off(self.layer.features, by if by is not None else self.signer.text(),
                           allow_pending=self.allow_pending.isChecked())
        except InputError as exc:
            self.sign_label.setText(f"not signed: {exc}")
            show_error(f"napari-bm-cells: {exc}")
            return None
        meta = L.layer_meta(self.layer)
        meta.setdefault("summary", {})["sign_off"] = rec
        self.sign_label.setText(f"signed by {rec['by']} at {rec['at']}")
        show_info(f"napari-bm-cells: differential signed by {rec['by']}")
        return rec

    # ---------------------------------------------------------------- export
    def export(self, folder) -> dict[str, Path]:
        """Write cells.csv, summary.json, cells.geojson and differential.png into ``folder``."""
        from napari.utils.notifications import show_error, show_info

        if self.layer is None:
            show_error("napari-bm-cells: no cells layer to export")
            return {}
        try:
            out = L.export_results(self.layer, folder, image_layer=self._image_layer())
        except Exception as exc:  # noqa: BLE001
            show_error(f"napari-bm-cells: export failed ({type(exc).__name__}: {exc})")
            return {}
        show_info(f"napari-bm-cells: wrote {', '.join(p.name for p in out.values())} to {folder}")
        return out

    def export_corrections(self, folder) -> list[Path]:
        """Save crops of the reviewed cells into ``folder/<CODE>/`` (for retraining)."""
        from napari.utils.notifications import show_error, show_info

        try:
            img = self._image_layer()
            if self.layer is None or img is None:
                raise ValueError("needs a cells layer and its image layer")
            paths = L.export_corrections(self.layer, img, folder)
        except Exception as exc:  # noqa: BLE001
            show_error(f"napari-bm-cells: corrections not exported: {exc}")
            return []
        show_info(f"napari-bm-cells: saved {len(paths)} reviewed cell crops to {folder}")
        return paths

    def _start_folder(self) -> str:
        """Where the export dialogs open: the image file's folder, else the home folder."""
        img = self._image_layer()
        src = getattr(getattr(img, "source", None), "path", None) if img is not None else None
        if src is None and img is not None:
            src = (img.metadata or {}).get(L.META, {}).get("path")
        if src:
            p = Path(str(src))
            return str(p.parent if p.suffix or p.is_file() else p.parent)
        return str(Path.home())

    def _export_dialog(self):
        from qtpy.QtWidgets import QMessageBox

        folder = QFileDialog.getExistingDirectory(self, "Export results into folder", self._start_folder())
        if not folder:
            return None
        old = [n for n in ("cells.csv", "summary.json", "cells.geojson", "report.html") if (Path(folder) / n).exists()]
        if old and QMessageBox.question(
                self, "Replace results?", f"{folder} already holds {', '.join(old)}. Replace them?",
                QMessageBox.Yes | QMessageBox.No, QMessageBox.No) != QMessageBox.Yes:
            return None
        return self.export(folder)

    def _corrections_dialog(self):
        folder = QFileDialog.getExistingDirectory(self, "Save crops of reviewed cells into folder",
                                                  self._start_folder())
        if folder:
            self.export_corrections(folder)


def _selection_signal(layer):
    """The selection-changed signal of a Points layer (psygnal in napari >= 0.6)."""
    ev = layer.selected_data.events
    return ev.items_changed if hasattr(ev, "items_changed") else ev.changed
