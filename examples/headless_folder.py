"""Analyse every slide of a folder through napari without a window.

    python examples/headless_folder.py SLIDES_FOLDER OUT_FOLDER

A ``napari.Viewer(show=False)`` opens each slide with the plugin's reader, the plugin's
"Analyze smear" widget analyses it (as a user's click would, progress and all), and the
"Differential count" panel exports cells.csv, summary.json, GeoJSON, report.html and the histogram
into ``OUT_FOLDER/<slide name>/``. Files that are not slides, and slides that cannot be
read, are skipped with a line saying why. Needs an
OpenGL context: a desktop session, or ``xvfb-run python examples/headless_folder.py ...``
on a server.
"""
import sys
from pathlib import Path

import napari

from napari_bm_cells.io import is_slide_path

PLUGIN = "napari-bm-cells"


def main(folder: Path, out: Path) -> int:
    viewer = napari.Viewer(show=False)
    _, analyze = viewer.window.add_plugin_dock_widget(PLUGIN, "Analyze smear")
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Differential count")
    analyze.device.value = "cpu"
    n = 0
    for path in sorted(folder.iterdir()):
        if not is_slide_path(path):
            print(f"skipped {path.name}: not a slide")
            continue
        viewer.layers.clear()
        try:  # a bad file is reported and skipped, as `bm-cells batch` does
            (image,) = viewer.open(path, plugin=PLUGIN)
            analyze.image.value = image
            result = analyze.run_and_wait()
        except Exception as exc:  # noqa: BLE001
            msg = str(exc).strip().splitlines()
            print(f"skipped {path.name}: {msg[0] if msg else type(exc).__name__}")
            continue
        panel.set_layer(analyze.points_layer)
        panel.export(out / path.name)
        print(f"{path.name}: {len(result.cells)} cells -> {out / path.name}")
        n += 1
    # let the widgets' background threads (histogram drawings) finish before the viewer
    # and the process go: a thread still running at exit aborts Python
    from qtpy.QtCore import QThreadPool
    from qtpy.QtWidgets import QApplication

    QThreadPool.globalInstance().waitForDone(60_000)
    QApplication.processEvents()
    viewer.close()
    return n


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
