"""The "Analyze smear" dock widget: a thin magicgui front end to :func:`pipeline.iter_analysis`.

The analysis runs in napari's ``thread_worker``, driving the pipeline generator (the
stardist-napari pattern): every yielded :class:`~napari_bm_cells.detect.Progress`
updates the progress bar, ``classify`` events append their cells to the Points layer
(flushed at most every ``FLUSH_S`` seconds, so tens of thousands of cells stay
interactive), and ``done`` puts the final table, the mask Labels layer and the
summary in place. Cancel (or closing the widget / quitting napari) quits the worker, which
stops at the pipeline's next event, and closes the pipeline generator (its reader threads
end with it); errors become napari notifications.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit,
                              PushButton, SpinBox)

from . import layers as L
from .. import runtime
from ..detect import Progress, Stage
from ..errors import InputError, first_line
from ..options import user_options

if TYPE_CHECKING:
    import napari

#: minimum seconds between two Points-layer updates during a run
FLUSH_S = 0.3
STEP_MS = 10  # between the steps that add a finished run's layers: room for the event loop
PANEL_NAME = "Differential count"
PLUGIN = "napari-bm-cells"


def guard_triton() -> bool:
    """Keep ``triton`` from being imported on machines without an NVIDIA GPU.

    torchvision / timm import ``torch._dynamo``, which imports triton when installed;
    triton bundles its own LLVM, and loading it after Mesa's software OpenGL (llvmpipe,
    also LLVM) is in the process -- as it is once napari has drawn -- crashes Python.
    Triton only serves ``torch.compile`` on GPUs, which inference here never uses, so
    without an NVIDIA driver it is marked missing (torch handles that). Decided from the
    driver's files rather than ``torch.cuda``: importing torch here, when the dock opens,
    would hold napari's event loop for seconds. Returns True when blocked.
    """
    import shutil
    import sys
    from pathlib import Path

    if "triton" in sys.modules:
        return False
    if Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi"):
        return False
    sys.modules["triton"] = None
    return True


guard_triton()


def analysis_job(slide, det_spec, cls_spec, options, device, prepared: dict | None = None):
    """Generator run by the worker: model loading, then the pipeline's events.

    Errors are yielded as ``Stage.ERROR`` events (payload: the exception), shown as one
    line (napari's worker would relay an exception it sees as a traceback notification).
    Cancelling is the worker's ``quit()``: it stops at the next event and the widget
    closes this generator.
    Before the final event, the masks layer itself (lazy arrays, class colours, and the
    name and transform the GUI put in ``prepared["labels_args"]``) is built here, in the
    worker, into ``prepared["labels"]``: the GUI thread only adds it to the viewer
    (building a napari layer costs about as much as adding it).
    """
    from ..pipeline import iter_analysis

    try:
        yield Progress(Stage.LOAD, 0, 1)
        det, cls = runtime.models(det_spec, cls_spec, device)
        _import_off_the_gui_thread()
        yield Progress(Stage.LOAD, 1, 1)
        for ev in iter_analysis(slide, det, cls, options, device=cls.device):
            if ev.stage == Stage.DONE and prepared is not None and ev.payload.labels is not None:
                prepared["labels"] = (ev.payload, _masks_layer(ev.payload, prepared.get("labels_args", {})))
            yield ev
    except Exception as exc:  # noqa: BLE001 -- every failure becomes a notification
        yield Progress(Stage.ERROR, 0, 0, exc)


def _masks_layer(result, args: dict):
    """The masks' napari Labels layer (no Qt: built in the worker), with ``args`` (name,
    transform) on top of :func:`_masks_kwargs`."""
    from napari.layers import Labels

    return Labels(**{**_masks_kwargs(result), **args})


def _masks_kwargs(result) -> dict:
    """``add_labels`` arguments of a result's masks, less the image layer's transform."""
    return L.labels_kwargs(result.labels, None, slide=result.slide, cells=result.cells,
                           levels=result.label_levels)


#: set once the libraries a run needs are imported (see :func:`import_libraries_soon`)
LIBRARIES_READY = threading.Event()
_libraries_started = threading.Lock()


def import_libraries_soon() -> None:
    """Import what a run needs (torch, timm, ultralytics, distributed, scikit-image's
    resampling and contours, matplotlib for the charts, SciPy's statistics for the
    panel's confidence intervals) in a background thread, once per
    process (the Analyze dock calls it when it opens). Imported by a run's threads, their
    modules' loading would hold the interpreter in long stretches just as the run starts,
    and the event loop with it; imported while the user sets up the run, they are ready."""
    if not _libraries_started.acquire(blocking=False):
        return

    def run():
        try:
            import timm  # noqa: F401
            import torch  # noqa: F401
            from ultralytics import YOLO  # noqa: F401
            import skimage.filters  # noqa: F401
            import skimage.measure  # noqa: F401
            import skimage.transform  # noqa: F401
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.figure  # noqa: F401
            import scipy.stats  # noqa: F401 -- the panel's confidence intervals

            _import_off_the_gui_thread()
        except Exception:  # noqa: BLE001 -- a run reports a missing library itself
            pass
        finally:
            LIBRARIES_READY.set()

    threading.Thread(target=run, name="bm-cells imports", daemon=True).start()


_frozen_runs = 0


def freeze_heap() -> None:
    """Hide the objects that exist now from the cyclic garbage collector until
    :func:`thaw_heap` (``gc.freeze``; one call per run, nested runs counted).

    napari's process holds millions of long-lived objects (torch, napari, Qt); a full
    collection walks them all, and whichever thread triggers it holds the interpreter
    meanwhile: a run's threads would stall the event loop for longer than a frame.
    Frozen, a run's full collections walk only what the run made. Cyclic garbage among the
    frozen objects waits for :func:`thaw_heap`, which the end of the run calls.
    """
    global _frozen_runs
    import gc

    if _frozen_runs == 0:
        gc.freeze()
    _frozen_runs += 1


def thaw_heap() -> None:
    """End of a run: what :func:`freeze_heap` froze is collectable again."""
    global _frozen_runs
    import gc

    _frozen_runs = max(0, _frozen_runs - 1)
    if _frozen_runs == 0:
        gc.unfreeze()


def _import_off_the_gui_thread() -> None:
    """Import here, in the worker, what napari would otherwise import on the GUI thread
    when the results are shown: dask looks for a distributed client (importing
    ``distributed``, ~0.4 s) the first time a lazy masks array is read."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        pass


def error_message(exc: BaseException) -> str:
    """One-line user message of an exception (InputError messages as they are)."""
    msg = first_line(exc)
    if isinstance(exc, InputError) or msg == type(exc).__name__:
        return msg
    return f"{type(exc).__name__}: {msg}"


def option_widget(default, o):
    """The magicgui field of one :class:`~napari_bm_cells.options.Option`."""
    value = o.widget_value if o.widget_value is not None else (o.none if default is None else default)
    tip = o.help + (f" ({o.none}: not set)" if o.none is not None else "")
    if o.kind == "switch":
        return CheckBox(text=o.label, value=bool(value), tooltip=tip)
    if o.kind == "text":
        return LineEdit(label=o.label, value=str(value), tooltip=tip)
    if o.kind == "choice":
        return ComboBox(label=o.label, value=value, choices=o.choices, tooltip=tip)
    lo, hi, step = o.limits
    cls = SpinBox if o.kind == "int" else FloatSpinBox
    return cls(label=o.label, value=value, min=lo, max=hi, step=step, tooltip=tip)


def option_value(widget, o):
    """A field's value as :class:`~napari_bm_cells.options.AnalysisOptions` takes it."""
    v = widget.value
    if o.kind in ("text", "choice"):
        return o.parse(v) if o.parse else v
    if o.none is not None and v == o.none:
        return None
    return {"int": int, "float": float, "switch": bool}[o.kind](v)


class _JobHandle:
    """What a running job needs to be stopped: holds no reference to the widget."""

    def __init__(self):
        self.worker = None
        self.gen = None
        self.prepared: dict = {}  # filled by the worker: layer arguments built off the GUI thread

    def cancel(self, *_):
        w = self.worker
        if w is not None:
            try:
                w.quit()
            except RuntimeError:  # Qt object already deleted
                pass


class AnalyzeWidget(Container):
    """Dock widget: detect and classify the cells of an image layer.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        import_libraries_soon()
        self._viewer = napari_viewer
        self.image = ComboBox(label="image", choices=self._image_choices, nullable=True,
                              tooltip="RGB image layer (a slide, a field, an OME-Zarr pyramid)")
        self.detector = ComboBox(label="detector", value="shipped", choices=[
            ("shipped YOLO", "shipped"), ("contour (no weights)", "contour"), ("weights file...", "file")])
        self.detector_file = FileEdit(label="detector weights", mode="r", filter="*.pt *.onnx",
                                      visible=False)
        self.classifier = ComboBox(label="classifier", value="shipped", choices=[
            ("shipped", "shipped"), ("checkpoint file...", "file")])
        self.classifier_file = FileEdit(label="checkpoint", mode="r", filter="*.safetensors",
                                        visible=False)
        self.device = ComboBox(label="device", value="auto", choices=["auto", "cpu", "cuda", "mps"])
        # one field per user option, declared in options.AnalysisOptions
        self._options = {name: (option_widget(default, o), o) for name, default, o in user_options()
                         if o.in_widget}
        for name, (field, _) in self._options.items():
            setattr(self, name, field)
        self.region = ComboBox(label="region", value="whole", choices=[
            ("whole image", "whole"), ("current field of view", "view"),
            ("rectangle from Shapes layer", "shapes")])
        self.shapes = ComboBox(label="shapes layer", choices=self._shapes_choices, nullable=True,
                               visible=False)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal",
                            labels=False)
        switches = [f for f, o in self._options.values() if o.kind == "switch"]
        fields = [f for f, o in self._options.values() if o.kind != "switch"]
        self.extend([self.image, self.detector, self.detector_file, self.classifier,
                     self.classifier_file, self.device, self.region, self.shapes, *fields,
                     *switches, buttons, self.status])

        self.detector.changed.connect(lambda v: setattr(self.detector_file, "visible", v == "file"))
        self.classifier.changed.connect(lambda v: setattr(self.classifier_file, "visible", v == "file"))
        self.region.changed.connect(lambda v: setattr(self.shapes, "visible", v == "shapes"))
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._on_layers_changed)

        self.worker = None
        self.result = None  #: AnalysisResult of the last finished run
        self._finishing: list = []  # steps still to run to show a finished run
        self._heap_frozen = False  # this widget's run holds freeze_heap()
        #: how the last run ended: None while it runs, then "done", "error", "cancelling"
        #: (asked, not yet stopped) or "cancelled"; the status line only shows it
        self.outcome: str | None = None
        self._done_args = None
        self.last_error: str | None = None
        self.points_layer = None
        self.labels_layer = None
        self.areas_layer = None
        self._job = None
        self._pending = []
        self._last_flush = 0.0
        self._pbar = None
        self._pbar_stage = None
        self._image_layer = None
        self._run_tag = ""
        self._t0 = 0.0
        self.native.destroyed.connect(_cancel_on_destroy(self))
        # take only the height the controls need: the differential panel below gets the rest
        from qtpy.QtWidgets import QSizePolicy

        self.native.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Maximum)
        self._on_layers_changed()

    # ---------------------------------------------------------------- choices
    def _image_choices(self, _w=None):
        from napari.layers import Image

        return [(lyr.name, L.unwrap(lyr)) for lyr in self._viewer.layers if isinstance(lyr, Image)]

    def _shapes_choices(self, _w=None):
        from napari.layers import Shapes

        return [(lyr.name, L.unwrap(lyr)) for lyr in self._viewer.layers if isinstance(lyr, Shapes)]

    def _on_layers_changed(self, event=None):
        current = self.image.value
        self.reset_choices()
        if current is None and self.image.choices:
            self.image.value = self.image.choices[-1]

    # ---------------------------------------------------------------- run
    @property
    def running(self) -> bool:
        """A run is under way, or its results are still being added to the viewer."""
        return self.worker is not None or bool(self._finishing)

    def _specs(self):
        det = {"shipped": None, "contour": "contour"}.get(self.detector.value)
        if self.detector.value == "file":
            det = _picked_file(self.detector_file.value, "detector weights",
                               "pick a YOLO .pt file or use the shipped / contour detector")
        cls = None
        if self.classifier.value == "file":
            cls = _picked_file(self.classifier_file.value, "classifier checkpoint",
                               "pick a .safetensors checkpoint or use the shipped one")
        else:
            from ..classify import DEFAULT_CLASSIFIER
            if not DEFAULT_CLASSIFIER.is_file():
                raise InputError(f"the shipped classifier {DEFAULT_CLASSIFIER.name} is not installed; "
                                 "choose 'checkpoint file...' and pick a .safetensors checkpoint")
        return det, cls

    def _region(self, layer):
        if self.region.value == "view":
            return L.visible_region(self._viewer, layer)
        if self.region.value == "shapes":
            return L.shapes_region(self.shapes.value, layer)
        return None

    def options(self, layer=None):
        """The :class:`AnalysisOptions` of the current settings (region for ``layer``)."""
        from ..pipeline import AnalysisOptions

        values = {name: option_value(field, o) for name, (field, o) in self._options.items()}
        return AnalysisOptions(**values, region=self._region(layer) if layer is not None else None).check()

    def run(self, *_) -> bool:
        """Start an analysis of the chosen image layer; False (and a notification) when
        the settings are not usable."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        if self.running:
            return False
        self.last_error = None
        try:
            layer = self.image.value
            if layer is None:
                raise InputError("no image layer: open a slide or a field first (File > Open, "
                                 "or File > Open Sample > napari-bm-cells)")
            slide = L.layer_slide(layer)
            opts = self.options(layer)
            det_spec, cls_spec = self._specs()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return False

        self._image_layer = layer
        # a region's results sit beside the whole image's, not in their place
        self._run_tag = "" if opts.region is None else " [region y {}-{}, x {}-{}]".format(
            opts.region[0], opts.region[2], opts.region[1], opts.region[3])
        self.result = None
        self._pending = []
        self._last_flush = 0.0
        self.points_layer = self.labels_layer = None  # old results stay until new cells come
        self._show_panel()
        self._cancel_when_dock_closes()
        job = _JobHandle()
        job.prepared["labels_args"] = self._masks_layer_args()
        job.gen = analysis_job(slide, det_spec, cls_spec, opts, self.device.value, job.prepared)
        self._job = job
        try:
            worker = create_worker(_drive, job.gen, _start_thread=False)
        except Exception as exc:  # noqa: BLE001
            show_error(f"napari-bm-cells: cannot start the analysis ({error_message(exc)})")
            return False
        job.worker = worker
        self.worker = worker
        worker.yielded.connect(self._on_event)
        worker.finished.connect(self._on_finished)
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self._t0 = time.perf_counter()
        self.status.value = "loading models..."
        self.outcome = None
        freeze_heap()
        self._heap_frozen = True
        worker.start()
        return True

    def _cancel_when_dock_closes(self):
        """Closing the dock (its x) only hides it in napari: cancel a run then, rather than
        let it go on unseen. A dock hidden behind another tab gets no close event."""
        from qtpy.QtCore import QEvent, QObject
        from qtpy.QtWidgets import QDockWidget

        if getattr(self, "_close_filter", None) is not None:
            return
        dock = self.native.parent()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parent()
        if dock is None:
            return
        widget = self

        class _OnClose(QObject):
            def eventFilter(self, obj, event):  # noqa: N802 -- Qt's name
                if event.type() == QEvent.Close and widget.running:
                    widget.cancel()
                return False

        self._close_filter = _OnClose(dock)
        dock.installEventFilter(self._close_filter)

    def run_and_wait(self, timeout: float | None = None):
        """Run the analysis and process Qt events until it ends: the widget driven from a
        script (``napari.Viewer(show=False)``, no event loop running).

        Returns
        -------
        AnalysisResult

        Raises
        ------
        RuntimeError
            When the run could not start, failed, was cancelled or timed out.
        """
        from qtpy.QtWidgets import QApplication

        if not self.run():
            raise RuntimeError(f"analysis not started: {self.last_error or 'already running'}")
        t0 = time.perf_counter()
        while self.running:
            QApplication.processEvents()
            if timeout is not None and time.perf_counter() - t0 > timeout:
                self.cancel()
                timeout = None  # wait for the cancel to land, then report it
            time.sleep(0.02)
        QApplication.processEvents()
        if self.last_error is not None or self.result is None:
            raise RuntimeError(f"analysis of {self._image_layer.name!r} did not finish: "
                               f"{self.last_error or self.status.value}")
        return self.result

    def cancel(self, *_):
        """Stop the running analysis (at the next tile batch or cell batch)."""
        if self._job is not None:
            self.status.value = "cancelling..."
            self.outcome = self.outcome or "cancelling"
            self._job.cancel()

    # ---------------------------------------------------------------- events (GUI thread)
    def _progress(self, stage: Stage, done: int, total: int):
        from napari.utils import progress

        desc = {Stage.LOAD: "loading models", Stage.DETECT: "detecting (tiles)",
                Stage.CLASSIFY: "classifying (cells)"}[stage]
        if self._pbar_stage != stage:
            self._close_pbar()
            self._pbar_stage = stage
            # creating a bar processes Qt events: a later event may be handled (and its own
            # bar made) inside this call; keep only the bar of the stage that is current
            bar = progress(total=max(total, 1), desc=desc)
            if self._pbar_stage != stage or self._pbar is not None or self._job is None:
                bar.close()
                return
            self._pbar = bar
        if self._pbar is None:
            return
        delta = done - self._pbar.n
        if delta:
            self._pbar.update(delta)

    def _close_pbar(self):
        if self._pbar is not None:
            self._pbar.close()
        self._pbar, self._pbar_stage = None, None

    def _on_event(self, ev: Progress):
        # progress queued before a cancel (or delivered after the worker finished) must
        # not overwrite "cancelling..." / "cancelled"
        if ev.stage in (Stage.LOAD, Stage.DETECT, Stage.CLASSIFY) and (
                self.result is not None or self.outcome is not None):
            return
        # napari's progress bar may process Qt events, so later events (even "done") can
        # be handled inside self._progress: update state first, check it after
        try:
            if ev.stage in (Stage.LOAD, Stage.DETECT):
                if ev.stage == Stage.DETECT:
                    self.status.value = f"detecting: {ev.done}/{ev.total} tiles"
                self._progress(ev.stage, ev.done, ev.total)
            elif ev.stage == Stage.CLASSIFY:
                self.status.value = f"classifying: {ev.done}/{ev.total} cells"
                if ev.payload is not None and len(ev.payload):
                    self._pending.append(ev.payload)
                self._progress(Stage.CLASSIFY, ev.done, ev.total)
                if self.result is None and self._pending and \
                        time.perf_counter() - self._last_flush >= FLUSH_S:
                    self._flush()
            elif ev.stage == Stage.DONE:
                self._on_done(ev.payload)
            elif ev.stage == Stage.ERROR:
                self._fail(ev.payload)
        except Exception as exc:  # noqa: BLE001 -- never let an event handler crash napari
            self._fail(exc)
            self.cancel()

    def _points_name(self):
        return f"{self._image_layer.name} cells{self._run_tag}"

    def _labels_name(self):
        return f"{self._image_layer.name} masks{self._run_tag}"

    def _masks_layer_args(self) -> dict:
        """Name and transform of the masks layer, on the image it was analysed on."""
        return {**L.transform_kwargs(self._image_layer), "name": self._labels_name()}

    def _areas_name(self):
        return f"{self._image_layer.name} counting areas{self._run_tag}"

    def _remove_old_layers(self):
        """Remove the previous run's cells and masks of this image (replaced by this run)."""
        for name in (self._points_name(), self._labels_name(), self._areas_name()):
            if name in self._viewer.layers:
                self._viewer.layers.remove(name)

    def _ensure_points(self, cells, summary=None):
        if self.points_layer is None or self.points_layer not in self._viewer.layers:
            self._remove_old_layers()
            kw = L.points_kwargs(cells, self._image_layer, name=self._points_name(),
                                 classes=L.classes_of(cells), summary=summary)
            self.points_layer = L.unwrap(self._viewer.add_points(**kw))
            L.bind_class_keys(self.points_layer, L.layer_classes(self.points_layer))
            return True
        return False

    def _flush(self):
        if not self._pending:
            return
        import pandas as pd

        new = pd.concat(self._pending, ignore_index=True)
        self._pending = []
        if not self._ensure_points(new):
            L.append_cells(self.points_layer, new)
        self._last_flush = time.perf_counter()

    def _on_done(self, result):
        """Show a finished run: the cells now, then the masks and the counting areas each
        in a later turn of the event loop (adding a layer costs napari a few hundred ms;
        one after another they would freeze the viewer for their sum)."""
        self._pending = []
        self._close_pbar()
        self._finishing = [self._show_cells, self._show_masks, self._show_areas, self._finish]
        prepared = self._job.prepared if self._job is not None else {}
        self._done_args = (result, prepared.pop("labels", (None, None)))
        self._next_step()

    def _next_step(self):
        from qtpy.QtCore import QTimer

        if not self._finishing:
            return
        step = self._finishing.pop(0)
        if self.points_layer is not None and self.points_layer not in self._viewer.layers \
                and step != self._show_cells:  # the cells were removed meanwhile (or the viewer closed)
            self._finishing = []
        else:
            try:
                step(self._done_args[0])
            except Exception as exc:  # noqa: BLE001 -- never let a step crash napari
                self._finishing = []
                try:
                    self._fail(exc)
                except RuntimeError:  # the widget itself is gone
                    pass
        if self._finishing:
            QTimer.singleShot(STEP_MS, self._next_step)
        else:
            self._thaw_when_over()

    def _show_cells(self, result):
        cells, summary = result.cells, result.summary
        if not self._ensure_points(cells, summary):
            meta = L.layer_meta(self.points_layer)
            meta["summary"] = summary
            meta["classes"] = list(summary.get("classifier", {}).get("classes") or L.classes_of(cells))
            self.points_layer.size = L.point_size(cells)
            self.points_layer.current_size = L.point_size(cells)
            L.replace_cells(self.points_layer, cells)
        meta = L.layer_meta(self.points_layer)
        meta["areas"], meta["outlines"] = result.areas, result.outlines  # for the export and report

    def _show_masks(self, result):
        if result.labels is None:
            return
        if self._labels_name() in self._viewer.layers:
            self._viewer.layers.remove(self._labels_name())
        owner, layer = self._done_args[1]
        if owner is not result:  # a result handed in, not built by the worker
            layer = _masks_layer(result, self._masks_layer_args())
        # inserted under the points (moving it there afterwards redraws every layer again)
        layers = self._viewer.layers
        layers.insert(layers.index(self.points_layer) if self.points_layer in layers else len(layers), layer)
        self.labels_layer = L.unwrap(layer)
        _recolour_masks_on_reassign(self.points_layer, self.labels_layer)

    def _finish(self, result):
        self._viewer.layers.selection.active = self.points_layer
        self.result = result
        summary = result.summary
        n, k = summary["n_cells"], summary["n_counted"]
        self.outcome = "done"
        self.status.value = f"done: {n} cells ({k} counted) in {time.perf_counter() - self._t0:.1f} s"
        self._done_args = None

    def _show_areas(self, result):
        """The counting-area map as an image layer just above the image, under the cells."""
        if result.areas is None:
            return
        if self._areas_name() in self._viewer.layers:
            self._viewer.layers.remove(self._areas_name())
        from napari.layers import Image

        layer = Image(**L.area_map_kwargs(result.areas, self._image_layer, name=self._areas_name()))
        layers = self._viewer.layers
        layers.insert(layers.index(self._image_layer) + 1 if self._image_layer in layers else 0, layer)
        self.areas_layer = layer

    def _fail(self, exc):
        from napari.utils.notifications import show_error

        msg = error_message(exc) if isinstance(exc, BaseException) else str(exc)
        self.last_error = msg
        self.outcome = "error"
        self.status.value = f"error: {msg[:80]}"
        show_error(f"napari-bm-cells: {msg}")

    def _on_finished(self, *_):
        job = self._job
        if job is not None and job.gen is not None:
            try:
                job.gen.close()  # releases the pipeline's reader thread after a quit()
            except (RuntimeError, ValueError):
                pass
        self._close_pbar()
        if self.result is None and not self._finishing and self.outcome not in ("error", "done"):
            self._flush()
            self.outcome = "cancelled"
            self.status.value = "cancelled"
        self.worker = None
        self._job = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self._thaw_when_over()

    def _thaw_when_over(self):
        """Once the run and the adding of its layers are over, let the garbage collector
        see the heap again (see :func:`freeze_heap`)."""
        if self._heap_frozen and not self.running:
            self._heap_frozen = False
            thaw_heap()

    def _show_panel(self):
        """Open the differential panel beside the widget (live counts during the run)."""
        window = getattr(self._viewer, "window", None)
        if window is None or not hasattr(window, "add_plugin_dock_widget"):
            return
        try:
            window.add_plugin_dock_widget(PLUGIN, PANEL_NAME)
        except Exception:  # noqa: BLE001 -- e.g. plugin not registered (running from source)
            pass


def _recolour_masks_on_reassign(points, labels):
    """Keep the masks in their cells' class colours when cells are reassigned."""
    def update(*_):
        if labels in getattr(points, "_bm_masks", []):
            try:
                labels.colormap = L.mask_colormap(L.cells_from_layer(points))
            except Exception:  # noqa: BLE001 -- colours are cosmetic; never break a reassign
                pass
    points._bm_masks = [labels]
    points.events.features.connect(update)


def _drive(gen):
    """Worker body: re-yield the job's events (the job generator is closed by the widget)."""
    yield from gen


def _cancel_on_destroy(widget):
    """Slot cancelling the widget's current job when its Qt widget is destroyed (no
    strong reference to the widget)."""
    import weakref

    ref = weakref.ref(widget)

    def _slot(*_):
        w = ref()
        if w is not None and w._job is not None:
            w._job.cancel()

    return _slot


def _picked_file(value, what: str, fix: str) -> Path:
    """The file chosen in a file picker, or an InputError naming it and the fix."""
    p = Path(value or "")
    if not p.is_file():
        raise InputError(f"{what} {str(p)!r}: no such file; {fix}")
    return p
