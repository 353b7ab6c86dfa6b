"""The loaded classifier on real PBC crops."""
import numpy as np
from skimage.io import imread
from skimage.transform import resize

from napari_bm_cells.checkpoint import load_model
from napari_bm_cells.classify import Classifier


def test_folded_batch_norms_give_the_checkpoints_probabilities(data_dir, classifier_path):
    paths = sorted((data_dir / "pbc").glob("*/*.jpg"))[::250]
    clf = Classifier(classifier_path, device="cpu", precision="fp32")
    assert not any(type(m).__name__.startswith("BatchNorm") for m in clf.model.modules())
    crops = np.stack([(resize(imread(p), (clf.input_size,) * 2, anti_aliasing=True) * 255).astype(np.uint8)
                      for p in paths])
    unfolded = Classifier.from_model(*load_model(classifier_path), device="cpu", precision="fp32")
    assert any(type(m).__name__.startswith("BatchNorm") for m in unfolded.model.modules())
    p, q = clf.predict(crops), unfolded.predict(crops)
    assert len(crops) >= 20
    np.testing.assert_allclose(p, q, atol=1e-4)
    assert (p.argmax(1) == q.argmax(1)).all()
