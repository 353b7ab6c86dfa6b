"""Cells cut from another lab's annotated fields (BCCD) for training, and the held-out
fields the cross-lab check scores, and other labs' white cells typed by a teacher."""
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from napari_bm_cells.errors import InputError
from napari_bm_cells.crop import cell_diameter, centre_contour
from napari_bm_cells.training.det_data import DuplicateFinder, read_voc
from napari_bm_cells.training.field_cells import LABEL_TO_CODES, export_field_cells, read_subtypes


@pytest.fixture(scope="module")
def test_split_cells(data_dir, classifier, tmp_path_factory):
    out = tmp_path_factory.mktemp("fields")
    return out, export_field_cells(data_dir / "bccd", out, classifier.meta, splits=("test",))


def test_one_crop_per_labelled_single_cell_field(data_dir, test_split_cells):
    _, df = test_split_cells
    bccd = data_dir / "bccd"
    labels = read_subtypes(bccd, ("test",))
    one_wbc = {s.image.stem for ss in read_voc(bccd).values() for s in ss
               if sum(b.cls == "WBC" for b in s.boxes) == 1}
    want = labels[labels["image"].map(lambda p: p.stem in one_wbc)]
    assert len(want) >= 40
    assert Counter(df["label"]) == Counter(LABEL_TO_CODES[t][0] for t in want["truth"])
    assert sorted(df["path"].map(lambda p: p.split("_", 1)[1].rsplit(".", 1)[0])) == \
        sorted(p.stem for p in want["image"])


def test_field_crops_look_like_the_training_crops(test_split_cells, classifier):
    """Same field of view and apparent cell size as the classifier's training crops, and
    the cell in the middle (as analyze cuts it)."""
    from PIL import Image

    _, df = test_split_cells
    meta = classifier.meta
    diam, centred = [], 0
    for p in df["path"]:
        crop = np.asarray(Image.open(p).convert("RGB"))
        assert crop.shape == (meta.crop_size_px, meta.crop_size_px, 3)
        d = cell_diameter(crop)
        if d is not None:
            diam.append(d)
        cc = centre_contour(crop)  # the stained cell nearest the middle
        mid = (crop.shape[0] - 1) / 2
        centred += cc is not None and np.hypot(*(np.array(cc.centroid) - mid)) < 0.15 * crop.shape[0]
    assert centred >= 0.9 * len(df), (centred, len(df))
    ratio = np.median(diam) / meta.ref_cell_px
    assert 0.8 < ratio < 1.25, ratio


def test_held_out_fields_share_nothing_with_training_fields(data_dir):
    from napari_bm_cells.training.crosslab import held_out_fields
    from napari_bm_cells.training.det_data import image_signature

    bccd = data_dir / "bccd"
    held = held_out_fields(bccd)
    train = read_subtypes(bccd, ("train",))
    assert set(held["split"]) == {"val", "test"} and len(held) >= 140
    assert not set(held["image"]) & set(train["image"])
    finder = DuplicateFinder()
    for p in train["image"]:
        finder.add(image_signature(p), str(p))
    assert all(finder.match(image_signature(p)) is None for p in held["image"])


def test_training_with_field_cells_adds_them_to_train_only(data_dir, tmp_path):
    from napari_bm_cells.checkpoint import read_meta
    from napari_bm_cells.training.train_classifier import read_split, split_path, train_classifier

    msgs = []
    out = tmp_path / "m.safetensors"
    train_classifier(data_dir / "pbc", out, arch="resnet10t", img_size=32, batch_size=4, epochs=1,
                     max_steps=1, max_per_class=6, crop_size_px=250, field_cells=[data_dir / "bccd"],
                     progress=msgs.append)
    n = next(int(m.split()[0]) for m in msgs if "cells cut from fields" in m)
    assert n >= 150  # BCCD train-split fields with one labelled white cell
    assert "bccd train-split fields" in read_meta(out).trained_on
    split = read_split(split_path(out), data_dir / "pbc")
    assert not split["path"].str.contains("bccd").any()  # val/test stay PBC-only


