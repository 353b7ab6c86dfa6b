"""The loaded classifier on real PBC crops."""
import numpy as np
import pytest
from skimage.io import imread
from skimage.transform import resize

from napari_bm_cells.checkpoint import load_model, read_meta, save_checkpoint
from napari_bm_cells.classify import Classifier
from napari_bm_cells.errors import InputError
from napari_bm_cells.training.combine import combine
from napari_bm_cells.training.train_classifier import split_path


def test_folded_batch_norms_give_the_checkpoints_probabilities(data_dir, classifier_path):
    clf = Classifier(classifier_path, device="cpu", precision="fp32")
    assert not any(type(m).__name__.startswith("BatchNorm") for m in clf.model.modules())
    crops = _pbc_crops(data_dir, clf.input_size)
    unfolded = Classifier.from_model(*load_model(classifier_path), device="cpu", precision="fp32")
    assert any(type(m).__name__.startswith("BatchNorm") for m in unfolded.model.modules())
    p, q = clf.predict(crops), unfolded.predict(crops)
    assert len(crops) >= 20
    np.testing.assert_allclose(p, q, atol=1e-4)
    assert (p.argmax(1) == q.argmax(1)).all()


def _pbc_crops(data_dir, size: int, step: int = 250) -> np.ndarray:
    paths = sorted((data_dir / "pbc").glob("*/*.jpg"))[::step]
    return np.stack([(resize(imread(p), (size, size), anti_aliasing=True) * 255).astype(np.uint8) for p in paths])


def test_an_ensemble_checkpoint_gives_its_members_mean_probabilities(data_dir, classifier_path, teacher_path,
                                                                    pair_path):
    ens = Classifier(pair_path, device="cpu", precision="fp32")
    assert ens.meta.arch == "ensemble" and [m["arch"] for m in ens.meta.members] == ["resnext26ts",
                                                                                      "tf_efficientnet_lite0"]
    assert split_path(pair_path).read_text() == split_path(classifier_path).read_text()
    crops = _pbc_crops(data_dir, ens.input_size)
    members = [Classifier(c, device="cpu", precision="fp32").predict(crops) for c in (classifier_path, teacher_path)]
    p = ens.predict(crops)
    np.testing.assert_allclose(p, np.mean(members, 0), atol=2e-3)
    assert (np.abs(p - members[0]).max(1) > 0.01).any() and (np.abs(p - members[1]).max(1) > 0.01).any()


def test_combining_classifiers_of_other_crops_or_an_ensemble_is_one_clear_error(classifier_path, teacher_path,
                                                                                pair_path, tmp_path):
    from safetensors.torch import load_file

    meta = read_meta(teacher_path)
    meta.crop_size_px = 360
    other = save_checkpoint(tmp_path / "other_fov.safetensors", load_file(str(teacher_path)), meta)
    with pytest.raises(InputError, match=r"other_fov\.safetensors: crop_size_px 360 differs"):
        combine([classifier_path, other], tmp_path / "bad.safetensors")
    with pytest.raises(InputError, match=r"pair\.safetensors: is an ensemble already"):
        combine([pair_path, teacher_path], tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_an_ensembles_test_crops_are_those_no_member_trained_on(data_dir, classifier_path, teacher_path, tmp_path):
    import pandas as pd
    from safetensors.torch import load_file

    from napari_bm_cells.training.evaluate import evaluate_classifier

    split = pd.read_csv(split_path(classifier_path))
    test = split.index[split["split"] == "test"]
    moved = split.copy()
    moved.loc[test[::3], "split"] = "train"  # a member trained with another split
    other = save_checkpoint(tmp_path / "other_split.safetensors", load_file(str(teacher_path)), read_meta(teacher_path))
    moved.to_csv(split_path(other), index=False)
    said = []
    ens = combine([classifier_path, other], tmp_path / "ens.safetensors", progress=said.append)
    merged = pd.read_csv(split_path(ens))
    assert len(merged) == len(split) and (merged["path"] == split["path"]).all()
    assert (merged["split"] == moved["split"]).all()
    n_moved = len(test[::3])
    assert said == [f"{classifier_path}: {n_moved} of its {len(test)} test crops were trained or validated on by "
                    f"another member (other splits); the ensemble's test split is the {len(test) - n_moved} none of "
                    "them saw"]
    m = evaluate_classifier(data_dir / "pbc", tmp_path / "eval", checkpoint=ens, device="cpu")
    assert m["n"] == len(test) - n_moved

    split_path(other).unlink()  # a member without a split file is named
    said.clear()
    combine([classifier_path, other], tmp_path / "ens2.safetensors", progress=said.append)
    assert said == [f"{other}: no split file beside it (<name>.split.csv); the ensemble's test crops are held out "
                    "from the other members only"]
    assert split_path(tmp_path / "ens2.safetensors").read_text() == split_path(classifier_path).read_text()


@pytest.mark.parametrize("name", ["efficientnet_lite0_pbc", "efficientnet_lite1_pbc", "efficientnet_lite0_pbc_bccd"])
def test_the_repositorys_pretrained_networks_type_pbcs_held_back_crops(data_dir, classifier_path, teacher_path,
                                                                      name):
    """The ImageNet-pretrained EfficientNet-Lites in ``teachers/`` were trained on the shipped
    classifier's split: its test crops are held out from them too (the trainer's test macro-F1
    0.896 / 0.910 / 0.887)."""
    from napari_bm_cells.training.cls_data import load_images
    from napari_bm_cells.training.train_classifier import read_split

    ckpt = teacher_path.with_name(f"{name}.safetensors")
    clf = Classifier(ckpt, device="cpu", precision="fp32")
    assert clf.meta.arch == "tf_" + name.split("_pbc")[0]
    assert clf.meta.classes == Classifier(classifier_path, device="cpu").meta.classes
    assert split_path(ckpt).read_text() == split_path(classifier_path).read_text()
    test = read_split(split_path(classifier_path), data_dir / "pbc").query("split == 'test'").iloc[::4]
    crops, ok = load_images(test["path"].tolist(), clf.input_size, fov=clf.meta.crop_size_px)
    assert ok.all() and len(test) >= 200
    pred = np.asarray(clf.meta.classes)[clf.predict(crops).argmax(1)]
    # 11 types: chance is under 0.2; a wrong key mapping or normalisation falls far below
    assert (pred == test["label"].to_numpy()).mean() >= 0.85
