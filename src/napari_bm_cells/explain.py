"""Why did the classifier say so? Attribution maps for one cell crop (captum).

Three methods, all from captum (none re-implemented here):

``gradcam``
    :class:`captum.attr.LayerGradCam` on the last stage of the backbone
    (``model.stages[-1]`` for timm ResNeXt / CoAtNet / MaxViT), ReLU'd and upsampled
    to the input size with :meth:`captum.attr.LayerAttribution.interpolate`
    (bilinear). One forward + backward pass: the fast choice for a viewer.
``integrated-gradients``
    :class:`captum.attr.IntegratedGradients` from a blurred copy of the crop (default;
    or a black / white image) in ``n_steps`` (32) steps; the map is the absolute
    attribution summed over colour channels, lightly smoothed. A blurred baseline
    keeps flat background at ~0 (input - baseline ~ 0 there), so the map shows which
    textures and edges - nucleus, granules, cytoplasm rim - carried the decision.
``occlusion``
    :class:`captum.attr.Occlusion`: a window of ~1/7 of the input side (stride half
    of it) replaced by the same blurred baseline; the map is the drop of the target
    logit (positive part).

Every map is float32 in [0, 1] (divided by its maximum; integrated gradients by its
99th percentile, clipped) at the size of the crop passed in. The explained output is
the class logit of ``target`` (default: the predicted class).

:func:`explain_cell` finds the cell nearest a point of a slide with the same detector,
crop side and centre-contour crop as :func:`~napari_bm_cells.pipeline.analyze`, so
the crop explained is the crop that was classified.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import runtime
from .errors import InputError

METHODS = ("gradcam", "integrated-gradients", "occlusion")
BASELINES = ("blur", "black", "white")


# --------------------------------------------------------------------------- helpers
def gradcam_layer(model):
    """The module whose activations Grad-CAM weighs: the backbone's last stage.

    timm ResNeXt (ByobNet), CoAtNet / MaxViT (MaxxVit), ResNet, ConvNeXt, EfficientNet
    are covered via ``stages`` / ``layer4`` / ``blocks``; the output must be an NCHW
    feature map (checked when the map is computed).
    """
    for name in ("stages", "layer4", "blocks", "features"):
        m = getattr(model, name, None)
        if m is None:
            continue
        try:
            return m[-1]
        except (TypeError, IndexError):
            return m
    raise InputError(f"{type(model).__name__}: no 'stages' / 'layer4' / 'blocks' to run Grad-CAM "
                     "on; use --method integrated-gradients or occlusion")


def gradcam_layers(model) -> list:
    """:func:`gradcam_layer` of a network, or of each member network of an ensemble
    (:mod:`napari_bm_cells.ensemble`), whose Grad-CAM is the sum of its members'."""
    members = getattr(model, "members", None)
    return [gradcam_layer(m.net) for m in members] if members is not None else [gradcam_layer(model)]


def _target_index(cls, target) -> int | None:
    if target is None:
        return None
    if isinstance(target, (int, np.integer)):
        if not 0 <= int(target) < len(cls.classes):
            raise InputError(f"target index {target} out of range 0..{len(cls.classes) - 1}")
        return int(target)
    code = str(target).strip().upper()
    if code not in cls.classes:
        raise InputError(f"target class {target!r} is not one of the classifier's classes "
                         f"({', '.join(cls.classes)})")
    return cls.classes.index(code)


