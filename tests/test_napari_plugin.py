"""GUI tests of the napari plugin: the Analyze widget driving the pipeline in a worker,
the cells / masks layers, the differential panel, cancel, errors, regions, exports.

napari draws with OpenGL: without a display these tests start ``Xvfb`` (``apt-get install
xvfb``) and use Qt's offscreen platform with it; they are skipped when neither exists.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import time

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from helpers import ensure_display  # noqa: E402


ensure_display(97)  # before Qt starts: it reads $DISPLAY once
pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("display")]

napari = pytest.importorskip("napari")


def _qt_gl_attributes():
    """Attributes napari / vispy need before the QApplication exists (pytest-qt creates it
    first): shared OpenGL contexts between the canvas and Qt's widget compositor."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    if QApplication.instance() is None:
        QApplication.setAttribute(Qt.AA_ShareOpenGLContexts, True)


_qt_gl_attributes()

from napari_bm_cells.gui import layers as L  # noqa: E402
from napari_bm_cells.gui import widget as _widget  # noqa: E402,F401 -- guards triton before any GL context
from napari_bm_cells.gui.panel import DifferentialPanel  # noqa: E402
from napari_bm_cells.gui.widget import AnalyzeWidget  # noqa: E402
from napari_bm_cells.count import differential  # noqa: E402
from napari_bm_cells.taxonomy import colour_of  # noqa: E402

PLUGIN = "napari-bm-cells"


# --------------------------------------------------------------------------- helpers
def _prime_gl():
    """Answer napari's cached OpenGL queries (extensions, texture limits) once, from a
    small vispy canvas whose context is current.

    napari asks through vispy's current canvas without making its context current; with
    Xvfb and Qt's offscreen platform the answer is then sometimes empty, and adding a
    layer fails. The tests need no drawing, so the viewer itself is not shown (software
    OpenGL on Xvfb has crashed while redrawing a re-tiled multiscale image).
    """
    from napari._vispy.utils.gl import get_gl_extensions, get_max_texture_sizes

    if get_gl_extensions.cache_info().currsize and get_max_texture_sizes.cache_info().currsize:
        return
    from vispy.app import Canvas

    c = Canvas(show=True, size=(16, 16))
    try:
        c.set_current()
        get_gl_extensions()
        get_max_texture_sizes()
    finally:
        c.close()


@pytest.fixture
def viewer(make_napari_viewer, qapp):
    _prime_gl()
    return make_napari_viewer()


def _dock(viewer):
    """The Analyze widget and the panel, docked as napari's Plugins menu does."""
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Analyze smear")
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Differential count")
    assert isinstance(w, AnalyzeWidget) and isinstance(panel, DifferentialPanel)
    return w, panel


def _configure(w, classifier_path, detector="shipped"):
    w.device.value = "cpu"
    w.classifier.value = "file"
    w.classifier_file.value = str(classifier_path)
    w.detector.value = detector


def _wait_done(qtbot, w, timeout=240):
    qtbot.waitUntil(lambda: not w.running, timeout=timeout * 1000)


def _press(qtbot, viewer, key: str):
    """Press a key on the canvas (goes through napari's keymaps, as a user's key does)."""
    from qtpy.QtCore import Qt

    canvas = viewer.window._qt_viewer.canvas
    native = canvas.native if hasattr(canvas, "native") else canvas._scene_canvas.native
    mods = Qt.NoModifier
    if key.startswith("Alt-"):
        key, mods = key[4:], Qt.AltModifier
    qtbot.keyClick(native, getattr(Qt, f"Key_{key}"), mods)


def _analysed_field(viewer, qtbot, path, classifier_path):
    """Open a field, analyse it with the docked widget; the panel shows its cells."""
    viewer.open(str(path), plugin=PLUGIN)
    w, panel = _dock(viewer)
    _configure(w, classifier_path)
    w.run()
    _wait_done(qtbot, w)
    panel.set_layer(w.points_layer)
    return w, panel


def _drawn_chart(qtbot, chart):
    """The chart's figure once its drawing (in a worker thread) is shown."""
    qtbot.waitUntil(lambda: not chart.busy and chart.pixmap() is not None and not chart.pixmap().isNull(),
                    timeout=10_000)
    return chart.figure


def _bars(qtbot, panel) -> dict:
    """Bar heights of the panel's histogram by tick label, as drawn."""
    ax = _drawn_chart(qtbot, panel.chart).axes[0]
    return {t.get_text(): p.get_height() for t, p in zip(ax.get_xticklabels(), ax.patches)}


def _open_progress():
    """napari progress bars still open (shown in the activity dock)."""
    from napari.utils import progress

    return [p.desc for p in list(progress._all_instances)]


def _error_records():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [r for r in notification_manager.records if r.severity == NotificationSeverity.ERROR]


# --------------------------------------------------------------------------- tests
def _run_field(viewer, qtbot, bccd_jpeg, classifier_path):
    """Open a BCCD field through the reader and analyse it with the Analyze widget:
    ``(image layer, widget, panel, result, points layer)``."""
    [image] = viewer.open(str(bccd_jpeg), plugin=PLUGIN)
    w, panel = _dock(viewer)
    assert w.image.value is image
    _configure(w, classifier_path)
    # the shipped classifier learned BCCD's own colours (docs/models.md): without the
    # colour standardisation its cells here are confident enough to be counted
    w.colour.value = "off"
    assert w.run()
    assert w.running and w.cancel_button.enabled and not w.run_button.enabled
    _wait_done(qtbot, w)
    assert w.last_error is None, w.last_error
    res = w.result
    assert res is not None and len(res.cells) >= 1 and res.summary["classifier"]["colour"]["mode"] == "off"
    assert w.run_button.enabled and not w.cancel_button.enabled
    return image, w, panel, res, viewer.layers[f"{image.name} cells"]


