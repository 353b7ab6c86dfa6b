"""Batched classification of cell crops with a timm backbone from our checkpoint format."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import file_sha256, load_model
from .runtime import autocast, autocast_dtype, resolve_device

DEFAULT_CLASSIFIER = Path(__file__).parent / "models" / "pbc_resnext26ts.safetensors"


def fold_batchnorm(model):
    """Fold each eval-mode batch norm into the convolution before it, in place.

    timm's ``ConvNormAct`` blocks (every convolution of the ResNeXt; CoAtNet names its norms
    otherwise and is left as it is) run a convolution, then a ``BatchNormAct2d`` (norm,
    dropout, activation); the norm becomes the convolution's bias and the block keeps its
    dropout and activation. Same outputs (within 2e-6 in fp32) and 1.21x the fp32 CPU
    throughput of the shipped ResNeXt (docs/performance.md). Only for inference: a model
    being trained keeps its norms.
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for block in list(model.modules()):
        conv, bn = getattr(block, "conv", None), getattr(block, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
            block.conv = fuse_conv_bn_eval(conv.eval(), bn.eval())
            rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            block.bn = nn.Sequential(*rest) if rest else nn.Identity()
    return model


class Classifier:
    """A loaded classifier: ``predict(crops)`` -> probabilities.

    Parameters
    ----------
    checkpoint : path, optional
        Our ``.safetensors`` checkpoint (default: the shipped PBC model).
    device : str
        ``auto`` (cuda > mps > cpu), ``cpu``, ``cuda[:n]`` or ``mps``.
    precision : {"auto", "fp32", "bf16"}
        ``auto``: fp16 autocast on GPU; bfloat16 autocast on CPUs with native bf16
        (AVX512-BF16 / AMX: 1.76x throughput, identical labels on PBC test crops, see
        docs/performance.md), else fp32.
    """

    def __init__(self, checkpoint: str | Path | None = None, device: str = "auto",
                 precision: str = "auto"):
        self.path = Path(checkpoint or DEFAULT_CLASSIFIER)
        device = resolve_device(device)
        model, meta = load_model(self.path, device)
        self._setup(fold_batchnorm(model), meta, device, precision)
        self.sha = file_sha256(self.path)

    @classmethod
    def from_model(cls, model, meta, device: str = "cpu", precision: str = "fp32") -> "Classifier":
        """Wrap a model in memory (e.g. during training) with its metadata."""
        self = cls.__new__(cls)
        self.path, self.sha = None, None
        self._setup(model, meta, resolve_device(device), precision)
        return self

    def _setup(self, model, meta, device: str, precision: str) -> None:
        import torch

        self.device, self.model, self.meta = device, model.to(memory_format=torch.channels_last), meta
        self.classes = list(meta.classes)
        self.autocast = autocast_dtype(device, precision)
        self._mean = torch.tensor(meta.mean).view(1, 3, 1, 1).to(device)
        self._std = torch.tensor(meta.std).view(1, 3, 1, 1).to(device)

    @property
    def input_size(self) -> int:
        return int(self.meta.input_size)

    def prepare(self, crops: np.ndarray):
        """uint8 crops (N, S, S, 3) at the input size -> the model's normalised input
        tensor (on the device, channels-last). The pipeline calls this in its crop
        thread, so the model's thread only runs the network."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255)
        return ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)

    def forward(self, x) -> np.ndarray:
        """Softmax probabilities (N, n_classes) for a tensor from :meth:`prepare`."""
        import torch

        with torch.inference_mode(), autocast(self.device, self.autocast):
            logits = self.model(x)
        return torch.softmax(logits.float(), 1).cpu().numpy()

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """Softmax probabilities for uint8 crops (N, S, S, 3) at the input size."""
        if len(crops) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return self.forward(self.prepare(crops))

    def predict_in_batches(self, crops: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """:meth:`predict` over any number of crops, ``batch_size`` at a time (bounded
        memory); views such as flipped crops are made contiguous first."""
        if len(crops) == 0:
            return self.predict(crops)
        return np.concatenate([self.predict(np.ascontiguousarray(crops[i:i + batch_size]))
                               for i in range(0, len(crops), batch_size)])
