"""Detection data: VOC -> YOLO conversion, YOLO reading, detector evaluation, box matching."""
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

from napari_bm_cells.training.det_data import CLASS_SETS, read_voc, read_yolo, write_yolo_set
from napari_bm_cells.training.evaluate import detection_scores, match_boxes




def _raw_voc(bccd: Path) -> dict[str, list[tuple[str, float, float, float, float]]]:
    """Objects of every BCCD annotation, parsed independently of det_data (VOC 1-based)."""
    out = {}
    for xml in sorted((bccd / "Annotations").glob("*.xml")):
        root = ET.parse(xml).getroot()
        objs = []
        for o in root.iter("object"):
            b = o.find("bndbox")
            objs.append((o.findtext("name"), *(float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))))
        out[xml.stem] = objs
    return out


def _yolo_back(label_file: Path, w: int, h: int, names) -> list[tuple[str, float, float, float, float]]:
    out = []
    for line in label_file.read_text().splitlines():
        c, cx, cy, bw, bh = line.split()
        cx, cy, bw, bh = float(cx) * w, float(cy) * h, float(bw) * w, float(bh) * h
        out.append((names[int(c)], cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))
    return out


@pytest.fixture(scope="module")
def bccd_all(data_dir, tmp_path_factory):
    return write_yolo_set([data_dir / "bccd"], tmp_path_factory.mktemp("yolo") / "all", CLASS_SETS["all"],
                          dedupe=False)


