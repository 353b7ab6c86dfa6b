"""napari measurements of the benchmarks, each in a fresh process with a display
(a private Xvfb when none is set): ``python _napari_tasks.py NAME JSON``.

- ``event_loop``: a timer probe on the GUI thread (every 20 ms) during a whole run of
  the *Analyze smear* widget on a 12x12 mosaic of real BCCD fields (5760 x 7680),
  started once the dock has imported the libraries a run needs (as while a user sets
  up the run); reports the longest gaps between ticks.
- ``big_table``: a 100,000-cell ``cells.csv`` (the cells of a real analysis repeated
  across a large virtual slide) opened through the plugin's reader with the
  *Differential count* panel docked; then reassigning one cell and recounting.

Prints one JSON line (the last line of stdout).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "tests"))

PLUGIN = "napari-bm-cells"


def _viewer():
    from helpers import ensure_display

    if not ensure_display():
        raise RuntimeError("no X display: install xvfb (apt-get install xvfb)")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import napari

    return napari.Viewer(show=False)


def _wait(app, done, timeout):
    end = time.perf_counter() + timeout
    while not done():
        if time.perf_counter() > end:
            raise TimeoutError("timed out")
        app.processEvents()
        time.sleep(0.005)


def event_loop(classifier=None, rows=12, cols=12):
    import numpy as np
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from helpers import build_mosaic
    from napari_bm_cells.gui.widget import LIBRARIES_READY

    img, _ = build_mosaic(rows, cols, "bccd", split=("test", "val", "train"), seed=0)
    viewer = _viewer()
    app = QApplication.instance()
    viewer.add_image(img, rgb=True, name="mosaic")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Analyze smear")
    viewer.window.add_plugin_dock_widget(PLUGIN, "Differential count")
    w.device.value = "cpu"
    if classifier:
        w.classifier.value, w.classifier_file.value = "file", str(classifier)
    _wait(app, LIBRARIES_READY.is_set, 300)
    ticks = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    t = time.perf_counter()
    w.run()
    _wait(app, lambda: not w.running, 900)
    wall = time.perf_counter() - t
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.005)
    timer.stop()
    gaps = np.diff(ticks)
    out = {"image_shape": list(img.shape[:2]), "n_cells": int(w.result.summary["n_cells"]),
           "run_wall_s": round(wall, 2), "max_gap_s": round(float(gaps.max()), 3),
           "gaps_over_0.2_s": int((gaps > 0.2).sum()), "gaps_over_0.1_s": int((gaps > 0.1).sum()),
           "longest_gaps_s": [round(float(g), 3) for g in sorted(gaps)[-5:][::-1]], "error": w.last_error}
    viewer.close()
    return out


def big_table(n=100_000, classifier=None, workdir="/tmp"):
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from helpers import build_mosaic
    from napari_bm_cells.export import write_cells_csv, write_summary_json
    from napari_bm_cells.pipeline import analyze

    img, _ = build_mosaic(4, 6, "bccd", split=("test", "val"), seed=1)
    res = analyze(img, classifier=classifier, device="cpu")
    cells = res.cells
    reps = -(-n // len(cells))
    H, W = img.shape[:2]
    side = int(np.ceil(np.sqrt(reps)))
    k = np.repeat(np.arange(reps), len(cells))[:n]
    big = cells.iloc[np.tile(np.arange(len(cells)), reps)[:n]].reset_index(drop=True)
    dx, dy = W * (k % side), H * (k // side)  # copy k sits in tile (k // side, k % side)
    for cols, shift in ((("x", "bbox_x0", "bbox_x1"), dx), (("y", "bbox_y0", "bbox_y1"), dy)):
        for c in cols:
            if c in big:
                big[c] = big[c].to_numpy() + shift
    big["cell_id"] = np.arange(1, n + 1)
    out_dir = Path(workdir) / f"big_table_{n}"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {**res.summary, "n_cells": n, "image_shape": [H * side, W * side]}
    write_cells_csv(big, out_dir / "cells.csv", summary.get("mpp"))
    write_summary_json(summary, out_dir / "summary.json")

    viewer = _viewer()
    app = QApplication.instance()
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Differential count")
    t = time.perf_counter()
    layers = viewer.open(str(out_dir / "cells.csv"), plugin=PLUGIN)
    _wait(app, lambda: panel.summary is not None and panel.summary.get("n_cells") == n, 120)
    t_open = time.perf_counter() - t
    layer = layers[0]
    codes = [c for c in panel.summary["counts"] if panel.summary["counts"][c]] or ["LYT"]
    times = []
    for r in range(5):
        i = int(r * 9973 % n)
        code = codes[r % len(codes)]
        t = time.perf_counter()
        panel.reassign([i], code)
        panel.refresh()
        times.append(time.perf_counter() - t)
        assert layer.features["label"].iloc[i] == code
    out = {"n_cells": n, "open_with_panel_s": round(t_open, 2),
           "reassign_and_recount_s_median": round(float(np.median(times)), 3),
           "reassign_and_recount_s": [round(v, 3) for v in times]}
    viewer.close()
    return out


TASKS = {"event_loop": event_loop, "big_table": big_table}

if __name__ == "__main__":
    print(json.dumps(TASKS[sys.argv[1]](**json.loads(sys.argv[2]))))
