"""Batch analysis of a folder (napari_bm_cells.batch, ``bm-cells batch``) on real BCCD fields."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from napari_bm_cells.batch import MARKER, batch, read_cohort
from helpers import build_mosaic, write_ome_zarr

GOOD = ["a1.jpg", "a2.jpg", "sub/a3.jpg", "sub/mosaic.ome.zarr"]


@pytest.fixture(scope="module")
def slides(data_dir, tmp_path_factory) -> Path:
    """3 real BCCD fields, a 2x2-field OME-Zarr mosaic, a truncated JPEG and a text file."""
    d = tmp_path_factory.mktemp("slides")
    src = data_dir / "bccd" / "JPEGImages"
    (d / "sub").mkdir()
    shutil.copy(src / "BloodImage_00001.jpg", d / "a1.jpg")
    shutil.copy(src / "BloodImage_00002.jpg", d / "a2.jpg")
    shutil.copy(src / "BloodImage_00003.jpg", d / "sub" / "a3.jpg")
    write_ome_zarr(build_mosaic(2, 2, seed=3)[0], d / "sub" / "mosaic.ome.zarr", n_levels=2, chunk=256)
    raw = (src / "BloodImage_00004.jpg").read_bytes()
    (d / "corrupt.jpg").write_bytes(raw[: len(raw) // 2])
    (d / "notes.txt").write_text("slide list, not an image\n")
    return d


@pytest.fixture(scope="module")
def serial(slides, detector, classifier, tmp_path_factory):
    """Reference: an in-process (workers=1) run with the session's models."""
    out = tmp_path_factory.mktemp("serial")
    df = batch(slides, out, workers=1, detector=detector, classifier=classifier, progress=False)
    return out, df


def _cells(out: Path, rel: str) -> bytes:
    return (out / "slides" / (rel + ".out") / "cells.csv").read_bytes()


def test_batch_cohort_errors_skipped(serial, classifier):
    out, df = serial
    assert list(df["slide"]) == ["a1.jpg", "a2.jpg", "corrupt.jpg", "sub/a3.jpg", "sub/mosaic.ome.zarr"]
    assert dict(zip(df["slide"], df["status"])) == {**{s: "done" for s in GOOD}, "corrupt.jpg": "error"}
    codes = classifier.classes + (["UNK"] if classifier.meta.min_confidence else [])
    assert list(df.columns) == (["slide", "status", "output", "n_cells", "n_counted"]
                                + [f"count_{c}" for c in codes] + [f"pct_{c}" for c in codes]
                                + ["blast_pct", "atypical_pct", "me_ratio"])
    good = df[df["status"] == "done"]
    for row in good.itertuples():
        cells = pd.read_csv(out / row.output / "cells.csv")
        summary = json.loads((out / row.output / "summary.json").read_text())
        assert row.n_cells == len(cells) == summary["n_cells"]
        assert sum(getattr(row, f"count_{c}") for c in codes) == len(cells)
        for c in codes:
            assert getattr(row, f"count_{c}") == int((cells["label"] == c).sum())
        assert (out / row.output / MARKER).is_file()
        # the same files as `analyze` writes: QuPath cells (one per row) and the report
        gj = json.loads((out / row.output / "cells.geojson").read_text())
        assert len(gj["features"]) == len(cells)
        assert f"{summary['n_counted']} cells counted" in (out / row.output / "report.html").read_text()
    cohort_page = (out / "cohort.html").read_text()
    for row in good.itertuples():  # the cohort page links each slide's report
        assert f'href="{row.output}/report.html"' in cohort_page
    assert "corrupt.jpg" not in cohort_page
    assert good["n_cells"].sum() >= 4  # every real field holds a white cell
    assert df.loc[df["slide"] == "corrupt.jpg", "n_cells"].isna().all()
    # the table on disk is the one returned
    pd.testing.assert_frame_equal(read_cohort(out / "cohort.csv"), df, check_exact=False, rtol=1e-5)

    err = pd.read_csv(out / "errors.csv")
    assert list(err.columns) == ["slide", "error"] and list(err["slide"]) == ["corrupt.jpg"]
    assert "corrupt.jpg" in err["error"][0] and "\n" not in err["error"][0]
    assert "truncated" in err["error"][0] or "damaged" in err["error"][0]
    skipped = pd.read_csv(out / "skipped.csv")
    assert list(skipped["path"]) == ["notes.txt"]
    assert df.attrs["batch"] == {"n_slides": 5, "n_done": 4, "n_reused": 0, "n_failed": 1, "n_skipped": 1}
    assert not list(out.rglob("*.tmp"))


