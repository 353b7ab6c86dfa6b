"""Run-time colour adaptation of a slide to the models' training data.

Another lab's stain, camera and lamp change every colour: the glass is blue-grey,
yellow or pink, the stain weak or strong. Before detection, with ``standardise`` (the
default), a slide whose CIELAB mean and spread (of a thumbnail's smear, glass left out)
lie outside the range of the detector's training fields is shown to the detector mapped
into that range (:func:`detector_colour`; ``lab_reference`` in its sidecar). Before classification, two
adaptations of the cell crops, chosen per run (``AnalysisOptions.colour``):

- ``standardise`` (the default): Reinhard standardisation in CIELAB. The mean and
  standard deviation of L*, a* and b* over the slide's crops (:func:`lab_stats` of a
  sample of its cells) are mapped onto those of the training crops
  (``ClassifierMeta.lab_reference``), so contrast and stain colour are matched, not
  only the glass (:class:`LabStandard`).
- ``white-balance``: every crop multiplied per channel by ``reference / slide``
  background colour (:func:`white_balance_gain`), the background being the brightest,
  least saturated pixels (:func:`background_rgb`; reference ``ClassifierMeta.background``).

A checkpoint without the reference is used as it is.
"""
from __future__ import annotations

import numpy as np

#: fraction of the brightest pixels taken for glass
BRIGHT_FRACTION = 0.2

#: gains are clipped to this range (a white balance, not a recolouring)
MAX_GAIN = 1.6

#: a pixel no brighter than this in every channel (0-255) lies outside the imaged area:
#: the black surround of a camera's round field of view or a scanner's unscanned strip
#: (the darkest stained nuclei of our data stay above 59) ...
VOID_LEVEL = 25
#: ... and no brighter than this share of the glass: the nuclei of an underexposed image
#: (glass at 45) fall below 25 without being black beside its glass
VOID_SHARE = 0.12

#: a black surround covers at least this share of an image (less is a dark speck at its edge)
MIN_SURROUND = 0.01


def void_level(rgb: np.ndarray) -> float:
    """The brightness (0-255, every channel) at or below which a pixel of ``rgb`` is black
    (:func:`glass_void_level` of its glass colour)."""
    return glass_void_level(background_rgb(rgb))


def glass_void_level(glass) -> float:
    """:data:`VOID_LEVEL`, or :data:`VOID_SHARE` of the glass's brightest channel when lower
    (``glass`` an RGB colour, or None when unknown)."""
    return float(VOID_LEVEL if glass is None else min(VOID_LEVEL, VOID_SHARE * float(np.max(glass))))


def void_pixels(rgb: np.ndarray, level: float | None = None) -> np.ndarray:
    """Boolean mask (the image's shape without channels) of black pixels (at or below
    ``level``, default :func:`void_level` of ``rgb``): what an image shows outside its
    imaged area."""
    rgb = np.asarray(rgb)
    return rgb.max(-1) <= (void_level(rgb) if level is None else level)


def surround(rgb: np.ndarray, level: float | None = None) -> np.ndarray:
    """Boolean mask of an image's (a thumbnail's) black surround: its black pixels
    (:func:`void_pixels`) connected to its edge, the outside of a camera's round field of
    view or a scanner's unscanned strip, when they cover :data:`MIN_SURROUND` of it (a
    black nucleus inside the smear is not part of it). It holds no smear, so colour
    statistics, the nuclear mask and the field's extent leave it out. ``level``: the black
    level when the caller has it (default :func:`void_level` of ``rgb``)."""
    from scipy import ndimage

    void = void_pixels(rgb, level)
    if void.mean() < MIN_SURROUND:
        return np.zeros(void.shape, bool)
    lab, _ = ndimage.label(void)
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    out = np.isin(lab, edge[edge > 0])
    return out if out.mean() >= MIN_SURROUND else np.zeros(void.shape, bool)


