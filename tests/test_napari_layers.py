"""Headless tests of the napari plugin's Qt-free parts: manifest, readers, sample data,
layer functions, region maths and exports (napari layer models, no window)."""
from __future__ import annotations

from pathlib import Path
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")

from napari_bm_cells.gui import layers as L  # noqa: E402
from napari_bm_cells.count import differential  # noqa: E402
from napari_bm_cells.errors import InputError  # noqa: E402
from napari_bm_cells.taxonomy import PALETTE  # noqa: E402


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def mosaic_result(data_dir, classifier, detector):
    """A headless analysis of a 1x4 mosaic of real BCCD fields (masks on)."""
    from napari_bm_cells.pipeline import AnalysisOptions, analyze
    from helpers import build_mosaic

    img, boxes = build_mosaic(1, 4, "bccd", seed=3)
    res = analyze(img, detector=detector, classifier=classifier,
                  options=AnalysisOptions(masks=True), device="cpu")
    assert len(res.cells) >= 2, "expected several white cells in four real fields"
    return img, res


@pytest.fixture(scope="module")
def ome_zarr(tmp_path_factory, data_dir):
    from helpers import build_mosaic, write_ome_zarr

    img, _ = build_mosaic(2, 2, "bccd", seed=1)
    path = write_ome_zarr(img, tmp_path_factory.mktemp("zarr") / "mosaic.ome.zarr", n_levels=3,
                          chunk=256, mpp=0.25)
    return img, path


# --------------------------------------------------------------------------- manifest
def test_npe2_validate():
    from npe2 import PluginManifest

    pm = PluginManifest._from_package_or_name("napari-bm-cells")
    pm.validate_imports()
    kinds = {c.command for c in pm.contributions.readers}
    assert {"napari-bm-cells.get_slide_reader", "napari-bm-cells.get_results_reader"} <= kinds
    assert {w.display_name for w in pm.contributions.widgets} == {"Analyze smear", "Differential count",
                                                                  "Cell gallery"}
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-bm-cells"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


# --------------------------------------------------------------------------- readers
def test_slide_reader_jpeg(bccd_jpeg):
    from napari_bm_cells.gui.reader import get_slide_reader

    reader = get_slide_reader(str(bccd_jpeg))
    assert callable(reader)
    [(data, kw, kind)] = reader(str(bccd_jpeg))
    assert kind == "image" and kw["rgb"] and not kw["multiscale"]
    assert data.shape == (480, 640, 3) and data.dtype == np.uint8
    assert kw["scale"] == (1.0, 1.0)
    assert get_slide_reader("notes.txt") is None


def test_slide_reader_ome_zarr_multiscale(ome_zarr):
    from napari.layers import Image

    from napari_bm_cells.gui.reader import get_slide_reader

    img, path = ome_zarr
    [(data, kw, kind)] = get_slide_reader(str(path))(str(path))
    assert kw["multiscale"] and len(data) == 3
    assert [tuple(a.shape[:2]) for a in data] == [(960, 1280), (480, 640), (240, 320)]
    assert kw["scale"] == pytest.approx((0.25, 0.25))
    # lazy: the levels are dask arrays, read on demand
    assert type(data[0]).__module__.startswith("dask")
    layer = Image(data, **kw)
    slide = L.layer_slide(layer)
    assert slide.shape == (960, 1280) and slide.mpp == pytest.approx(0.25)
    assert slide.downsamples == [1.0, 2.0, 4.0]
    np.testing.assert_array_equal(slide.read_region(100, 200, 140, 260), img[100:140, 200:260])


def test_results_reader_ignores_other_csv(tmp_path):
    from napari_bm_cells.gui.reader import get_results_reader

    p = tmp_path / "other.csv"
    p.write_text("a,b\n1,2\n")
    assert get_results_reader(str(p)) is None


