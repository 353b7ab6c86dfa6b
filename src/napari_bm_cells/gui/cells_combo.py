"""A combo box listing the viewer's cells layers, shared by the panel and the gallery."""
from __future__ import annotations

from qtpy.QtWidgets import QComboBox

from . import layers as L


def shrinkable(combo: QComboBox, chars: int = 8) -> QComboBox:
    """Let a combo box narrow below its longest item (docks are narrow; long layer names
    and class descriptions would otherwise push the dock's content off its edge)."""
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    return combo


class CellsLayerCombo(QComboBox):
    """Follows the viewer's layer list and calls ``on_layer(layer or None)`` when the
    chosen cells layer changes (a newly inserted cells layer is chosen)."""

    def __init__(self, viewer, on_layer):
        super().__init__()
        shrinkable(self, 12)
        self._viewer = viewer
        self._on_layer = on_layer
        self.layer = None
        self.currentIndexChanged.connect(self._on_index)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)

    def cells_layers(self) -> list:
        return [L.unwrap(lyr) for lyr in self._viewer.layers if L.is_cells_layer(lyr)]

    def _on_layers_changed(self, event=None):
        # on the next turn of the event loop: napari adding a layer is a long turn already,
        # and the panel recounts and redraws when its cells layer changes
        from qtpy.QtCore import QTimer

        self._change = event
        QTimer.singleShot(0, self._apply_change)

    def _apply_change(self):
        try:
            self.update_choices(self._change)
        except RuntimeError:  # the combo itself is gone (its dock was closed)
            pass
        except Exception as exc:  # noqa: BLE001 -- never break napari's layer list
            from napari.utils.notifications import show_error

            show_error(f"napari-bm-cells: {type(exc).__name__}: {exc}")

    def update_choices(self, event=None):
        layers = self.cells_layers()
        inserted = L.unwrap(getattr(event, "value", None)) if getattr(event, "type", "") == "inserted" else None
        want = inserted if inserted in layers else (self.layer if self.layer in layers else
                                                    (layers[-1] if layers else None))
        self.blockSignals(True)
        self.clear()
        for lyr in layers:
            self.addItem(lyr.name)
        if want is not None:
            self.setCurrentIndex(layers.index(want))
        self.blockSignals(False)
        self._set(want)

    def _on_index(self, i):
        layers = self.cells_layers()
        self._set(layers[i] if 0 <= i < len(layers) else None)

    def _set(self, layer):
        if layer is not self.layer:
            self.layer = layer
            self._on_layer(layer)