def _to_input(crop: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 crop resized to the network input (square)."""
    crop = np.asarray(crop)
    if crop.ndim != 3 or crop.shape[2] < 3:
        raise InputError(f"crop must be an (H, W, 3) RGB image, got shape {crop.shape}")
    crop = crop[..., :3]
    if crop.dtype != np.uint8:
        crop = np.clip(crop, 0, 255).astype(np.uint8)
    if crop.shape[:2] == (size, size):
        return crop
    from skimage.transform import resize
    out = resize(crop, (size, size), order=1, anti_aliasing=max(crop.shape[:2]) > size,
                 preserve_range=True)
    return out.astype(np.uint8)


def _baseline_image(crop: np.ndarray, kind: str) -> np.ndarray:
    """Reference image for integrated gradients / occlusion, uint8 like the crop."""
    if kind == "black":
        return np.zeros_like(crop)
    if kind == "white":
        return np.full_like(crop, 255)
    if kind == "blur":
        from scipy.ndimage import gaussian_filter
        sigma = 0.1 * crop.shape[0]  # ~11 px at 112 px: nucleus and granules gone
        return np.stack([gaussian_filter(crop[..., c].astype(np.float32), sigma, mode="reflect")
                         for c in range(3)], -1).clip(0, 255).astype(np.uint8)
    raise InputError(f"baseline {kind!r}: choose one of {', '.join(BASELINES)}")


def _normalise(a: np.ndarray, pct: float | None = None) -> np.ndarray:
    a = np.nan_to_num(np.asarray(a, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    a = np.clip(a, 0, None)
    top = float(np.percentile(a, pct)) if pct else float(a.max())
    if top <= 0:
        top = float(a.max())
    if top <= 0:
        return np.zeros_like(a, np.float32)
    return np.clip(a / top, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- crops
def explain_crop(classifier, crop_uint8: np.ndarray, method: str = "gradcam", target=None,
                 baseline: str = "blur", n_steps: int = 32, internal_batch_size: int = 16,
                 window: int | None = None, stride: int | None = None,
                 perturbations_per_eval: int = 32, colour=None):
    """Attribution map of one cell crop.

    Parameters
    ----------
    classifier : Classifier, path or None
        A loaded :class:`~napari_bm_cells.classify.Classifier` (or a checkpoint path;
        None = the shipped model).
    crop_uint8 : (H, W, 3) uint8
        The cell crop, normally at the classifier's input size (as cut by the
        pipeline); other sizes are resized to the input and the map back to (H, W).
    method : {"gradcam", "integrated-gradients", "occlusion"}
    target : None, str or int
        Class explained: None = the predicted class, or a class code (``"MON"``).
    baseline : {"blur", "black", "white"}
        Reference image of integrated gradients and occlusion.
    colour : callable, optional
        The run's colour adaptation (:class:`~napari_bm_cells.colour.SlideColour`,
        e.g. ``SlideColour.from_info(summary["classifier"]["colour"])``), applied to the
        crop first so the explanation is of what the classifier saw.
    n_steps, internal_batch_size : int
        Integrated-gradients steps and how many go through the network at once.
    window, stride : int, optional
        Occlusion window and stride in input pixels (default ~1/7 of the input side,
        stride half the window).
    perturbations_per_eval : int
        Occluded copies per forward pass.

    Returns
    -------
    attribution : (H, W) float32 in [0, 1]
    label : str
        Predicted class code (whatever ``target`` is).
    probs : (n_classes,) float32
        Softmax probabilities, in the order of ``classifier.classes``.
    """
    import torch
    try:
        from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion
    except ImportError:
        raise InputError("explanations need captum: pip install 'napari-bm-cells[explain]'") from None

    if method not in METHODS:
        raise InputError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    cls = runtime.classifier(classifier)
    crop = np.asarray(crop_uint8)
    S = cls.input_size
    img = _to_input(crop, S)
    if colour is not None:  # the run's colour adaptation: the pixels the classifier saw
        img = colour(img[None])[0]
    probs = cls.predict(img[None])[0]
    label = cls.classes[int(np.argmax(probs))]
    t = _target_index(cls, target)
    if t is None:
        t = int(np.argmax(probs))
    model = cls.model
    x = cls.prepare(img[None])

    with torch.enable_grad():
        if method == "gradcam":
            total = 0
            for layer in gradcam_layers(model):
                a = LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)
                if a.dim() != 4:
                    raise InputError(f"{type(layer).__name__}: Grad-CAM needs an NCHW feature map, got "
                                     f"{tuple(a.shape)}; use integrated-gradients or occlusion")
                total = total + LayerAttribution.interpolate(a, (S, S), interpolate_mode="bilinear")
            amap = _normalise(total[0, 0].detach().float().cpu().numpy())
        elif method == "integrated-gradients":
            base = cls.prepare(_baseline_image(img, baseline)[None])
            ig = IntegratedGradients(model)
            a = ig.attribute(x.requires_grad_(), baselines=base, target=t, n_steps=int(n_steps),
                             internal_batch_size=int(internal_batch_size))
            a = a[0].detach().float().abs().sum(0).cpu().numpy()
            from scipy.ndimage import gaussian_filter
            amap = _normalise(gaussian_filter(a, max(1.0, S / 112)), pct=99.0)
        else:
            w = int(window or max(4, round(S / 7)))
            st = int(stride or max(1, w // 2))
            base = cls.prepare(_baseline_image(img, baseline)[None])
            occ = Occlusion(model)
            with torch.no_grad():
                a = occ.attribute(x, sliding_window_shapes=(3, w, w), strides=(3, st, st),
                                  baselines=base, target=t,
                                  perturbations_per_eval=int(perturbations_per_eval))
            amap = _normalise(a[0].float().mean(0).cpu().numpy())

    if amap.shape != crop.shape[:2]:
        from skimage.transform import resize
        amap = np.clip(resize(amap, crop.shape[:2], order=1, preserve_range=True), 0, 1)
    return amap.astype(np.float32), label, np.asarray(probs, np.float32)


# --------------------------------------------------------------------------- slides
@dataclass
class CellExplanation:
    """One explained cell of a slide.

    Attributes
    ----------
    crop : (S, S, 3) uint8
        The crop the classifier saw (its input size), cut as in ``analyze``.
    attribution : (S, S) float32 in [0, 1]
    label : str
        Predicted class.
    probs : (n_classes,) float32
    classes : list of str
    target : str
        The class explained.
    method : str
    x, y : float
        Cell centre in level-0 pixels (the ``x`` / ``y`` of its cells.csv row).
    box : (4,) float
        Detection box x0, y0, x1, y1 in level-0 pixels.
    crop_px : float
        Side of the level-0 square that was cut.
    mask : (S, S) bool or None
        The centre-contour cell mask at the crop's size (None when no contour).
    seconds : float
        Time of the attribution (the crop already cut).
    """

    crop: np.ndarray
    attribution: np.ndarray
    label: str
    probs: np.ndarray
    classes: list
    target: str
    method: str
    x: float
    y: float
    box: np.ndarray
    crop_px: float
    mask: np.ndarray | None
    seconds: float

    @property
    def confidence(self) -> float:
        return float(np.max(self.probs))


def _window(slide, det, x: float, y: float, down: float, opts) -> tuple[int, int, int, int]:
    """Level-0 region detected around (x, y): the whole image for a camera field (as
    ``analyze`` sees it), else one detection tile centred on the point."""
    from .scale import FIELD_MAX_SIDE

    H, W = slide.shape
    if max(H, W) <= FIELD_MAX_SIDE:
        return (0, 0, H, W)
    half = max(opts.tile_size * down, 4 * float(getattr(det, "input_cell_px", 100)) * down) / 2
    y0, x0 = max(0, int(y - half)), max(0, int(x - half))
    y1, x1 = min(H, int(math.ceil(y + half))), min(W, int(math.ceil(x + half)))
    return (y0, x0, y1, x1)


def nearest_detection(boxes: np.ndarray, x: float, y: float) -> int:
    """Index of the box holding (x, y) whose centre is nearest; else the nearest centre."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    d = np.hypot(cx - x, cy - y)
    inside = (boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3])
    d = np.where(inside, d, d + 1e9)
    return int(np.argmin(d))


