"""Shared fixtures: real data lives outside the repo (``BM_CELLS_DATA``, default ../shared/data).

What a test needs and cannot find (the real data, an X display, Chromium) fails it
under CI (``CI=true``) and skips it elsewhere, with the reason; ``BM_CELLS_ALLOW_SKIP=1``
skips under CI too.
"""
import os
from pathlib import Path

import pytest


def missing(what: str):
    """Fail (under CI) or skip (elsewhere) a test that lacks ``what``."""
    if os.environ.get("CI", "").lower() in ("1", "true") and os.environ.get("BM_CELLS_ALLOW_SKIP") != "1":
        pytest.fail(f"{what} (CI needs it; BM_CELLS_ALLOW_SKIP=1 skips instead)", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="module")
def display():
    """An X display for napari's OpenGL canvas (a private Xvfb when none is set)."""
    from helpers import ensure_display

    if not ensure_display(97):
        missing("napari needs an X display for OpenGL: install xvfb (apt-get install xvfb)")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Real-data folder; tests needing it are skipped when it is absent."""
    from helpers import data_dir as _data_dir

    try:
        return _data_dir()
    except FileNotFoundError as exc:
        missing(str(exc))


@pytest.fixture(scope="session")
def bccd_jpeg(data_dir) -> Path:
    """One real 640x480 BCCD field."""
    return data_dir / "bccd" / "JPEGImages" / "BloodImage_00000.jpg"


@pytest.fixture(scope="session")
def classifier_path(data_dir, tmp_path_factory) -> Path:
    """The shipped classifier; a tiny checkpoint trained on real PBC crops if not shipped yet."""
    from napari_bm_cells.classify import DEFAULT_CLASSIFIER

    if DEFAULT_CLASSIFIER.is_file():
        return DEFAULT_CLASSIFIER
    from napari_bm_cells.training.train_classifier import train_classifier

    out = tmp_path_factory.mktemp("tiny_clf") / "tiny.safetensors"
    train_classifier(data_dir / "pbc", out, img_size=64, epochs=1, batch_size=16, max_steps=2,
                     max_per_class=10, crop_size_px=250, ref_cell_px=141, progress=lambda s: None)
    return out


@pytest.fixture(scope="session")
def teacher_path() -> Path:
    """The ImageNet-pretrained EfficientNet-Lite0 of the repository (PBC, the shipped split)."""
    return Path(__file__).parents[1] / "teachers" / "efficientnet_lite0_pbc.safetensors"


@pytest.fixture(scope="session")
def pair_path(classifier_path, teacher_path, tmp_path_factory) -> Path:
    """An ensemble checkpoint of the shipped classifier and the EfficientNet-Lite0."""
    from napari_bm_cells.training.combine import combine

    return combine([classifier_path, teacher_path], tmp_path_factory.mktemp("pair") / "pair.safetensors")


@pytest.fixture(scope="session")
def classifier(classifier_path):
    from napari_bm_cells.classify import Classifier

    return Classifier(classifier_path, device="cpu")


@pytest.fixture(scope="session")
def detector():
    from napari_bm_cells.detect import load_detector

    return load_detector(None, device="cpu")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One torch thread: on a 2-core box shared with other jobs, 2 OpenMP threads thrash
    (measured ~30x slower per training step); on an idle one the cost is small."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