def background_rgb(rgb: np.ndarray) -> np.ndarray | None:
    """Median colour (R, G, B in 0-255) of the glass in an RGB uint8 image or stack of
    crops: the brightest :data:`BRIGHT_FRACTION` of the pixels, of those the less
    saturated half. None when the image has too few pixels."""
    px = np.asarray(rgb).reshape(-1, 3).astype(np.float32)
    if len(px) < 64:
        return None
    bright = px.sum(1)
    px = px[bright >= np.quantile(bright, 1 - BRIGHT_FRACTION)]
    sat = px.max(1) - px.min(1)
    px = px[sat <= np.median(sat)]
    return np.median(px, axis=0)


def images_background(paths, n: int = 200, seed: int = 0) -> list[float] | None:
    """Median glass colour of up to ``n`` training images (the reference a checkpoint stores)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = list(paths)
    bgs = []
    for i in rng.permutation(len(paths))[:n]:
        try:
            with Image.open(paths[i]) as im:
                bg = background_rgb(np.asarray(im.convert("RGB")))
        except Exception:  # noqa: BLE001 -- unreadable images are reported by load_images
            continue
        if bg is not None:
            bgs.append(bg)
    return [round(float(v), 2) for v in np.median(bgs, axis=0)] if bgs else None


def slide_background(slide, region=None) -> np.ndarray | None:
    """Glass colour of a slide, from a thumbnail (about 1024 px) of ``region``."""
    from .io import read_thumbnail

    return background_rgb(read_thumbnail(slide, region)[0])


def white_balance_gain(slide_bg, reference) -> np.ndarray | None:
    """Per-channel gain that turns ``slide_bg`` into ``reference`` (clipped to
    1/:data:`MAX_GAIN`-:data:`MAX_GAIN`); None when either is unknown."""
    if slide_bg is None or reference is None:
        return None
    g = np.asarray(reference, np.float32) / np.maximum(np.asarray(slide_bg, np.float32), 1.0)
    return np.clip(g, 1 / MAX_GAIN, MAX_GAIN)


def _to_lab(crops: np.ndarray) -> np.ndarray:
    """uint8 RGB image(s) (..., H, W, 3) -> float32 CIELAB (L* 0-100, a*, b*)."""
    from ._opencv import cv2

    f = np.ascontiguousarray(crops, np.float32).reshape(-1, *crops.shape[-3:]) / 255
    return np.stack([cv2.cvtColor(x, cv2.COLOR_RGB2LAB) for x in f]).reshape(crops.shape)


def _from_lab(lab: np.ndarray) -> np.ndarray:
    from ._opencv import cv2

    f = lab.reshape(-1, *lab.shape[-3:])
    rgb = np.stack([cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_LAB2RGB) for x in f])
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(lab.shape)


def lab_stats(crops: np.ndarray) -> dict:
    """Mean and standard deviation of L*, a*, b* over the pixels of uint8 RGB crops
    (N, H, W, 3) or one image, black ones (:func:`void_pixels`: a crop reaching into a
    round field of view's surround) left out unless every pixel is:
    ``{"mean": [3], "std": [3]}``."""
    crops = np.asarray(crops)
    lab = _to_lab(crops).reshape(-1, 3).astype(np.float64)
    void = void_pixels(crops).reshape(-1)
    if void.any() and not void.all():
        lab = lab[~void]
    return {"mean": [round(float(v), 3) for v in lab.mean(0)],
            "std": [round(float(v), 3) for v in lab.std(0)]}


#: the slide's channel spread is taken as at least this (L*/a*/b* units), so a
#: nearly flat sample (one channel without stain) is not stretched into noise
MIN_STD = 1.0

#: the gain on each channel's spread is clipped to this range
MAX_STRETCH = 4.0


class LabStandard:
    """Reinhard colour standardisation in CIELAB: each channel's slide mean and spread
    mapped onto the reference's.

    Parameters
    ----------
    slide : dict
        :func:`lab_stats` of a sample of the slide's crops.
    reference : dict
        :func:`lab_stats` of the classifier's training crops (``ClassifierMeta.lab_reference``).
    """

    def __init__(self, slide: dict, reference: dict):
        self.slide, self.reference = slide, reference
        mu_s, sd_s = np.asarray(slide["mean"], np.float32), np.asarray(slide["std"], np.float32)
        mu_r, sd_r = np.asarray(reference["mean"], np.float32), np.asarray(reference["std"], np.float32)
        self.gain = np.clip(sd_r / np.maximum(sd_s, MIN_STD), 1 / MAX_STRETCH, MAX_STRETCH)
        self.shift = mu_r - mu_s * self.gain
        # the same mapping on OpenCV's 8-bit CIELAB (L* * 255/100, a* + 128, b* + 128), for :meth:`fast`
        scale, off = np.array([2.55, 1, 1], np.float32), np.array([0, 128, 128], np.float32)
        b8 = self.shift * scale + off - off * self.gain
        self._lut = np.clip(np.round(np.arange(256, dtype=np.float32)[:, None] * self.gain + b8), 0, 255
                            ).astype(np.uint8).reshape(256, 1, 3)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """uint8 RGB crops (N, H, W, 3) -> standardised uint8 RGB crops."""
        if len(crops) == 0:
            return crops
        return _from_lab(_to_lab(crops) * self.gain + self.shift)

    def fast(self, images: np.ndarray) -> np.ndarray:
        """The same mapping in OpenCV's 8-bit CIELAB (a lookup table per channel): about
        3x faster than :meth:`__call__`, 1.5 grey levels from it on average on a smear;
        what the detector's tiles go through."""
        from ._opencv import cv2

        return np.stack([cv2.cvtColor(cv2.LUT(cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2LAB), self._lut),
                                      cv2.COLOR_LAB2RGB) for x in images]) if len(images) else images

    def info(self) -> dict:
        """What summary.json records."""
        return {"slide_lab": self.slide, "reference_lab": self.reference,
                "gain": [round(float(v), 3) for v in self.gain], "shift": [round(float(v), 3) for v in self.shift]}