def test_voc_to_yolo_keeps_every_box_and_round_trips(data_dir, bccd_all):
    bccd = data_dir / "bccd"
    raw = _raw_voc(bccd)
    n_objects = sum(len(v) for v in raw.values())
    assert n_objects == 4155 + 372 + 361  # README counts
    root = bccd_all.parent
    cfg = yaml.safe_load(bccd_all.read_text())
    names = [cfg["names"][i] for i in sorted(cfg["names"])]
    assert names == ["WBC", "RBC", "Platelets"]
    label_files = sorted((root / "labels").rglob("*.txt"))
    assert len(label_files) == len(raw) == 364
    n_lines = sum(len(f.read_text().splitlines()) for f in label_files)
    assert n_lines == n_objects
    # per split: one image and one label file per id of ImageSets/Main
    for split in ("train", "val", "test"):
        ids = (bccd / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        assert sorted(p.stem for p in (root / "images" / split).iterdir()) == sorted(f"s0_{i}" for i in ids)
        assert cfg[split] == f"images/{split}"
    # coordinates back in pixels: within 1 px of the VOC numbers, same classes in order
    for f in label_files:
        stem = f.stem.removeprefix("s0_")
        back = _yolo_back(f, 640, 480, names)
        assert [b[0] for b in back] == [o[0] for o in raw[stem]], stem
        for b, o in zip(back, raw[stem]):
            assert np.allclose(b[1:], o[1:], atol=1.0 + 1e-3), (stem, b, o)
            assert b[1] < b[3] and b[2] < b[4]  # even BCCD's two zero-size boxes keep a size
    img = next((root / "images" / "test").iterdir())
    assert img.resolve() == (bccd / "JPEGImages" / (img.stem.removeprefix("s0_") + ".jpg")).resolve()


def test_read_yolo_of_the_converted_set_matches_read_voc(data_dir, bccd_all):
    voc = read_voc(data_dir / "bccd")
    yolo = read_yolo(bccd_all)
    assert {k: len(v) for k, v in yolo.items()} == {k: len(v) for k, v in voc.items()}
    by_stem = {s.image.stem.removeprefix("s0_"): s for v in yolo.values() for s in v}
    for s in voc["test"]:
        y = by_stem[s.image.stem]
        assert (y.width, y.height) == (s.width, s.height)
        a = np.array([[b.x0, b.y0, b.x1, b.y1] for b in s.boxes])
        b = np.array([[b.x0, b.y0, b.x1, b.y1] for b in y.boxes])
        np.testing.assert_allclose(b, a, atol=0.01)  # 6 decimals of normalised coordinates
        assert [b.cls for b in y.boxes] == [b.cls for b in s.boxes]


def test_wbc_only_set_keeps_exactly_the_white_cells(data_dir, tmp_path):
    raw = _raw_voc(data_dir / "bccd")
    data_yaml = write_yolo_set([data_dir / "bccd"], tmp_path / "wbc", CLASS_SETS["wbc"], dedupe=False)
    cfg = yaml.safe_load(data_yaml.read_text())
    assert cfg["names"] == {0: "WBC"}
    for f in sorted((tmp_path / "wbc" / "labels").rglob("*.txt")):
        stem = f.stem.removeprefix("s0_")
        back = _yolo_back(f, 640, 480, ["WBC"])
        want = [o for o in raw[stem] if o[0] == "WBC"]
        assert len(back) == len(want), stem
        for b, o in zip(back, want):
            assert np.allclose(b[1:], o[1:], atol=1.0 + 1e-3)
    lines = [ln for f in (tmp_path / "wbc" / "labels").rglob("*.txt") for ln in f.read_text().splitlines()]
    assert len(lines) == 372 and all(ln.startswith("0 ") for ln in lines)


def test_read_yolo_txl_pbc_gives_pixel_boxes_inside_the_image(data_dir):
    sets = read_yolo(data_dir / "txl-pbc" / "data.yaml")
    assert {k: len(v) for k, v in sets.items()} == {"train": 1008, "val": 288, "test": 144}
    counts = {}
    for samples in sets.values():
        for s in samples:
            for b in s.boxes:
                counts[b.cls] = counts.get(b.cls, 0) + 1
                assert -0.5 <= b.x0 < b.x1 <= s.width + 0.5, (s.image, b)
                assert -0.5 <= b.y0 < b.y1 <= s.height + 0.5, (s.image, b)
    assert counts == {"WBC": 1515, "RBC": 24271, "Platelets": 851}
    # pixels, not normalised coordinates: white cells are tens of pixels wide
    wbc = [b.x1 - b.x0 for s in sets["test"] for b in s.boxes if b.cls == "WBC"]
    assert np.median(wbc) > 20


def test_read_yolo_finds_labels_when_a_parent_folder_is_called_images(data_dir, tmp_path):
    """Labels sit beside the *last* ``images`` folder (ultralytics' rule), not the first."""
    src = data_dir / "txl-pbc"
    root = tmp_path / "images" / "txl"
    imgs = sorted((src / "images" / "test").iterdir())[:2]
    (root / "images" / "test").mkdir(parents=True)
    (root / "labels" / "test").mkdir(parents=True)
    n_boxes = 0
    for p in imgs:
        (root / "images" / "test" / p.name).symlink_to(p)
        lab = src / "labels" / "test" / f"{p.stem}.txt"
        shutil.copy(lab, root / "labels" / "test" / lab.name)
        n_boxes += len([ln for ln in lab.read_text().splitlines() if ln.split()])
    (root / "data.yaml").write_text("test: ./images/test/\nval: ./images/test/\nnames: ['WBC', 'RBC', 'Platelets']\n")
    sets = read_yolo(root / "data.yaml")
    assert n_boxes > 0
    assert sum(len(s.boxes) for s in sets["test"]) == n_boxes


def _tiny_voc(data_dir, dst: Path, n: int = 5) -> list[str]:
    bccd = data_dir / "bccd"
    ids = (bccd / "ImageSets" / "Main" / "test.txt").read_text().split()[:n]
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (dst / sub).mkdir(parents=True)
    for i in ids:
        (dst / "Annotations" / f"{i}.xml").symlink_to(bccd / "Annotations" / f"{i}.xml")
        (dst / "JPEGImages" / f"{i}.jpg").symlink_to(bccd / "JPEGImages" / f"{i}.jpg")
    (dst / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids) + "\n")
    return ids


def test_evaluate_detector_on_a_tiny_voc_set(data_dir, tmp_path):
    from napari_bm_cells.training.evaluate import evaluate_detector

    ids = _tiny_voc(data_dir, tmp_path / "voc")
    n_wbc = sum(o[0] == "WBC" for i in ids for o in _raw_voc(data_dir / "bccd")[i])
    m = evaluate_detector(tmp_path / "voc", tmp_path / "out", device="cpu")
    for k in ("recall", "precision", "ap50"):
        assert 0.0 <= m[k] <= 1.0, (k, m[k])
    assert m["split"] == "test" and m["n_images"] == len(ids) == 5
    assert m["n_gt"] == n_wbc
    assert m["recall"] > 0  # the shipped detector finds white cells on real fields
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {k: saved[k] for k in ("recall", "precision", "ap50", "n_gt")} == \
        {k: m[k] for k in ("recall", "precision", "ap50", "n_gt")}
    assert (tmp_path / "out" / "per_image.csv").is_file()