def test_run_on_bccd_field_fills_points_and_masks(viewer, qtbot, bccd_jpeg, classifier_path):
    image, w, panel, res, pts = _run_field(viewer, qtbot, bccd_jpeg, classifier_path)
    # one point per detected cell, with the expected features and class colours
    assert pts is w.points_layer
    assert len(pts.data) == len(res.cells), (len(pts.data), res.cells)
    classes = res.summary["classifier"]["classes"]
    expected = ["cell_id", "label", "confidence", "p_blast", "p_atypical", "reviewed"] + \
        [f"prob_{c}" for c in classes]
    assert set(expected) <= set(pts.features.columns)
    assert list(pts.features["cell_id"]) == list(res.cells["cell_id"])
    np.testing.assert_allclose(pts.face_color, L.class_colours(res.cells["label"]), atol=1e-6)
    # the masks: a Labels layer whose ids are the cell ids, under the points
    masks = viewer.layers[f"{image.name} masks"]
    assert isinstance(masks, napari.layers.Labels) and masks.data.shape == (480, 640)
    assert set(np.unique(masks.data)) - {0} <= set(res.cells["cell_id"])
    assert viewer.layers.index(masks) < viewer.layers.index(pts)
    # one panel however it is opened: from the Plugins menu (before the run), by Run, and
    # from the menu again
    viewer.window.add_plugin_dock_widget(PLUGIN, "Differential count")
    assert viewer.window._qt_window.findChildren(DifferentialPanel) == [panel]


def test_panel_counts_reviews_and_rolls_up_lineages(viewer, qtbot, bccd_jpeg, classifier_path):
    _, _, panel, res, pts = _run_field(viewer, qtbot, bccd_jpeg, classifier_path)
    classes = res.summary["classifier"]["classes"]
    # the panel counts what the cells table says
    qtbot.waitUntil(lambda: panel.layer is pts and panel.summary is not None, timeout=5000)
    panel.refresh()
    assert panel.summary["counts"] == differential(res.cells["label"], classes)["counts"]
    assert panel.summary["n_cells"] == len(res.cells)
    heights = _bars(qtbot, panel)
    assert heights == {c: k for c, k in panel.summary["counts"].items() if k}
    # the table's rows carry the classes' full names as tooltips
    from napari_bm_cells.taxonomy import full_name
    for r in range(panel.table.rowCount()):
        code = panel.table.item(r, 0).text()
        assert panel.table.item(r, 0).toolTip() == full_name(code) != code
    # the review queue walks cells in the documented order and centres the camera on each
    from napari_bm_cells.review import review_queue
    queue = review_queue(pts.features)
    for k in range(min(2, len(queue))):
        cid = panel.review_step(+1)
        assert cid == queue[k]
        i = int(np.flatnonzero(pts.features["cell_id"].to_numpy() == cid)[0])
        assert pts.selected_data == {i}
        np.testing.assert_allclose(viewer.camera.center[-2:], pts.data_to_world(pts.data[i])[-2:], atol=1e-6)
    # the lineage view rolls the same counts up by lineage, and switches back
    panel.view_combo.setCurrentText("lineages")
    panel.refresh()
    lin = _bars(qtbot, panel)
    assert lin == panel.summary["lineage_counts"]
    panel.view_combo.setCurrentText("classes")
    panel.refresh()
    assert _bars(qtbot, panel) == heights


def test_reassign_by_key_recounts_and_export_round_trips(viewer, qtbot, bccd_jpeg, classifier_path, tmp_path):
    _, _, panel, res, pts = _run_field(viewer, qtbot, bccd_jpeg, classifier_path)
    qtbot.waitUntil(lambda: panel.layer is pts and panel.summary is not None, timeout=5000)
    # reassigning a point (number key on the layer, as a user does) changes counts and bars
    # a counted cell (not one left to review, UNK)
    i = int(np.flatnonzero(pts.features["label"].astype(str).to_numpy() != "UNK")[0])
    pts.selected_data = {i}
    panel.update_inspector()
    assert f"cell {i + 1}" in panel.cell_label.text() and panel.crop_label.pixmap() is not None
    old = str(pts.features.loc[i, "label"])
    key, new = next((k, c) for k, c in panel.keys.items() if c != old)
    viewer.layers.selection.active = pts
    _press(qtbot, viewer, key)
    qtbot.waitUntil(lambda: panel.summary["counts"].get(new, 0) >= 1, timeout=5000)
    assert pts.features.loc[i, "label"] == new and bool(pts.features.loc[i, "reviewed"])
    assert panel.summary["counts"][old] == res.summary["counts"][old] - 1
    assert key.startswith("Alt-")
    # napari's own digit keys still do what its status bar says: 2 is add mode, no relabel
    _press(qtbot, viewer, "2")
    assert pts.mode == "add" and pts.features.loc[i, "label"] == new
    pts.mode = "select"
    bars = _bars(qtbot, panel)
    assert bars.get(new) == panel.summary["counts"][new]
    np.testing.assert_allclose(pts.face_color[0], L.class_colours([new])[0], atol=1e-6)

    # export, then read back through our reader: same points, classes and review flags
    out = panel.export(tmp_path / "export")
    assert {p.name for p in out.values()} == {"cells.csv", "summary.json", "cells.geojson",
                                              "differential.png", "report.html"}
    for key in ("cells", "geojson"):
        [back] = viewer.open(str(out[key]), plugin=PLUGIN)
        assert isinstance(back, napari.layers.Points)
        np.testing.assert_allclose(back.data, pts.data, atol=0.01)
        assert list(back.features["label"]) == list(pts.features["label"])
        assert list(back.features["reviewed"]) == list(pts.features["reviewed"])
        np.testing.assert_allclose(back.face_color, pts.face_color, atol=1e-6)
    # corrections: crops of reviewed cells, one folder per class
    crops = panel.export_corrections(tmp_path / "corrections")
    assert [p.parent.name for p in crops] == [new]
    assert (tmp_path / "corrections" / "corrections.csv").is_file()