def test_bccd_field_types_use_the_model_class_and_report_review(data_dir, classifier_path, tmp_path):
    from napari_bm_cells.count import wilson_ci
    from napari_bm_cells.training.crosslab import evaluate_fields

    m = evaluate_fields(data_dir / "bccd", tmp_path, None, classifier_path, limit=5)
    import pandas as pd

    df = pd.read_csv(tmp_path / "bccd_fields.csv")
    assert "UNK" not in set(df["pred"])  # a field's type is the model's class, reviewed or not
    from napari_bm_cells.taxonomy import NON_LEUKOCYTE_CODES

    assert not set(df["pred"]) & NON_LEUKOCYTE_CODES  # the field's type is a leukocyte's
    assert m["n"] == len(df) >= 4
    k = int(df["correct"].sum())  # the accuracy's Wilson interval holds it and is wide on a few fields
    lo, hi = m["accuracy_ci95"]
    assert m["accuracy"] == k / len(df) and lo <= m["accuracy"] <= hi and hi - lo > 0.3
    assert (lo, hi) == pytest.approx(wilson_ci(k, len(df)))
    r = m["review"]
    assert r["unclassified_fraction"] == pytest.approx(df.loc[df["pred"] != "none", "unclassified"].mean())


def test_bccd_fields_typed_at_another_condition(data_dir, classifier_path, tmp_path):
    """``crosslab --bccd --conditions``: the same fields typed at each condition, one file
    per condition (``bccd_fields.csv`` at x1), which ``compare-crosslab`` pairs."""
    import pandas as pd

    from napari_bm_cells.training.compare import compare_runs
    from napari_bm_cells.training.crosslab import evaluate_fields

    for cond in ("x1", "x0.5"):
        m = evaluate_fields(data_dir / "bccd", tmp_path, None, classifier_path, limit=10, condition=cond)
        assert m["condition"] == cond and 5 <= m["n"] <= 10
    x1, half = (pd.read_csv(tmp_path / f) for f in ("bccd_fields.csv", "bccd_fields_x0.5.csv"))
    assert list(x1["image"]) == list(half["image"])
    assert set(compare_runs(tmp_path, tmp_path)["typings"]) == {"bccd_fields", "bccd_fields_x0.5"}


def _txl_subset(data_dir, dst, per_lab=4):
    """A YOLO set of the first TXL-PBC train fields of Raabin-WBC (575x575) and BCD (416x416)."""
    from PIL import Image

    src = data_dir / "txl-pbc"
    want = {(575, 575): per_lab, (416, 416): per_lab}
    for sub in ("images/train", "labels/train"):
        (dst / sub).mkdir(parents=True)
    for img in sorted((src / "images" / "train").iterdir()):
        with Image.open(img) as im:
            size = im.size
        if want.get(size, 0) > 0:
            want[size] -= 1
            (dst / "images/train" / img.name).symlink_to(img)
            (dst / "labels/train" / f"{img.stem}.txt").symlink_to(src / "labels/train" / f"{img.stem}.txt")
    (dst / "data.yaml").write_text("train: ./images/train/\nnames: ['WBC', 'RBC', 'Platelets']\n")
    return dst / "data.yaml"


def test_pseudo_labelled_cells_of_other_labs_are_cut_as_analyze_cuts_them(data_dir, tmp_path, classifier_path):
    """White cells of real Raabin-WBC and BCD fields: one crop per white-cell box, its
    cell in the middle at the training crops' apparent size, typed by the teacher; the
    confidence threshold keeps only the cells the teacher is sure of."""
    from napari_bm_cells.checkpoint import read_meta
    from napari_bm_cells.crop import cell_diameter
    from napari_bm_cells.training.det_data import read_yolo
    from napari_bm_cells.training.pseudo_labels import pseudo_label_fields

    yaml = _txl_subset(data_dir, tmp_path / "txl")
    n_wbc = sum(b.cls == "WBC" for s in read_yolo(yaml)["train"] for b in s.boxes)
    meta = read_meta(classifier_path)
    every = pseudo_label_fields(yaml, tmp_path / "all", classifier_path, splits=("train",), out_px=112,
                                min_confidence=0.0)
    assert len(every) == n_wbc and set(every["lab"]) == {"Raabin-WBC", "BCD"}
    df = every[every["kept"]]
    assert (df["label"] != "PLT").all() and len(df) == (every["label"] != "PLT").sum() >= 0.75 * n_wbc
    assert set(df["label"]) <= set(meta.classes) and (every.loc[~every["kept"], "path"] == "").all()
    ref = meta.ref_cell_px * 112 / meta.crop_size_px
    sizes = []
    for p in df["path"]:
        crop = np.asarray(Image.open(p).convert("RGB"))
        assert crop.shape == (112, 112, 3)
        sizes.append(cell_diameter(crop))
    measured = [d for d in sizes if d]  # None: no centre contour found in the crop
    assert len(measured) >= len(sizes) // 2 and 0.8 < np.median(measured) / ref < 1.25, (sizes, ref)
    # a square reaching past its field on every side has one colour all round its border
    # (the glass's); one inside the field has the smear's texture there
    ring = {e: [np.concatenate([c[0], c[-1], c[:, 0], c[:, -1]]).std(0).max()
                for c in (np.asarray(Image.open(q).convert("RGB")) for q in df.loc[df["sides_past_edge"] == e, "path"])]
            for e in (0, 4)}
    assert ring[4] and ring[0] and max(ring[4]) < 2 < min(ring[0]), ring
    sure = pseudo_label_fields(yaml, tmp_path / "sure", classifier_path, splits=("train",), min_confidence=0.9)
    sure = sure[sure["kept"]]
    assert len(sure) < len(df) and (sure["confidence"] >= 0.9).all()
    with pytest.raises(InputError, match="no field of lab 'PBC'"):
        pseudo_label_fields(yaml, tmp_path / "none", classifier_path, labs=("PBC",), splits=("train",))


