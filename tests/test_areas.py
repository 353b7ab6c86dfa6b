"""Counting areas on real fields: the map ranks good areas first; --target counts from them."""
import numpy as np
import pytest

from napari_bm_cells import analyze
from napari_bm_cells.areas import monolayer_score, score_areas
from napari_bm_cells.io import open_slide
from helpers import build_area_mosaic

REGION = 640  # a third of a 4 x 4-field quadrant's height: most regions lie in one quadrant


@pytest.fixture(scope="module")
def area_mosaic(data_dir):
    return build_area_mosaic(4, source="bccd", split="test+val", seed=0)


def _inside(amap, quadrants):
    """Kind of each region lying wholly in one quadrant: {(i, j): kind}."""
    out = {}
    for i in range(amap.shape[0]):
        for j in range(amap.shape[1]):
            y0, x0, y1, x1 = amap.region(i, j)
            for kind, (a, b, c, d) in quadrants.items():
                if a <= y0 and y1 <= c and b <= x0 and x1 <= d:
                    out[(i, j)] = kind
    return out


def test_map_ranks_the_good_areas_first(area_mosaic):
    img, _, quads = area_mosaic
    amap = score_areas(open_slide(img), region_px=REGION, cell_px=200)
    kinds = _inside(amap, quads)
    assert {"good", "blurred", "empty", "crowded"} == set(kinds.values())
    ranked = [ij for ij in amap.ranked() if ij in kinds]
    n_good = sum(k == "good" for k in kinds.values())
    assert [kinds[ij] for ij in ranked[:n_good]] == ["good"] * n_good
    by_kind = {k: [amap.scores[ij] for ij, v in kinds.items() if v == k] for k in set(kinds.values())}
    assert min(by_kind["good"]) > max(max(v) for k, v in by_kind.items() if k != "good")
    assert np.mean(by_kind["good"]) > 0.7
    assert max(by_kind["empty"]) == 0.0
    assert max(by_kind["blurred"]) < 0.5 and max(by_kind["crowded"]) < 0.5
    # why: blur lowers focus, crowding raises the covered fraction beyond a monolayer
    assert np.mean([amap.focus[ij] for ij, v in kinds.items() if v == "blurred"]) < 0.3
    assert np.mean([amap.coverage[ij] for ij, v in kinds.items() if v == "crowded"]) > 0.75
    assert amap.area_fraction(amap.ranked()) == pytest.approx(1.0)


def test_monolayer_score_is_zero_on_glass_and_in_thick_areas():
    np.testing.assert_allclose(monolayer_score([0.0, 0.03, 0.4, 0.9, 1.0]), [0, 0, 1, 0, 0])
    assert 0 < monolayer_score([0.1])[0] < 1


def test_a_grey_image_has_no_area_fit_for_counting():
    amap = score_areas(open_slide(np.full((900, 1300, 3), 128, np.uint8)), region_px=400)
    assert amap.shape == (3, 4) and not amap.scores.any()


@pytest.mark.slow
def test_target_counts_from_the_best_areas_and_stops(area_mosaic, detector, classifier):
    img, _, quads = area_mosaic
    slide = open_slide(img)
    full = analyze(slide, detector=detector, classifier=classifier, min_confidence=0)
    part = analyze(slide, detector=detector, classifier=classifier, target=10, min_confidence=0)
    t = part.summary["target"]
    assert t["n"] == 10 and t["met"] and t["counted"] == part.summary["n_counted"] >= 10
    assert t["fraction_analysed"] < 0.5
    assert part.summary["n_counted"] < full.summary["n_counted"]
    # the counted cells come from the good quadrant, the whole-slide run's from all
    y0, x0, y1, x1 = quads["good"]
    inside = (part.cells["x"].between(x0, x1) & part.cells["y"].between(y0, y1)).mean()
    assert inside >= 0.8, inside
    assert (part.cells["area_score"] >= 0.5).mean() >= 0.8
    assert full.summary["target"] is None and full.summary["areas"]["fraction_analysed"] == 1.0
    assert full.summary["timings"]["areas_s"] < 0.2 * full.summary["timings"]["total_s"]


def test_min_area_score_keeps_only_fit_regions(area_mosaic, detector, classifier):
    img, _, _ = area_mosaic
    res = analyze(open_slide(img), detector=detector, classifier=classifier, min_area_score=0.5)
    assert len(res.cells) >= 1
    assert (res.cells["area_score"] >= 0.5).all()
    assert res.summary["areas"]["min_score"] == 0.5
    assert 0 < res.summary["areas"]["fraction_analysed"] < 0.5


def test_target_not_met_is_said(data_dir, bccd_jpeg, detector, classifier):
    res = analyze(bccd_jpeg, detector=detector, classifier=classifier, target=500)
    assert res.summary["target"]["met"] is False
    assert res.summary["target"]["fraction_analysed"] == pytest.approx(1.0)
