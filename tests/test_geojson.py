"""cells.geojson for QuPath: valid outlines, one per cell; QuPath's own exports read back."""
import json

import pandas as pd
import pytest
from shapely.geometry import shape

from napari_bm_cells import analyze
from napari_bm_cells.export import read_cells, write_results


@pytest.fixture(scope="module")
def field_runs(data_dir, detector, classifier):
    from helpers import build_mosaic

    img, _ = build_mosaic(1, 3, source="bccd", split="test", seed=2)
    return (analyze(img, detector=detector, classifier=classifier, masks=True),
            analyze(img, detector=detector, classifier=classifier, masks=False))


def test_polygons_are_valid_cell_outlines_one_per_row(field_runs, tmp_path):
    res, _ = field_runs
    paths = write_results(res, tmp_path, report=False)
    cells = pd.read_csv(paths["cells"])
    gj = json.loads(paths["geojson"].read_text())
    assert len(gj["features"]) == len(cells) >= 2
    labels = res.labels[:]
    for f, row in zip(gj["features"], cells.itertuples()):
        p = f["properties"]
        assert p["objectType"] == "cell" and p["cell_id"] == row.cell_id
        assert p["classification"]["name"] == row.label and len(p["classification"]["color"]) == 3
        assert {"confidence", "p_blast", "p_atypical", "area_score"} <= set(p["measurements"])
        poly = shape(f["geometry"])
        assert f["geometry"]["type"] == "Polygon" and poly.is_valid and poly.area > 0
        # the outline is the cell's mask, not its box: same area within a few %
        mask_area = int((labels == row.cell_id).sum())
        assert poly.area == pytest.approx(mask_area, rel=0.08)
        box = (row.bbox_x1 - row.bbox_x0) * (row.bbox_y1 - row.bbox_y0)
        assert poly.area < box
        assert poly.contains(shape({"type": "Point", "coordinates": [row.x, row.y]}))


def test_without_masks_cells_are_their_boxes(field_runs, tmp_path):
    _, res = field_runs
    gj = json.loads(write_results(res, tmp_path, report=False)["geojson"].read_text())
    for f, row in zip(gj["features"], res.cells.itertuples()):
        poly = shape(f["geometry"])
        assert poly.is_valid
        assert poly.bounds == pytest.approx((row.bbox_x0, row.bbox_y0, row.bbox_x1, row.bbox_y1), abs=1e-3)


def test_our_geojson_reads_back(field_runs, tmp_path):
    res, _ = field_runs
    back = read_cells(write_results(res, tmp_path, report=False)["geojson"])
    assert list(back["cell_id"]) == list(res.cells["cell_id"])
    assert list(back["label"]) == list(res.cells["label"])
    assert back["x"].to_numpy() == pytest.approx(res.cells["x"].to_numpy(), abs=1e-3)


def test_a_qupath_export_with_list_measurements_reads(tmp_path):
    qupath = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "a1",
         "geometry": {"type": "Polygon", "coordinates": [[[10, 10], [30, 10], [30, 40], [10, 40], [10, 10]]]},
         "properties": {"objectType": "cell", "classification": {"name": "LYT", "color": [31, 119, 180]},
                        "measurements": [{"name": "Nucleus: Area", "value": 120.5},
                                         {"name": "confidence", "value": 0.9}]}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 0]]]},
         "properties": {"objectType": "detection", "measurements": []}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [99, 0], [99, 99], [0, 0]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Region*"}}},
    ]}
    p = tmp_path / "qupath.geojson"
    p.write_text(json.dumps(qupath))
    df = read_cells(p)
    assert len(df) == 2  # the annotation is not a cell
    assert df.loc[0, "label"] == "LYT" and df.loc[1, "label"] == "UNK"
    assert df.loc[0, "Nucleus: Area"] == 120.5 and df.loc[0, "confidence"] == 0.9
    assert (df.loc[0, "x"], df.loc[0, "y"]) == pytest.approx((20, 25))
    assert df.loc[0, "bbox_x1"] == 30
