"""Detection: tiling, merging across overlaps, YOLO on real fields and on mosaic slides."""
import numpy as np
import pytest

from napari_bm_cells.detect import Detections, iter_detect, merge_tiles, run_to_end, tile_grid
from napari_bm_cells.io import open_slide
from napari_bm_cells.training.det_data import read_voc
from napari_bm_cells.training.evaluate import match_boxes


def _run(slide, det, **kw):
    dets = run_to_end(iter_detect(slide, det, **kw))
    return dets, dets.duplicates_removed


def test_tile_cores_partition_the_image():
    tiles = tile_grid(1000, 1300, 256, 64)
    cover = np.zeros((1000, 1300), int)
    for t in tiles:
        assert t.y1 - t.y0 == 256 and t.x1 - t.x0 == 256
        cy0, cx0, cy1, cx1 = t.core
        assert t.y0 <= cy0 < cy1 <= t.y1 and t.x0 <= cx0 < cx1 <= t.x1
        cover[int(np.ceil(cy0)):int(np.ceil(cy1)), int(np.ceil(cx0)):int(np.ceil(cx1))] += 1
    assert (cover == 1).all()


def test_merge_keeps_a_straddling_cell_once():
    # two tiles overlapping on x in [192, 256); one cell at x 200..250 seen by both
    grid = tile_grid(256, 448, 256, 64)
    assert len(grid) == 2
    a, b = grid
    cell = np.array([[200, 50, 250, 100]], np.float32)
    per_tile = [(a, Detections(cell.copy(), np.array([0.9], np.float32))),
                (b, Detections(cell - [b.x0, 0, b.x0, 0], np.array([0.8], np.float32)))]
    merged, _ = merge_tiles(per_tile)
    assert len(merged) == 1
    np.testing.assert_allclose(merged.boxes[0], cell[0])
    # a cell cut by tile a's border (partial box) and whole in tile b: one box survives
    partial = (a, Detections(np.array([[230, 150, 256, 200]], np.float32), np.array([0.7], np.float32)))
    whole = (b, Detections(np.array([[230 - b.x0, 150, 290 - b.x0, 200]], np.float32), np.array([0.9], np.float32)))
    merged, _ = merge_tiles([partial, whole])
    assert len(merged) == 1 and merged.boxes[0][2] == pytest.approx(290)


def test_merge_keeps_a_cell_whose_centre_lies_on_the_cut_between_cores():
    """The shipped detector's boxes of one white cell (a Raabin-WBC field at 1/1.2985,
    664 px, four 640-px tiles cut at 332): tiles place it two pixels apart, centre 332
    from the first tile (owned by the second) and 330 from the second (owned by the
    first). Each tile owned the other's view, and the cell was lost; it is kept once."""
    tiles = tile_grid(664, 664, 640, 160)
    assert [t.core[1] for t in tiles[:2]] == [0.0, 332.0]
    seen = {(0, 0): [222, 212, 442, 428], (0, 24): [194, 212, 418, 432],
            (24, 0): [224, 188, 444, 408], (24, 24): [194, 188, 422, 412]}
    per_tile = [(t, Detections(np.array([seen[(t.y0, t.x0)]], np.float32), np.array([0.7], np.float32)))
                for t in tiles]
    merged, _ = merge_tiles(per_tile)
    assert len(merged) == 1
    np.testing.assert_allclose(merged.boxes[0], [222, 212, 442, 428], atol=3)


def test_overlap_must_be_smaller_than_tile():
    from napari_bm_cells.errors import InputError
    with pytest.raises(InputError, match="overlap"):
        tile_grid(100, 100, 64, 64)


@pytest.mark.slow
def test_yolo_finds_annotated_white_cells_on_bccd_fields(data_dir, detector):
    from napari_bm_cells.pipeline import parse_level

    samples = read_voc(data_dir / "bccd")["test"]  # all 72: precision on fewer swings with a box or two
    n_gt = n_tp = n_pred = 0
    for s in samples:
        slide = open_slide(s.image)
        d, _ = _run(slide, detector, downsample=parse_level("auto", slide, detector))
        gt = np.array([[b.x0, b.y0, b.x1, b.y1] for b in s.boxes if b.cls == "WBC"], np.float32).reshape(-1, 4)
        n_tp += int(match_boxes(d.boxes, d.scores, gt).sum())
        n_gt += len(gt)
        n_pred += len(d)
    assert n_gt >= 20
    assert n_tp / n_gt >= 0.9, (n_tp, n_gt)
    assert n_tp / max(n_pred, 1) >= 0.8, (n_tp, n_pred)


@pytest.fixture(scope="module")
def mosaic(data_dir, tmp_path_factory):
    from helpers import build_mosaic, write_ome_zarr, write_pyramidal_tiff

    img, boxes = build_mosaic(13, 10, source="bccd", split="test+val", seed=1)
    assert img.shape[0] >= 6000 and img.shape[1] >= 6000
    d = tmp_path_factory.mktemp("mosaic")
    zarr_path = write_ome_zarr(img, d / "mosaic.ome.zarr", n_levels=3)
    tif_path = write_pyramidal_tiff(img, d / "mosaic.ome.tif", n_levels=3, compression=None)
    return {"zarr": zarr_path, "tiff": tif_path, "boxes": boxes}


def _check_mosaic_detections(d: Detections, boxes):
    gt = boxes[["x0", "y0", "x1", "y1"]].to_numpy(np.float32)
    tp = match_boxes(d.boxes, d.scores, gt)
    recall = tp.sum() / len(gt)
    assert recall >= 0.9, f"recall {recall:.3f} ({tp.sum()}/{len(gt)})"
    # no cell counted twice: no two kept boxes overlap substantially
    import torch
    from torchvision.ops import box_iou
    b = torch.from_numpy(d.boxes)
    iou = box_iou(b, b).numpy()
    np.fill_diagonal(iou, 0)
    assert iou.max(initial=0) < 0.3, f"duplicate boxes, IoU {iou.max():.2f}"
    return recall