# --------------------------------------------------------------------------- sample data
def test_sample_data_offline_fallback(monkeypatch, data_dir):
    import pooch

    from napari_bm_cells.gui import sample_data

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(pooch, "retrieve", offline)
    [(data, kw, kind)] = sample_data.bccd_field()
    assert kind == "image" and data.shape == (480, 640, 3)
    # compare canonical paths: the data folder may be reached through a symlink
    assert Path(kw["metadata"]["bm_cells"]["path"]).resolve().is_relative_to(data_dir.resolve())
    monkeypatch.setenv("BM_CELLS_DATA", str(data_dir / "no-such-folder"))
    with pytest.raises(InputError, match="download failed.*internet"):
        sample_data.bccd_field()


# --------------------------------------------------------------------------- layers
def test_points_layer_features_colours_and_counts(mosaic_result):
    from napari.layers import Points

    img, res = mosaic_result
    cells = res.cells
    kw = L.points_kwargs(cells, name="cells", summary=res.summary)
    layer = Points(**kw)
    assert len(layer.data) == len(cells)
    for col in ["cell_id", "label", "confidence", "p_blast", "p_atypical", "reviewed"]:
        assert col in layer.features.columns
    assert [c for c in layer.features.columns if c.startswith("prob_")] == \
        [f"prob_{c}" for c in res.summary["classifier"]["classes"]]
    assert not layer.features["reviewed"].any()
    # napari centres pixel k on k: level-0 (x, y) -> data (y - 0.5, x - 0.5)
    np.testing.assert_allclose(layer.data[:, 1] + 0.5, cells["x"])
    for lab, col in zip(layer.features["label"], layer.face_color):
        np.testing.assert_allclose(col, L._rgba(PALETTE[lab]), atol=1e-6)
    # the layer's differential is count.differential of its features
    d = L.layer_differential(layer)
    assert d["counts"] == differential(cells["label"], res.summary["classifier"]["classes"])["counts"]
    assert d["counts"] == res.summary["counts"]

    # reassign: label, reviewed and colour change; the counts follow
    before = d["counts"].copy()
    L.reassign(layer, [0], "BLA")
    assert layer.features.loc[0, "label"] == "BLA" and layer.features.loc[0, "reviewed"]
    np.testing.assert_allclose(layer.face_color[0], L._rgba(PALETTE["BLA"]), atol=1e-6)
    after = L.layer_differential(layer)["counts"]
    assert after["BLA"] == 1 and sum(after.values()) == sum(before.values())
    # delete keeps features and colours aligned
    n = len(layer.data)
    L.delete_cells(layer, [0])
    assert len(layer.data) == len(layer.features) == len(layer.face_color) == n - 1
    assert "BLA" not in set(layer.features["label"])


def test_append_cells_in_batches_equals_whole(mosaic_result):
    from napari.layers import Points

    _, res = mosaic_result
    cells = res.cells
    whole = Points(**L.points_kwargs(cells))
    kw = L.points_kwargs(cells.iloc[:1])
    part = Points(**kw)
    for i in range(1, len(cells)):
        L.append_cells(part, cells.iloc[i:i + 1])
    np.testing.assert_allclose(part.data, whole.data)
    np.testing.assert_allclose(part.face_color, whole.face_color)
    pd.testing.assert_frame_equal(part.features.reset_index(drop=True), whole.features, check_dtype=False)
    L.replace_cells(part, cells.iloc[::-1])
    assert list(part.features["cell_id"]) == list(cells["cell_id"][::-1])


def test_labels_layer_masks(mosaic_result):
    from napari.layers import Image, Labels

    img, res = mosaic_result
    image = Image(img, rgb=True, scale=(0.5, 0.5), translate=(10, 20))
    kw = L.labels_kwargs(res.labels, image)
    lab = Labels(**kw)
    assert lab.data.shape == img.shape[:2]
    assert tuple(lab.scale) == (0.5, 0.5) and tuple(lab.translate) == (10, 20)
    ids = set(np.unique(lab.data)) - {0}
    assert ids and ids <= set(res.cells["cell_id"])
    # each cell's mask covers its centre pixel in most cases
    hits = sum(lab.data[int(r.y), int(r.x)] == r.cell_id for r in res.cells.itertuples())
    assert hits >= 0.5 * len(res.cells)
    # large masks stay lazy, with a pyramid matching the image's
    from napari_bm_cells.io import open_slide

    slide = open_slide([img, img[::2, ::2]])
    kw = L.labels_kwargs(res.labels, image, slide=slide, small=0)
    assert kw["multiscale"] and [a.shape for a in kw["data"]] == [img.shape[:2], img[::2, ::2].shape[:2]]


