"""A folder through a real ``napari.Viewer(show=False)`` from a script (examples/headless_folder.py):
the plugin's reader, its Analyze widget and its panel's export, no window, no event loop."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from helpers import ensure_display

ROOT = Path(__file__).resolve().parents[1]
ensure_display(97)  # before Qt starts: it reads $DISPLAY once
pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("display")]


@pytest.mark.slow
def test_script_analyses_a_folder_without_a_window(data_dir, tmp_path, detector, classifier):
    from napari_bm_cells.pipeline import analyze
    from helpers import build_mosaic, write_ome_zarr

    folder = tmp_path / "slides"
    folder.mkdir()
    for i in (0, 3):
        shutil.copy(data_dir / "bccd" / "JPEGImages" / f"BloodImage_0000{i}.jpg", folder)
    img, _ = build_mosaic(2, 2, "bccd", seed=5)
    write_ome_zarr(img, folder / "mosaic.ome.zarr")
    (folder / "notes.txt").write_text("not a slide")
    good = (data_dir / "bccd" / "JPEGImages" / "BloodImage_00001.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(good[: len(good) // 3])  # a truncated download
    out = tmp_path / "out"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "headless_folder.py"), str(folder), str(out)],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipped notes.txt: not a slide" in r.stdout
    assert "skipped broken.jpg: " in r.stdout and "broken.jpg" in r.stdout.split("skipped broken.jpg: ")[1]
    names = ["BloodImage_00000.jpg", "BloodImage_00003.jpg", "mosaic.ome.zarr"]
    assert sorted(p.name for p in out.iterdir()) == names
    for name in names:
        files = {p.name for p in (out / name).iterdir()}
        assert {"cells.csv", "summary.json", "cells.geojson", "differential.png"} <= files
        got = pd.read_csv(out / name / "cells.csv")
        want = analyze(folder / name, detector=detector, classifier=classifier, device="cpu").cells
        assert len(got) == len(want) >= 1, name
        assert sorted(got["label"]) == sorted(want["label"]), name
