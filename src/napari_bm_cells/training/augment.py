"""Training augmentation for cell crops, from the literature plus stain variation.

Rotation by any angle, flips, shifts and scale, brightness/contrast/gamma, blur and
sharpening, Gaussian noise, and colour/stain jitter (hue, saturation, and a random
scale and shift of each channel's optical density, after Tellez et al. 2018), and in half
the crops a wide recolouring as another lab's smear (:func:`random_stain`: HED density,
hue rotation, red/blue swap, tinted background, grey), so models hold up on other labs'
stains and scanners.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2


def stain_jitter(img: torch.Tensor, sigma: float = 0.08, bias: float = 0.04) -> torch.Tensor:
    """Randomly scale and shift optical density per channel (float image in [0, 1])."""
    od = -torch.log(img.clamp(min=1 / 255))
    alpha = 1 + (torch.rand(3, 1, 1) * 2 - 1) * sigma
    beta = (torch.rand(3, 1, 1) * 2 - 1) * bias
    return torch.exp(-(od * alpha + beta)).clamp(0, 1)


#: haematoxylin, eosin, DAB optical-density vectors (Ruifrok & Johnston, as scikit-image's)
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def random_stain(img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Recolour a float RGB image (CHW, [0, 1]) as another lab's smear might look.

    Wide ranges on purpose: haematoxylin/eosin optical density scaled 0.5-1.6x and shifted
    (weak to strong, pink to purple stains), hue rotated by up to ±60° in a third of the
    images, red and blue swapped in a fifth (pink <-> blue-grey), a tinted background
    (per-channel gain 0.75-1.25: yellow, blue-grey, pink), gamma 0.6-1.6, contrast
    0.7-1.3, and grey in one image of twelve. Geometry is untouched, so boxes and labels
    stay valid.
    """
    g = generator

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(shape or (1,), generator=g)

    x = img.clamp(1 / 255, 1)
    od = -torch.log(x).permute(1, 2, 0) @ _HED_FROM_RGB  # H, W, 3 stain concentrations
    od = od * u(0.5, 1.6, 3) + u(-0.05, 0.05, 3)
    x = torch.exp(-(od.clamp(min=0) @ _RGB_FROM_HED)).permute(2, 0, 1).clamp(0, 1)
    if u(0, 1) < 1 / 3:
        x = v2.functional.adjust_hue(x, float(u(-1 / 6, 1 / 6)))
    if u(0, 1) < 0.2:
        x = x.flip(0)
    x = (x * u(0.75, 1.25, 3, 1, 1)).clamp(0, 1) ** float(u(0.6, 1.6))
    m = x.mean()
    x = (m + (x - m) * u(0.7, 1.3)).clamp(0, 1)
    if u(0, 1) < 1 / 12:
        x = v2.functional.rgb_to_grayscale(x, num_output_channels=3)
    return x


def random_stain_uint8(rgb, seed: int):
    """:func:`random_stain` for a uint8 HWC numpy image (detector training fields)."""
    import numpy as np

    t = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).float() / 255
    out = random_stain(t, torch.Generator().manual_seed(seed))
    return (out.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


class RandomStain(torch.nn.Module):
    """:func:`random_stain` as a transform (wrap in ``v2.RandomApply`` for a probability)."""

    def forward(self, img):
        return random_stain(img)


class RandomGamma(torch.nn.Module):
    def __init__(self, lo: float = 0.7, hi: float = 1.4):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, img):
        g = float(torch.empty(1).uniform_(self.lo, self.hi))
        return img.clamp(min=0) ** g


class StainJitter(torch.nn.Module):
    """:func:`stain_jitter` as a transform."""

    def forward(self, img):
        return stain_jitter(img)


class ReflectAffine(torch.nn.Module):
    """Rotation/shift/scale with reflected borders, so corners never turn black."""

    def __init__(self, degrees=180, translate=0.06, scale=(0.8, 1.25)):
        super().__init__()
        self.affine = v2.RandomAffine(degrees=degrees, translate=(translate, translate),
                                      scale=scale)

    def forward(self, img):
        h, w = img.shape[-2:]
        ph, pw = h // 3, w // 3
        big = F.pad(img[None].float(), (pw, pw, ph, ph), mode="reflect")[0]
        big = self.affine(big)
        return big[..., ph:ph + h, pw:pw + w]