def test_points_share_the_image_transform(mosaic_result):
    from napari.layers import Image, Points

    img, res = mosaic_result
    image = Image(img, rgb=True, scale=(0.25, 0.25), translate=(5, -7))
    pts = Points(**L.points_kwargs(res.cells, image))
    for i in range(len(res.cells)):
        w = np.asarray(pts.data_to_world(pts.data[i]))
        y, x = np.asarray(image.world_to_data(w)) + 0.5
        assert (x, y) == pytest.approx((res.cells["x"][i], res.cells["y"][i]), abs=1e-6)
    crop = L.cell_crop(image, pts, 0, side=64)
    assert crop.shape == (64, 64, 3)


def test_visible_and_shapes_region():
    from napari.components import ViewerModel

    v = ViewerModel()
    img = np.zeros((1000, 2000, 3), np.uint8)
    layer = v.add_image(img, rgb=True, scale=(0.5, 0.5), translate=(100, 0))
    v.canvas.size = (400, 600)
    cam = v.scene.camera if hasattr(v, "scene") else v.camera
    cam.center = (100 + 250, 500)  # world: level-0 row 500, column 1000
    cam.zoom = 2.0  # 2 screen px per world unit: 200 x 300 world units visible
    # visible data rows 300..700 (napari pixel centres) = level-0 edges 300.5..700.5:
    # partly visible pixels are included
    y0, x0, y1, x1 = L.visible_region(v, layer)
    assert (y0, x0, y1, x1) == (300, 700, 701, 1301)
    cam.center = (150, 0)  # the image's top-left corner region
    assert L.visible_region(v, layer) == (0, 0, 301, 301)  # clipped to the image
    cam.center = (-5000, -5000)
    with pytest.raises(InputError):
        L.visible_region(v, layer)
    shapes = v.add_shapes([np.array([[150, 50], [150, 100], [200, 100], [200, 50]])],
                          shape_type="rectangle")
    assert L.shapes_region(shapes, layer) == (100, 100, 201, 201)


def test_export_and_read_back(mosaic_result, tmp_path):
    from napari.layers import Points

    from napari_bm_cells.gui.reader import get_results_reader

    _, res = mosaic_result
    layer = Points(**L.points_kwargs(res.cells, summary=res.summary, mpp=0.1))
    L.reassign(layer, [0], "MON")
    out = L.export_results(layer, tmp_path / "out")
    assert {p.name for p in out.values()} == {"cells.csv", "summary.json", "cells.geojson",
                                              "differential.png", "report.html"}
    csv = pd.read_csv(out["cells"])
    assert {"x_um", "y_um"} <= set(csv.columns)
    for key in ("cells", "geojson"):
        [(data, kw, kind)] = get_results_reader(str(out[key]))(str(out[key]))
        assert kind == "points"
        np.testing.assert_allclose(data, layer.data, atol=0.01)
        back = kw["features"]
        assert list(back["label"]) == list(layer.features["label"])
        assert list(back["reviewed"]) == list(layer.features["reviewed"])
        assert kw["scale"] == pytest.approx((0.1, 0.1))
        np.testing.assert_allclose(kw["face_color"], layer.face_color)


