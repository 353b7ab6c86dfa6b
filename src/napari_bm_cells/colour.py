"""Run-time colour adaptation: the slide's white balance matched to the training crops'.

Another lab's camera and lamp tint the glass: blue-grey, yellow, pink. The classifier
learned cells on the background of its training crops, so before classification every
crop is multiplied per channel by ``reference / slide`` background colour
(:func:`white_balance_gain`), the background being the brightest, least saturated
pixels (:func:`background_rgb`). Stain differences inside the cells are left to the
training's stain augmentation. The reference is stored in the checkpoint
(``ClassifierMeta.background``); a checkpoint without one is used as it is.
"""
from __future__ import annotations

import numpy as np

#: fraction of the brightest pixels taken for glass
BRIGHT_FRACTION = 0.2

#: gains are clipped to this range (a white balance, not a recolouring)
MAX_GAIN = 1.6


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