def test_evaluate_detector_missing_split_is_an_input_error(data_dir, tmp_path):
    from napari_bm_cells.errors import InputError
    from napari_bm_cells.training.evaluate import evaluate_detector

    _tiny_voc(data_dir, tmp_path / "voc", n=1)
    with pytest.raises(InputError, match="train"):
        evaluate_detector(tmp_path / "voc", tmp_path / "out", split="train")


def test_evaluate_detector_on_a_voc_folder_without_imagesets(data_dir, tmp_path, capsys):
    """Any VOC folder: without ``ImageSets/`` every image is evaluated (split "all");
    ``--rescale`` resizes images and boxes alike (no pixel size), so the same cells are
    counted."""
    from napari_bm_cells.cli import main

    ids = _tiny_voc(data_dir, tmp_path / "voc", n=4)
    shutil.rmtree(tmp_path / "voc" / "ImageSets")
    n_wbc = sum(o[0] == "WBC" for i in ids for o in _raw_voc(data_dir / "bccd")[i])
    for factor in ("1", "0.5"):
        assert main(["evaluate-detector", str(tmp_path / "voc"), "--out", str(tmp_path / factor),
                     "--rescale", factor]) in (None, 0)
        m = json.loads((tmp_path / factor / "metrics.json").read_text())
        assert m["split"] == "all" and m["n_images"] == 4 and m["n_gt"] == n_wbc
        assert m["rescale"] == float(factor) and m["recall"] >= 0.75, m
    assert "all: n_images=4" in capsys.readouterr().out
    assert main(["evaluate-detector", str(tmp_path / "voc"), "--out", str(tmp_path / "x"),
                 "--rescale", "0"]) == 2


def test_stain_copies_keep_every_box_and_the_image_size(data_dir, tmp_path):
    """Detector training's recoloured copies (another lab's stain): one more image per
    training field, same size, same label lines, other colours; val/test untouched, and a
    source without a val split gets one held out of its training fields."""
    from PIL import Image

    ids = _tiny_voc(data_dir, tmp_path / "voc", n=3)
    (tmp_path / "voc" / "ImageSets" / "Main" / "test.txt").rename(
        tmp_path / "voc" / "ImageSets" / "Main" / "train.txt")
    cfg = yaml.safe_load(write_yolo_set([tmp_path / "voc"], tmp_path / "y", stain_copies=2).read_text())
    root = Path(cfg["path"])
    originals = sorted(p for p in (root / "images" / "train").iterdir() if "_stain" not in p.stem)
    # the source has no val split: one field is held out for it, without its copies
    held = sorted((root / "images" / "val").iterdir())
    assert len(originals) + len(held) == len(ids) and len(held) == 1 and cfg["val"] == "images/val"
    assert not list((root / "images" / "train").glob(f"{held[0].stem}_stain*"))
    assert (root / "labels" / "val" / f"{held[0].stem}.txt").is_file()
    for p in originals:
        base = np.asarray(Image.open(p).convert("RGB"), np.float32)
        lines = (root / "labels" / "train" / f"{p.stem}.txt").read_text()
        for k in range(2):
            copy = root / "images" / "train" / f"{p.stem}_stain{k}.jpg"
            img = np.asarray(Image.open(copy).convert("RGB"), np.float32)
            assert img.shape == base.shape
            assert np.abs(img - base).mean() > 3  # recoloured
            assert (root / "labels" / "train" / f"{p.stem}_stain{k}.txt").read_text() == lines
    assert not list((root / "images").glob("val/*_stain*"))