def test_histogram_lineage_view_rolls_up_the_differential():
    from matplotlib.figure import Figure

    from napari_bm_cells.gui.layers import draw_histogram
    from napari_bm_cells.count import differential

    s = differential(["NGS", "NGS", "NGB", "LYT", "EBO", "MON", "PLT"])
    ax = Figure().add_subplot(111)
    draw_histogram(ax, s, by="lineage")
    heights = [b.get_height() for b in ax.patches]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["erythropoiesis", "granulopoiesis", "lymphopoiesis", "monopoiesis", "other"]
    assert heights == [1, 3, 1, 1, 0]  # PLT is excluded from the count
    draw_histogram(ax, s, by="class")
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert sorted(labels) == ["EBO", "LYT", "MON", "NGB", "NGS", "PLT"]
    assert labels[0] == "NGS"  # most cells first, not alphabetical
    # each counted class has its % above the bar and its 95% CI as a whisker
    texts = [t.get_text() for t in ax.texts]
    assert texts[0] == f"{s['percent']['NGS']:.0f}%" and "excl" in texts
    whiskers = {labels[int(line.get_xdata()[0])]: tuple(line.get_ydata()) for line in ax.lines}
    lo, hi = s["ci95"]["NGS"]
    assert whiskers["NGS"] == pytest.approx((lo * s["n_counted"] / 100, hi * s["n_counted"] / 100))
    assert "PLT" not in whiskers


def test_count_axis_has_whole_cell_ticks_and_the_png_names_the_sample(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from napari_bm_cells import plots
    from napari_bm_cells.count import differential
    from napari_bm_cells.export import write_histogram_png
    from napari_bm_cells.gui.layers import draw_histogram

    s = differential(["NGS", "NGS", "LYT"])  # small counts: matplotlib would tick 0.25, 0.5 ...
    ax = Figure().add_subplot(111)
    draw_histogram(ax, s)
    ticks = [t for t in ax.get_yticks() if 0 <= t <= ax.get_ylim()[1]]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
    titles = []
    real = plots.histogram_png_bytes
    monkeypatch.setattr(plots, "histogram_png_bytes",
                        lambda summary, classes=None, title=None: titles.append(title) or real(summary, classes, title))
    out = write_histogram_png({**s, "input": "/slides/patient 7.svs"}, tmp_path / "h.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert titles[0].startswith("patient 7.svs: 3 cells counted") and "95% CI" in titles[0]


def test_class_colours_are_told_apart_and_from_red_cells():
    """Neighbouring look-alikes get distinct colours (NGS vs EOS, NGS vs NGB, MYB vs MMZ),
    and no white-cell class is drawn in the pink of red cells under the points."""
    from matplotlib.colors import to_rgb

    from napari_bm_cells.taxonomy import colour_of

    def dist(a, b):
        return float(np.linalg.norm(np.subtract(to_rgb(colour_of(a)), to_rgb(colour_of(b)))))

    for a, b in (("NGS", "EOS"), ("NGS", "NGB"), ("MYB", "MMZ"), ("LYT", "MON"), ("BLA", "LYT")):
        assert dist(a, b) > 0.3, (a, b, dist(a, b))
    pink = (0.85, 0.62, 0.66)  # a red cell in a May-Grunwald-Giemsa smear
    for code in ("NGS", "EOS", "LYT", "MON", "BLA", "NGB"):
        assert np.linalg.norm(np.subtract(to_rgb(colour_of(code)), pink)) > 0.3, code


def test_reopened_results_are_named_after_their_image(bccd_jpeg, classifier, detector, tmp_path):
    from napari_bm_cells.gui.reader import results_layer_data
    from napari_bm_cells.export import write_results
    from napari_bm_cells.pipeline import analyze

    res = analyze(bccd_jpeg, detector=detector, classifier=classifier)
    paths = write_results(res, tmp_path / "run-2026-12-02", report=False)
    for key in ("cells", "geojson"):
        _, kw, _ = results_layer_data(paths[key])
        assert kw["name"] == f"{bccd_jpeg.name} cells"  # not "run-2026-12-02 cells"


def test_attribution_layer_keeps_the_images_units(mosaic_result, classifier):
    from napari.layers import Image, Points

    img, res = mosaic_result
    image = Image(img, rgb=True, scale=(0.1, 0.1), units=("micrometer", "micrometer"), name="slide")
    pts = Points(**L.points_kwargs(res.cells, image, name="cells"))
    amap, kw = L.explain_point(image, pts, 0, classifier)
    assert tuple(str(u) for u in kw["units"]) == tuple(str(u) for u in image.units)
    layer = Image(amap, **kw)  # what Explain adds: same units, so napari keeps using them
    assert tuple(layer.units) == tuple(image.units)