def test_rerun_reuses_and_detects_changes(serial, slides, detector, classifier, data_dir, tmp_path):
    ref_out, ref = serial
    folder, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(slides, folder)
    shutil.copytree(ref_out, out)  # outputs of a run over an identical folder
    markers = {p: p.read_bytes() for p in out.rglob(MARKER)}
    err_json = (out / "slides" / "corrupt.jpg.out" / "error.json").read_bytes()
    df = batch(folder, out, workers=1, detector=detector, classifier=classifier, progress=False)
    assert df.attrs["batch"]["n_reused"] == 4
    assert {p: p.read_bytes() for p in out.rglob(MARKER)} == markers  # nothing redone
    assert (out / "slides" / "corrupt.jpg.out" / "error.json").read_bytes() == err_json  # not retried
    pd.testing.assert_frame_equal(df, ref)

    # a changed slide, a damaged output and a stale temp file are not trusted
    shutil.copy(data_dir / "bccd" / "JPEGImages" / "BloodImage_00010.jpg", folder / "a1.jpg")
    with open(out / "slides" / "a2.jpg.out" / "cells.csv", "a") as f:
        f.write("999,1,1\n")
    (out / "slides" / "sub" / "a3.jpg.out" / ".cells.csv.x1y2.tmp").write_text("half")
    df = batch(folder, out, workers=1, detector=detector, classifier=classifier, progress=False)
    assert df.attrs["batch"]["n_reused"] == 2  # a3 and the mosaic
    assert _cells(out, "a2.jpg") == _cells(ref_out, "a2.jpg")
    done = json.loads((out / "slides" / "a1.jpg.out" / MARKER).read_text())
    before = json.loads((ref_out / "slides" / "a1.jpg.out" / MARKER).read_text())
    assert done["input"]["sha256"] != before["input"]["sha256"]
    assert not list(out.rglob("*.tmp"))
    # other settings: nothing is reused
    from napari_bm_cells.pipeline import AnalysisOptions
    df = batch(folder, out, workers=1, detector=detector, classifier=classifier, progress=False,
               glob="a2.jpg", options=AnalysisOptions(tile_size=512, overlap=128))
    assert list(df["slide"]) == ["a2.jpg"] and df.attrs["batch"]["n_reused"] == 0


def _cli(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return [sys.executable, "-m", "napari_bm_cells", *args], env


@pytest.mark.slow
def test_sigkill_then_resume(serial, slides, classifier_path, tmp_path):
    """SIGKILL a CLI batch after its first finished slide; the re-run finishes the rest once."""
    ref_out, ref = serial
    out = tmp_path / "out"
    cmd, env = _cli("batch", str(slides), "--out", str(out), "--workers", "1", "-q",
                    "--classifier", str(classifier_path))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = out / "slides" / "a1.jpg.out" / MARKER
    t0 = time.monotonic()
    while not first.exists() and proc.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    stdout, stderr = proc.communicate()
    assert first.exists(), stderr.decode()[-2000:]
    killed_mid_way = proc.returncode == -signal.SIGKILL
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob(MARKER)}
    if killed_mid_way:
        assert len(before) < 4
    print(f"killed mid-way: {killed_mid_way}, slides finished before the kill: {len(before)}")

    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    # finished slides were not redone; every slide now has exactly one trusted result
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob(MARKER)}
    assert {k: after[k] for k in before} == before
    assert sorted(str(k.parent) for k in after) == sorted(f"slides/{s}.out" for s in GOOD)
    cohort = read_cohort(out / "cohort.csv")
    assert list(cohort["slide"]) == list(ref["slide"])
    pd.testing.assert_frame_equal(cohort, read_cohort(ref_out / "cohort.csv"))
    for s in GOOD:
        assert _cells(out, s) == _cells(ref_out, s), s
    assert not list(out.rglob("*.tmp"))
    assert f"{len(before)} reused" in res.stdout


def _load_count():
    from napari_bm_cells import runtime  # the worker's module, not a pickled copy

    return runtime.LOAD_COUNT["n"]


@pytest.mark.slow
def test_local_cluster_matches_serial(serial, slides, classifier_path, detector, tmp_path):
    """Two dask worker processes: same cohort as the serial run; models loaded once per worker."""
    distributed = pytest.importorskip("distributed")
    _, ref = serial
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        df = batch(slides, tmp_path / "out", client=client, detector=detector.weights,
                   classifier=classifier_path, device="cpu", progress=False)
        loads = client.run(_load_count)
    # one detector and one classifier per worker, loaded for its first slide only
    assert all(n <= 2 for n in loads.values()) and sum(loads.values()) >= 2, loads
    pd.testing.assert_frame_equal(df, ref, check_exact=False, rtol=1e-4)
    pd.testing.assert_frame_equal(read_cohort(tmp_path / "out" / "cohort.csv"),
                                  read_cohort(serial[0] / "cohort.csv"), check_exact=False, rtol=1e-4)


def test_headless_napari(slides, detector, classifier, tmp_path):
    """A folder through napari's API without a window: open each slide with our reader,
    analyse the layer's data, write the results and open cells.csv with our reader.

    ``napari.Viewer(show=False)`` needs an OpenGL context even offscreen (absent on this
    test machine), so this uses the viewer's model, which has the same layer API; it needs
    the plugins discovered (``napari.Viewer`` does that itself).
    """
    pytest.importorskip("napari")
    npe2 = pytest.importorskip("npe2")
    from napari.components import ViewerModel

    from napari_bm_cells.export import write_results
    from napari_bm_cells.pipeline import analyze

    npe2.PluginManager.instance().discover()
    viewer = ViewerModel()
    for rel in ("a1.jpg", "sub/mosaic.ome.zarr"):
        (layer,) = viewer.open(slides / rel, plugin="napari-bm-cells")
        data = list(layer.data) if layer.multiscale else layer.data
        res = analyze(data, detector=detector, classifier=classifier)
        paths = write_results(res, tmp_path / rel)
        (points,) = viewer.open(paths["cells"], plugin="napari-bm-cells")
        assert len(points.data) == len(res.cells) >= 1
    assert [ly._type_string for ly in viewer.layers] == ["image", "points"] * 2
    assert viewer.layers[2].multiscale


def test_a_second_batch_into_the_same_folder_is_refused(slides, tmp_path):
    """One batch per output folder at a time: a held lock gives one line naming the folder."""
    from filelock import FileLock

    from napari_bm_cells.batch import LOCK
    from napari_bm_cells.errors import InputError

    out = tmp_path / "out"
    out.mkdir()
    with FileLock(out / LOCK):
        with pytest.raises(InputError, match="another 'bm-cells batch' is writing into this folder"):
            batch(slides, out, progress=False)