@pytest.mark.slow
def test_mosaic_ome_zarr_tiles_smaller_than_a_field(mosaic, detector):
    slide = open_slide(mosaic["zarr"])
    assert len(slide.levels) == 3
    # tiles of 300 px at downsample 2 cover 600 level-0 px, less than a 640x480 field;
    # the overlap (160 px) exceeds a cell (~110 px at that scale)
    d, _ = _run(slide, detector, tile=300, overlap=160, downsample=2.0)
    _check_mosaic_detections(d, mosaic["boxes"])


@pytest.mark.slow
def test_mosaic_pyramidal_tiff_detects_on_level_1(mosaic, detector):
    from napari_bm_cells.pipeline import parse_level

    slide = open_slide(mosaic["tiff"])
    down = parse_level(1, slide, detector)
    assert down == pytest.approx(2.0, rel=0.01)
    d, _ = _run(slide, detector, tile=300, overlap=160, downsample=down)
    _check_mosaic_detections(d, mosaic["boxes"])


def test_contour_detector_finds_cells_without_weights(data_dir):
    from napari_bm_cells.detect import ContourDetector

    samples = read_voc(data_dir / "bccd")["test"][:12]
    det = ContourDetector()
    n_gt = n_tp = 0
    for s in samples:
        slide = open_slide(s.image)
        d, _ = _run(slide, det, downsample=2.0)
        gt = np.array([[b.x0, b.y0, b.x1, b.y1] for b in s.boxes if b.cls == "WBC"], np.float32).reshape(-1, 4)
        n_tp += int(match_boxes(d.boxes, d.scores, gt, iou=0.3).sum())
        n_gt += len(gt)
    assert n_tp / n_gt >= 0.6, (n_tp, n_gt)


def test_blank_image_has_no_detections(detector):
    slide = open_slide(np.full((600, 800, 3), 235, np.uint8))
    d, _ = _run(slide, detector, downsample=2.0)
    assert len(d) == 0


def test_detection_of_an_in_memory_field_imports_no_dask(data_dir):
    """Detecting on a numpy image (as SAHI users do) reads it directly: dask and
    distributed stay unimported, and cells are still found and measured."""
    import subprocess
    import sys

    jpg = sorted((data_dir / "bccd" / "JPEGImages").glob("*.jpg"))[0]
    code = f"""
import sys, numpy as np
from PIL import Image
from napari_bm_cells.detect import iter_detect, load_detector, run_to_end
from napari_bm_cells.io import open_slide
slide = open_slide(np.asarray(Image.open({str(jpg)!r}).convert("RGB")))
det = load_detector(None, device="cpu")
dets = run_to_end(iter_detect(slide, det, downsample=1.0))
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"dask", "distributed"}})
print(len(dets), dets.cell_px is not None, heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    n, measured, heavy = out.stdout.strip().splitlines()[-1].split(" ", 2)
    assert int(n) >= 1 and heavy == "[]", out.stdout


def test_box_overlaps_gives_iou_and_intersection_over_the_smaller_box():
    from napari_bm_cells.detect import box_overlaps

    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]])
    b = np.array([[0, 0, 10, 10], [2, 2, 4, 4], [20, 20, 30, 30]])
    iou, ios = box_overlaps(a, b)
    np.testing.assert_allclose(iou, [[1, 4 / 100, 0], [25 / 175, 0, 0]], atol=1e-9)
    np.testing.assert_allclose(ios, [[1, 1, 0], [0.25, 0, 0]], atol=1e-9)  # a nested box: 1
    assert box_overlaps(np.zeros((0, 4)), b)[0].shape == (0, 3)


@pytest.mark.parametrize("measure_tiles", [256, 8])
def test_the_crops_scale_comes_from_cells_over_the_whole_slide(data_dir, detector, measure_tiles, monkeypatch):
    """Real BCCD fields tiled smallest white cell first: the cell size the detection stage
    measures (the crops' scale) is the whole slide's, not that of its first tiles, also
    when only some evenly spaced tiles are measured (a slide of many tiles)."""
    from napari_bm_cells import detect
    from napari_bm_cells.crop import level0_diameters

    monkeypatch.setattr(detect, "MEASURE_TILES", measure_tiles)

    samples = [s for ss in read_voc(data_dir / "bccd").values() for s in ss
               if (s.width, s.height) == (640, 480) and sum(b.cls == "WBC" for b in s.boxes) == 1][:160]
    sized = []
    for s in samples:
        slide = open_slide(s.image)
        b = next(b for b in s.boxes if b.cls == "WBC")
        d = level0_diameters(slide, np.array([[b.x0, b.y0, b.x1, b.y1]]))
        if d:
            sized.append((d[0], slide.read_region(0, 0, 480, 640)))
    sized.sort(key=lambda t: t[0])
    rows, cols = len(sized) // 8, 8
    img = np.concatenate([np.concatenate([f for _, f in sized[r * cols:(r + 1) * cols]], 1) for r in range(rows)])
    sizes = np.array([d for d, _ in sized[:rows * cols]])
    whole, first = np.median(sizes), np.median(sizes[:64])
    assert first < 0.9 * whole  # the first tiles' cells alone would set too small a scale
    dets, _ = _run(open_slide(img), detector, downsample=1.6)
    assert len(dets) >= 0.9 * len(sizes)
    assert abs(dets.cell_px / whole - 1) < 0.08, (dets.cell_px, whole, first)