def test_field_of_view_copies_cut_boxes_to_what_stays_visible(data_dir, tmp_path):
    """``field_of_view``: recoloured copies cut to a round field of view or an unscanned
    strip, painted in one glass colour outside (as the pipeline paints a black surround);
    a box keeps the part still in view, a box mostly outside is dropped, the rest are
    the original boxes."""
    from PIL import Image

    from napari_bm_cells.training.augment import MIN_VISIBLE

    _tiny_voc(data_dir, tmp_path / "voc", n=6)
    (tmp_path / "voc" / "ImageSets" / "Main" / "test.txt").rename(
        tmp_path / "voc" / "ImageSets" / "Main" / "train.txt")
    root = write_yolo_set([tmp_path / "voc"], tmp_path / "y", CLASS_SETS["all"], stain_copies=1,
                          field_of_view=1.0).parent
    n_cut = n_dropped = n_same = 0
    for copy in sorted((root / "images" / "train").glob("*_stain0.jpg")):
        img = np.asarray(Image.open(copy).convert("RGB"), np.int16)
        h, w = img.shape[:2]
        orig = _boxes(root / "labels" / "train" / f"{copy.stem[:-len('_stain0')]}.txt", w, h)
        cut = _boxes(root / "labels" / "train" / f"{copy.stem}.txt", w, h)
        # the outside is one flat colour (JPEG aside) at a corner or a whole edge band
        corners = [img[:6, :6], img[:6, -6:], img[-6:, :6], img[-6:, -6:]]
        assert min(np.ptp(c.reshape(-1, 3), 0).max() for c in corners) <= 12
        assert 0 < len(cut) <= len(orig)
        n_dropped += len(orig) - len(cut)
        for b in cut:  # each kept box is an original box or lies inside one
            inside = (orig[:, :2] <= b[:2] + 1).all(1) & (orig[:, 2:] >= b[2:] - 1).all(1)
            assert inside.any()
            n_same += bool((np.abs(orig - b).max(1) < 1).any())
            n_cut += not (np.abs(orig - b).max(1) < 1).any()
    assert n_same > 10 and n_cut > 0 and n_dropped > 0 and MIN_VISIBLE == 0.4


def test_visible_boxes_by_hand():
    from napari_bm_cells.training.augment import visible_boxes

    outside = np.zeros((100, 100), bool)
    outside[:, 60:] = True  # a strip on the right
    boxes = [[10, 10, 30, 30], [50, 10, 70, 30], [55, 40, 95, 60]]
    cut, keep = visible_boxes(boxes, outside)
    assert keep.tolist() == [True, True, False]  # the third is 12% visible
    assert cut.tolist() == [[10, 10, 30, 30], [50, 10, 60, 30]]


def _boxes(label_file, w, h):
    rows = np.array([[float(v) for v in ln.split()] for ln in Path(label_file).read_text().splitlines()]).reshape(-1, 5)
    cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)


# --- box matching and scores on hand examples -------------------------------------------

GT = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 0, 70, 30]], np.float32)


def test_perfect_detector():
    scores = np.array([0.9, 0.8, 0.7])
    tp = match_boxes(GT.copy(), scores, GT)
    assert tp.tolist() == [True, True, True]
    d = detection_scores(tp, scores, len(GT), conf=0.5)
    assert d["recall"] == 1 and d["precision"] == 1 and d["n_pred"] == 3 and d["n_gt"] == 3
    assert d["ap50"] == pytest.approx(1.0, abs=0.01)


def test_duplicates_misses_and_false_positives_are_counted():
    pred = np.array([[0, 0, 10, 10],      # gt 0
                     [1, 1, 11, 11],      # duplicate of gt 0 (IoU .68), lower score -> FP
                     [20, 20, 40, 40],    # gt 1
                     [100, 100, 120, 120],  # nothing there -> FP
                     [50, 0, 70, 12]],    # gt 2 but IoU 0.4 -> FP, gt 2 missed
                    np.float32)
    scores = np.array([0.9, 0.6, 0.8, 0.3, 0.7])
    tp = match_boxes(pred, scores, GT)
    assert tp.tolist() == [True, False, True, False, False]
    d = detection_scores(tp, scores, len(GT), conf=0.5)  # 4 predictions above .5, 2 right
    assert d["recall"] == pytest.approx(2 / 3)
    assert d["precision"] == pytest.approx(2 / 4)
    assert d["n_pred"] == 4
    # a looser IoU threshold accepts the gt 2 box
    assert match_boxes(pred, scores, GT, iou=0.35).tolist() == [True, False, True, False, True]


def test_higher_score_wins_the_ground_truth_box():
    pred = np.array([[1, 1, 11, 11], [0, 0, 10, 10]], np.float32)  # the better box scores lower
    tp = match_boxes(pred, np.array([0.9, 0.5]), GT[:1])
    assert tp.tolist() == [True, False]


