"""Make docs/images/screenshot.png: napari with a real smear, the analysis and the panel.

Usage::

    python docs/screenshot.py [--classifier PATH] [--field] [--out docs/images/screenshot.png]
    python docs/screenshot.py --review --out docs/images/review.png
    python docs/screenshot.py --panel --out docs/images/panel.png
    python docs/screenshot.py --report --out docs/images/report.png

Opens napari, loads real smear fields (by default a 2 x 3 mosaic of BCCD fields from the
real-data folder, ``--field`` for the single BCCD sample field), runs "Analyze smear"
with the shipped models (or ``--classifier``), selects a cell so the inspector shows
it, and saves the whole window including the docks. ``--review`` shows the review tools
instead: the Cell gallery of the commonest class and the Grad-CAM attribution layer of
the selected cell, zoomed in on it; ``--panel`` the *Differential count* panel alone at a
dock's usual size (368 x 720 px); ``--report`` the HTML report of the 3 x 4 mosaic,
photographed by headless Chromium (no napari). Needs OpenGL and a real X window: without a display
it starts Xvfb, and Qt's ``xcb`` platform needs its X libraries::

    apt-get install xvfb libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
        libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0

(``--platform offscreen`` runs without them, but napari's canvas then stays empty.)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# the real-data mosaics and pyramid writers the tests use (tests/helpers.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

ROOT = Path(__file__).resolve().parents[1]


def ensure_display() -> None:
    """Use ``$DISPLAY``, else start a private Xvfb that ends with this process."""
    from helpers import ensure_display as _ensure

    if not _ensure(150):
        sys.exit("no display and no Xvfb: run on a desktop or install xvfb (apt-get install xvfb)")


def _process(app, seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.02)


def report_screenshot(out: Path, classifier=None) -> Path:
    """The report of the shipped models' analysis of a 3 x 4 mosaic of BCCD test fields."""
    import tempfile

    from helpers import build_mosaic
    from PIL import Image

    from napari_bm_cells.pipeline import analyze
    from napari_bm_cells.report import chromium_screenshot, write_report

    img, _ = build_mosaic(3, 4, "bccd", split="test", seed=4)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "bccd_mosaic_3x4.png"
        Image.fromarray(img).save(src)
        res = analyze(str(src), classifier=classifier)
        write_report(res.cells, res.summary, Path(tmp) / "report.html", slide=res.slide,
                     area_scores=res.areas.scores)
        chromium_screenshot(Path(tmp) / "report.html", out, size=(1000, 1400))
    print(f"{out}: {res.summary['n_counted']} of {len(res.cells)} cells counted")
    return out


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classifier", help="checkpoint (.safetensors); default: the shipped one")
    ap.add_argument("--field", action="store_true", help="one BCCD field instead of a mosaic")
    ap.add_argument("--out", default=str(ROOT / "docs" / "images" / "screenshot.png"))
    ap.add_argument("--size", default="1800x1350", help="window size WxH")
    ap.add_argument("--review", action="store_true", help="gallery and attribution map instead")
    ap.add_argument("--panel", action="store_true", help="the differential panel alone, 368 x 720 px")
    ap.add_argument("--platform", default="xcb", help="Qt platform (default xcb: a real X window)")
    ap.add_argument("--report", action="store_true", help="the HTML report of a 3 x 4 mosaic (Chromium)")
    args = ap.parse_args(argv)
    if args.report:
        return report_screenshot(Path(args.out), args.classifier)

    ensure_display()
    os.environ["QT_QPA_PLATFORM"] = args.platform
    import napari_bm_cells.gui.widget  # noqa: F401 -- keeps triton away from Mesa's LLVM

    import napari
    from napari.settings import get_settings
    from qtpy.QtCore import QRect
    from qtpy.QtWidgets import QApplication

    get_settings().application.gui_notification_level = "none"  # no toasts over the canvas
    # not shown: grab() then renders the OpenGL canvas into the picture through an
    # offscreen framebuffer (a shown offscreen-platform window composes it black)
    viewer = napari.Viewer(show=False, title="napari-bm-cells")
    app = QApplication.instance()
    w, h = (int(v) for v in args.size.split("x"))
    viewer.window._qt_window.resize(w, h)
    if args.field:
        from napari_bm_cells.gui.sample_data import bccd_field

        [(data, kw, _)] = bccd_field()
        image = viewer.add_image(data, **kw)
    else:
        from helpers import build_mosaic

        rows, cols = (3, 4) if args.review else (2, 3)
        img, _ = build_mosaic(rows, cols, "bccd", split="test", seed=4)
        image = viewer.add_image(img, rgb=True, name=f"BCCD fields ({rows} x {cols} mosaic)")
    _, widget = viewer.window.add_plugin_dock_widget("napari-bm-cells", "Analyze smear")
    _, panel = viewer.window.add_plugin_dock_widget("napari-bm-cells", "Differential count")
    widget.image.value = image
    if args.classifier:
        widget.classifier.value = "file"
        widget.classifier_file.value = str(Path(args.classifier).resolve())
    if not widget.run():
        sys.exit(f"analysis did not start: {widget.last_error}")
    t0 = time.time()
    while widget.running and time.time() - t0 < 600:
        _process(app, 0.1)
    if widget.result is None:
        sys.exit(f"analysis failed: {widget.last_error or widget.status.value}")
    pts = widget.points_layer
    if len(pts.data):
        conf = pts.features["confidence"].to_numpy()
        pts.selected_data = {int(conf.argmax())}
        panel.update_inspector()
    if args.review and len(pts.data):
        _, gallery = viewer.window.add_plugin_dock_widget("napari-bm-cells", "Cell gallery")
        gallery.set_class(str(pts.features["label"].value_counts().index[0]))
        panel.explain_selected("gradcam")
        t0 = time.time()
        while (panel._explain_worker is not None or not gallery.loaded()) and time.time() - t0 < 120:
            _process(app, 0.1)
    if args.panel:
        from napari_bm_cells.gui.panel import DifferentialPanel

        alone = DifferentialPanel(viewer)
        alone.set_layer(pts)
        alone.resize(368, 720)
        alone.show()
        _process(app, 0.5)
        alone.refresh()
        _process(app, 1.0)
        out = Path(args.out)
        alone.grab().save(str(out))
        print(f"{out}: the panel of {len(pts.data)} cells")
        alone.close()
        viewer.close()
        return out
    # Lay the unshown window out at its size without painting the OpenGL canvas (grab a
    # pixel of the menu bar), fit the view, then grab once.
    viewer.window._qt_window.grab(QRect(0, 0, 1, 1))
    _process(app, 0.3)
    viewer.reset_view()
    if args.review and len(pts.data):  # close-up of the explained cell
        from napari_bm_cells.gui.layers import focus_cell

        focus_cell(viewer, pts, next(iter(pts.selected_data)))
        viewer.camera.zoom *= 1.5
    _process(app, 1.0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.window._qt_window.grab().save(str(out))
    print(f"{out}: {len(pts.data)} cells; {widget.status.value}")
    viewer.close()
    return out


if __name__ == "__main__":
    main()