class FieldEdge(torch.nn.Module):
    """A cell crop as :func:`napari_bm_cells.crop.square_crop` cuts it at a field's edge:
    the part of the square outside the image filled with the background colour of the
    real part's border (:func:`~napari_bm_cells.crop.border_colour`). One side (a cell
    near an edge), two (a corner) or four (a camera image smaller than the crop) lose a
    band of 2-30% of the side each; the centre cell stays."""

    def __init__(self, max_band: float = 0.3):
        super().__init__()
        self.max_band = max_band

    def forward(self, img):
        h, w = img.shape[-2:]
        n_sides = int(torch.multinomial(torch.tensor([0.5, 0.2, 0.0, 0.3]), 1)) + 1
        bands = torch.zeros(4)
        bands[torch.randperm(4)[:n_sides]] = 0.02 + (self.max_band - 0.02) * torch.rand(n_sides)
        return fill_bands(img, *(int(b * s) for b, s in zip(bands, (h, h, w, w))))


def fill_bands(img: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """A CHW image whose outer bands (px per side) are replaced by the glass colour of the
    rest's border (:func:`~napari_bm_cells.crop.border_colour`), as
    :func:`~napari_bm_cells.crop.square_crop` fills the part of a square outside a field."""
    from ..crop import border_colour

    h, w = img.shape[-2:]
    real = img[..., top:h - bottom, left:w - right]
    fill = torch.from_numpy(border_colour(real.permute(1, 2, 0).numpy())).to(img.dtype)
    out = fill[:, None, None].expand_as(img).clone()
    out[..., top:h - bottom, left:w - right] = real
    return out


def train_transform(stain: bool = True, field_edge: float = 0.0) -> torch.nn.Module:
    """Augmentation for uint8 CHW tensors at the network's input size -> float [0, 1].

    ``stain=False`` leaves out the per-crop :func:`random_stain` (:func:`virtual_slides`
    recolours whole groups of crops instead); ``field_edge`` is the share of crops cut as
    at a field's edge (:class:`FieldEdge`)."""
    return v2.Compose([
        v2.ToDtype(torch.float32, scale=True),
        ReflectAffine(),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        *([v2.RandomApply([FieldEdge()], p=field_edge)] if field_edge else []),
        v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.35, hue=0.06),
        v2.RandomApply([StainJitter()], p=0.8),
        *([v2.RandomApply([RandomStain()], p=0.5)] if stain else []),
        v2.RandomApply([RandomGamma()], p=0.5),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.3),
        v2.RandomAdjustSharpness(2.0, p=0.2),
        v2.RandomApply([v2.GaussianNoise(sigma=0.03)], p=0.3),
        v2.Lambda(lambda t: t.clamp(0, 1)),
    ])


#: sizes of the virtual slides a batch is cut into: 1-3 cells (a camera field, each
#: its own slide) up to the first 64 cells of a slide, from which the pipeline takes the
#: colour statistics (:data:`napari_bm_cells.colour.FIT_CELLS`)
SLIDE_SIZES = (1, 2, 3, 4, 8, 16, 32, 64)