def test_ap_of_a_false_positive_ranked_first_by_hand():
    # ranks: FP, TP, TP, TP -> precision envelope 0.75 at every recall -> AP ~ 0.75
    tp = np.array([False, True, True, True])
    d = detection_scores(tp, np.array([0.95, 0.8, 0.7, 0.6]), 3, conf=0.0)
    assert d["ap50"] == pytest.approx(0.75, abs=0.01)
    assert d["precision"] == pytest.approx(0.75) and d["recall"] == 1.0
    # half of the cells found, no false positive: AP ~ recall
    d = detection_scores(np.array([True, True]), np.array([0.9, 0.8]), 4, conf=0.5)
    assert d["recall"] == 0.5 and d["precision"] == 1.0
    assert d["ap50"] == pytest.approx(0.5, abs=0.01)


def test_no_predictions_or_no_ground_truth():
    assert match_boxes(np.zeros((0, 4), np.float32), np.zeros(0), GT).tolist() == []
    assert match_boxes(GT, np.ones(3), np.zeros((0, 4), np.float32)).tolist() == [False] * 3
    d = detection_scores(np.zeros(0, bool), np.zeros(0), 3, conf=0.5)
    assert d["recall"] == 0 and d["precision"] == 0 and d["ap50"] == 0 and d["n_pred"] == 0


def test_merging_txl_and_bccd_leaves_no_field_in_two_splits(data_dir, tmp_path):
    """TXL-PBC re-annotates BCCD fields under other names and splits them differently:
    the merged set must not train on a field that TXL-PBC tests on."""
    from napari_bm_cells.training.det_data import DuplicateFinder, image_signature

    txl = data_dir / "txl-pbc" / "data.yaml"
    merged = tmp_path / "merged"
    write_yolo_set([txl, data_dir / "bccd"], merged)
    n = {sp: len(list((merged / "images" / sp).iterdir())) for sp in ("train", "val", "test")}
    n_src = sum(len(v) for v in read_yolo(txl).values()) + sum(len(v) for v in read_voc(data_dir / "bccd").values())
    assert sum(n.values()) < n_src - 200  # ~220 BCCD fields are also in TXL-PBC
    # the copies are found although re-encoded: every merged test field differs from every
    # merged train field, and no BCCD field under its BCCD name sits in train when
    # TXL-PBC holds it in test
    train = DuplicateFinder()
    for p in (merged / "images" / "train").iterdir():
        train.add(image_signature(p), p.name)
    leaks = [p.name for sp in ("val", "test") for p in (merged / "images" / sp).iterdir()
             if train.match(image_signature(p))]
    assert leaks == []
    # without deduplication the leak is there (so the check above can fail)
    raw = tmp_path / "raw"
    write_yolo_set([txl, data_dir / "bccd"], raw, dedupe=False)
    train = DuplicateFinder()
    for p in (raw / "images" / "train").iterdir():
        train.add(image_signature(p), p.name)
    assert sum(train.match(image_signature(p)) is not None for p in (raw / "images" / "test").iterdir()) >= 10


def test_read_yolo_from_a_relative_path(data_dir, monkeypatch):
    """``bm-cells evaluate-detector ../shared/data/txl-pbc/data.yaml`` from the project folder."""
    import os

    absolute = {k: len(v) for k, v in read_yolo(data_dir / "txl-pbc" / "data.yaml").items()}
    assert absolute == {"train": 1008, "val": 288, "test": 144}
    monkeypatch.chdir(data_dir / "bccd")
    rel = Path(os.path.relpath(data_dir / "txl-pbc" / "data.yaml"))
    assert not rel.is_absolute() and str(rel).startswith("..")
    assert {k: len(v) for k, v in read_yolo(rel).items()} == absolute


def test_evaluate_detector_counts_a_repeated_box_once(data_dir, tmp_path, detector):
    """TXL-PBC's test label file 4e2139d2 lists one white cell's box six times."""
    from napari_bm_cells.training.evaluate import evaluate_detector

    stem = "4e2139d2-7d0c-56a5-91d5-abfa72c21efa"
    src = data_dir / "txl-pbc"
    lines = (src / "labels" / "test" / f"{stem}.txt").read_text().splitlines()
    assert sum(ln.startswith("0 ") for ln in lines) == 6  # the repeated annotation
    for sub in ("images", "labels"):
        (tmp_path / sub / "test").mkdir(parents=True)
    shutil.copy(src / "images" / "test" / f"{stem}.jpg", tmp_path / "images" / "test")
    shutil.copy(src / "labels" / "test" / f"{stem}.txt", tmp_path / "labels" / "test")
    (tmp_path / "data.yaml").write_text("test: images/test\nnames: ['WBC', 'RBC', 'Platelets']\n")
    m = evaluate_detector(tmp_path / "data.yaml", tmp_path / "out", detector=detector.weights)
    assert m["n_gt"] == 1 and m["repeated_gt_boxes_ignored"] == 5
    assert m["recall"] == 1.0


