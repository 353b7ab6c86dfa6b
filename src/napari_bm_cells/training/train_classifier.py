"""Train a timm classifier (CoAtNet / ResNeXt family) from scratch on cell crops."""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..checkpoint import ClassifierMeta, arch_kwargs, save_checkpoint
from ..runtime import autocast, autocast_dtype
from ..errors import InputError
from .cls_data import image_files, load_images, scan_class_folders, stratified_split

log = logging.getLogger(__name__)


def write_split(df: pd.DataFrame, path: Path, data_dir: str | Path) -> None:
    """Write the split with paths relative to ``data_dir`` (portable across machines)."""
    root = Path(data_dir).absolute()
    rel = df["path"].map(lambda p: str(Path(p).absolute().relative_to(root))
                         if Path(p).absolute().is_relative_to(root) else str(p))
    df.assign(path=rel).to_csv(path, index=False)


def read_split(path: Path, data_dir: str | Path) -> pd.DataFrame:
    """Read a split file; relative paths are joined to ``data_dir``."""
    df = pd.read_csv(path)
    df["path"] = df["path"].map(lambda p: p if Path(p).is_absolute() else str(Path(data_dir) / p))
    return df


def split_path(ckpt: str | Path) -> Path:
    """Where the train/val/test split of a checkpoint is written."""
    ckpt = Path(ckpt)
    return ckpt.with_name(ckpt.stem + ".split.csv")


def copy_split(src: str | Path, dst: str | Path) -> None:
    """Keep a checkpoint's split file beside a copy or derivative of it, so its test split
    stays known."""
    a, b = split_path(src), split_path(dst)
    if a.is_file() and a.resolve() != b.resolve():
        b.write_text(a.read_text())


def _normalise(x, mean, std):
    import torch
    return (x - torch.tensor(mean, device=x.device).view(1, 3, 1, 1)) / \
        torch.tensor(std, device=x.device).view(1, 3, 1, 1)


def predict_array(model, images: np.ndarray, meta: ClassifierMeta, batch_size: int = 64,
                  device: str = "cpu") -> np.ndarray:
    """Softmax probabilities for uint8 (N, S, S, 3) images already at the input size
    (float32, as :class:`~napari_bm_cells.classify.Classifier` computes them)."""
    from ..classify import Classifier

    model.eval()
    return Classifier.from_model(model, meta, device).predict_in_batches(images, batch_size)


class _Batches:
    """Augmented batches of ``imgs[order]`` (a map-style dataset of whole batches, so
    DataLoader workers each build one batch)."""

    def __init__(self, imgs, order, batch_size, aug, zoom=None, p_zoom: float = 0.0,
                 slides: dict | None = None, p_slides: float = 0.0):
        self.imgs, self.order, self.batch_size, self.aug = imgs, order, batch_size, aug
        self.zoom, self.p_zoom = zoom, p_zoom
        self.slides, self.p_slides = slides, p_slides

    def __len__(self):
        return len(self.order) // self.batch_size

    def _image(self, i, rng):
        img = self.imgs[i]
        if self.zoom is not None and rng.random() < self.p_zoom:
            img = zoom_centre(img, self.zoom[i])
        return img

    def __getitem__(self, b):
        import torch

        idx = self.order[b * self.batch_size:(b + 1) * self.batch_size]
        rng = np.random.default_rng([int(b), int(idx[0])])
        x = torch.stack([self.aug(torch.from_numpy(np.ascontiguousarray(self._image(i, rng))).permute(2, 0, 1))
                         for i in idx])
        if self.slides is not None:
            from .augment import virtual_slides
            x = virtual_slides(x, self.slides, rng, p_standardise=self.p_slides)
        return x, idx