def explain_cell(image_path_or_slide, x: float, y: float, classifier=None, detector=None,
                 method: str = "gradcam", target=None, options=None, device: str = "auto",
                 **kwargs) -> CellExplanation:
    """Explain the classification of the cell nearest (x, y) (level-0 pixels).

    Detection runs on a window around the point (the whole image for camera fields up
    to 1024 px, else one detection tile) with the same scale as ``analyze``; the cell
    is the detection whose box holds the point (nearest centre), cropped with
    :func:`~napari_bm_cells.cut_cells.crop_side` and the pipeline's centre-contour crop,
    and colour-adapted (``options.colour``) with statistics of the window's cells.

    The crop side is the one ``analyze`` uses whenever it does not depend on the whole
    slide's detections (camera fields, slides with a pixel size, ``cell_px`` or
    ``crop_px`` given). For a large slide without a pixel size ``analyze`` scales by cells
    measured across the whole slide, here by those of the window; pass
    ``options=AnalysisOptions(crop_px=...)`` with the run's
    ``summary["classifier"]["crop_px_level0"]`` to reproduce its crop exactly.

    Parameters
    ----------
    image_path_or_slide : path, array or Slide
    x, y : float
        Point in level-0 pixels (e.g. a click in napari, or a cells.csv row's x / y).
    classifier : Classifier or path, optional
    detector : loaded detector, path or "contour", optional
    method, target : see :func:`explain_crop`
    options : AnalysisOptions, optional
        Detection scale (``level``, ``cell_px``, ``tile_size``), ``crop_px``.
    **kwargs
        Passed to :func:`explain_crop` (``n_steps``, ``baseline``, ...).

    Returns
    -------
    CellExplanation
    """
    from .colour import FIT_CELLS, SlideColour, detector_colour
    from .io import Slide, open_slide
    from .cut_cells import crop_side, read_cell_crops
    from .pipeline import AnalysisOptions, parse_level

    if method not in METHODS:
        raise InputError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    slide = image_path_or_slide if isinstance(image_path_or_slide, Slide) else open_slide(image_path_or_slide)
    H, W = slide.shape
    if not (0 <= x < W and 0 <= y < H):
        raise InputError(f"point ({x:g}, {y:g}) is outside the image ({W} x {H} px)")
    det, cls = runtime.models(detector, classifier, device)
    opts = options or AnalysisOptions()
    _target_index(cls, target)  # fail before detection on a bad class code

    from .detect import iter_detect, run_to_end
    det = detector_colour(det, slide, opts.colour, opts.region)[0]  # the tiles as analyze's detector saw them
    down = parse_level(opts.level, slide, det, opts.cell_px)
    region = _window(slide, det, x, y, down, opts)
    dets = run_to_end(iter_detect(slide, det, tile=opts.tile_size, overlap=opts.overlap, downsample=down,
                                  region=region, batch=opts.det_batch))
    if not len(dets):
        raise InputError(f"no white cell detected near ({x:g}, {y:g}); try another point, "
                         "--detector contour, or check the image scale")
    i = nearest_detection(dets.boxes, x, y)
    side = crop_side(cls.meta, slide, dets, opts)
    colour = SlideColour(opts.colour, cls.meta, slide, region)
    if colour.needs_fit:  # as analyze: the slide's colour statistics from its cells' crops
        crops = read_cell_crops(slide, dets, np.arange(min(len(dets), FIT_CELLS)), side, cls.input_size,
                                cls.meta.crop_size_px)[0]
        colour.fit(np.stack(crops))
    kwargs.setdefault("colour", colour)
    return _explain_detection(cls, slide, dets, i, side, method, target, **kwargs)