def test_cancel_stops_a_long_run(viewer, qtbot, data_dir, classifier_path):
    from helpers import build_mosaic

    img, _ = build_mosaic(8, 6, "bccd", split=("test", "val", "train"), seed=0)  # 3840 x 3840
    image = viewer.add_image(img, rgb=True, name="mosaic")
    w, panel = _dock(viewer)
    _configure(w, classifier_path)
    w.tile_size.value = 320
    w.overlap.value = 96
    assert w.run()
    qtbot.waitUntil(lambda: w.status.value.startswith("detecting: ") and
                    not w.status.value.startswith("detecting: 0/"), timeout=120_000)
    total = int(w.status.value.split("/")[1].split()[0])
    assert total > 8
    t0 = time.perf_counter()
    w.cancel_button.native.click()
    _wait_done(qtbot, w, timeout=30)
    took = time.perf_counter() - t0
    assert took < 15, f"cancel took {took:.1f} s"
    assert w.result is None and w.status.value == "cancelled"
    assert "mosaic cells" not in viewer.layers  # stopped during detection
    assert w.run_button.enabled and not w.cancel_button.enabled
    assert _open_progress() == []  # no bar left in the activity dock
    assert not _error_records() or all("cancel" not in str(r.message) for r in _error_records())
    # the viewer stays usable: a new run on a drawn rectangle works
    shapes = viewer.add_shapes([np.array([[0, 0], [0, 700], [500, 700], [500, 0]])],
                               shape_type="rectangle", name="roi")
    w.reset_choices()
    w.image.value = image
    w.region.value = "shapes"
    w.shapes.value = shapes
    w.detector.value = "contour"
    w.tile_size.value = 640
    w.overlap.value = 160
    assert w.run()
    _wait_done(qtbot, w)
    assert w.last_error is None, w.last_error
    assert w.result.summary["region"] == [0, 0, 501, 701]
    assert _open_progress() == []
    cells = w.result.cells
    assert ((cells["x"] < 701 + 1) & (cells["y"] < 501 + 1)).all()


def test_wrong_weights_show_an_error(viewer, qtbot, bccd_jpeg, classifier_path, tmp_path):
    viewer.open(str(bccd_jpeg), plugin=PLUGIN)
    w, _ = _dock(viewer)
    bad_cls = tmp_path / "x.safetensors"
    bad_cls.write_text("this is not a checkpoint\n")
    bad_det = tmp_path / "x.pt"
    bad_det.write_text("this is not a YOLO model\n")
    n0 = len(_error_records())

    _configure(w, bad_cls)
    assert w.run()
    _wait_done(qtbot, w, timeout=60)
    assert w.last_error and "x.safetensors" in w.last_error
    assert w.result is None and w.run_button.enabled
    errs = _error_records()[n0:]
    assert any("x.safetensors" in str(r.message) for r in errs)

    _configure(w, classifier_path, detector="file")
    w.detector_file.value = str(bad_det)
    assert w.run()
    _wait_done(qtbot, w, timeout=60)
    assert w.last_error and "x.pt" in w.last_error
    assert any("x.pt" in str(r.message) for r in _error_records()[n0:])
    # settings errors are reported before starting: missing file, overlap >= tile
    w.detector_file.value = str(tmp_path / "missing.pt")
    assert not w.run() and "no such file" in w.last_error
    w.detector.value = "contour"
    w.overlap.value = w.tile_size.value
    assert not w.run() and "overlap" in w.last_error
    assert f"{viewer.layers[0].name} cells" not in viewer.layers


def test_ome_zarr_current_field_of_view(viewer, qtbot, tmp_path, data_dir, classifier_path):
    from helpers import build_mosaic, write_ome_zarr

    img, boxes = build_mosaic(3, 4, "bccd", seed=2)  # 1440 x 2560, >= 12 white cells
    mpp = 0.055  # ~12 um white cells in BCCD's ~219 px boxes
    path = write_ome_zarr(img, tmp_path / "slide.ome.zarr", n_levels=3, chunk=512, mpp=mpp)
    [image] = viewer.open(str(path), plugin=PLUGIN)
    assert image.multiscale and len(image.data) == 3
    assert tuple(image.scale) == pytest.approx((mpp, mpp))
    w, panel = _dock(viewer)
    _configure(w, classifier_path)

    # whole image first
    assert w.run()
    _wait_done(qtbot, w)
    assert w.last_error is None, w.last_error
    n_whole = len(w.result.cells)
    assert n_whole >= 6
    # zoom on the field in row 1, column 1 (world units are micrometres)
    cam = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    cam.center = (720 * mpp, 960 * mpp)
    h, wd = L.canvas_size(viewer)
    cam.zoom = max(h / (700 * mpp), wd / (900 * mpp))  # at most 700 x 900 px visible
    region = L.visible_region(viewer, image)
    y0, x0, y1, x1 = region
    assert 0 < y0 < 720 < y1 < 1440 and 0 < x0 < 960 < x1 < 2560
    w.region.value = "view"
    assert w.run()
    _wait_done(qtbot, w)
    assert w.last_error is None, w.last_error
    cells = w.result.cells
    assert w.result.summary["region"] == list(region)
    assert 0 < len(cells) < n_whole
    assert ((cells["x"] >= x0) & (cells["x"] <= x1) & (cells["y"] >= y0) & (cells["y"] <= y1)).all()
    # the region's cells sit beside the whole image's: nothing replaced silently
    pts = w.points_layer
    whole = viewer.layers[f"{image.name} cells"]
    assert pts is not whole and len(whole.data) == n_whole and "region" in pts.name
    # points sit in world coordinates on the image: check through the transforms
    assert tuple(pts.scale) == pytest.approx((mpp, mpp))
    world = np.array([pts.data_to_world(p) for p in pts.data])
    assert (world[:, 0] >= (y0 - 1) * mpp).all() and (world[:, 0] <= y1 * mpp).all()
    # the panel follows the new run
    qtbot.waitUntil(lambda: panel.layer is pts and panel.summary is not None
                    and panel.summary["n_cells"] == len(cells), timeout=5000)