def zoom_centre(img: np.ndarray, factor: float) -> np.ndarray:
    """``img`` magnified ``factor`` times about its centre, same size, borders reflected."""
    from .._opencv import cv2

    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), 0.0, float(factor))
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def one_size_zoom(imgs: np.ndarray, ref_px: float, labels=None, lo: float = 0.5, hi: float = 2.0) -> np.ndarray:
    """Per image, the magnification that gives its centre cell the diameter ``ref_px``
    (1 where no centre cell is found), clipped to [lo, hi]. With ``labels``, crops of
    platelets and other non-leukocytes keep their size (1): the pipeline scales crops by
    the white cells' size, which such a cell never sets."""
    from ..crop import cell_diameter
    from ..taxonomy import NON_LEUKOCYTE_CODES

    d = np.array([cell_diameter(im) or ref_px for im in imgs], float)
    zoom = np.clip(ref_px / np.maximum(d, 1.0), lo, hi)
    if labels is not None:
        zoom[np.isin(np.asarray(labels), list(NON_LEUKOCYTE_CODES))] = 1.0
    return zoom


def draw_weights(y: np.ndarray, extra: np.ndarray, field_weight: float = 3.0, balance: bool = True,
                 unlabelled_share: float = 0.2) -> np.ndarray:
    """Probability of drawing each training crop.

    Parameters
    ----------
    y : array of int
        Class index per crop; -1 for a crop without a type (``--unlabelled``).
    extra : array of bool
        Field cells (``--field-cells``), drawn ``field_weight`` times as often as a crop of
        their class.
    balance : bool
        Every class drawn equally often.
    unlabelled_share : float
        Share of the draws that go to crops without a type (evenly), when there are any.
    """
    typed = y >= 0
    w = np.where(extra, field_weight, 1.0)
    if balance:
        per_class = np.bincount(y[typed], weights=w[typed])
        w[typed] /= per_class[y[typed]]
    w[typed] /= w[typed].sum()
    if not typed.all():
        w[typed] *= 1 - unlabelled_share
        w[~typed] = unlabelled_share / (~typed).sum()
    return w


def _one_cycle(opt, lr: float, total_steps: int, done: int = 0):
    """The one-cycle learning-rate schedule over ``total_steps``, ``done`` of them taken."""
    import torch

    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=0.15,
                                               last_epoch=done - 1)


def _one_thread(_):
    import torch

    torch.set_num_threads(1)


def _augmented_batches(imgs, order, batch_size, aug, workers: int = 0, zoom=None, p_zoom: float = 0.0,
                       slides: dict | None = None, p_slides: float = 0.0):
    """Yield ``(augmented float batch, indices)`` for ``order``, in ``workers`` processes."""
    batches = _Batches(imgs, order, batch_size, aug, zoom, p_zoom, slides, p_slides)
    if workers <= 0:
        yield from (batches[b] for b in range(len(batches)))
        return
    from torch.utils.data import DataLoader

    yield from DataLoader(batches, batch_size=None, num_workers=workers, worker_init_fn=_one_thread,
                          prefetch_factor=4)


def lab_reference(imgs: np.ndarray, n: int = 800, seed: int = 0) -> dict:
    """CIELAB statistics of up to ``n`` training crops (the checkpoint's ``lab_reference``)."""
    from ..colour import lab_stats

    pick = np.random.default_rng(seed).permutation(len(imgs))[:n]
    return lab_stats(imgs[np.sort(pick)])


