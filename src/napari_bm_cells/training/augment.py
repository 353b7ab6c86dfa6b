"""Training augmentation for cell crops, from the literature plus stain variation.

Rotation by any angle, flips, shifts and scale, brightness/contrast/gamma, blur and
sharpening, Gaussian noise, and colour/stain jitter (hue, saturation, and a random
scale and shift of each channel's optical density, after Tellez et al. 2018) so models
hold up on other labs' stains and scanners.
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


class RandomGamma(torch.nn.Module):
    def __init__(self, lo: float = 0.7, hi: float = 1.4):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, img):
        g = float(torch.empty(1).uniform_(self.lo, self.hi))
        return img.clamp(min=0) ** g


class StainJitter(torch.nn.Module):
    def __init__(self, p: float = 0.8):
        super().__init__()
        self.p = p

    def forward(self, img):
        return stain_jitter(img) if torch.rand(1).item() < self.p else img


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


def train_transform() -> torch.nn.Module:
    """Augmentation for uint8 CHW tensors at the network's input size -> float [0, 1]."""
    return v2.Compose([
        v2.ToDtype(torch.float32, scale=True),
        ReflectAffine(),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.35, hue=0.06),
        StainJitter(),
        v2.RandomApply([RandomGamma()], p=0.5),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.3),
        v2.RandomAdjustSharpness(2.0, p=0.2),
        v2.RandomApply([v2.GaussianNoise(sigma=0.03)], p=0.3),
        v2.Lambda(lambda t: t.clamp(0, 1)),
    ])