#: the first cells of a run whose crops give the slide's CIELAB statistics
FIT_CELLS = 64

#: side (thumbnail px) of the blocks :func:`smear_pixels` keeps or drops
SMEAR_BLOCK = 16

#: a pixel differs from the glass by more than this (sum over R, G, B in 0-255) when
#: something lies on it; a block with under :data:`SMEAR_FRACTION` of such pixels is glass
GLASS_DISTANCE = 30.0
SMEAR_FRACTION = 0.05


def smear_pixels(rgb: np.ndarray, black: np.ndarray | None = None) -> np.ndarray:
    """The (N, 3) pixels of an RGB image in blocks that hold some of the smear: empty
    glass around a smear on a whole slide would otherwise dominate its colour statistics,
    and so would a black surround (:func:`surround`, or ``black`` when the caller has it),
    whose pixels are left out too. All pixels when no block qualifies (or the glass colour
    is unknown)."""
    bg = background_rgb(rgb)
    h, w = rgb.shape[:2]
    if bg is None or min(h, w) < SMEAR_BLOCK:
        return rgb.reshape(-1, 3)
    b = SMEAR_BLOCK
    blocks = rgb[:h // b * b, :w // b * b].reshape(h // b, b, w // b, b, 3).swapaxes(1, 2).reshape(-1, b * b, 3)
    black = surround(rgb) if black is None else black
    imaged = ~black[:h // b * b, :w // b * b].reshape(h // b, b, w // b, b).swapaxes(1, 2).reshape(-1, b * b)
    on = (np.abs(blocks.astype(np.float32) - bg).sum(-1) > GLASS_DISTANCE) & imaged
    keep = on.mean(1) >= SMEAR_FRACTION
    return blocks[keep][imaged[keep]] if keep.any() else rgb.reshape(-1, 3)


def slide_lab_stats(slide, region=None) -> dict:
    """:func:`lab_stats` of the smear's pixels (:func:`smear_pixels`) in a thumbnail of
    ``region`` of ``slide`` (a :class:`~napari_bm_cells.io.Slide`)."""
    from .io import read_thumbnail

    return lab_stats(smear_pixels(read_thumbnail(slide, region)[0])[None])


def fill_void(colour, level: float):
    """A tile map (uint8 RGB stack (N, H, W, 3) to the same) that paints black pixels
    (:func:`void_pixels` at the slide's ``level``) in ``colour``, the slide's glass, for
    a slide with a black surround (:func:`surround`): the detector, which never saw one,
    boxes its straight edges as white cells."""
    colour = np.asarray(colour, np.uint8)

    def fill(tiles: np.ndarray) -> np.ndarray:
        void = void_pixels(tiles, level)
        return np.where(void[..., None], colour, tiles) if void.any() else tiles

    return fill


#: percentiles of the training fields' statistics that bound the range a detector knows
KNOWN_RANGE = (1, 99)


def fields_lab_reference(paths, n: int = 200, seed: int = 0) -> dict | None:
    """The CIELAB reference of a detector, from up to ``n`` of its training fields'
    :func:`slide_lab_stats`: their median (``mean``, ``std``) and the range of each
    statistic the fields span (``mean_range``, ``std_range``: the
    :data:`KNOWN_RANGE` percentiles, [low, high] per channel). None without readable
    fields."""
    from .io import open_slide

    rng = np.random.default_rng(seed)
    paths = list(paths)
    stats = []
    for i in rng.permutation(len(paths))[:n]:
        try:
            stats.append(slide_lab_stats(open_slide(paths[i])))
        except Exception:  # noqa: BLE001 -- an unreadable field is reported by the trainer
            continue
    if not stats:
        return None
    out = {k: [round(float(v), 3) for v in np.median([s[k] for s in stats], 0)] for k in ("mean", "std")}
    for k in ("mean", "std"):
        out[f"{k}_range"] = np.round(np.percentile([s[k] for s in stats], KNOWN_RANGE, 0), 3).tolist()
    return out


def into_known_range(slide: dict, reference: dict) -> dict:
    """The statistics nearest to ``slide``'s that the detector's training fields span
    (each clipped into ``reference``'s ``mean_range`` / ``std_range``); the reference's
    median where it has no ranges."""
    if "mean_range" not in reference or "std_range" not in reference:
        return {"mean": reference["mean"], "std": reference["std"]}
    return {k: [round(float(v), 3) for v in np.clip(slide[k], *np.asarray(reference[f"{k}_range"]))]
            for k in ("mean", "std")}


def detector_colour(detector, slide, mode: str, region=None):
    """The detector as it runs on this slide, and what summary.json records of it
    (``detector.colour``).

    With ``standardise`` and a detector that stores the CIELAB statistics of its training
    fields (``lab_reference`` in its sidecar), a slide whose statistics
    (:func:`slide_lab_stats`) lie outside the range those fields span (a pale stain,
    yellow or grey glass) has every tile the detector sees (scale probe and detection)
    mapped onto the nearest statistics inside it (:func:`into_known_range`,
    :class:`LabStandard`): its white cells then score as its training fields' do. A slide
    inside the range is left as it is (``adapted`` False): mapping every slide onto the
    median made stretched red cells and platelets pass for white cells in a field
    without any. In every mode, a slide's black surround (a round field of view's,
    :func:`surround`) is shown as the slide's glass (``void_fill``).
    Otherwise the detector is returned as it is.
    """
    from .io import read_thumbnail

    info = {"mode": mode, "on": False}
    ref = (getattr(detector, "meta", None) or {}).get("lab_reference")
    if mode == "standardise" and (ref is None or not hasattr(detector, "with_tile_map")):
        info["why"] = "the detector stores no CIELAB reference (lab_reference in its sidecar)"
    if not hasattr(detector, "with_tile_map"):  # the contour detector
        return detector, info
    thumb, maps = read_thumbnail(slide, region)[0], []
    glass = background_rgb(thumb)
    level = glass_void_level(glass)
    black = surround(thumb, level)
    if black.any() and glass is not None:
        maps.append(fill_void(glass, level))
        info["void_fill"] = [round(float(v), 1) for v in glass]
    if mode == "standardise" and "why" not in info:
        stats = lab_stats(smear_pixels(thumb, black)[None])
        target = into_known_range(stats, ref)
        std = LabStandard(stats, target)
        adapted = target != stats  # inside the range the target is the slide's own statistics
        info.update({"on": True, "adapted": adapted, **std.info(), "known_range": {
            k: ref[k] for k in ("mean_range", "std_range") if k in ref}})
        if adapted:
            maps.append(std.fast)
    if not maps:
        return detector, info
    return detector.with_tile_map(maps[0] if len(maps) == 1 else lambda t: maps[1](maps[0](t))), info


class SlideColour:
    """The colour adaptation of one slide's crops: callable on uint8 RGB crops
    (N, H, W, 3), identity when off or when the checkpoint lacks the reference.

    Parameters
    ----------
    mode : {"standardise", "white-balance", "off"}
    meta : ClassifierMeta
        The classifier's metadata (``lab_reference``, ``background``).
    slide : Slide, optional
        Needed for ``white-balance`` (the glass colour comes from a thumbnail).
    region : tuple, optional
        The analysed region of ``slide``.

    With ``standardise``, :attr:`needs_fit` is True until :meth:`fit` sees the first
    crops of the run (the pipeline gives it the first :data:`FIT_CELLS`).
    """

    def __init__(self, mode: str, meta, slide=None, region=None):
        self.mode = mode
        info: dict = {"mode": mode, "on": False}
        self.reference = None
        if mode == "standardise":
            self.reference = getattr(meta, "lab_reference", None)
            if self.reference is None:
                info["why"] = "the checkpoint stores no CIELAB reference (lab_reference)"
        elif mode == "white-balance":
            ref = getattr(meta, "background", None)
            if ref is None:
                info["why"] = "the checkpoint stores no training background"
            else:
                bg = slide_background(slide, region)
                gain = white_balance_gain(bg, ref)
                info.update({"on": gain is not None, "reference": ref,
                             "slide_background": None if bg is None else [round(float(v), 1) for v in bg],
                             "gain": None if gain is None else [round(float(v), 3) for v in gain]})
        self._set(info)

    def _set(self, info: dict) -> None:
        """Record ``info`` and build the mapping from it: the record is what runs, so a
        run rebuilt by :meth:`from_info` maps crops exactly as the run did."""
        self._info, self._fn = dict(info), None
        if info.get("on") and info.get("mode") == "standardise":
            self._fn = LabStandard(info["slide_lab"], info["reference_lab"])
        elif info.get("on") and info.get("mode") == "white-balance":
            gain = np.asarray(info["gain"], np.float32)
            self._fn = lambda crops: np.clip(crops * gain + 0.5, 0, 255).astype(np.uint8)

    @property
    def needs_fit(self) -> bool:
        return self.reference is not None and self._fn is None

    def fit(self, crops: np.ndarray) -> "SlideColour":
        """Take the slide's CIELAB statistics from these crops (standardise mode)."""
        if self.needs_fit and len(crops):
            std = LabStandard(lab_stats(crops), self.reference)
            self._set({**self._info, "on": True, "fitted_on_cells": int(len(crops)), **std.info()})
        return self

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        return crops if self._fn is None else self._fn(crops)

    def info(self) -> dict:
        """What summary.json records (``classifier.colour``); :meth:`from_info` rebuilds it."""
        return dict(self._info)

    @classmethod
    def from_info(cls, info: dict | None) -> "SlideColour":
        """The adaptation a run recorded (identity for an old or missing record), so a
        cell explained later sees the pixels the classifier saw."""
        self = cls("off", None)
        self.mode = (info or {}).get("mode", "off")
        self._set(info or {})
        return self