def _explain_detection(cls, slide, dets, i: int, side: float, method: str, target, **kwargs):
    """Cut detection ``i``'s crop as ``analyze`` does and explain it."""
    from .cut_cells import read_cell_crops

    crops, centres, masks = read_cell_crops(slide, dets, [i], side, cls.input_size, cls.meta.crop_size_px)
    crop = crops[0]

    try:  # imported before timing: ``seconds`` is the attribution alone
        import captum.attr  # noqa: F401
    except ImportError:
        pass  # explain_crop says how to install it

    t0 = time.perf_counter()
    amap, label, probs = explain_crop(cls, crop, method=method, target=target, **kwargs)
    seconds = time.perf_counter() - t0
    t = _target_index(cls, target)
    mask = None
    if masks[0] is not None:
        from skimage.transform import resize
        mask = resize(masks[0][0].mask.astype(np.float32), crop.shape[:2], order=0) > 0.5
    cyx = centres[0]
    return CellExplanation(crop=crop, attribution=amap, label=label, probs=probs,
                           classes=list(cls.classes),
                           target=cls.classes[t] if t is not None else label, method=method,
                           x=float(cyx[1]), y=float(cyx[0]), box=np.asarray(dets.boxes[i], float),
                           crop_px=float(side), mask=mask, seconds=seconds)