@pytest.mark.slow
def test_train_detector_fine_tunes_offline_and_writes_a_usable_detector(data_dir, tmp_path):
    """``bm-cells train-detector --init``: one epoch on 8 real BCCD fields from the shipped
    weights, offline; the weights load, the sidecar records the classes (white cells, red
    cells, platelets), input size, white- and red-cell size, the training fields' colour
    statistics and a validation-calibrated threshold, and the result still finds the white cells of held-out fields."""
    from napari_bm_cells.cli import main
    from napari_bm_cells.detect import DEFAULT_DETECTOR, YoloDetector
    from napari_bm_cells.training.evaluate import evaluate_detector

    bccd = data_dir / "bccd"
    voc = tmp_path / "voc"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    splits = {s: (bccd / "ImageSets" / "Main" / f"{s}.txt").read_text().split()[:n]
              for s, n in (("train", 8), ("val", 4), ("test", 6))}
    for s, ids in splits.items():
        for i in ids:
            (voc / "Annotations" / f"{i}.xml").symlink_to(bccd / "Annotations" / f"{i}.xml")
            (voc / "JPEGImages" / f"{i}.jpg").symlink_to(bccd / "JPEGImages" / f"{i}.jpg")
        (voc / "ImageSets" / "Main" / f"{s}.txt").write_text("\n".join(ids) + "\n")
    out = tmp_path / "w.pt"
    assert main(["train-detector", str(voc), "--out", str(out), "--epochs", "1", "--imgsz", "320",
                 "--batch-size", "4", "--init", str(DEFAULT_DETECTOR), "--translate", "0.2"]) in (None, 0)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["classes"] == ["WBC", "RBC", "Platelets"] and meta["imgsz"] == 320 and meta["epochs"] == 1
    assert 0.35 < meta["input_rbc_px"] / meta["input_cell_px"] < 0.65
    assert meta["translate"] == 0.2
    assert 0.05 <= meta["conf"] <= 0.5 and meta["input_cell_px"] > 20
    # the CIELAB statistics of its 8 training fields: what --colour standardise maps tiles onto
    ref = meta["lab_reference"]
    assert 50 < ref["mean"][0] < 90 and all(v > 1 for v in ref["std"])
    det = YoloDetector(out)
    assert det.conf == meta["conf"] and det.imgsz == 320
    m = evaluate_detector(voc, tmp_path / "eval", detector=out)
    assert m["n_images"] == 6 and m["recall"] >= 0.8, m


def test_leave_one_lab_out_drops_every_field_of_that_lab(data_dir, tmp_path):
    """``leave_out`` keeps no field of the named lab in any split (TXL-PBC's labs are told
    apart by image size) and every field of the others; an unknown lab is refused."""
    from PIL import Image

    from napari_bm_cells.errors import InputError
    from napari_bm_cells.training.det_data import read_detection_set
    from napari_bm_cells.training.labs import field_source

    txl = data_dir / "txl-pbc" / "data.yaml"
    fields = [s for v in read_detection_set(txl).values() for s in v]
    n_bcd = sum(field_source(s) == "BCD" for s in fields)
    assert 100 < n_bcd < len(fields)
    out = write_yolo_set([txl], tmp_path / "loo", leave_out="BCD", dedupe=False)
    written = [p for p in (out.parent / "images").rglob("*.jpg")]
    assert len(written) == len(fields) - n_bcd
    for p in written[::25]:
        with Image.open(p) as im:
            assert im.size != (416, 416), p
    with pytest.raises(InputError, match="no field of that lab"):
        write_yolo_set([data_dir / "bccd"], tmp_path / "none", leave_out="Raabin-WBC", dedupe=False)