def test_untyped_cells_of_other_labs_are_learnt_from_the_teacher_alone(data_dir, tmp_path, teacher_path):
    """``--unlabelled``: every white cell of real Raabin-WBC and BCD fields, written
    untyped, trains a model through the teacher's outputs only: for training (never in
    the split file), drawn as a set share; without a teacher it is one clear error."""
    from napari_bm_cells.checkpoint import read_meta
    from napari_bm_cells.training.det_data import read_yolo
    from napari_bm_cells.training.pseudo_labels import write_lab_cells
    from napari_bm_cells.training.train_classifier import read_split, split_path, train_classifier

    yaml = _txl_subset(data_dir, tmp_path / "txl")
    n_wbc = sum(b.cls == "WBC" for s in read_yolo(yaml)["train"] for b in s.boxes)
    n = write_lab_cells(yaml, tmp_path / "cells", read_meta(teacher_path), splits=("train",))
    assert set(n) == {"Raabin-WBC", "BCD"} and sum(n.values()) == n_wbc
    assert len(list((tmp_path / "cells" / "BCD").glob("*.png"))) == n["BCD"]
    msgs, out = [], tmp_path / "m.safetensors"
    kw = dict(arch="resnet10t", img_size=32, batch_size=4, epochs=1, max_steps=2, max_per_class=6,
              crop_size_px=250, unlabelled=[tmp_path / "cells"])
    train_classifier(data_dir / "pbc", out, teacher=teacher_path, progress=msgs.append, **kw)
    assert f"{n_wbc} unlabelled training images from" in " ".join(msgs)
    assert "cells (unlabelled, distilled)" in read_meta(out).trained_on
    split = read_split(split_path(out), data_dir / "pbc")
    assert len(split) == 6 * split["label"].nunique() and not split["path"].str.contains("cells").any()
    with pytest.raises(InputError, match="add --teacher CKPT"):
        train_classifier(data_dir / "pbc", tmp_path / "x.safetensors", **kw)


def test_draws_balance_the_classes_and_give_untyped_cells_their_share():
    from napari_bm_cells.training.train_classifier import draw_weights

    y = np.array([0, 0, 0, 1, -1, -1, -1, -1])
    extra = np.array([False, False, True, False, False, False, False, False])
    w = draw_weights(y, extra, field_weight=3.0, balance=True, unlabelled_share=0.2)
    assert w.sum() == pytest.approx(1)
    assert w[:3].sum() == pytest.approx(0.4) and w[3] == pytest.approx(0.4)  # classes alike
    assert w[2] == pytest.approx(3 * w[0])  # a field cell drawn field_weight times as often
    assert w[4:] == pytest.approx([0.05] * 4)  # the untyped share, evenly
    plain = draw_weights(y[:4], extra[:4], balance=False)
    assert plain == pytest.approx(np.array([1, 1, 3, 1]) / 6)