def test_points_and_panel_update_incrementally(viewer, qtbot, data_dir, classifier, detector,
                                               monkeypatch):
    """Classify events append their cells to one Points layer as they come; the panel
    recounts after each update; ``done`` puts the final table in place."""
    from napari_bm_cells.gui import widget as W
    from napari_bm_cells.detect import Progress
    from napari_bm_cells.pipeline import AnalysisOptions, analyze
    from helpers import build_mosaic

    img, _ = build_mosaic(1, 4, "bccd", seed=3)
    res = analyze(img, detector=detector, classifier=classifier, options=AnalysisOptions(masks=True),
                  device="cpu")
    assert len(res.cells) >= 3
    image = viewer.add_image(img, rgb=True, name="fields")
    w, panel = _dock(viewer)
    monkeypatch.setattr(W, "FLUSH_S", 0.0)  # flush at every event
    w._image_layer = image
    w.points_layer = None
    n = len(res.cells)
    w._on_event(Progress("classify", 0, n))
    for i in range(n):  # one cell per event, in reverse order (blocks arrive in any order)
        rows = res.cells.iloc[[n - 1 - i]]
        w._on_event(Progress("classify", i + 1, n, payload=rows))
        pts = w.points_layer
        assert len(pts.data) == i + 1 and len(pts.features) == i + 1
        qtbot.waitUntil(lambda: panel.summary is not None and panel.summary["n_cells"] == i + 1,
                        timeout=5000)
    assert [L.unwrap(lyr) for lyr in viewer.layers if isinstance(lyr, napari.layers.Points)] == [pts]
    w._on_event(Progress("done", n, n, payload=res))
    assert w.points_layer is pts  # the same layer, now in cell-id order
    assert list(pts.features["cell_id"]) == list(res.cells["cell_id"])
    _wait_done(qtbot, w, timeout=10)  # masks and areas are added in later event-loop turns
    assert f"{image.name} masks" in viewer.layers and w.result is res
    qtbot.waitUntil(lambda: panel.summary["counts"] == res.summary["counts"], timeout=5000)


# --------------------------------------------------------------------------- review tools
@pytest.fixture(scope="module")
def many_cells(data_dir, classifier, detector):
    """A 4x6 mosaic of real BCCD fields (a few dozen white cells) and its analysis."""
    from napari_bm_cells.pipeline import analyze
    from helpers import build_mosaic

    img, _ = build_mosaic(4, 6, "bccd", split=("test", "val"), seed=1)
    res = analyze(img, detector=detector, classifier=classifier, device="cpu")
    assert len(res.cells) >= 20, len(res.cells)
    return img, res


def _add_cells(viewer, img, res):
    image = viewer.add_image(img, rgb=True, name="mosaic")
    pts = viewer.add_points(**L.points_kwargs(res.cells, image, name="mosaic cells",
                                              summary=res.summary))
    return image, L.unwrap(pts)


def _centred_on(viewer, pts, i):
    np.testing.assert_allclose(viewer.camera.center[-2:], pts.data_to_world(pts.data[i])[-2:], atol=1e-6)


def test_review_queue_walks_a_many_cell_slide(viewer, qtbot, many_cells):
    from napari_bm_cells.review import review_queue

    img, res = many_cells
    _, pts = _add_cells(viewer, img, res)
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Differential count")
    qtbot.waitUntil(lambda: panel.layer is pts, timeout=5000)
    queue = review_queue(pts.features)
    assert len(queue) == len(res.cells)
    seen = []
    for k in range(len(queue)):  # the whole queue, forwards
        cid = panel.review_step(+1)
        assert cid == queue[k]
        i = int(np.flatnonzero(pts.features["cell_id"].to_numpy() == cid)[0])
        assert pts.selected_data == {i}
        _centred_on(viewer, pts, i)
        seen.append(cid)
    assert sorted(seen) == sorted(res.cells["cell_id"])
    assert panel.review_step(+1) == queue[-1]  # stays at the end
    assert panel.review_step(-3) == queue[-4]  # and walks back
    assert f"{len(queue) - 3} of {len(queue)}" in panel.queue_label.text()
    # confirming a cell marks it reviewed (class kept) and the panel counts it
    cid = panel.review_step(-1)
    i = int(np.flatnonzero(pts.features["cell_id"].to_numpy() == cid)[0])
    label = pts.features.loc[i, "label"]
    assert panel.confirm_selected() == [i]
    assert bool(pts.features.loc[i, "reviewed"]) and pts.features.loc[i, "label"] == label
    qtbot.waitUntil(lambda: f"1 of {len(queue)} reviewed" in panel.summary_label.text(), timeout=5000)
    # ordered by P(blast) instead: a new queue in that score's order (reviewed cells last)
    panel.queue_order.setCurrentText("p_blast")
    by_blast = review_queue(pts.features, by="p_blast")
    assert by_blast[-1] == cid
    assert [panel.review_step(+1) for _ in range(3)] == by_blast[:3]