def test_crosslab_scores_a_left_out_lab_and_recoloured_fields(data_dir, tmp_path, capsys):
    """``crosslab --lab`` keeps the fields of that lab; ``rb`` (red and blue swapped) and
    ``grey`` are scored like any condition; an unknown condition is one line, exit 2."""
    import pandas as pd

    from napari_bm_cells.cli import main

    txl = str(data_dir / "txl-pbc" / "data.yaml")
    conds = "x1,rb,grey,vignette,eyepiece,framed"
    rc = main(["crosslab", "--detection-data", txl, "--lab", "BCD", "--conditions", conds,
               "--limit", "3", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    df = pd.read_csv(tmp_path / "detector_crosslab.csv")
    rows = df[~df["source"].str.startswith("worst")]
    assert set(rows["source"]) == {"txl-pbc/BCD (test)"}
    assert list(rows["condition"]) == ["x1", "rb", "grey", "vignette", "eyepiece", "framed"]
    assert (rows["n_images"] == 3).all() and rows["recall"].between(0, 1).all()
    rc = main(["crosslab", "--detection-data", txl, "--conditions", "x1,purple", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown condition 'purple'" in err and "Traceback" not in err


def test_vignette_eyepiece_and_frame_conditions(data_dir):
    """``vignette`` keeps a field's centre and darkens its corners to half; ``eyepiece``
    keeps a round field of view and blacks out the corners; ``framed`` sets the field,
    unchanged, in a black margin of a quarter of its side."""
    from napari_bm_cells.training.evaluate import FRAME, frame_offset, rescaled_slide

    path = data_dir / "bccd" / "JPEGImages" / "BloodImage_00010.jpg"
    plain = rescaled_slide(path, 1.0).levels[0]
    dark = np.asarray(rescaled_slide(path, 1.0, recolour="vignette").levels[0], np.float32)
    assert np.abs(dark[240, 320] - plain[240, 320]).max() <= 1
    assert 0.45 < dark[:8, :8].mean() / plain[:8, :8].astype(np.float32).mean() < 0.55
    round_ = np.asarray(rescaled_slide(path, 1.0, recolour="eyepiece").levels[0])
    assert round_[:4, :4].max() == 0 and np.array_equal(round_[200:280, 280:360], plain[200:280, 280:360])
    framed = np.asarray(rescaled_slide(path, 1.0, frame=FRAME).levels[0])
    py, px = frame_offset(plain.shape, FRAME)
    assert framed.shape[:2] == (480 + 2 * py, 640 + 2 * px) and (py, px) == (120, 160)
    assert np.array_equal(framed[py:py + 480, px:px + 640], plain) and framed[:py].max() == 0


def test_trained_cell_sizes_of_white_and_red_cells(data_dir):
    """The sizes stored beside trained weights (``input_cell_px``, ``input_rbc_px``): on
    BCCD's 640x480 fields at a 320 px input, white cells (median box ~219 px) reach the
    network at ~110 px and red cells at about half that; a class without boxes gives
    no red-cell size (a detector trained on white cells only has no ruler)."""
    from napari_bm_cells.training.train_detector import input_cell_px

    wbc = input_cell_px([data_dir / "bccd"], 320)
    rbc = input_cell_px([data_dir / "bccd"], 320, "RBC")
    assert 90 < wbc < 130 and 0.35 < rbc / wbc < 0.65, (wbc, rbc)
    assert input_cell_px([data_dir / "bccd"], 320, "Neutrophil") is None


def test_sources_without_a_validation_split_get_one_held_out_and_say_so(data_dir, tmp_path, caplog):
    """A VOC folder without ImageSets/ (all fields train): a share of the fields moves to
    the validation split, where the best epoch and the score threshold are chosen, and a
    warning says so."""
    import logging
    import shutil

    voc = tmp_path / "lab"
    for sub in ("JPEGImages", "Annotations"):
        (voc / sub).mkdir(parents=True)
    for f in sorted((data_dir / "bccd" / "JPEGImages").glob("*.jpg"))[:10]:
        shutil.copy(f, voc / "JPEGImages" / f.name)
        shutil.copy(data_dir / "bccd" / "Annotations" / f"{f.stem}.xml", voc / "Annotations")
    with caplog.at_level(logging.WARNING):
        out = write_yolo_set([voc], tmp_path / "yolo", CLASS_SETS["wbc"], dedupe=False)
    val = sorted((out.parent / "images" / "val").glob("*.jpg"))
    train = sorted((out.parent / "images" / "train").glob("*.jpg"))
    assert len(val) >= 1 and len(train) >= 5 and not {p.name for p in val} & {p.name for p in train}
    assert "no validation split: held out" in caplog.text
