"""Classifier ensembles: several networks in one checkpoint, their probabilities averaged.

An ensemble checkpoint is an ordinary classifier checkpoint (one ``.safetensors`` file)
whose ``arch`` is ``"ensemble"`` and whose ``members`` list each network's architecture
and input normalisation; the tensors of member *i* are stored under ``members.i.net.``.
The pipeline feeds it crops scaled to 0-1 (``mean`` 0, ``std`` 1); each member
normalises them as it was trained, and the ensemble outputs the log of the members' mean
softmax, so the pipeline's softmax gives the mean probability. All members share the
class list, input size, field of view, cell size and colour reference: one crop serves
them all (``bm-cells combine-classifiers`` writes one).
"""
from __future__ import annotations

ENSEMBLE = "ensemble"

#: what every member shares with the first (the crop the pipeline cuts, and how)
SHARED = ("classes", "input_size", "crop_size_px", "ref_cell_px", "lab_reference", "mpp")


def build(meta):
    """The (untrained) ``torch.nn.Module`` of an ensemble checkpoint's metadata."""
    import timm
    import torch
    from torch import nn

    from .checkpoint import arch_kwargs

    class Member(nn.Module):
        def __init__(self, m: dict):
            super().__init__()
            self.net = timm.create_model(m["arch"], pretrained=False, num_classes=len(meta.classes),
                                         **arch_kwargs(m["arch"], meta.input_size))
            self.register_buffer("mean", torch.tensor(m["mean"]).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(m["std"]).view(1, 3, 1, 1), persistent=False)

        def forward(self, x):
            return self.net((x - self.mean) / self.std)

    class Ensemble(nn.Module):
        def __init__(self):
            super().__init__()
            self.members = nn.ModuleList(Member(m) for m in meta.members)

        def forward(self, x):
            probs = torch.stack([torch.softmax(m(x).float(), 1) for m in self.members]).mean(0)
            return torch.log(probs.clamp_min(1e-12))

    return Ensemble()