def test_crosslab_types_labelled_single_cell_images(data_dir, classifier_path, tmp_path, capsys):
    """``crosslab --images``: class folders under common English names, each image analysed
    whole as its own slide; platelet folders are left out (not a white cell); a resized
    condition runs too; ``wide<k>`` is refused for labelled images."""
    import pandas as pd

    from napari_bm_cells.cli import main
    from napari_bm_cells.errors import InputError
    from napari_bm_cells.training.crosslab import labelled_images, type_images

    imgs = tmp_path / "cells"
    for folder, code in (("eosinophil", "EOS"), ("lymphocytes", "LYT"), ("neutrophil", "NGS"),
                         ("platelet", "PLT")):
        (imgs / folder).mkdir(parents=True)
        for p in sorted((data_dir / "pbc" / code).glob("*.jpg"))[:2]:
            (imgs / folder / p.name).symlink_to(p)
    rows = labelled_images(imgs, classifier_path)
    assert sorted(set(rows["truth"])) == ["eosinophil", "lymphocytes", "neutrophil"]
    assert set(rows.loc[rows["truth"] == "neutrophil", "codes"].iloc[0]) == {"NGS", "NGB"}
    rc = main(["crosslab", "--images", str(imgs), "--conditions", "x1,x0.5,wide2", "--out", str(tmp_path / "o"),
               "--classifier", str(classifier_path)])
    assert rc in (0, None)
    out = capsys.readouterr().out
    assert "x0.5: type accuracy" in out and "(95% CI " in out and "wide2" not in out
    df = pd.read_csv(tmp_path / "o" / "images_cells_x1.csv")
    assert len(df) == 6 and set(df["truth"]) == {"eosinophil", "lymphocytes", "neutrophil"}
    # PBC's own cells, whole images: the shipped model types them as on its crops
    if classifier_path.name == "pbc_resnext26ts.safetensors":
        assert df["correct"].sum() >= 5
    with pytest.raises(InputError, match="wide3"):
        type_images(rows, condition="wide3", classifier=classifier_path)


def test_compare_crosslab_pairs_two_models_image_by_image(data_dir, classifier_path, teacher_path, tmp_path,
                                                          capsys):
    """``compare-crosslab``: two ``crosslab --images`` runs (the shipped classifier and the
    EfficientNet-Lite0 on the same red/blue-swapped PBC images) are paired by image; the
    counts of images only one model got right are those of the two CSVs; a run against
    itself differs by nothing (p 1); runs without common typings are one line, exit 2."""
    import pandas as pd

    from napari_bm_cells.cli import main
    from napari_bm_cells.training.compare import compare_runs, paired_difference

    imgs = tmp_path / "cells"
    for folder, code in (("eosinophil", "EOS"), ("lymphocyte", "LYT"), ("monocyte", "MON"),
                         ("neutrophil", "NGS")):
        (imgs / folder).mkdir(parents=True)
        for p in sorted((data_dir / "pbc" / code).glob("*.jpg"))[-3:]:
            (imgs / folder / p.name).symlink_to(p)
    for name, ckpt in (("a", classifier_path), ("b", teacher_path)):
        assert main(["crosslab", "--images", str(imgs), "--conditions", "rb", "--out", str(tmp_path / name),
                     "--classifier", str(ckpt)]) in (0, None)
    capsys.readouterr()
    a, b = (pd.read_csv(tmp_path / n / "images_cells_rb.csv").set_index("image") for n in "ab")
    b = b.loc[a.index]
    df = compare_runs(tmp_path / "a", tmp_path / "b")
    r = df.iloc[0]
    assert r["typings"] == "images_cells_rb" and r["n"] == 12 and r["unpaired"] == 0
    assert r["only_a"] == int((a["correct"] & ~b["correct"]).sum())
    assert r["only_b"] == int((b["correct"] & ~a["correct"]).sum())
    assert r["accuracy_b"] - r["accuracy_a"] == pytest.approx(r["difference"])
    lo, hi = r["difference_ci95"]
    assert lo <= r["difference"] <= hi and 0 < r["p_mcnemar"] <= 1
    same = compare_runs(tmp_path / "a", tmp_path / "a").iloc[0]
    assert same["difference"] == 0 and same["p_mcnemar"] == 1.0
    # 10 images only B got right, none only A: far from chance
    assert paired_difference([False] * 10 + [True] * 5, [True] * 15)["p_mcnemar"] < 0.01
    assert main(["compare-crosslab", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                 str(tmp_path / "cmp.csv")]) in (0, None)
    assert "images_cells_rb (n=12)" in capsys.readouterr().out and (tmp_path / "cmp.csv").is_file()
    (tmp_path / "empty").mkdir()
    assert main(["compare-crosslab", str(tmp_path / "a"), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "share no typings" in err and "Traceback" not in err