def test_gallery_shows_one_class_centres_and_reassigns(viewer, qtbot, many_cells):
    from napari_bm_cells.gui.gallery import CellGallery
    from napari_bm_cells.review import gallery

    img, res = many_cells
    _, pts = _add_cells(viewer, img, res)
    _, gal = viewer.window.add_plugin_dock_widget(PLUGIN, "Cell gallery")
    assert isinstance(gal, CellGallery)
    qtbot.waitUntil(lambda: gal.layer is pts, timeout=5000)
    counts = res.cells["label"].value_counts().drop("UNK", errors="ignore")
    code = counts.index[0]  # the commonest class (UNK, cells left to review, has no probability column)
    gal.set_class(code)
    from napari_bm_cells.gui.gallery import THUMB_PX
    r0 = gal.grid.visualItemRect(gal.grid.item(0))  # before its crop has arrived
    assert r0.width() >= THUMB_PX and r0.height() >= THUMB_PX, r0
    ids = gal.cell_ids()
    # exactly the cells of the class, most confident first (review.gallery's order)
    assert ids == gallery(pts.features, code)
    assert set(ids) == set(res.cells.loc[res.cells["label"] == code, "cell_id"])
    conf = [float(pts.features.set_index("cell_id").loc[c, f"prob_{code}"]) for c in ids]
    assert conf == sorted(conf, reverse=True)
    gal.lowest_first.setChecked(True)
    assert gal.cell_ids() == gallery(pts.features, code, lowest_first=True)
    assert gal.cell_ids()[0] == ids[-1]
    qtbot.waitUntil(gal.loaded, timeout=20000)  # every crop read in the worker thread
    assert gal.grid.item(0).icon().availableSizes()
    # full-size thumbnails the first time the class is shown, not slivers
    for k in range(min(3, gal.grid.count())):
        r = gal.grid.visualItemRect(gal.grid.item(k))
        assert r.width() >= THUMB_PX and r.height() >= THUMB_PX, (k, r)

    # clicking a crop selects that cell, centres the viewer on it and zooms in to it
    item = gal.grid.item(1)
    cid = int(item.data(_user_role()))
    i = int(np.flatnonzero(pts.features["cell_id"].to_numpy() == cid)[0])
    rect = gal.grid.visualItemRect(item)
    viewer.reset_view()
    before = viewer.camera.zoom
    qtbot.mouseClick(gal.grid.viewport(), _left(), pos=rect.center())
    assert pts.selected_data == {i}
    _centred_on(viewer, pts, i)
    assert viewer.camera.zoom > 1.5 * before

    # reassigning from the gallery: the cell changes class, is reviewed, leaves the grid
    other = next(c for c in L.layer_classes(pts) if c != code)
    assert gal.reassign_selected(other) == [i]
    assert pts.features.loc[i, "label"] == other and bool(pts.features.loc[i, "reviewed"])
    qtbot.waitUntil(lambda: cid not in gal.cell_ids(), timeout=5000)
    assert len(gal.cell_ids()) == len(ids) - 1
    gal.set_class(other)
    assert cid in gal.cell_ids()
    # number keys in the grid reassign like the cells layer's keys
    codes = L.shortcut_codes(L.layer_classes(pts))
    k = next(j for j, c in enumerate(codes) if c != other)
    item = next(gal.grid.item(j) for j in range(gal.grid.count()) if int(gal.grid.item(j).data(_user_role())) == cid)
    gal.grid.clearSelection()
    item.setSelected(True)
    qtbot.keyClick(gal.grid, str(k + 1))
    assert pts.features.loc[i, "label"] == codes[k]


def test_gallery_opens_as_a_tab_beside_the_panel(viewer, qtbot):
    from qtpy.QtWidgets import QDockWidget

    from napari_bm_cells.gui.gallery import CellGallery

    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Differential count")
    _, gal = viewer.window.add_plugin_dock_widget(PLUGIN, "Cell gallery")
    assert isinstance(gal, CellGallery)
    main = viewer.window._qt_window

    def dock_of(w):
        while not isinstance(w, QDockWidget):
            w = w.parentWidget()
        return w

    qtbot.waitUntil(lambda: dock_of(gal) in main.tabifiedDockWidgets(dock_of(panel)), timeout=5000)


def test_explain_shows_an_attribution_layer_over_the_cell(viewer, qtbot, many_cells):
    img, res = many_cells
    image, pts = _add_cells(viewer, img, res)
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Differential count")
    qtbot.waitUntil(lambda: panel.layer is pts, timeout=5000)
    pts.selected_data = {3}
    panel.update_inspector()
    worker = panel.explain_selected("gradcam")
    assert worker is not None
    qtbot.waitUntil(lambda: panel.attribution_layer is not None and panel._explain_worker is None,
                    timeout=60000)
    lyr = panel.attribution_layer
    amap = np.asarray(lyr.data)
    n = panel._classifier().input_size
    assert amap.shape == (n, n) and np.ptp(amap) > 0.1
    assert lyr.metadata[L.META]["explained_cell"] == int(pts.features["cell_id"].iloc[3])
    # the map covers the cell's crop: its centre is the point, its side the run's crop side
    corners = np.array([lyr.data_to_world((-0.5, -0.5)), lyr.data_to_world((n - 0.5, n - 0.5))])
    np.testing.assert_allclose(corners.mean(0), pts.data_to_world(pts.data[3]), atol=1.0)
    np.testing.assert_allclose(np.diff(corners, axis=0)[0], [res.summary["classifier"]["crop_px_level0"]] * 2,
                               rtol=1e-6)
    # it sits under the points, which stay the active layer
    assert viewer.layers.index(lyr) < viewer.layers.index(pts)
    assert L.unwrap(viewer.layers.selection.active) is pts