def estimate_cell_px(paths, fov: int | None = None, n: int = 200, seed: int = 0) -> float:
    """Median centre-contour diameter of the cells in (up to ``n``) training images,
    measured on the whole image (or its central ``fov`` square): the size the pipeline scales slide
    cells to before cropping."""
    from PIL import Image

    from ..crop import cell_diameter

    paths = list(paths)
    rng = np.random.default_rng(seed)
    diam = []
    for p in rng.permutation(len(paths))[:n]:
        try:
            with Image.open(paths[p]) as im:
                img = np.asarray(im.convert("RGB"))
        except Exception:
            continue
        if fov and fov < max(img.shape[:2]):
            top, left = max((img.shape[0] - fov) // 2, 0), max((img.shape[1] - fov) // 2, 0)
            img = img[top:top + fov, left:left + fov]
        d = cell_diameter(img)
        if d is not None:
            diam.append(d)
    return float(np.median(diam)) if diam else 0.5 * float(fov or 250)


def _distil_loss(logits, teacher, x, meta: ClassifierMeta, tmeta: ClassifierMeta, t: float = 2.0):
    """KL divergence to the teacher's softened outputs on the same (normalised) batch."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        raw = x * torch.tensor(meta.std, device=x.device).view(1, 3, 1, 1) + \
            torch.tensor(meta.mean, device=x.device).view(1, 3, 1, 1)
        if tmeta.input_size != raw.shape[-1]:
            raw = F.interpolate(raw, size=tmeta.input_size, mode="bilinear", antialias=True,
                                align_corners=False)
        target = F.softmax(teacher(_normalise(raw, tmeta.mean, tmeta.std).to(x.device)).float() / t, 1)
    return F.kl_div(F.log_softmax(logits / t, 1), target, reduction="batchmean") * t * t


def create_backbone(arch: str, n_classes: int, img_size: int, pretrained: str | Path | None = None):
    """timm model with a new ``n_classes`` head, from scratch or with its backbone from a
    local file of pretrained weights of the same architecture (``pretrained``, e.g. timm's
    ImageNet weights saved elsewhere; never fetched from the hub).

    Raises
    ------
    InputError
        The file is missing, unreadable, or lacks backbone tensors of this architecture
        (timm's own loader would only warn and leave those layers untrained).
    """
    import timm

    from .pretrained import PACKAGED, load_pretrained_state

    if str(pretrained) in PACKAGED and PACKAGED[str(pretrained)][2] != arch:
        raise InputError(f"--pretrained {pretrained} holds weights of {PACKAGED[str(pretrained)][2]}, "
                         f"not {arch}; add --arch {PACKAGED[str(pretrained)][2]}")
    model = timm.create_model(arch, pretrained=False, num_classes=n_classes, drop_rate=0.2,
                              **arch_kwargs(arch, img_size))
    if pretrained is None:
        return model
    sd, p = load_pretrained_state(pretrained, model)
    head = model.pretrained_cfg.get("classifier", "") + "."
    own = {k: v for k, v in model.state_dict().items()
           if not k.startswith(head) and not k.endswith("num_batches_tracked")}
    bad = [k for k, v in own.items() if k not in sd or tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        raise InputError(f"{p}: cannot load as pretrained weights of timm {arch} ({len(bad)} of "
                         f"{len(own)} backbone tensors missing or of another shape, e.g. {bad[0]}); "
                         "give weights of that architecture")
    model.load_state_dict({k: sd[k] for k in own}, strict=False)
    return model


def train_classifier(data_dir: str | Path, out: str | Path, arch: str = "resnext26ts",
                     img_size: int = 128, epochs: int = 30, batch_size: int = 64,
                     device: str = "cpu", seed: int = 0, lr: float = 2e-3,
                     ref_cell_px: float | None = None, crop_size_px: int | None = None,
                     mpp: float | None = None, balance: bool = True, max_per_class: int | None = None,
                     resume: bool = False, max_steps: int | None = None,
                     precision: str = "auto", init: str | Path | None = None,
                     field_cells=(), field_weight: float = 3.0, ema_decay: float | None = 0.998,
                     pretrained: str | Path | None = None, extra_data=(),
                     teacher: str | Path | None = None, distil: float = 0.7,
                     unlabelled=(), unlabelled_share: float = 0.2,
                     workers: int = 0, time_limit_s: float | None = None,
                     mixstyle: float = 0.0, one_size: float = 0.0, virtual_slides: float = 1.0,
                     field_edges: float = 0.0, progress=print) -> dict:
    """Train, keep the best epoch by validation macro-F1, evaluate it on the test split.

    Parameters
    ----------
    data_dir : path
        Folder per class code (PBC / ImageFolder) or the TCIA nested layout.
    out : path
        Checkpoint to write (``.safetensors``); ``<stem>.split.csv`` gets the split,
        ``<stem>.state.pt`` the resumable training state.
    ref_cell_px : float, optional
        Typical white-cell diameter (centre-contour equivalent diameter) in the
        training images' pixels; measured on up to 200 training images by default.
    crop_size_px : int, optional
        Field of view in source pixels: the central square of this side is cut from each
        image (default: the whole image, its median side).
    balance : bool
        Weighted sampling so every class is drawn equally often.
    max_steps : int, optional
        Stop after this many optimiser steps (smoke tests).
    init : path, optional
        Start from the weights of this checkpoint (same architecture and classes):
        a second, shorter run with a fresh learning-rate schedule fine-tunes a model.
    field_cells : list of path
        BCCD-like folders (Pascal VOC fields plus ``wbc_subtypes.csv``): the single
        labelled white cell of each *train-split* field is cut as the pipeline cuts
        cells and added to the training set (never to val/test), so the model also sees
        another lab's stain and camera.
    field_weight : float
        How much more often one such cell is drawn than one cell of ``data_dir``.
    pretrained : str or path, optional
        ImageNet weights for the backbone: ``"efficientnet-lite0"`` / ``"efficientnet-lite1"``
        (the registry packages of that name, for ``--arch tf_efficientnet_lite0`` / ``1``;
        see :mod:`~napari_bm_cells.training.pretrained`) or a local file of weights of the
        same timm architecture (``.safetensors``, ``.pth`` or ``.bin``). The classifier
        head is new for these classes and the input is normalised as the weights expect.
        Never fetched from the hub.
    extra_data : list of path
        More folders per class code, used for training only (never validation or
        test), e.g. ``pbc-extra``; classes not in ``data_dir`` are left out.
    teacher : path, optional
        Checkpoint with the same classes whose softened outputs the model also learns
        (knowledge distillation, Hinton et al. 2015, temperature 2): loss =
        ``(1 - distil)`` x cross-entropy + ``distil`` x KL to the teacher, on the same
        augmented crops.
    unlabelled : list of path
        Folders of cell crops without types (any layout; e.g. the white cells of other
        labs' detection fields, ``scripts/cut_lab_cells.py``), used for training only and
        learnt from the teacher's outputs alone (needs ``teacher``): the model sees those
        labs' stains and cameras with the teacher's view of each cell.
    unlabelled_share : float
        Share of the training draws that are such cells (default 0.2).
    ema_decay : float, optional
        Keep an exponential moving average of the weights (timm ``ModelEmaV3``) and
        validate, keep and ship the averaged model; ``None`` uses the raw weights.
    workers : int
        Processes that augment the crops (0: in the training loop). Augmentation is the
        bottleneck of a GPU run.
    time_limit_s : float, optional
        Time budget: after the first epoch, the number of epochs (and the learning-rate
        schedule) is cut to what fits in it.
    mixstyle : float
        Probability of MixStyle after each of the first two stages (0: off): the crops of
        a batch swap part of their feature statistics (:mod:`~napari_bm_cells.training.mixstyle`).
    one_size : float
        Probability that a training crop of a white cell is magnified so its cell has the
        typical diameter (``ref_cell_px``), as the pipeline shows the white cell of a field
        that holds only one (its crop is scaled by that cell's own size); platelets and
        other non-leukocytes keep their size; 0: off.
    virtual_slides : float
        Each batch is cut into groups of 1-64 crops, each group recoloured alike as
        another lab's smear (half of them) and, with this probability (default 1),
        standardised in CIELAB from its own statistics, as ``analyze`` standardises a slide
        (:func:`~napari_bm_cells.training.augment.virtual_slides`). 0: off, each crop
        recoloured on its own instead and never standardised.
    field_edges : float
        Share of the training crops cut as at a field's edge: one, two or four sides filled
        with the background colour, as the pipeline fills the part of a crop outside the
        image (:class:`~napari_bm_cells.training.augment.FieldEdge`); 0: off.
    precision : {"auto", "fp32", "bf16"}
        ``auto``: bfloat16 autocast where the CPU or GPU supports it (about 1.6x faster
        training on an AVX512-BF16 CPU), else float32.

    Returns
    -------
    dict with the history and the test metrics of the best checkpoint.
    """
    import torch
    from PIL import Image
    from sklearn.metrics import f1_score

    from .augment import train_transform
    from .metrics import classification_metrics

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sp = split_path(out)
    if resume and sp.is_file():
        df = read_split(sp, data_dir)
    else:
        df = stratified_split(scan_class_folders(data_dir), seed=seed)
        if max_per_class:  # small subsets for smoke tests, keeping the split's proportions
            n_held = max(1, int(max_per_class * .15))  # val and test each; train the rest
            cap = df["split"].map({"train": max(1, max_per_class - 2 * n_held), "val": n_held, "test": n_held})
            df = df[df.groupby(["label", "split"]).cumcount() < cap]
        write_split(df, sp, data_dir)
    classes = sorted(df["label"].unique())
    for d in extra_data:
        more = scan_class_folders(d)
        more = more[more["label"].isin(classes)].assign(split="train")
        progress(f"{len(more)} more training images from {d}")
        df = pd.concat([df, more], ignore_index=True)
    if unlabelled and teacher is None:
        raise InputError("--unlabelled cells are learnt from a teacher's outputs only: add --teacher CKPT")
    if unlabelled and not 0 < unlabelled_share < 1:
        raise InputError(f"--unlabelled-share {unlabelled_share}: give a share between 0 and 1, such as 0.2")
    for d in unlabelled:  # label "": no type, distillation only
        more = pd.DataFrame({"path": [str(p) for p in image_files(d)], "label": "", "split": "train"})
        progress(f"{len(more)} unlabelled training images from {d}")
        df = pd.concat([df, more], ignore_index=True)
    if crop_size_px is None:
        sides = []
        for p in df["path"].sample(min(50, len(df)), random_state=seed):
            try:
                with Image.open(p) as im:
                    sides.append(max(im.size))
            except Exception:
                pass
        crop_size_px = int(np.median(sides)) if sides else 250
    if ref_cell_px is None:
        ref_cell_px = estimate_cell_px(df[df["split"] == "train"]["path"], seed=seed)
        progress(f"typical cell diameter in the training images: {ref_cell_px:.1f} px")

    work = None  # field-cell crops, written for load_images and removed after it
    if field_cells:
        from .field_cells import export_field_cells
        work = Path(tempfile.mkdtemp(prefix="bm_cells_fields_"))
        fmeta = ClassifierMeta(arch=arch, classes=[], input_size=img_size,
                               crop_size_px=crop_size_px, ref_cell_px=ref_cell_px)
        extra = pd.concat([export_field_cells(d, work / Path(d).name, fmeta) for d in field_cells])
        unknown = sorted(set(extra["label"]) - set(classes))
        if unknown:
            warnings.warn(f"field cells of classes {unknown} left out: not among {classes}", stacklevel=2)
        extra = extra[extra["label"].isin(classes)].assign(split="train", extra=True)
        progress(f"{len(extra)} cells cut from fields of {', '.join(map(str, field_cells))}")
        df = pd.concat([df.assign(extra=False), extra], ignore_index=True)
    else:
        df = df.assign(extra=False)
    df.loc[df["label"] == "", "extra"] = True  # unlabelled cells: kept out of the colour references
    progress(f"loading {len(df)} images at {img_size}px ...")
    imgs, ok = load_images(df["path"].tolist(), img_size, fov=crop_size_px)
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    df = df.assign(ok=ok)
    y_all = df["label"].map({c: i for i, c in enumerate(classes)}).fillna(-1).astype(int).to_numpy()
    tr = np.flatnonzero((df["split"] == "train").to_numpy() & ok)
    va = np.flatnonzero((df["split"] == "val").to_numpy() & ok)
    te = np.flatnonzero((df["split"] == "test").to_numpy() & ok)
    if len(tr) == 0:
        raise InputError(f"{data_dir}: no readable training images")
    if len(va) == 0:
        va = tr

    model = create_backbone(arch, len(classes), img_size, pretrained)
    if init:
        from ..checkpoint import load_model as _load
        src, src_meta = _load(init, "cpu")
        if list(src_meta.classes) != classes or src_meta.arch != arch:
            raise InputError(f"{init}: --init checkpoint has arch {src_meta.arch} and classes "
                             f"{src_meta.classes}; this run needs {arch} and {classes}")
        model.load_state_dict(src.state_dict())
    model = model.to(device).to(memory_format=torch.channels_last)
    if mixstyle:
        from .mixstyle import add_mixstyle
        add_mixstyle(model, p=mixstyle)
    from timm.utils import ModelEmaV3
    ema = ModelEmaV3(model, decay=ema_decay, use_warmup=True) if ema_decay else None
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = max(1, len(tr) // batch_size)
    sched = _one_cycle(opt, lr, epochs * steps_per_epoch)
    meta = ClassifierMeta(arch=arch, classes=classes, input_size=img_size,
                          crop_size_px=crop_size_px, ref_cell_px=ref_cell_px, mpp=mpp,
                          trained_on=" + ".join([Path(data_dir).name] + [Path(d).name for d in extra_data] + [
                              f"{Path(d).name} train-split fields" for d in field_cells] + [
                              f"{Path(d).name} (unlabelled, distilled)" for d in unlabelled]))
    from ..colour import images_background
    meta.background = images_background(df.loc[(df["split"] == "train") & ~df["extra"], "path"], seed=seed)
    meta.lab_reference = lab_reference(imgs[tr[~df["extra"].to_numpy()[tr]]], seed=seed)
    if pretrained is not None:  # the statistics the pretrained weights were trained with
        meta.mean = [float(v) for v in model.pretrained_cfg["mean"]]
        meta.std = [float(v) for v in model.pretrained_cfg["std"]]
        from .pretrained import PACKAGED
        meta.trained_on += (f" (backbone from {pretrained} ImageNet weights)" if str(pretrained) in PACKAGED
                            else f" (backbone from {Path(pretrained).name})")
    teach = None
    if teacher is not None:
        from ..checkpoint import load_model as _load
        teach, tmeta = _load(teacher, device)
        if list(tmeta.classes) != classes:
            raise InputError(f"{teacher}: teacher classes {tmeta.classes} differ from {classes}")
        teach.eval()
        meta.trained_on += f", distilled from {Path(teacher).name}"
    if mixstyle:
        meta.trained_on += f", MixStyle p={mixstyle:g}"
    state_file = out.with_name(out.stem + ".state.pt")
    start, best_f1, history = 0, -1.0, []
    if resume and state_file.is_file():
        st = torch.load(state_file, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        if ema is not None and st.get("ema"):
            ema.load_state_dict(st["ema"])
        sched.load_state_dict(st["sched"])
        start, best_f1, history = st["epoch"] + 1, st["best_f1"], st["history"]
        progress(f"resumed at epoch {start}")

    weights = draw_weights(y_all[tr], df["extra"].to_numpy()[tr], field_weight, balance, unlabelled_share)
    aug = train_transform(stain=not virtual_slides, field_edge=field_edges)
    if field_edges:
        meta.trained_on += f", {field_edges:.0%} of crops cut as at a field's edge"
    if virtual_slides:
        meta.trained_on += f", virtual slides standardised with p={virtual_slides:g}"
    zoom = None
    if one_size:
        zoom = np.ones(len(imgs))
        zoom[tr] = one_size_zoom(imgs[tr], ref_cell_px * img_size / crop_size_px, df["label"].to_numpy()[tr])
        progress(f"one-size crops: median magnification {np.median(zoom[tr]):.2f} "
                 f"({np.mean(zoom[tr] != 1):.0%} of the training crops measured)")
        meta.trained_on += f", cells shown at one size in {one_size:.0%} of crops"
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    amp_dtype = autocast_dtype(device, precision, training=True)
    step = 0
    for epoch in range(start, epochs):
        if epoch >= epochs:  # cut by the time budget
            break
        model.train()
        t0, losses = time.time(), []
        order = rng.choice(tr, size=steps_per_epoch * batch_size, replace=True, p=weights)
        for x, idx in _augmented_batches(imgs, order, batch_size, aug, workers, zoom, one_size,
                                         meta.lab_reference if virtual_slides else None, virtual_slides):
            x = _normalise(x, meta.mean, meta.std).to(device).contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(y_all[idx]).to(device)
            with autocast(device, amp_dtype):
                logits = model(x).float()
                has_type = y >= 0
                loss = loss_fn(logits[has_type], y[has_type]) if has_type.any() else logits.sum() * 0
                if teach is not None:
                    loss = (1 - distil) * loss + distil * _distil_loss(logits, teach, x, meta, tmeta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(model, step=step)
            losses.append(loss.item())
            step += 1
            if max_steps and step >= max_steps:
                break
        kept = ema.module if ema is not None else model
        probs = predict_array(kept, imgs[va], meta, device=device)
        f1 = float(f1_score(y_all[va], probs.argmax(1), average="macro"))
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_macro_f1": f1,
                        "seconds": round(time.time() - t0, 1)})
        progress(f"epoch {epoch + 1}/{epochs} loss {np.mean(losses):.4f} "
                 f"val macro-F1 {f1:.4f} ({time.time() - t0:.0f}s)")
        if time_limit_s and epoch == start and epochs > start + 1:
            fit = max(start + 1, min(epochs, int(time_limit_s // (time.time() - t0))))
            if fit < epochs:
                progress(f"{fit} epochs fit in {time_limit_s:.0f} s (not {epochs}): schedule shortened")
                epochs = fit
                sched = _one_cycle(opt, lr, max(step + 1, epochs * steps_per_epoch), done=step)
        if f1 > best_f1:
            best_f1 = f1
            save_checkpoint(out, kept.state_dict(), meta)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "epoch": epoch, "best_f1": best_f1, "history": history}, state_file)
        if max_steps and step >= max_steps:
            break

    from ..checkpoint import load_model
    best, meta = load_model(out, device)
    test_metrics = {}
    if len(te):
        probs = predict_array(best, imgs[te], meta, device=device)
        test_metrics = classification_metrics(df["label"].to_numpy()[te], probs, classes)
    meta.metrics = {"val_macro_f1": best_f1, "test": {k: test_metrics[k] for k in
                    ("macro_f1", "accuracy", "mcc", "n") if k in test_metrics}}
    if len(va):  # the review threshold, on the validation split (training/calibrate.py)
        from .calibrate import choose_min_confidence

        probs = predict_array(best, imgs[va], meta, device=device)
        review = choose_min_confidence(probs.max(1), probs.argmax(1) == y_all[va])
        meta.min_confidence = review["min_confidence"]
        meta.metrics["review_threshold"] = {**review, "split": "val"}
    save_checkpoint(out, best.state_dict(), meta, half=True)
    (out.with_name(out.stem + ".history.json")).write_text(json.dumps(history, indent=1))
    if not (max_steps and step >= max_steps):
        # every epoch done: the resume state (optimizer, raw and averaged weights; ~10x
        # the checkpoint) has no use left. A run that stopped early keeps it for --resume.
        state_file.unlink(missing_ok=True)
    return {"history": history, "test": test_metrics}