def explain_cells(image_path_or_slide, cells, cell_ids, classifier=None, method: str = "gradcam",
                  target=None, crop_px: float | None = None, device: str = "auto",
                  summary: dict | None = None, **kwargs) -> list[CellExplanation]:
    """Explain cells of an analysis by id, headless (no detection: the table's boxes).

    Parameters
    ----------
    image_path_or_slide : path, array or Slide
        The image the cells were found on.
    cells : DataFrame or path
        The analysis' cell table (``cells.csv``); its ``summary.json`` beside it gives
        the run's crop side and colour adaptation.
    cell_ids : iterable of int
        ``cell_id`` values to explain.
    crop_px : float, optional
        Level-0 crop side (default: the run's, else computed as ``analyze`` does).
    summary : dict, optional
        The run's summary (``AnalysisResult.summary``) when ``cells`` is a table in
        memory: its crop side and colour adaptation are used.

    Returns
    -------
    list of CellExplanation, in the order of ``cell_ids``.
    """
    import json

    import pandas as pd

    from .colour import SlideColour
    from .detect import Detections
    from .io import Slide, open_slide
    from .cut_cells import crop_side
    from .options import AnalysisOptions

    if method not in METHODS:
        raise InputError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    if not isinstance(cells, pd.DataFrame):
        path = Path(cells)
        from .export import read_cells
        cells = read_cells(path)
        summ = path.with_name("summary.json")
        if summary is None and summ.is_file():
            summary = json.loads(summ.read_text())
    run = (summary or {}).get("classifier") or {}
    crop_px = crop_px if crop_px is not None else run.get("crop_px_level0")
    kwargs.setdefault("colour", SlideColour.from_info(run.get("colour")))
    slide = image_path_or_slide if isinstance(image_path_or_slide, Slide) else open_slide(image_path_or_slide)
    cls = runtime.classifier(classifier, device)
    _target_index(cls, target)
    dets = Detections.from_table(cells)
    side = float(crop_px) if crop_px else crop_side(cls.meta, slide, dets, AnalysisOptions())
    ids = cells["cell_id"].astype(int).to_numpy()
    H, W = slide.shape
    out = []
    for cid in cell_ids:
        rows = np.flatnonzero(ids == int(cid))
        if not len(rows):
            raise InputError(f"cell id {cid} is not in the cell table (ids {ids.min()}..{ids.max()})")
        x, y = float(cells["x"].iloc[rows[0]]), float(cells["y"].iloc[rows[0]])
        if not (0 <= x < W and 0 <= y < H):
            raise InputError(f"cell {cid} lies at ({x:.0f}, {y:.0f}), outside {slide.name} ({W} x {H} px): "
                             "the cell table is of another image; give the cells.csv of this one")
        out.append(_explain_detection(cls, slide, dets, int(rows[0]), side, method, target, **kwargs))
    return out


# --------------------------------------------------------------------------- figures
def save_overlay_png(crop: np.ndarray, attr: np.ndarray, path, title: str = "",
                     alpha: float = 0.5, cmap: str = "jet", mask: np.ndarray | None = None) -> Path:
    """Write a PNG: the crop and the crop with the attribution heat map, side by side.

    Uses matplotlib's object API (no pyplot state), so it is safe from worker threads.
    ``mask`` (optional, bool at the crop's size) is outlined on the overlay.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6.4, 3.5), dpi=120)
    FigureCanvasAgg(fig)
    ax0, ax1 = fig.subplots(1, 2)
    ax0.imshow(crop)
    ax0.set_title("cell crop", fontsize=9)
    ax1.imshow(crop)
    im = ax1.imshow(np.asarray(attr, np.float32), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    if mask is not None and np.any(mask):
        ax1.contour(np.asarray(mask, float), levels=[0.5], colors="white", linewidths=0.8)
    ax1.set_title("attribution", fontsize=9)
    for ax in (ax0, ax1):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=ax1, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path