def test_explain_on_a_micrometre_scaled_image_keeps_napari_in_units(viewer, qtbot, many_cells):
    """An image in micrometres: the cells and the attribution map Explain adds share its
    units, so napari keeps one unit for every layer (no "Inconsistent units" fallback)."""
    img, res = many_cells
    image = viewer.add_image(img, rgb=True, name="slide", scale=(0.1, 0.1), units=("micrometer", "micrometer"))
    pts = L.unwrap(viewer.add_points(**L.points_kwargs(res.cells, image, name="slide cells", summary=res.summary)))
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Differential count")
    qtbot.waitUntil(lambda: panel.layer is pts, timeout=5000)
    pts.selected_data = {0}
    panel.update_inspector()
    assert panel.explain_selected("gradcam") is not None
    qtbot.waitUntil(lambda: panel.attribution_layer is not None and panel._explain_worker is None, timeout=60000)
    assert len(viewer.layers) == 3
    assert viewer.layers.extent.units is not None
    assert [str(u) for u in viewer.layers.extent.units] == ["micrometer", "micrometer"]


def _user_role():
    from qtpy.QtCore import Qt
    return Qt.UserRole


def _left():
    from qtpy.QtCore import Qt
    return Qt.LeftButton


def test_widget_run_in_several_batches_adds_each_cell_once(viewer, qtbot, classifier_path):
    """Cells arrive in several classify events; napari's progress bar processes Qt events,
    so 'done' can be handled inside a classify event's handler: no cell may be added twice
    and the status must end at 'done'."""
    from helpers import build_mosaic

    img, _ = build_mosaic(3, 4, "bccd", split="test", seed=4)
    image = viewer.add_image(img, rgb=True, name="mosaic")
    w, _ = _dock(viewer)
    _configure(w, classifier_path)
    w.image.value = image
    options = w.options  # small batches: a dozen cells arrive in several classify events
    w.options = lambda layer=None: dataclasses.replace(options(layer), batch_size=4)
    events = []
    w._on_event, on_event = (lambda ev: (events.append(ev.stage), on_event(ev))[1]), w._on_event
    res = w.run_and_wait(timeout=300)
    assert events.count("classify") >= 3  # the 0-cell start and at least two batches
    assert len(w.points_layer.data) == len(res.cells) >= 10
    assert list(w.points_layer.features["cell_id"]) == list(res.cells["cell_id"])
    assert w.status.value.startswith("done")