def virtual_slides(batch: torch.Tensor, reference: dict, rng, p_stain: float = 0.5,
                   p_standardise: float = 1.0) -> torch.Tensor:
    """Treat a batch of augmented crops as several slides, as ``analyze`` sees them.

    The batch (N, 3, H, W float in [0, 1]) is cut into consecutive groups of a size
    drawn from :data:`SLIDE_SIZES`; each group is recoloured alike as one other lab's
    smear (:func:`random_stain` with one seed, probability ``p_stain``) and then, with
    probability ``p_standardise``, standardised in CIELAB onto ``reference`` from its
    own statistics (:class:`napari_bm_cells.colour.LabStandard`, the run-time colour
    adaptation). The model so learns on what the standardisation leaves of another
    lab's colours, with as few cells as a one-cell field gives it. Geometry and labels
    are untouched.
    """
    import numpy as np

    from ..colour import LabStandard, lab_stats

    out, start, n = batch.clone(), 0, len(batch)
    while start < n:
        stop = min(n, start + int(rng.choice(SLIDE_SIZES)))
        group = out[start:stop]
        if rng.random() < p_stain:
            seed = int(rng.integers(2 ** 31))
            group = torch.stack([random_stain(x, torch.Generator().manual_seed(seed)) for x in group])
        if rng.random() < p_standardise:
            u8 = (group.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
            u8 = LabStandard(lab_stats(u8), reference)(u8)
            group = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
        out[start:stop] = group
        start = stop
    return out


#: radius range of :func:`cut_field_of_view`'s round field of view, as a share of half
#: the image's diagonal (below 0.7 a 4:3 field loses its top and bottom too)
FOV_RADIUS = (0.55, 1.0)
#: share of a box that must stay visible for :func:`visible_boxes` to keep it (as at an
#: image's edge, a labeller boxes the visible part of a cell)
MIN_VISIBLE = 0.4


def outside_circle(shape, radius: float, shift=(0.0, 0.0)):
    """Boolean mask, True outside a round field of view of an image of ``shape`` (height,
    width): ``radius`` a share of half the image's diagonal, the centre moved from the
    image's by ``shift`` (rows, columns) as shares of its height and width."""
    import numpy as np

    h, w = shape[:2]
    cy, cx = (h - 1) / 2 + shift[0] * h, (w - 1) / 2 + shift[1] * w
    y, x = np.ogrid[0:h, 0:w]
    return (y - cy) ** 2 + (x - cx) ** 2 > (radius * 0.5 * np.hypot(h, w)) ** 2


def cut_field_of_view(rgb, rng):
    """A detector training field as a camera's round field of view or a scanner's
    unscanned strip leaves it, the way the pipeline shows it to the detector: the part
    outside painted in the field's glass colour
    (:func:`napari_bm_cells.colour.fill_void` paints a slide's black surround so).

    Two in three are round (centre shifted by up to a tenth of the side, radius
    :data:`FOV_RADIUS`), the rest lose one or two straight bands of 5-30% of the side.
    Returns the new uint8 image and the boolean mask of what is outside (for
    :func:`visible_boxes`).
    """
    import numpy as np

    from ..colour import background_rgb

    h, w = rgb.shape[:2]
    if rng.random() < 2 / 3:
        shift = rng.uniform(-0.1, 0.1, 2)  # drawn before the radius: a seed gives the same copy
        out = outside_circle((h, w), rng.uniform(*FOV_RADIUS), shift)
    else:
        out = np.zeros((h, w), bool)
        for side in rng.choice(4, size=int(rng.integers(1, 3)), replace=False):
            band = int(rng.uniform(0.05, 0.3) * (h if side < 2 else w))
            out[(slice(0, band), slice(h - band, h), slice(None), slice(None))[side],
                (slice(None), slice(None), slice(0, band), slice(w - band, w))[side]] = True
    glass = background_rgb(rgb)
    img = rgb.copy()
    img[out] = np.asarray(glass if glass is not None else rgb.reshape(-1, 3).max(0), np.uint8)
    return img, out


def visible_boxes(boxes, outside, min_visible: float = MIN_VISIBLE):
    """Boxes (N, 4 x0 y0 x1 y1 in pixels) cut to the part of each not in ``outside`` (a
    boolean mask of the image), and which of them are kept: those with at least
    ``min_visible`` of their area still visible. Returns (cut boxes of the kept, kept
    mask)."""
    import numpy as np

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    h, w = outside.shape
    cut, keep = [], np.zeros(len(boxes), bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        c1, r1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
        seen = ~outside[r0:r1, c0:c1]
        if seen.size == 0 or seen.mean() < min_visible:
            continue
        rows, cols = np.flatnonzero(seen.any(1)), np.flatnonzero(seen.any(0))
        keep[i] = True
        cut.append((max(x0, c0 + cols[0]), max(y0, r0 + rows[0]),
                    min(x1, c0 + cols[-1] + 1), min(y1, r0 + rows[-1] + 1)))
    return np.array(cut, np.float64).reshape(-1, 4), keep