def _painted_out_field(data_dir):
    """A real BCCD field (its red cells and platelets kept) whose labelled white cell is
    painted over with the colour of the glass around the cells."""
    import xml.etree.ElementTree as ET

    from PIL import Image

    name = "BloodImage_00003"
    img = np.asarray(Image.open(data_dir / "bccd" / "JPEGImages" / f"{name}.jpg").convert("RGB")).copy()
    bright = img.astype(int).sum(2)
    glass = np.median(img[bright >= np.percentile(bright, 90)], axis=0).astype(np.uint8)
    n = 0
    for obj in ET.parse(data_dir / "bccd" / "Annotations" / f"{name}.xml").getroot().iter("object"):
        if obj.findtext("name") == "WBC":
            x0, y0, x1, y1 = (int(float(obj.find("bndbox").findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
            img[max(0, y0 - 15):y1 + 15, max(0, x0 - 15):x1 + 15] = glass
            n += 1
    assert n >= 1
    return img


@pytest.mark.parametrize("kind", ["grey", "white", "white cells painted out"])
def test_a_field_without_white_cells_gives_an_empty_layer_not_an_error(viewer, qtbot, classifier_path, data_dir,
                                                                       kind):
    """A grey image, an empty (white) field and a real field whose white cells are painted
    out: the run ends with 0 cells, an empty Points layer and the panel's summary, no error
    and no "cancelled"."""
    img = {"grey": lambda: np.full((480, 640, 3), 200, np.uint8),
           "white": lambda: np.full((480, 640, 3), 255, np.uint8),
           "white cells painted out": lambda: _painted_out_field(data_dir)}[kind]()
    viewer.add_image(img, name=kind, rgb=True)
    w, panel = _dock(viewer)
    _configure(w, classifier_path)
    n_errors = len(_error_records())
    w.run()
    _wait_done(qtbot, w)
    assert len(_error_records()) == n_errors
    assert "cancel" not in w.status.value.lower()
    pts = w.points_layer
    assert pts is not None and len(pts.data) == 0
    qtbot.waitUntil(lambda: panel.summary is not None, timeout=5000)
    assert panel.summary["n_cells"] == 0


def test_unclassified_cells_are_reviewed_first_and_block_sign_off(viewer, qtbot, data_dir, classifier_path,
                                                                   tmp_path):
    """With a high confidence threshold some cells are UNK: they stay out of the panel's
    differential, the review queue starts with them, Sign off is refused until each has
    a class, and the export records who signed. The counting-area map sits under the cells."""
    import json

    from helpers import build_mosaic

    img, _ = build_mosaic(2, 3, source="bccd", split="test", seed=5)
    image = viewer.add_image(img, name="mosaic", rgb=True)
    w, panel = _dock(viewer)
    _configure(w, classifier_path)
    w.min_confidence.value = "0.75"
    w.run()
    _wait_done(qtbot, w)
    assert w.last_error is None, w.last_error
    pts = w.points_layer
    unk = np.flatnonzero(pts.features["label"].to_numpy() == "UNK")
    assert 0 < len(unk) < len(pts.data)
    qtbot.waitUntil(lambda: panel.summary is not None and panel.summary["n_cells"] == len(pts.data), timeout=5000)
    assert panel.summary["n_counted"] == len(pts.data) - len(unk) - sum(
        panel.summary["counts"][c] for c in panel.summary["excluded_codes"]
        if c != "UNK" and c in panel.summary["counts"])
    # the area map: an image layer between the image and the cells
    areas = viewer.layers["mosaic counting areas"]
    assert viewer.layers.index(image) < viewer.layers.index(areas) < viewer.layers.index(pts)
    amap = w.result.areas
    # the map lies over exactly the image: its far edge is the image's, not a whole region past it
    lo = areas.data_to_world((-0.5, -0.5))
    hi = areas.data_to_world((areas.data.shape[0] - 0.5, areas.data.shape[1] - 0.5))
    np.testing.assert_allclose(lo, image.data_to_world((-0.5, -0.5)), atol=1e-6)
    np.testing.assert_allclose(hi, image.data_to_world((img.shape[0] - 0.5, img.shape[1] - 0.5)), atol=1e-6)
    assert amap.region_px * amap.shape[1] > img.shape[1]  # the last column of regions is clipped
    # fit regions are left clear (the cells keep their colours), unfit ones tinted
    alpha = areas.colormap.map(np.array([0.0, 0.5, 1.0]))[:, 3]
    assert alpha[0] > alpha[1] > 0 and alpha[2] == 0
    # each pixel shows the score of the region under it
    for (y, x) in ((5, 5), (img.shape[0] - 3, img.shape[1] - 3), (img.shape[0] // 2, img.shape[1] // 3)):
        k = np.floor(np.asarray(areas.world_to_data(image.data_to_world((y, x)))) + 0.5).astype(int)
        assert areas.data[tuple(k)] == np.float32(amap.score_at(x, y))

    panel.signer.setText("dr test")
    n_err = len(_error_records())
    assert panel.sign_off() is None
    assert len(_error_records()) == n_err + 1 and "unclassified" in panel.sign_label.text()
    ids = pts.features["cell_id"].to_numpy()
    for k in range(len(unk)):  # Next > walks the UNK cells first; Confirm gives them the model's class
        cid = panel.review_step(+1)
        i = int(np.flatnonzero(ids == cid)[0])
        assert i in set(unk)
        assert pts.selected_data == {i}
        panel.confirm_selected()
        assert pts.features.loc[i, "label"] == pts.features.loc[i, "model_label"] != "UNK"
    rec = panel.sign_off()
    assert rec is not None and rec["by"] == "dr test"
    out = panel.export(tmp_path / "signed")
    summary = json.loads(out["summary"].read_text())
    assert summary["sign_off"]["by"] == "dr test" and summary["n_unclassified"] >= 0
    assert summary["counts"].get("UNK", 0) == 0
    assert "dr test" in out["report"].read_text()


def test_masks_take_their_class_colours_and_next_zooms_to_the_cell(viewer, qtbot, data_dir, classifier_path):
    from helpers import build_mosaic

    img, _ = build_mosaic(2, 3, source="bccd", split="test", seed=5)
    viewer.add_image(img, name="mosaic", rgb=True)
    w, panel = _dock(viewer)
    _configure(w, classifier_path)
    w.run()
    _wait_done(qtbot, w)
    pts, masks = w.points_layer, w.labels_layer
    assert masks is not None and len(pts.data) >= 2

    def mask_colour(cid):
        return np.asarray(masks.colormap.map(np.array([cid])))[0]

    for i, cid in enumerate(pts.features["cell_id"]):
        np.testing.assert_allclose(mask_colour(cid), pts.face_color[i], atol=1e-6)
    # a reassigned cell's mask follows its new class colour
    code = next(c for c in ("MON", "LYT", "EOS") if c != pts.features.loc[0, "label"])
    panel.reassign([0], code)
    np.testing.assert_allclose(mask_colour(pts.features.loc[0, "cell_id"]), L.class_colours([code])[0], atol=1e-6)

    viewer.reset_view()
    before = viewer.camera.zoom
    cid = panel.review_step(+1)
    i = int(np.flatnonzero(pts.features["cell_id"].to_numpy() == cid)[0])
    assert viewer.camera.zoom > 1.5 * before  # zoomed in on the cell, not just centred
    side = float(pts.features.loc[i, "bbox_x1"] - pts.features.loc[i, "bbox_x0"])
    h, wd = L.canvas_size(viewer)
    assert side * viewer.camera.zoom <= min(h, wd)  # the whole cell is in view
    zoom = viewer.camera.zoom
    panel.review_step(+1)
    assert viewer.camera.zoom >= zoom  # never zooms back out


def test_panel_fits_its_dock_with_the_caveat_beside_the_blast_number(viewer, qtbot, bccd_jpeg, classifier_path):
    """At a dock's usual width (368 px) and height (720 px) nothing is clipped: the CI
    column shows whole intervals, the blast line carries its caveat (the shipped model has
    no blast class) at the top, and each tab's controls are in view without scrolling."""
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QApplication

    viewer.open(str(bccd_jpeg), plugin=PLUGIN)
    w, _ = _dock(viewer)
    _configure(w, classifier_path)
    w.run()
    _wait_done(qtbot, w)
    panel = DifferentialPanel(viewer)  # shown on its own: the viewer's window stays hidden
    qtbot.addWidget(panel)
    panel.set_layer(w.points_layer)
    panel.resize(368, 720)
    panel.show()
    qtbot.waitExposed(panel)
    panel.refresh()
    QApplication.processEvents()
    assert panel.minimumSizeHint().width() <= panel.width()

    def in_view(widget):
        page = panel.tabs.currentWidget()
        corner = widget.mapTo(page.widget(), QPoint(widget.width(), widget.height()))
        return corner.x() <= page.viewport().width() and corner.y() <= page.viewport().height()

    # the table: every cell's text fits its column, no sideways scrolling
    t = panel.table
    fm = t.fontMetrics()
    assert t.rowCount() >= 1
    for r in range(t.rowCount()):
        for c in range(t.columnCount()):
            item = t.item(r, c)
            if item is not None and item.text():
                assert fm.horizontalAdvance(item.text()) < t.columnWidth(c), (item.text(), t.columnWidth(c))
    assert t.horizontalScrollBar().maximum() == 0
    # the class column is the legend: each code beside its points' colour
    from qtpy.QtCore import Qt
    for r in range(t.rowCount()):
        code = t.item(r, 0).text()
        assert t.item(r, 0).data(Qt.DecorationRole).name() == colour_of(code).lower()
    # the blast number with its caveat, first thing in view
    blast_line = next(line for line in panel.summary_label.text().split("<br>") if line.startswith("blast"))
    assert "no blast class" in blast_line and "0.0%" not in blast_line
    assert in_view(panel.summary_label)
    # the cell tab: the queue, the crop and the review buttons in view
    panel.tabs.setCurrentIndex(1)
    QApplication.processEvents()
    for widget in (panel.next_button, panel.crop_label, panel.reassign_button, panel.confirm_button):
        assert in_view(widget), widget
    panel.tabs.setCurrentIndex(2)
    QApplication.processEvents()
    for widget in (panel.sign_button, panel.export_button):
        assert in_view(widget), widget


def test_export_dialog_starts_beside_the_image_and_asks_before_replacing(viewer, qtbot, bccd_jpeg,
                                                                         classifier_path, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog, QMessageBox

    w, panel = _analysed_field(viewer, qtbot, bccd_jpeg, classifier_path)
    asked = {}
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda parent, title, start: asked.setdefault("start", start) and str(tmp_path)))
    answers = []
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *a, **k: answers.pop(0)))
    out = panel._export_dialog()
    assert asked["start"] == str(bccd_jpeg.parent.resolve())
    assert out and (tmp_path / "cells.csv").is_file()  # an empty folder: no question
    before = (tmp_path / "cells.csv").stat().st_mtime_ns
    answers.append(QMessageBox.No)
    assert panel._export_dialog() is None and not answers
    assert (tmp_path / "cells.csv").stat().st_mtime_ns == before  # kept
    answers.append(QMessageBox.Yes)
    assert panel._export_dialog()


def test_panel_follows_a_theme_change(viewer, qtbot, bccd_jpeg, classifier_path):
    from matplotlib.colors import to_hex

    from napari.utils.theme import get_theme

    w, panel = _analysed_field(viewer, qtbot, bccd_jpeg, classifier_path)
    for theme in ("light", "dark"):
        viewer.theme = theme
        th = get_theme(theme)
        fig = _drawn_chart(qtbot, panel.chart)
        assert to_hex(fig.get_facecolor()) == th.background.as_hex()
        assert to_hex(fig.axes[0].title.get_color()) == th.text.as_hex()


def test_closing_the_analyze_dock_cancels_its_run(viewer, qtbot, data_dir, classifier_path):
    from helpers import build_mosaic

    img, _ = build_mosaic(6, 6, "bccd", split=("test", "val", "train"), seed=0)
    viewer.add_image(img, rgb=True, name="mosaic")
    dock, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Analyze smear")
    _configure(w, classifier_path)
    assert w.run()
    qtbot.waitUntil(lambda: w.status.value.startswith("detecting"), timeout=60_000)
    dock.close()
    _wait_done(qtbot, w, timeout=30)
    assert w.status.value == "cancelled" and w.result is None
    assert _open_progress() == []
    assert gc.get_freeze_count() == 0  # the heap frozen for the run is collectable again


@pytest.mark.slow
def test_event_loop_keeps_running_during_a_run_on_a_12x12_mosaic(viewer, qtbot, data_dir, classifier_path):
    """A timer probe on the GUI thread during a whole run (detection, streaming cells,
    masks, area map), started once the dock has imported the libraries a run needs in
    the background (as while a user sets up the run). Our own work runs in workers (the
    pipeline, the histogram's drawing, the masks layer itself) and the heap that existed
    before the run is hidden from the garbage collector's full passes (one walking it
    stalls every thread ~0.35 s here); what is left on the GUI thread is napari adding
    each layer, one per turn of the event loop. On the 2-core CPU the longest gaps are
    napari adding the masks layer (0.17-0.20 s) and the area map (0.13-0.15 s); the bound
    leaves room for a loaded machine yet fails on a full collection's stall."""
    import time

    from qtpy.QtCore import QTimer

    from helpers import build_mosaic
    from napari_bm_cells.gui.widget import LIBRARIES_READY

    img, _ = build_mosaic(12, 12, "bccd", split=("test", "val", "train"), seed=0)  # 5760 x 7680
    viewer.add_image(img, rgb=True, name="mosaic")
    w, _ = _dock(viewer)
    _configure(w, classifier_path)
    qtbot.waitUntil(LIBRARIES_READY.is_set, timeout=120_000)
    ticks = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    w.run()
    assert gc.get_freeze_count() > 0  # the heap before the run is out of the collector's way
    _wait_done(qtbot, w, timeout=600)
    qtbot.wait(300)
    timer.stop()
    assert w.last_error is None and w.labels_layer is not None and w.labels_layer.multiscale
    assert gc.get_freeze_count() == 0
    gaps = np.diff(ticks)
    print(f"event-loop gaps: max {gaps.max():.3f} s, {int((gaps > 0.2).sum())} over 0.2 s")
    assert gaps.max() < 0.3, gaps.max()


def test_widget_fields_come_from_the_analysis_options(viewer):
    """Untouched, the widget's settings are the command line's defaults (one declaration)."""
    import argparse

    from napari_bm_cells.options import add_flags, from_flags, user_options

    w, _ = _dock(viewer)
    p = argparse.ArgumentParser()
    add_flags(p)
    assert w.options() == from_flags(p.parse_args([]))
    for name, _, o in user_options():
        if o.in_widget:
            assert getattr(w, name).tooltip.startswith(o.help)
    assert list(w.colour.choices) == ["standardise", "white-balance", "off"]
    assert list(w.class_prior.choices) == ["off", "slide"] and w.class_prior.value == "off"
    w.target.value, w.cell_px.value, w.level.value, w.colour.value = 300, 90.0, "1", "off"
    w.class_prior.value = "slide"
    opts = w.options()
    assert (opts.target, opts.cell_px, opts.level, opts.colour, opts.class_prior) == (300, 90.0, 1, "off", "slide")
